//! Token and spend debits from agentgateway access logs, as a CloudWatch Logs subscription
//! target. A batch whose debits cannot be written fails, so Lambda retries it (and then sends it
//! to the function's on-failure destination); debits carry the request's id, so a retried batch
//! charges each record once.

use aws_lambda_events::cloudwatch_logs::LogsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::{Value, json};
use tollgate::accesslog::{LogLine, Recorder};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let boot = tollgate_lambda::boot().await?;
    let recorder = Recorder {
        engine: boot.engine,
        auth: boot.auth,
    };
    let recorder = &recorder;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<LogsEvent>| async move { record(recorder, event.payload).await },
    ))
    .await
}

async fn record(recorder: &Recorder, event: LogsEvent) -> Result<Value, lambda_runtime::Error> {
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
    Ok(serde_json::to_value(report)?)
}
