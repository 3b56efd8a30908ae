//! The agentgateway promptGuard webhook as a Lambda function, behind an ALB target group (or a
//! Function URL): the same `POST /request` and `POST /response` as the sidecar's.

use tollgate::webhook::http::router;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let boot = tollgate_lambda::boot().await?;
    let guardrail = tollgate::server::guardrail_service(&boot.settings).await?;
    let state = tollgate::server::webhook_state(&boot.settings, boot.engine, boot.auth, guardrail);
    lambda_http::run(router(state)).await
}
