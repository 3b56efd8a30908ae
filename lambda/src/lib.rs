//! What tollgate's Lambda functions are: the sidecar's own handlers, built over DynamoDB from
//! settings in the environment. Each function builds only what its requests use, so a cold start
//! does no more than that.
//!
//! Settings are read as `tollgate serve` reads them: `TOLLGATE_<SECTION>__<KEY>` variables, and
//! the TOML file named by `TOLLGATE_CONFIG` if set (e.g. one packaged with the function).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use aws_lambda_events::cloudwatch_logs::LogsEvent;
use serde_json::{Value, json};
use tollgate::accesslog::{LogLine, Recorder};
use tollgate::admin::Admin;
use tollgate::admin::http::AdminState;
use tollgate::config::{LogFormat, Settings, StoreBackend};
use tollgate::engine::{Engine, SystemClock};
use tollgate::identity::Authenticator;
use tollgate::store::StoreError;

pub struct Boot {
    pub settings: Settings,
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
}

/// Settings from the environment, JSON logs, then [`boot_with`].
pub async fn boot() -> anyhow::Result<Boot> {
    let config = std::env::var_os("TOLLGATE_CONFIG").map(PathBuf::from);
    let mut settings = Settings::load(config.as_deref())?;
    // CloudWatch keeps each line as one event: JSON lines stay searchable with Logs Insights.
    settings.log.format = LogFormat::Json;
    tollgate::telemetry::init_logging(&settings.log);
    boot_with(settings).await
}

/// The engine over DynamoDB, and identity.
pub async fn boot_with(mut settings: Settings) -> anyhow::Result<Boot> {
    if settings.store.backend != StoreBackend::Dynamodb {
        // A function instance's memory or /tmp is not shared with any other instance.
        bail!("tollgate's Lambda functions need TOLLGATE_STORE__BACKEND=dynamodb");
    }
    // /tmp is a function's only writable directory (the alert outbox lasts as long as the
    // function instance: docs/alerts.md).
    for path in [
        &mut settings.alerts.outbox_path,
        &mut settings.alerts.dead_letter_path,
    ] {
        if path.is_relative() {
            *path = PathBuf::from("/tmp").join(&*path);
        }
    }
    // No spool: these functions never queue debits. The usage recorder writes its own and fails
    // its event when it cannot, so that Lambda retries it.
    // Per request unless configured otherwise: a frozen or reaped function instance could not
    // hand back what its leases hold.
    let mut engine_settings = tollgate::server::engine_settings(&settings)?;
    if settings.store.dynamodb.admission.is_none() {
        engine_settings.leases = None;
    }
    let store = Arc::new(
        tollgate::server::dynamo_store(&settings.store.dynamodb, engine_settings.leases.is_some())
            .await,
    );
    let engine = Arc::new(Engine::new(
        store,
        None,
        engine_settings,
        Arc::new(SystemClock),
    ));
    let auth = Arc::new(
        tollgate::server::authenticator(&settings)
            .await
            .context("identity settings")?,
    );
    Ok(Boot {
        settings,
        engine,
        auth,
    })
}

/// `budget-enforcement`: the promptGuard webhook, `POST /request` and `POST /response`.
pub async fn webhook_app(boot: Boot) -> anyhow::Result<axum::Router> {
    let guardrails = tollgate::server::guardrails(&boot.settings).await?;
    let state = tollgate::server::webhook_state(&boot.settings, boot.engine, boot.auth, guardrails);
    Ok(tollgate::webhook::http::router(state))
}

/// `admin-api`: the admin API. Every call still needs a token with the admin scope, whatever the
/// front door (API Gateway, Function URL) checked.
pub async fn admin_app(boot: Boot) -> axum::Router {
    let state = Arc::new(AdminState {
        admin: Admin::new(boot.engine),
        // `POST /admin/guardrail/test` answers 503 without a backend rather than failing the boot.
        guardrail: tollgate::server::guardrail_backend(&boot.settings)
            .await
            .ok(),
        auth: Some(boot.auth),
    });
    tollgate::admin::http::router(state)
}

/// `usage-recorder`: one CloudWatch Logs subscription event (already un-base64'd and gunzipped
/// by its deserializer). A store failure fails the event so that Lambda retries it.
pub async fn record_logs(recorder: &Recorder, event: LogsEvent) -> Result<Value, StoreError> {
    let data = event.aws_logs.data;
    if data.message_type == "CONTROL_MESSAGE" {
        // CloudWatch Logs checking that the destination is reachable.
        return Ok(json!({"control_message": true}));
    }
    let lines: Vec<LogLine> = data
        .log_events
        .into_iter()
        .map(|e| LogLine {
            event_id: e.id,
            timestamp_ms: e.timestamp.max(0) as u64,
            message: e.message,
        })
        .collect();
    let report = recorder.record(&lines).await?;
    tracing::info!(
        log_group = %data.log_group,
        recorded = report.recorded,
        ignored = report.ignored,
        failed = report.failed.len(),
        tokens = report.tokens,
        cost_micros = report.cost_micros,
        "usage recorded"
    );
    Ok(serde_json::to_value(report).expect("a report serializes"))
}
