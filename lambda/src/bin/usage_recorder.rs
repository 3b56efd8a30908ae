//! Token and spend debits from agentgateway access logs, as a CloudWatch Logs subscription
//! target. A batch whose debits cannot be written fails, so Lambda retries it (and then sends it
//! to the function's on-failure destination); debits carry the request's id, so a retried batch
//! charges each record once.

use aws_lambda_events::cloudwatch_logs::LogsEvent;
use lambda_runtime::{LambdaEvent, service_fn};
use tollgate::accesslog::Recorder;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let boot = tollgate_lambda::boot().await?;
    let recorder = &Recorder {
        engine: boot.engine,
        auth: boot.auth,
    };
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<LogsEvent>| async move {
            tollgate_lambda::record_logs(recorder, event.payload)
                .await
                .map_err(lambda_runtime::Error::from)
        },
    ))
    .await
}
