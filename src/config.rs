//! One typed configuration: a TOML file, overridden by `TOLLGATE_`-prefixed environment
//! variables (`__` separates levels: `TOLLGATE_SERVER__HTTP_LISTEN=0.0.0.0:9090`). Every field
//! has a default, so `tollgate serve` runs with no file at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::engine::{EngineSettings, FailMode, FailModes, LeaseSettings, UnknownModel};
use crate::guardrail::bedrock::BedrockSettings;
use crate::guardrail::local::{LocalGuardrail, LocalGuardrailConfig};
use crate::guardrail::service::Mode as GuardrailMode;
use crate::llm::texts::Scope;
use crate::policy::pricing::{PriceSource, PriceTable, PriceUsd};
use crate::policy::{LimitOverrides, Team, Tier, TierTable};
use crate::store::Admission;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub identity: IdentitySettings,
    pub store: StoreSettings,
    pub policy: PolicySettings,
    pub pricing: PricingSettings,
    pub budgets: BudgetSettings,
    pub guardrail: GuardrailSettings,
    pub webhook: WebhookSettings,
    pub log: LogSettings,
    /// Overrides of tier defaults, e.g. `[tiers.standard] rpm = 150`.
    pub tiers: HashMap<Tier, LimitOverrides>,
    /// Teams declared in configuration; written to the store at startup.
    pub teams: Vec<Team>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// ext_proc gRPC (and grpc.health.v1).
    pub grpc_listen: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub http_listen: SocketAddr,
    /// Larger request bodies get 413. Keep Envoy's buffer limit at or above it.
    pub max_request_body_bytes: usize,
    /// Non-streamed responses are buffered up to this for usage; beyond it usage is estimated.
    pub max_response_json_bytes: usize,
    /// On SIGTERM, in-flight exchanges get this long to finish.
    pub shutdown_grace_seconds: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            grpc_listen: ([127, 0, 0, 1], 50051).into(),
            http_listen: ([127, 0, 0, 1], 9090).into(),
            max_request_body_bytes: 16 << 20,
            max_response_json_bytes: 16 << 20,
            shutdown_grace_seconds: 20,
        }
    }
}

impl ServerSettings {
    /// gRPC messages carry whole buffered bodies: allow them plus framing.
    pub fn max_grpc_message_bytes(&self) -> usize {
        self.max_request_body_bytes
            .max(self.max_response_json_bytes)
            + (1 << 20)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    pub jwks_file: Option<PathBuf>,
    /// e.g. `https://cognito-idp.<region>.amazonaws.com/<pool>/.well-known/jwks.json`
    pub jwks_url: Option<String>,
    /// Required `iss`; unchecked when absent.
    pub issuer: Option<String>,
    /// Claim naming the team directly (e.g. `custom:team`, added by a pre-token-generation trigger).
    pub team_claim: Option<String>,
    /// Decode claims without verifying signatures: only behind a verifier (ALB jwt-validation).
    pub trust_upstream: bool,
    pub leeway_seconds: u64,
    /// An unknown `kid` refreshes the JWKS at most this often.
    pub jwks_min_refresh_seconds: u64,
    pub jwks_max_age_seconds: u64,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            jwks_file: None,
            jwks_url: None,
            issuer: None,
            team_claim: None,
            trust_upstream: false,
            leeway_seconds: 30,
            jwks_min_refresh_seconds: 30,
            jwks_max_age_seconds: 3600,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Embedded,
    Memory,
    Dynamodb,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    /// redb file of the embedded backend.
    pub path: PathBuf,
    /// The DynamoDB backend: table, region or endpoint, timeouts, read cache, spool.
    pub dynamodb: crate::store::DynamoDbSettings,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            path: PathBuf::from("tollgate.redb"),
            dynamodb: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySettings {
    /// When the store cannot answer: `closed` refuses with 503, `open` admits (on per-instance
    /// counters). The default for every check.
    pub fail_mode: FailMode,
    /// Per-check overrides of `fail_mode`: `rpm`, `tokens`, `budget`.
    pub fail_mode_by_check: FailModeOverrides,
    /// Longest admission against the store before it counts as a store failure: keep it under
    /// Envoy's ext_proc `message_timeout` (1 s in envoy/local.yaml).
    pub admission_timeout_ms: u64,
    /// How long team definitions and admin prices are cached before the store is asked again:
    /// admin changes reach other instances within this (the instance that made them at once).
    pub team_cache_ttl_seconds: u64,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            fail_mode: FailMode::Closed,
            fail_mode_by_check: FailModeOverrides::default(),
            admission_timeout_ms: 500,
            team_cache_ttl_seconds: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailModeOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<FailMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<FailMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<FailMode>,
}

impl PolicySettings {
    pub fn fail_modes(&self) -> FailModes {
        let by_check = &self.fail_mode_by_check;
        FailModes {
            rpm: by_check.rpm.unwrap_or(self.fail_mode),
            tokens: by_check.tokens.unwrap_or(self.fail_mode),
            budget: by_check.budget.unwrap_or(self.fail_mode),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownModelPolicy {
    /// 400 `unknown_model`.
    #[default]
    Reject,
    /// Charge `pricing.default_price`.
    Default,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingSettings {
    pub unknown_model: UnknownModelPolicy,
    /// USD per million tokens for models without a price, when `unknown_model = "default"`.
    pub default_price: Option<PriceUsd>,
    /// Prices added to or replacing the built-in table, USD per million tokens.
    pub models: BTreeMap<String, PriceUsd>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetSettings {
    /// Percentages of the monthly budget at which teams are warned.
    pub warn_at_percent: Vec<u8>,
    /// Reserve each request's estimated cost at admission, settled with the actual cost: keeps
    /// concurrent requests from overshooting a budget, at one more counter write per request.
    pub reserve: bool,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            warn_at_percent: vec![80],
            reserve: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardrailBackend {
    Local,
    Bedrock,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardrailSettings {
    /// off | observe (default: assess, log, count, never block) | enforce.
    pub mode: GuardrailMode,
    /// Bedrock when `[guardrail.bedrock]` is set, else the local engine, unless chosen here.
    pub backend: Option<GuardrailBackend>,
    /// Which texts of a prompt are assessed: `latest` (default) or `all`.
    pub scope: Scope,
    /// Which parts of a prompt are assessed (default all): `system`, `user`, `tool_results`.
    pub parts: Vec<crate::llm::texts::Part>,
    /// Enforce mode when the guardrail fails: `closed` (default, 503) or `open`.
    pub fail_mode: FailMode,
    pub local: LocalGuardrailConfig,
    pub bedrock: Option<BedrockSettings>,
    /// Streamed answers: `strategy` (buffered | async), `window_chars`, `overlap_chars`.
    pub streaming: crate::extproc::stream_guard::StreamingSettings,
}

impl Default for GuardrailSettings {
    fn default() -> Self {
        Self {
            mode: GuardrailMode::default(),
            backend: None,
            scope: Scope::default(),
            parts: crate::llm::texts::Part::ALL.to_vec(),
            fail_mode: FailMode::Closed,
            local: LocalGuardrailConfig::default(),
            bedrock: None,
            streaming: Default::default(),
        }
    }
}

impl GuardrailSettings {
    pub fn backend(&self) -> GuardrailBackend {
        self.backend.unwrap_or(if self.bedrock.is_some() {
            GuardrailBackend::Bedrock
        } else {
            GuardrailBackend::Local
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The agentgateway promptGuard webhook (`POST /request`, `POST /response`). The header names
/// are the ones the agentgateway config computes with CEL (`headers:`) or forwards
/// (`forwardHeaderMatches`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// When set, every webhook call must carry it in `secret_header` (agentgateway cannot sign
    /// its calls; a static header set in its config is what it can do).
    pub secret: Option<String>,
    pub secret_header: String,
    /// The model the client asked for (CEL `llmRequest.model`).
    pub model_header: String,
    /// The client's request path (CEL `request.path`): picks the API error shape of refusals.
    pub path_header: String,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secret: None,
            secret_header: "x-tollgate-webhook-secret".into(),
            model_header: "x-tollgate-model".into(),
            path_header: "x-tollgate-path".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A tracing filter; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Top-level keys of [`Settings`].
const SECTIONS: &[&str] = &[
    "server",
    "identity",
    "store",
    "policy",
    "pricing",
    "budgets",
    "guardrail",
    "webhook",
    "log",
    "tiers",
    "teams",
];

impl Settings {
    /// Defaults, then the file (if any), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only variables naming a settings section are configuration: TOLLGATE_CONFIG, or a
        // deployment's own TOLLGATE_SOMETHING, must not break startup.
        let env = Env::prefixed("TOLLGATE_")
            .filter(|key| {
                let section = key.as_str().split("__").next().unwrap_or_default();
                SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
            })
            .split("__");
        let settings: Settings = figment
            .merge(env)
            .extract()
            .context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let mut ids = HashSet::new();
        let mut clients = HashMap::new();
        for team in &self.teams {
            if let Err(e) = team.clone().validated() {
                bail!("teams: team {:?}: {}: {}", team.id, e.field, e.message);
            }
            if !ids.insert(team.id.as_str()) {
                bail!("teams: team {:?} is declared twice", team.id);
            }
            for client in &team.client_ids {
                if let Some(other) = clients.insert(client.as_str(), team.id.as_str()) {
                    bail!(
                        "teams: client_id {client:?} belongs to both {other:?} and {:?}",
                        team.id
                    );
                }
            }
        }
        if self.identity.jwks_file.is_some() && self.identity.jwks_url.is_some() {
            bail!("identity: set jwks_file or jwks_url, not both");
        }
        if self.guardrail.backend() == GuardrailBackend::Bedrock && self.guardrail.bedrock.is_none()
        {
            bail!(
                "guardrail.backend = \"bedrock\" needs [guardrail.bedrock] with guardrail_id and guardrail_version"
            );
        }
        LocalGuardrail::new(self.guardrail.local.clone())
            .map_err(|e| anyhow::anyhow!("guardrail.local: {e}"))?;
        if let Some(t) = self
            .budgets
            .warn_at_percent
            .iter()
            .find(|t| !(1..=100).contains(*t))
        {
            bail!("budgets.warn_at_percent: {t} is not a percentage between 1 and 100");
        }
        self.engine_settings().map(|_| ())
    }

    /// Quota leases for admission: with the DynamoDB store, unless `store.dynamodb.admission` is
    /// `per_request`. This is the sidecar's default; the Lambda functions admit per request unless
    /// it says `leases`.
    pub fn lease_settings(&self) -> Option<LeaseSettings> {
        let ddb = &self.store.dynamodb;
        (self.store.backend == StoreBackend::Dynamodb
            && ddb.admission.unwrap_or(Admission::Leases) == Admission::Leases)
            .then(|| LeaseSettings {
                read_ttl: Duration::from_millis(ddb.read_cache_ms),
            })
    }

    /// The policy engine's settings: tiers, fail mode, prices and budgets.
    pub fn engine_settings(&self) -> anyhow::Result<EngineSettings> {
        let mut prices = PriceTable::builtin();
        for (model, price) in &self.pricing.models {
            let price = price
                .to_price()
                .map_err(|(field, e)| anyhow::anyhow!("pricing.models.{model:?}.{field}: {e}"))?;
            prices.set(model, price, PriceSource::Config);
        }
        let unknown_model = match (self.pricing.unknown_model, &self.pricing.default_price) {
            (UnknownModelPolicy::Reject, _) => UnknownModel::Reject,
            (UnknownModelPolicy::Default, Some(price)) => UnknownModel::Charge(
                price
                    .to_price()
                    .map_err(|(field, e)| anyhow::anyhow!("pricing.default_price.{field}: {e}"))?,
            ),
            (UnknownModelPolicy::Default, None) => {
                bail!("pricing.default_price is required when pricing.unknown_model = \"default\"")
            }
        };
        Ok(EngineSettings {
            tiers: TierTable::new(self.tiers.clone()),
            fail_modes: self.policy.fail_modes(),
            cache_ttl: Duration::from_secs(self.policy.team_cache_ttl_seconds),
            prices,
            unknown_model,
            warn_at_percent: self.budgets.warn_at_percent.clone(),
            reserve: self.budgets.reserve,
            admission_deadline: Duration::from_millis(self.policy.admission_timeout_ms),
            configured_teams: self
                .teams
                .iter()
                .filter_map(|t| t.clone().validated().ok())
                .collect(),
            leases: self.lease_settings(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Settings::load reads the environment: tests that call it run inside figment's Jail, which
    // serialises them against the tests that set variables.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail signature
    fn defaults_need_no_file() {
        figment::Jail::expect_with(|_| {
            let s = Settings::load(None).unwrap();
            assert_eq!(s.server.grpc_listen.port(), 50051);
            assert_eq!(s.store.backend, StoreBackend::Embedded);
            assert_eq!(s.policy.fail_mode, FailMode::Closed);
            assert!(s.teams.is_empty());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail signature
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            r#"
            [server]
            http_listen = "127.0.0.1:1"
            [tiers.high]
            rpm = 7
            [[teams]]
            id = "search"
            tier = "high"
            client_ids = ["a", "b"]
            daily_tokens = 10
            "#,
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("TOLLGATE_SERVER__HTTP_LISTEN", "127.0.0.1:2");
            jail.set_env("TOLLGATE_POLICY__FAIL_MODE", "open");
            jail.set_env("TOLLGATE_BIN", "/usr/bin/tollgate");
            let s = Settings::load(Some(&path)).unwrap();
            assert_eq!(s.server.http_listen.port(), 2);
            assert_eq!(s.policy.fail_mode, FailMode::Open);
            assert_eq!(s.tiers[&Tier::Premium].rpm, Some(7));
            assert_eq!(s.teams[0].tier, Tier::Premium);
            assert_eq!(s.teams[0].daily_tokens, Some(10));
            Ok(())
        });
    }

    #[test]
    fn conflicting_teams_are_refused() {
        let team = |id: &str, client: &str| Team {
            client_ids: vec![client.into()],
            ..Team::new(id, Tier::Sandbox)
        };
        let mut s = Settings {
            teams: vec![team("a", "x"), team("b", "x")],
            ..Default::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("client_id \"x\"")
        );
        s.teams = vec![team("a", "x"), team("a", "y")];
        assert!(s.validate().is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_keys_are_errors_not_silently_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[server]\ngrpc_listn = \"127.0.0.1:1\"\n").unwrap();
        figment::Jail::expect_with(|_| {
            assert!(Settings::load(Some(&path)).is_err());
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn dynamodb_admission_uses_leases_unless_told_otherwise() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TOLLGATE_STORE__BACKEND", "dynamodb");
            jail.set_env("TOLLGATE_STORE__DYNAMODB__READ_CACHE_MS", "250");
            let s = Settings::load(None).unwrap();
            let leases = s.engine_settings().unwrap().leases.unwrap();
            assert_eq!(leases.read_ttl, Duration::from_millis(250));
            jail.set_env("TOLLGATE_STORE__DYNAMODB__ADMISSION", "per_request");
            let s = Settings::load(None).unwrap();
            assert!(s.engine_settings().unwrap().leases.is_none());
            jail.set_env("TOLLGATE_STORE__DYNAMODB__ADMISSION", "leases");
            jail.set_env("TOLLGATE_STORE__BACKEND", "embedded");
            let s = Settings::load(None).unwrap();
            assert!(
                s.lease_settings().is_none(),
                "leases are for a shared store"
            );
            jail.set_env("TOLLGATE_STORE__DYNAMODB__ADMISSION", "sometimes");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
    }
}
