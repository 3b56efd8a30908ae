//! The Bedrock guardrail backend through the real `aws-sdk-bedrockruntime` client, against a local
//! server that speaks the ApplyGuardrail REST contract
//! (`POST /guardrail/{id}/version/{version}/apply`): the request the SDK sends, each verdict, and
//! throttling and timeouts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tollgate::guardrail::bedrock::{BedrockGuardrail, BedrockSettings};
use tollgate::guardrail::{Guardrail, GuardrailError, Source};

#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, Value)>,
}

type Shared = Arc<Mutex<Seen>>;

/// Answers by the first text: `email` -> anonymized, `ssn` -> blocked, `throttle` -> 429,
/// `slow` -> no answer for 3 s, anything else -> no intervention.
async fn apply(
    State(seen): State<Shared>,
    Path((id, version)): Path<(String, String)>,
    _: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    seen.lock()
        .unwrap()
        .requests
        .push((id, version, body.clone()));
    let text = body["content"][0]["text"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let usage = json!({"topicPolicyUnits": 0, "contentPolicyUnits": 0, "wordPolicyUnits": 1,
        "sensitiveInformationPolicyUnits": 1, "sensitiveInformationPolicyFreeUnits": 0, "contextualGroundingPolicyUnits": 0});
    if text.contains("throttle") {
        let mut headers = HeaderMap::new();
        headers.insert("x-amzn-errortype", "ThrottlingException".parse().unwrap());
        return (
            StatusCode::TOO_MANY_REQUESTS,
            headers,
            Json(json!({"message": "Rate exceeded"})),
        )
            .into_response();
    }
    if text.contains("slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let answer = if text.contains("email") {
        json!({"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "write to {EMAIL}"}], "usage": usage,
               "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [
                   {"type": "EMAIL", "match": "a@b.example", "action": "ANONYMIZED", "detected": true}], "regexes": []}}]})
    } else if text.contains("ssn") {
        json!({"action": "GUARDRAIL_INTERVENED", "outputs": [{"text": "Sorry, I can't share that."}], "usage": usage,
               "assessments": [{"sensitiveInformationPolicy": {"piiEntities": [
                   {"type": "US_SOCIAL_SECURITY_NUMBER", "match": "123-45-6789", "action": "BLOCKED", "detected": true}]},
                   "wordPolicy": {"customWords": [{"match": "falcon", "action": "BLOCKED"}], "managedWordLists": []}}]})
    } else {
        json!({"action": "NONE", "outputs": [], "assessments": [{}], "usage": usage})
    };
    (StatusCode::OK, Json(answer)).into_response()
}

async fn start(timeout_ms: u64) -> (BedrockGuardrail, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/guardrail/{id}/version/{version}/apply", post(apply))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // SAFETY: every test sets the same static dummy credentials.
    #[allow(unsafe_code, reason = "set_var is unsafe in edition 2024; see SAFETY")]
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "local");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "local");
    }
    let guardrail = BedrockGuardrail::connect(&BedrockSettings {
        guardrail_id: "gr-123".into(),
        guardrail_version: "7".into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(format!("http://{addr}")),
        timeout_ms,
    })
    .await;
    (guardrail, seen)
}

fn texts(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn the_sdk_sends_the_documented_request_and_a_clean_text_passes() {
    let (guardrail, seen) = start(2000).await;
    let verdict = guardrail
        .apply(Source::Input, &texts(&["hello there", "second block"]))
        .await
        .unwrap();
    assert!(!verdict.intervened() && !verdict.blocked());
    let (id, version, body) = seen.lock().unwrap().requests[0].clone();
    assert_eq!((id.as_str(), version.as_str()), ("gr-123", "7"));
    assert_eq!(body["source"], json!("INPUT"));
    assert_eq!(
        body["content"],
        json!([{"text": {"text": "hello there"}}, {"text": {"text": "second block"}}])
    );
}

#[tokio::test]
async fn anonymized_and_blocked_verdicts_come_back_in_the_shared_shape() {
    let (guardrail, seen) = start(2000).await;
    let masked = guardrail
        .apply(Source::Input, &texts(&["write to email a@b.example"]))
        .await
        .unwrap();
    assert!(masked.intervened() && masked.anonymized_only() && !masked.blocked());
    assert_eq!(masked.outputs[0].text, "write to {EMAIL}");
    assert!(
        masked.policies_fired().iter().any(|p| p.contains("EMAIL")),
        "{:?}",
        masked.policies_fired()
    );

    let blocked = guardrail
        .apply(Source::Output, &texts(&["the ssn is 123-45-6789"]))
        .await
        .unwrap();
    assert!(blocked.blocked());
    assert_eq!(blocked.outputs[0].text, "Sorry, I can't share that.");
    assert_eq!(
        seen.lock().unwrap().requests[1].2["source"],
        json!("OUTPUT")
    );
    assert!(blocked.text_units() > 0);
}

#[tokio::test]
async fn throttling_is_retried_then_reported() {
    let (guardrail, seen) = start(5000).await;
    let err = guardrail
        .apply(Source::Input, &texts(&["throttle me"]))
        .await
        .unwrap_err();
    assert!(matches!(err, GuardrailError::Throttled(_)), "{err:?}");
    assert_eq!(
        seen.lock().unwrap().requests.len(),
        3,
        "the SDK's standard retry: 3 attempts"
    );
}

#[tokio::test]
async fn a_slow_guardrail_times_out_within_the_configured_deadline() {
    let (guardrail, _) = start(300).await;
    let started = std::time::Instant::now();
    let err = guardrail
        .apply(Source::Input, &texts(&["slow please"]))
        .await
        .unwrap_err();
    assert!(matches!(err, GuardrailError::Timeout), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_team_naming_its_own_guardrail_gets_it_on_the_same_client() {
    use tollgate::guardrail::policy::{BedrockGuardrailRef, TeamGuardrail, TeamPolicies};
    use tollgate::guardrail::service::{Mode, Outcome};

    let (global, seen) = start(2000).await;
    let client = Arc::new(global.with_guardrail("gr-123".into(), "7".into()));
    let teams = TeamPolicies::new(Arc::new(global), Mode::Observe, true, Some(client));
    let own = TeamGuardrail {
        mode: Some(Mode::Enforce),
        bedrock: Some(BedrockGuardrailRef {
            guardrail_id: "gr-team".into(),
            guardrail_version: "3".into(),
        }),
    };
    let service = teams.service(&own, None).unwrap();
    assert_eq!(service.mode(), Mode::Enforce);
    let outcome = service.check(Source::Input, &texts(&["my ssn"])).await;
    assert!(matches!(outcome, Outcome::Block { .. }), "{outcome:?}");
    let (id, version, _) = seen.lock().unwrap().requests[0].clone();
    assert_eq!((id.as_str(), version.as_str()), ("gr-team", "3"));
}
