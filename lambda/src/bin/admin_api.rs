//! The admin API as a Lambda function, behind API Gateway (HTTP API) or a Function URL. Every
//! call still needs a bearer token with the admin scope, whatever the front door checked.

use std::sync::Arc;

use tollgate::admin::Admin;
use tollgate::admin::http::{AdminState, router};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let boot = tollgate_lambda::boot().await?;
    let state = Arc::new(AdminState {
        admin: Admin::new(boot.engine),
        // `POST /admin/guardrail/test` answers 503 without a backend rather than failing the boot.
        guardrail: tollgate::server::guardrail_backend(&boot.settings)
            .await
            .ok(),
        auth: Some(boot.auth),
    });
    lambda_http::run(router(state)).await
}
