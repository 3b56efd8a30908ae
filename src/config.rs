//! One typed configuration: a TOML file, overridden by `TOLLGATE_`-prefixed environment
//! variables (`__` separates levels: `TOLLGATE_SERVER__HTTP_LISTEN=0.0.0.0:9090`). Every field
//! has a default, so `tollgate serve` runs with no file at all.
//!
//! An environment variable is text, and deployments set text that looks like a number
//! (`TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_VERSION=3`, a DynamoDB table named `12345`). figment
//! reads such a value as a number, which a string setting then refuses; so variables are kept as
//! the text they are ([`EnvText`]) and each setting reads it as its own type (numbers and
//! booleans are parsed from text: figment's lossy extraction). Arrays and tables written in a
//! variable (`[50, 80]`) keep their structure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::engine::{EngineSettings, FailMode, FailModes, LeaseSettings, UnknownModel};
use crate::guardrail::bedrock::BedrockSettings;
use crate::guardrail::local::{LocalGuardrail, LocalGuardrailConfig};
use crate::guardrail::service::Mode as GuardrailMode;
use crate::llm::Endpoints;
use crate::llm::texts::Scope;
use crate::policy::calendar::PeriodRule;
use crate::policy::pricing::{PriceSource, PriceTable, PriceUsd};
use crate::policy::scopes::ScopeSettings;
use crate::policy::{LimitOverrides, ScopeLimits, Team, Tier, TierTable};
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
    pub endpoints: EndpointSettings,
    pub guardrail: GuardrailSettings,
    pub webhook: WebhookSettings,
    /// Signed budget threshold webhooks (docs/alerts.md).
    pub alerts: crate::alerts::AlertSettings,
    /// A JSON line per charged call, for reconciliation (docs/alerts.md).
    pub usage_feed: crate::usage_feed::UsageFeedSettings,
    pub log: LogSettings,
    /// Overrides of tier defaults, e.g. `[tiers.standard] rpm = 150`.
    pub tiers: HashMap<Tier, LimitOverrides>,
    /// Teams declared in configuration; written to the store at startup.
    pub teams: Vec<Team>,
    /// Limits of the whole deployment, above every team (`[org]`); absent: none.
    pub org: Option<ScopeLimits>,
    /// Limits of every user of every team unless the team's `user_defaults` or `users` say
    /// otherwise (`[user_defaults]`).
    pub user_defaults: ScopeLimits,
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
    /// Claim naming the user inside the team (`sub`, `username`, `client_id` or a custom claim);
    /// unset: `username`, else `sub`.
    pub user_claim: Option<String>,
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
            user_claim: None,
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
    /// How long a group commit of the local database (the embedded store, or the spool's journal
    /// with DynamoDB) waits, once asked, before it starts, so that more calls share one fsync.
    /// Widens by as much the window in which an admitted call is not yet journaled and delays
    /// every debit's durability (see docs/stores.md). Default 2 (measured: a third of the commits of
    /// 0 under load, for a window of a few milliseconds); 0 commits at once; at most 50.
    pub commit_delay_ms: u64,
    /// The DynamoDB backend: table, region or endpoint, timeouts, read cache, spool.
    pub dynamodb: crate::store::DynamoDbSettings,
}

impl StoreSettings {
    pub fn commit_delay(&self) -> Duration {
        Duration::from_millis(self.commit_delay_ms)
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            path: PathBuf::from("tollgate.redb"),
            commit_delay_ms: 2,
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
    /// IANA time zone of budget and token periods that do not name their own (e.g.
    /// `Europe/Berlin`).
    pub time_zone: String,
    /// Request header naming the caller's project (e.g. `x-tollgate-project`); unset: no project
    /// scopes.
    pub project_header: Option<String>,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            fail_mode: FailMode::Closed,
            fail_mode_by_check: FailModeOverrides::default(),
            admission_timeout_ms: 500,
            team_cache_ttl_seconds: 5,
            time_zone: "UTC".to_owned(),
            project_header: None,
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
    /// Percentages of the monthly budget at which teams are warned and alerts are sent (100: the
    /// budget is reached).
    pub warn_at_percent: Vec<u8>,
    /// Reserve each request's estimated cost at admission, settled with the actual cost: keeps
    /// concurrent requests from overshooting a budget, at one more counter write per request.
    pub reserve: bool,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            warn_at_percent: vec![80, 100],
            reserve: false,
        }
    }
}

/// The operator's part of the endpoint catalogue (`llm::endpoints`); the rest is built in.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointSettings {
    /// Endpoints that cost nothing, admitted on identity and RPM alone: `"METHOD /path"`, where a
    /// `{placeholder}` segment stands for any one segment (`"GET /v1/fine_tuning/jobs/{id}"`).
    /// Endpoints tollgate meters or refuses on purpose cannot be listed.
    pub free: Vec<String>,
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
    pub streaming: crate::guardrail::stream::StreamingSettings,
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
    "endpoints",
    "guardrail",
    "webhook",
    "alerts",
    "usage_feed",
    "log",
    "tiers",
    "teams",
    "org",
    "user_defaults",
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
            .merge(EnvText(env))
            .extract_lossy()
            .map_err(|e| describe_config_error(e, file))?;
        settings.validate().with_context(|| match file {
            Some(file) => format!("invalid configuration in {}", file.display()),
            None => "invalid configuration".to_owned(),
        })?;
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
        if self.store.commit_delay() > crate::store::MAX_COMMIT_DELAY {
            bail!(
                "store.commit_delay_ms: {} is more than the {} ms allowed (a commit that waits longer delays every debit's durability and journal entry for little more grouping)",
                self.store.commit_delay_ms,
                crate::store::MAX_COMMIT_DELAY.as_millis()
            );
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
        self.alerts.validate()?;
        if self.guardrail.bedrock.is_none()
            && let Some(team) = self
                .teams
                .iter()
                .find(|t| t.guardrail.as_ref().is_some_and(|g| g.bedrock.is_some()))
        {
            bail!(
                "teams: team {:?} names its own Bedrock guardrail (guardrail.bedrock), which needs [guardrail.bedrock] (region, endpoint) to call it",
                team.id
            );
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
                    .map_err(|(field, e)| anyhow::anyhow!("pricing.default_price.{field}: {e}"))?
                    .tokens,
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
            endpoints: Endpoints::with_free(&self.endpoints.free)
                .map_err(|e| anyhow::anyhow!("endpoints.free: {e}"))?,
            leases: self.lease_settings(),
            // Started by `server::engine_settings`: they run tasks.
            alerts: None,
            usage_feed: None,
            scopes: ScopeSettings {
                org: self
                    .org
                    .clone()
                    .map(|o| o.validated("org"))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?,
                user_defaults: self
                    .user_defaults
                    .clone()
                    .validated("user_defaults")
                    .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?,
                time_zone: PeriodRule::zone(&self.policy.time_zone)
                    .map_err(|e| anyhow::anyhow!("policy.time_zone: {e}"))?,
                count_users: self.identity.user_claim.is_some(),
            },
            project_header: self
                .policy
                .project_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
        })
    }
}

/// A figment error as a person needs it: where the bad value is (file and line, or the
/// environment variable) and what is wrong, without figment's profile prefix (`default.`).
fn describe_config_error(error: figment::Error, file: Option<&Path>) -> anyhow::Error {
    let problems: Vec<String> = error
        .into_iter()
        .map(|e| {
            let path = &e.path;
            let what = if e.path.is_empty() {
                e.kind.to_string()
            } else {
                format!("{}: {}", e.path.join("."), e.kind)
            };
            let source = e.metadata.as_ref().and_then(|m| m.source.as_ref());
            let from_env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            match (source, file) {
                (Some(figment::Source::File(_)), Some(file)) => {
                    let text = std::fs::read_to_string(file).unwrap_or_default();
                    match toml_lines_of(&text, path).as_slice() {
                        [] => format!("{}: {what}", file.display()),
                        [line] => format!("{}:{line}: {what}", file.display()),
                        lines => {
                            let lines: Vec<String> = lines.iter().map(u32::to_string).collect();
                            format!("{} (lines {}): {what}", file.display(), lines.join(", "))
                        }
                    }
                }
                _ if from_env => format!("TOLLGATE_{}: {what}", path.join("__").to_uppercase()),
                _ => what,
            }
        })
        .collect();
    anyhow::anyhow!("invalid configuration: {}", problems.join("; "))
}

/// Line numbers (1-based) of the TOML lines that set `path` (`["server", "http_listen"]`),
/// or of the `[table]` headers that start it when no line sets it. A small scanner, not a TOML
/// parser: enough to point at the line of a bad value; an array of tables (`[[teams]]`) may
/// give several lines.
fn toml_lines_of(text: &str, path: &[String]) -> Vec<u32> {
    fn segments(key: &str) -> Vec<String> {
        key.split('.')
            .map(|s| s.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
            .collect()
    }
    // Array positions (`teams.1.rpm`) have no name in the file.
    let path: Vec<String> = path
        .iter()
        .filter(|s| s.parse::<usize>().is_err())
        .cloned()
        .collect();
    let mut table: Vec<String> = Vec::new();
    let (mut settings, mut headers) = (Vec::new(), Vec::new());
    for (number, line) in (1u32..).zip(text.lines()) {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            if let Some(end) = header.find(']') {
                table = segments(&header[..end]);
                if table == path {
                    headers.push(number);
                }
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let bare_key = key
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.\"' ".contains(c));
        if line.starts_with('#') || key.trim().is_empty() || !bare_key {
            continue;
        }
        let mut full = table.clone();
        full.extend(segments(key));
        // A key whose value holds the bad one (an inline table) counts as its line too.
        if path.starts_with(&full) {
            settings.push((full.len(), number));
        }
    }
    match settings.iter().map(|&(len, _)| len).max() {
        Some(longest) => settings
            .into_iter()
            .filter(|&(len, _)| len == longest)
            .map(|(_, number)| number)
            .collect(),
        None => headers,
    }
}

/// Environment variables as text: a value figment would read as a number or a boolean stays the
/// string it was written as, so that a string setting accepts `3`; number and boolean settings
/// parse it back (`extract_lossy`).
struct EnvText(Env);

impl Provider for EnvText {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> figment::Result<Map<Profile, Dict>> {
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let parsed: Value = raw
                .parse()
                .expect("parsing an environment value is infallible");
            let value = match parsed {
                // As written: `3.10` is a version, not 3.1.
                Value::Num(tag, _) | Value::Bool(tag, _) | Value::Char(tag, _) => {
                    Value::String(tag, raw.trim().to_owned())
                }
                structured => scalars_as_text(structured),
            };
            insert_at(&mut dict, key.as_str(), value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Numbers and booleans inside an array or table written in a variable, as text.
fn scalars_as_text(value: Value) -> Value {
    match value {
        Value::Num(tag, _) | Value::Bool(tag, _) | Value::Char(tag, _) => {
            let text = serde_json::to_value(&value)
                .ok()
                .map(|v| match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                })
                .unwrap_or_default();
            Value::String(tag, text)
        }
        Value::Array(tag, items) => {
            Value::Array(tag, items.into_iter().map(scalars_as_text).collect())
        }
        Value::Dict(tag, dict) => Value::Dict(
            tag,
            dict.into_iter()
                .map(|(k, v)| (k, scalars_as_text(v)))
                .collect(),
        ),
        text_or_empty => text_or_empty,
    }
}

/// Puts `value` at the dotted `path` (`guardrail.bedrock.guardrail_version`) in `dict`, merging
/// with the tables other variables made.
fn insert_at(dict: &mut Dict, path: &str, value: Value) {
    match path.split_once('.') {
        None => merge_into(dict, path, value),
        Some((head, rest)) => {
            let child = dict
                .entry(head.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(child, Value::Dict(..)) {
                *child = Value::from(Dict::new());
            }
            if let Value::Dict(_, child) = child {
                insert_at(child, rest, value);
            }
        }
    }
}

/// Sets `key` (one segment: a model name may hold dots) to `value`, merging tables.
fn merge_into(dict: &mut Dict, key: &str, value: Value) {
    match (dict.get_mut(key), value) {
        (Some(Value::Dict(_, existing)), Value::Dict(_, new)) => {
            for (k, v) in new {
                merge_into(existing, &k, v);
            }
        }
        (_, value) => {
            dict.insert(key.to_owned(), value);
        }
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
    #[allow(clippy::result_large_err)] // figment's Jail signature
    fn scopes_and_periods_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let write = |text: &str| std::fs::write(&path, text).unwrap();
        write(
            r#"
            [policy]
            time_zone = "Europe/Berlin"
            project_header = "X-Tollgate-Project"
            [org]
            budget_usd = 10000
            tpm = 2000000
            [user_defaults]
            rpm = 30
            [[teams]]
            id = "platform"
            tier = "standard"
            budget_usd = 500
            budget_period = { every = "month", anchor_day = 15 }
            [teams.user_defaults]
            budget_usd = 50
            budget_period = { every = "week" }
            [teams.users.alice]
            budget_usd = 100
            [teams.projects.search]
            rpm = 10
            "#,
        );
        figment::Jail::expect_with(|_| {
            let s = Settings::load(Some(&path)).unwrap();
            let engine = s.engine_settings().unwrap();
            assert_eq!(engine.project_header.as_deref(), Some("x-tollgate-project"));
            let team = &s.teams[0];
            assert_eq!(team.monthly_budget_usd, Some(500.0));
            assert_eq!(team.budget_period.as_ref().unwrap().anchor_day, Some(15));
            let chain = engine
                .scopes
                .chain(
                    &engine.tiers,
                    crate::policy::scopes::Member {
                        team,
                        user: Some("alice"),
                        project: Some("search"),
                    },
                )
                .unwrap();
            let kinds: Vec<_> = chain.iter().map(|r| r.scope.kind()).collect();
            assert_eq!(kinds, ["org", "team", "user", "project"]);
            assert_eq!(chain[0].tpm, Some(2_000_000));
            assert_eq!(chain[1].budget_micros, Some(500_000_000));
            assert_eq!(chain[2].budget_micros, Some(100_000_000));
            assert_eq!(chain[2].rpm, Some(30));
            assert_eq!(
                chain[2].budget_period.time_zone.iana_name(),
                Some("Europe/Berlin")
            );
            Ok(())
        });
        // Deny by default: an unknown key in a scope's limits is an error naming it.
        for (text, named) in [
            ("[org]\nbudget = 5\n", "budget"),
            (
                "[[teams]]\nid = \"a\"\ntier = \"sandbox\"\n[teams.users.bob]\nrmp = 5\n",
                "rmp",
            ),
            ("[policy]\ntime_zone = \"Mars/Olympus\"\n", "Mars/Olympus"),
            (
                "[user_defaults]\nbudget_period = { every = \"week\", anchor_day = 3 }\n",
                "anchor_day",
            ),
        ] {
            write(text);
            figment::Jail::expect_with(|_| {
                let error = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
                assert!(error.contains(named), "{text}: {error}");
                Ok(())
            });
        }
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
    fn a_team_guardrail_policy_is_read_and_its_bedrock_guardrail_needs_a_client() {
        let text = r#"
            [guardrail]
            mode = "observe"

            [[teams]]
            id = "legal"
            tier = "standard"
            guardrail = { mode = "enforce" }

            [[teams]]
            id = "research"
            tier = "standard"
            guardrail = { bedrock = { guardrail_id = "gr-research", guardrail_version = "2" } }
        "#;
        let mut s: Settings = toml::from_str(text).unwrap();
        let legal = s.teams[0].guardrail.as_ref().unwrap();
        assert_eq!(legal.mode, Some(GuardrailMode::Enforce));
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("needs [guardrail.bedrock]")
        );
        s.guardrail.bedrock = Some(
            toml::from_str(
                r#"guardrail_id = "gr-global"
guardrail_version = "1""#,
            )
            .unwrap(),
        );
        s.validate().unwrap();
        // Typos stay errors.
        let typo = text.replace("mode = \"enforce\"", "mdoe = \"enforce\"");
        assert!(toml::from_str::<Settings>(&typo).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail signature
    fn free_endpoints_come_from_the_file_or_the_environment_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[endpoints]\nfree = [\"POST /v1/files\"]\n").unwrap();
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(Some(&path)).unwrap();
            let endpoints = s.engine_settings().unwrap().endpoints;
            assert_eq!(
                endpoints.classify("POST", "/v1/files").treatment,
                crate::llm::Treatment::Free
            );
            jail.set_env("TOLLGATE_ENDPOINTS__FREE", "[\"POST /v1/embeddings\"]");
            let err = Settings::load(Some(&path)).unwrap_err();
            assert!(
                format!("{err:#}")
                    .contains("endpoints.free: \"POST /v1/embeddings\" is a metered model call"),
                "{err:#}"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn unknown_keys_are_errors_not_silently_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[server]\ngrpc_listn = \"127.0.0.1:1\"\n").unwrap();
        figment::Jail::expect_with(|_| {
            let e = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
            // The file and line of the unknown key, without figment's `default.` profile prefix.
            assert!(
                e.contains(&format!(
                    "{}:2: server.grpc_listn: unknown field",
                    path.display()
                )),
                "{e}"
            );
            assert!(e.contains("`grpc_listn`"), "{e}");
            assert!(!e.contains("default."), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn errors_name_the_file_and_line_or_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        let toml = "# comment\n[server]\ngrpc_listen = \"127.0.0.1:1\"\n\n[policy]\n\
                    admission_timeout_ms = \"soon\"\n";
        std::fs::write(&path, toml).unwrap();
        figment::Jail::expect_with(|jail| {
            let e = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
            assert!(
                e.contains(&format!(
                    "{}:6: policy.admission_timeout_ms: invalid type",
                    path.display()
                )),
                "{e}"
            );
            std::fs::write(&path, "[server]\n").unwrap();
            jail.set_env("TOLLGATE_POLICY__ADMISSION_TIMEOUT_MS", "soon");
            let e = format!("{:#}", Settings::load(Some(&path)).unwrap_err());
            assert!(
                e.contains("TOLLGATE_POLICY__ADMISSION_TIMEOUT_MS: policy.admission_timeout_ms"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn toml_lines_point_at_the_setting() {
        let text = "[server]\nhttp_listen = 1\n[[teams]]\nid = \"a\"\nrpm = 5\n\
                    model_caps = { \"gpt-4o\" = 0.001 }\n[[teams]]\nid = \"b\"\nrpm = 6\n";
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(toml_lines_of(text, &path(&["server", "http_listen"])), [2]);
        assert_eq!(toml_lines_of(text, &path(&["server"])), [1]);
        assert_eq!(toml_lines_of(text, &path(&["teams", "1", "rpm"])), [5, 9]);
        assert_eq!(
            toml_lines_of(text, &path(&["teams", "model_caps", "gpt-4o"])),
            [6]
        );
        assert_eq!(
            toml_lines_of(text, &path(&["log", "level"])),
            Vec::<u32>::new()
        );
    }

    /// Settings loaded with these environment variables (and no file).
    #[allow(clippy::result_large_err)] // figment's Jail signature
    fn loaded_with(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let mut loaded = None;
        figment::Jail::expect_with(|jail| {
            for (name, value) in vars {
                jail.set_env(name, value);
            }
            loaded = Some(Settings::load(None));
            Ok(())
        });
        loaded.expect("the jail ran")
    }

    #[test]
    fn string_settings_accept_environment_values_that_look_like_numbers() {
        let s = loaded_with(&[
            ("TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_ID", "1234567890"),
            ("TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_VERSION", "3"),
            ("TOLLGATE_STORE__DYNAMODB__TABLE", "12345"),
            ("TOLLGATE_IDENTITY__ISSUER", "3.10"),
            ("TOLLGATE_WEBHOOK__SECRET", "true"),
            ("TOLLGATE_LOG__LEVEL", "0"),
        ])
        .unwrap();
        let bedrock = s.guardrail.bedrock.as_ref().unwrap();
        assert_eq!(bedrock.guardrail_id, "1234567890");
        assert_eq!(bedrock.guardrail_version, "3");
        assert_eq!(s.store.dynamodb.table, "12345");
        assert_eq!(s.identity.issuer.as_deref(), Some("3.10"), "as written");
        assert_eq!(s.webhook.secret.as_deref(), Some("true"));
        assert_eq!(s.log.level, "0");
    }

    #[test]
    fn number_boolean_and_list_settings_still_read_from_the_environment() {
        let s = loaded_with(&[
            ("TOLLGATE_IDENTITY__LEEWAY_SECONDS", "7"),
            ("TOLLGATE_IDENTITY__TRUST_UPSTREAM", "true"),
            ("TOLLGATE_BUDGETS__WARN_AT_PERCENT", "[50, 80]"),
            ("TOLLGATE_BUDGETS__RESERVE", "1"),
            ("TOLLGATE_SERVER__MAX_REQUEST_BODY_BYTES", " 4096 "),
            ("TOLLGATE_PRICING__DEFAULT_PRICE", "{input=2.5, output=10}"),
            ("TOLLGATE_PRICING__MODELS__MY-MODEL__INPUT", "1"),
            ("TOLLGATE_PRICING__MODELS__MY-MODEL__OUTPUT", "2.25"),
        ])
        .unwrap();
        assert_eq!(s.identity.leeway_seconds, 7);
        assert!(s.identity.trust_upstream);
        assert_eq!(s.budgets.warn_at_percent, vec![50, 80]);
        assert!(s.budgets.reserve);
        assert_eq!(s.server.max_request_body_bytes, 4096);
        let default = s.pricing.default_price.unwrap();
        assert_eq!((default.input, default.output), (2.5, 10.0));
        let mine = &s.pricing.models["my-model"];
        assert_eq!((mine.input, mine.output), (1.0, 2.25));
        let e = loaded_with(&[("TOLLGATE_IDENTITY__LEEWAY_SECONDS", "soon")]).unwrap_err();
        // The variable is named as it was set.
        let said = format!("{e:#}");
        assert!(said.contains("\"soon\", expected u64"), "{said}");
        assert!(said.contains("TOLLGATE_IDENTITY__LEEWAY_SECONDS"), "{said}");
    }

    #[test]
    fn the_commit_delay_is_bounded() {
        let s = loaded_with(&[("TOLLGATE_STORE__COMMIT_DELAY_MS", "0")]).unwrap();
        assert_eq!(s.store.commit_delay(), Duration::ZERO);
        assert_eq!(
            loaded_with(&[]).unwrap().store.commit_delay(),
            Duration::from_millis(2)
        );
        loaded_with(&[("TOLLGATE_STORE__COMMIT_DELAY_MS", "50")]).unwrap();
        let said = format!(
            "{:#}",
            loaded_with(&[("TOLLGATE_STORE__COMMIT_DELAY_MS", "51")]).unwrap_err()
        );
        assert!(said.contains("store.commit_delay_ms: 51"), "{said}");
        assert!(loaded_with(&[("TOLLGATE_STORE__COMMIT_DELAY_MS", "-1")]).is_err());
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail signature
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
