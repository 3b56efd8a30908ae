//! The admin API as a Lambda function, behind API Gateway (HTTP API) or a Function URL.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let boot = tollgate_lambda::boot().await?;
    lambda_http::run(tollgate_lambda::admin_app(boot).await).await
}
