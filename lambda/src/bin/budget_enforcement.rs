//! The agentgateway promptGuard webhook as a Lambda function, behind an ALB target group (or a
//! Function URL): the same `POST /request` and `POST /response` as the sidecar's.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let boot = tollgate_lambda::boot().await?;
    lambda_http::run(tollgate_lambda::webhook_app(boot).await?).await
}
