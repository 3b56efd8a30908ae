//! Logs (tracing, text or JSON) and Prometheus metrics.

use std::io::IsTerminal as _;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

pub fn init_logging(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Colour only for a person at a terminal: a log redirected to a file or collected by a container
/// runtime must not carry escape codes. `NO_COLOR` (any value) turns it off, as everywhere.
fn colour_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Installs the global metrics recorder; `/metrics` renders from the handle.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &[
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 1.0,
            ],
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "tollgate_requests_total",
        "Admission decisions by decision and reason"
    );
    describe_histogram!(
        "tollgate_admission_seconds",
        "Time to decide admission (store round trips included)"
    );
    describe_counter!("tollgate_tokens_total", "Tokens charged, by team and API");
    describe_counter!(
        "tollgate_usage_estimated_total",
        "Responses charged by estimate (usage never arrived)"
    );
    describe_counter!(
        "tollgate_debits_total",
        "Debits applied to the store, or retried after a failure"
    );
    describe_counter!(
        "tollgate_debits_lost_total",
        "Debits that could not be queued (ledger stopped)"
    );
    describe_gauge!("tollgate_ledger_queued", "Debits waiting to be applied");
    describe_counter!(
        "tollgate_store_errors_total",
        "Store failures by backend and operation"
    );
    describe_counter!(
        "tollgate_fail_open_total",
        "Requests admitted without a decision because the store failed (fail_mode=open)"
    );
    describe_gauge!(
        "tollgate_extproc_streams_active",
        "ext_proc streams in progress"
    );
    describe_counter!(
        "tollgate_extproc_errors_total",
        "ext_proc streams ended with an error status"
    );
    describe_counter!("tollgate_jwks_refreshes_total", "JWKS fetches by result");
    describe_counter!(
        "tollgate_jwks_unavailable_refusals_total",
        "Tokens refused with 503: no signing keys could be fetched or were cached"
    );
    describe_counter!(
        "tollgate_spend_micros_total",
        "Micro-dollars charged, by team"
    );
    describe_counter!(
        "tollgate_budget_threshold_crossings_total",
        "First crossing of a budget warning threshold per team and month"
    );
    describe_counter!(
        "tollgate_alerts_total",
        "Threshold alerts by outcome (delivered, attempt_failed, dead_letter, claimed_elsewhere, ...)"
    );
    describe_counter!(
        "tollgate_usage_feed_lines_total",
        "Usage feed lines written or dropped (backlog, write_error), by outcome"
    );
    describe_counter!(
        "tollgate_budget_overruns_total",
        "Calls let through over budget (on_breach = warn)"
    );
    describe_counter!(
        "tollgate_unknown_model_total",
        "Calls for models without a price, by policy"
    );
    describe_gauge!(
        "tollgate_store_up",
        "1 while the store answers, 0 while it fails"
    );
    describe_gauge!(
        "tollgate_spool_pending",
        "Debits waiting in the spool for the store"
    );
    describe_counter!(
        "tollgate_store_stale_reads_total",
        "Reads answered from cached values because the store failed"
    );
    describe_counter!(
        "tollgate_dynamodb_calls_total",
        "DynamoDB calls, by operation"
    );
    describe_counter!(
        "tollgate_guardrail_verdicts_total",
        "Guardrail verdicts by source, verdict and mode"
    );
    describe_counter!(
        "tollgate_guardrail_cache_hits_total",
        "Texts not sent to the guardrail because they were assessed clean before"
    );
    describe_counter!(
        "tollgate_guardrail_text_units_total",
        "Guardrail text units billed, by backend and source"
    );
    describe_counter!(
        "tollgate_guardrail_errors_total",
        "Guardrail failures by source and kind"
    );
}
