//! The real `tollgate serve` process: gRPC health for the ext_proc service, the HTTP ops
//! endpoints and the webhook, `tollgate check`, and a clean exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serves_grpc_health_and_readiness_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [store]\nbackend = \"embedded\"\npath = \"{}\"\n",
            dir.path().join("s.redb").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("TOLLGATE_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut health = loop {
        if let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
                .unwrap()
                .connect()
                .await
        {
            break HealthClient::new(channel);
        }
        assert!(Instant::now() < deadline, "tollgate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for service in ["", "envoy.service.ext_proc.v3.ExternalProcessor"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    let check = |url: String| {
        Command::new(BIN)
            .args(["check", "--url", &url])
            .env_remove("TOLLGATE_CONFIG")
            .output()
            .unwrap()
    };
    let ready = check(format!("http://127.0.0.1:{http}"));
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    assert!(String::from_utf8_lossy(&ready.stdout).contains("\"ready\""));
    assert!(
        !check(format!("http://127.0.0.1:{}", free_port()))
            .status
            .success()
    );

    // The agentgateway webhook is served on the HTTP port: a call without a token is a reject
    // that agentgateway can read, not an HTTP error.
    let reply: serde_json::Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/request"))
        .body(r#"{"body":{"messages":[{"role":"user","content":"hi"}]}}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["action"]["status_code"], 401, "{reply}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tollgate did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

/// Deployments set settings from numbers (a Bedrock guardrail version, a table named by digits):
/// the binary must take them as the strings they are, and still read numbers as numbers.
#[test]
fn numeric_environment_values_reach_string_settings() {
    let output = Command::new(BIN)
        .arg("config")
        .env_remove("TOLLGATE_CONFIG")
        .env("TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_ID", "8675309")
        .env("TOLLGATE_GUARDRAIL__BEDROCK__GUARDRAIL_VERSION", "3")
        .env("TOLLGATE_STORE__DYNAMODB__TABLE", "12345")
        .env("TOLLGATE_IDENTITY__LEEWAY_SECONDS", "12")
        .env("TOLLGATE_BUDGETS__WARN_AT_PERCENT", "[50, 90]")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "tollgate config failed: {stderr}");
    let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(config["guardrail"]["bedrock"]["guardrail_id"], "8675309");
    assert_eq!(config["guardrail"]["bedrock"]["guardrail_version"], "3");
    assert_eq!(config["store"]["dynamodb"]["table"], "12345");
    assert_eq!(config["identity"]["leeway_seconds"], 12);
    assert_eq!(
        config["budgets"]["warn_at_percent"],
        serde_json::json!([50, 90])
    );
}
