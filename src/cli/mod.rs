//! Command line: `serve`, `check` (container health probe), `admin` (the admin API) and
//! `dev-token` (local tokens).

pub mod admin;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::json;

use crate::config::Settings;
use crate::identity::INVOKE_SCOPE;

#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about = "Policy sidecar for LLM traffic")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the ext_proc gRPC server and the HTTP ops server.
    ///
    /// Defaults: gRPC (ext_proc, grpc.health.v1) on 127.0.0.1:50051, HTTP (admin API, /healthz,
    /// /readyz, /metrics) on 127.0.0.1:9090, the embedded store in ./tollgate.redb, store
    /// failures fail closed. Every setting has a default, so no file is needed to start; but
    /// with no configuration there are no teams and no JWKS, so every request is refused.
    /// `tollgate config` prints the effective settings; docs/configuration.md lists them.
    Serve {
        /// TOML configuration; `TOLLGATE_<SECTION>__<KEY>` environment variables override it.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Probe a running instance's /readyz; exit 0 when ready (for container health checks).
    Check {
        /// Base URL of the HTTP ops server; defaults to the configured `server.http_listen`.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
    },
    /// Manage teams, budgets and prices through the admin API (or the store, with --offline).
    Admin(admin::AdminArgs),
    /// Run a text through the configured guardrail and print its verdict and assessments.
    Guardrail {
        #[command(subcommand)]
        command: GuardrailCommand,
    },
    /// Print the effective configuration as JSON (defaults, file and environment merged).
    Config {
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Mint a Cognito-style access token signed with a local key (development and tests only).
    DevToken {
        /// RSA private key (PEM); `dev/keys/dev-private.pem` matches `dev/keys/jwks.json`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "dev-1")]
        kid: String,
        #[arg(long)]
        client_id: String,
        /// Space-separated scopes.
        #[arg(long, default_value = INVOKE_SCOPE)]
        scope: String,
        /// Value of the team claim, if any.
        #[arg(long)]
        team: Option<String>,
        #[arg(long, default_value = "custom:team")]
        team_claim: String,
        #[arg(long, default_value = "https://tollgate.local/dev")]
        issuer: String,
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum GuardrailCommand {
    /// `tollgate guardrail test "some text"`
    Test {
        text: String,
        /// Assess as a prompt (input) or a model response (output).
        #[arg(long, default_value = "input", value_parser = ["input", "output"])]
        source: String,
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Writes a command's answer to stdout. A reader that stopped reading (`tollgate ... | head`) is
/// not an error: Rust ignores SIGPIPE, so `println!` would panic with a backtrace instead.
pub fn print(answer: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{answer}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub async fn guardrail_test(
    text: String,
    source: &str,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let settings = Settings::load(config.as_deref())?;
    let backend = crate::server::guardrail_backend(&settings).await?;
    let source = if source == "output" {
        crate::guardrail::Source::Output
    } else {
        crate::guardrail::Source::Input
    };
    let report = crate::guardrail::test_report(backend.as_ref(), source, text).await;
    print(serde_json::to_string_pretty(&report)?)?;
    match report.get("error") {
        Some(e) => bail!("guardrail failed: {e}"),
        None => Ok(()),
    }
}

pub async fn check(
    url: Option<String>,
    config: Option<PathBuf>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let base = match url {
        Some(url) => url,
        None => format!(
            "http://{}",
            Settings::load(config.as_deref())?.server.http_listen
        ),
    };
    let url = format!("{}/readyz", base.trim_end_matches('/'));
    let response = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url}: {status} {body}");
    }
    print(body)
}

#[allow(clippy::too_many_arguments)]
pub fn dev_token(
    key: &std::path::Path,
    kid: &str,
    client_id: &str,
    scope: &str,
    team: Option<&str>,
    team_claim: &str,
    issuer: &str,
    ttl_seconds: u64,
) -> anyhow::Result<String> {
    let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let now = get_current_timestamp();
    let mut claims = json!({
        "iss": issuer, "iat": now, "exp": now + ttl_seconds,
        "client_id": client_id, "sub": client_id, "scope": scope, "token_use": "access",
    });
    if let Some(team) = team {
        claims[team_claim] = json!(team);
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    Ok(encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem)?)?)
}
