//! Each Lambda function's handler fed the events AWS sends it (tests/events/: an ALB target-group
//! request, an API Gateway HTTP API request, a Function URL request with a base64 body, and a
//! CloudWatch Logs subscription event, gzip+base64), against DynamoDB Local, with tokens signed by
//! the dev key and verified against its JWKS file.

#[path = "../../tests/support/dynamodb_local.rs"]
mod dynamodb_local;

use std::io::Write;
use std::path::PathBuf;

use aws_lambda_events::cloudwatch_logs::LogsEvent;
use base64::Engine as _;
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use tower::ServiceExt;

use dynamodb_local::{DynamoDbLocal, dynamo_settings, dynamo_store, start_dynamodb_local};
use tollgate::accesslog::Recorder;
use tollgate::config::{Settings, StoreBackend};
use tollgate::identity::{ADMIN_SCOPE, INVOKE_SCOPE};
use tollgate::policy::{Team, Tier, calendar};
use tollgate::store::{CounterKey, Store};
use tollgate_lambda::{Boot, admin_app, boot_with, record_logs, webhook_app};

const ISSUER: &str = "https://tollgate.local/dev";
const SECRET: &str = "webhook-secret";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn token(scope: &str, exp: u64) -> String {
    let claims = json!({
        "iss": ISSUER, "exp": exp, "client_id": "agent", "scope": scope, "token_use": "access",
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("dev-1".into());
    let key = std::fs::read(repo().join("dev/keys/dev-private.pem")).unwrap();
    encode(&header, &claims, &EncodingKey::from_rsa_pem(&key).unwrap()).unwrap()
}

/// A fixture with its placeholders filled in.
fn event(name: &str, token: &str) -> String {
    std::fs::read_to_string(repo().join("tests/events").join(name))
        .unwrap()
        .replace("__TOKEN__", token)
        .replace("__SECRET__", SECRET)
        .replace("__TEAM__", "search")
}

async fn boot(local: &DynamoDbLocal, table: &str) -> Boot {
    boot_feeding(local, table, None).await
}

/// [`boot`], with the usage feed written to `feed`.
async fn boot_feeding(local: &DynamoDbLocal, table: &str, feed: Option<&std::path::Path>) -> Boot {
    let store = dynamo_store(local, table).await;
    store
        .put_team(&Team {
            client_ids: vec!["agent".into()],
            rpm: Some(2),
            ..Team::new("search", Tier::Standard)
        })
        .await
        .unwrap();
    let mut settings = Settings::default();
    settings.store.backend = StoreBackend::Dynamodb;
    settings.store.dynamodb = dynamo_settings(local, table);
    settings.identity.jwks_file = Some(repo().join("dev/keys/jwks.json"));
    settings.identity.issuer = Some(ISSUER.into());
    settings.webhook.secret = Some(SECRET.into());
    // Three DynamoDB Locals warming up on two cores: the first calls are slow.
    settings.policy.admission_timeout_ms = 10_000;
    settings.usage_feed.path = feed.map(|p| p.display().to_string());
    let boot = boot_with(settings).await.unwrap();
    // A function instance can be frozen or reaped holding a slice: per request by default.
    assert!(boot.engine.leases().is_none());
    boot
}

/// Sends an API Gateway / ALB / Function URL event through an app as `lambda_http` does.
async fn invoke(app: &axum::Router, event: &str) -> (u16, Value) {
    let request = lambda_http::request::from_str(event).expect("a Lambda HTTP event");
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn budget_enforcement_answers_alb_events_with_webhook_actions() {
    let local = start_dynamodb_local().await;
    let app = webhook_app(boot(&local, "webhook").await).await.unwrap();
    let invoke_token = token(INVOKE_SCOPE, get_current_timestamp() + 600);
    let request = event("alb-webhook-request.json", &invoke_token);

    for _ in 0..2 {
        let (status, reply) = invoke(&app, &request).await;
        assert_eq!(status, 200);
        assert_eq!(
            reply,
            json!({"action": {"reason": "admitted for team search"}})
        );
    }
    // rpm = 2, counted in DynamoDB: the third is refused.
    let (_, reply) = invoke(&app, &request).await;
    assert_eq!(reply["action"]["status_code"], 429, "{reply}");
    let body: Value = serde_json::from_str(reply["action"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rpm_limit_exceeded");

    let without_secret = request.replace(SECRET, "wrong");
    let (_, reply) = invoke(&app, &without_secret).await;
    assert_eq!(reply["action"]["status_code"], 401, "{reply}");

    let (status, reply) = invoke(&app, &event("alb-webhook-response.json", &invoke_token)).await;
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"action": {"reason": "answer allowed"}}));
}

#[tokio::test]
async fn admin_api_answers_api_gateway_and_function_url_events_with_the_admin_scope_only() {
    let local = start_dynamodb_local().await;
    let boot = boot(&local, "admin").await;
    let store = boot.engine.store().clone();
    let app = admin_app(boot).await;
    let admin_token = token(ADMIN_SCOPE, get_current_timestamp() + 600);

    let (status, teams) = invoke(&app, &event("apigwv2-admin-get-teams.json", &admin_token)).await;
    assert_eq!(status, 200, "{teams}");
    let ids: Vec<&str> = teams["teams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["search"]);

    let invoke_only = token(INVOKE_SCOPE, get_current_timestamp() + 600);
    let (status, _) = invoke(&app, &event("apigwv2-admin-get-teams.json", &invoke_only)).await;
    assert_eq!(status, 403, "an invoke token is not an admin token");

    let put = event("function-url-admin-put-budget.json", &admin_token);
    let (status, team) = invoke(&app, &put).await;
    assert_eq!(status, 200, "{team}");
    assert_eq!(team["monthly_budget_usd"], 50.0);
    let stored = store.team("search").await.unwrap().unwrap();
    assert_eq!(stored.monthly_budget_usd, Some(50.0));
}

/// The subscription event for `payload`, encoded as CloudWatch Logs sends it.
fn logs_event(payload: &str) -> LogsEvent {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(payload.as_bytes()).unwrap();
    let data = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    serde_json::from_str(&json!({"awslogs": {"data": data}}).to_string()).unwrap()
}

async fn counter(store: &dyn Store, counter: &str) -> u64 {
    let key = CounterKey::parse("search", counter, 0).expect("a counter tollgate writes");
    store.read_counters(&[&key]).await.unwrap()[0]
}

/// The feed's lines, once there are `count` (written in the background).
async fn feed_lines(path: &std::path::Path, count: usize) -> Vec<Value> {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= count {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("fewer than {count} usage feed lines in {}", path.display());
}

#[tokio::test]
async fn usage_recorder_charges_access_log_records_once_and_reports_the_unreadable() {
    let local = start_dynamodb_local().await;
    let feed =
        std::env::temp_dir().join(format!("tollgate-usage-feed-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&feed);
    let boot = boot_feeding(&local, "usage", Some(&feed)).await;
    let store = boot.engine.store().clone();
    let recorder = Recorder {
        engine: boot.engine,
        auth: boot.auth,
    };
    // The token expired long before the logs were processed: still the caller.
    let expired = token(INVOKE_SCOPE, get_current_timestamp() - 86_400);
    // Logged now: a past day's token counter has expired, and DynamoDB's TTL may already have
    // removed it.
    let now = get_current_timestamp();
    let (today, month) = (calendar::day_key(now), calendar::month_key(now));
    let mut payload: Value =
        serde_json::from_str(&event("cloudwatch-logs-usage.payload.json", &expired)).unwrap();
    for e in payload["logEvents"].as_array_mut().unwrap() {
        e["timestamp"] = json!(now * 1000);
    }
    let payload = payload.to_string();

    let report = record_logs(&recorder, logs_event(&payload)).await.unwrap();
    assert_eq!(report["recorded"], 2, "{report}");
    assert_eq!(report["failed"].as_array().unwrap().len(), 1, "{report}");
    let failed = &report["failed"][0];
    assert_eq!(
        failed["event_id"],
        "39585521883011222412346791405624431002745418238541791232"
    );
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("not a JSON log record")
    );

    // Cache-inclusive input counted once.
    let tokens = counter(store.as_ref(), &format!("tokens#{today}")).await;
    assert_eq!(tokens, 1234 + 56 + 6454 + 187);
    let spend = counter(store.as_ref(), &format!("spend#{month}")).await;
    assert!(spend > 0);
    assert_eq!(report["tokens"], tokens);
    assert_eq!(report["cost_micros"], spend);
    // The usage feed has a line per charged record, adding up to the same.
    let lines = feed_lines(&feed, 2).await;
    assert!(
        lines
            .iter()
            .all(|l| l["source"] == "access_log" && l["scopes"][0]["id"] == "search")
    );
    let sum = |field: &str| -> u64 {
        lines
            .iter()
            .map(|l| l.pointer(field).and_then(Value::as_u64).unwrap())
            .sum()
    };
    assert_eq!(sum("/tokens/total"), tokens);
    assert_eq!(sum("/cost_micros"), spend);

    // CloudWatch (or Lambda's retry) delivers the same batch again: charged once.
    let again = record_logs(&recorder, logs_event(&payload)).await.unwrap();
    assert_eq!(again["recorded"], 2);
    assert_eq!(
        counter(store.as_ref(), &format!("tokens#{today}")).await,
        tokens
    );
    assert_eq!(
        counter(store.as_ref(), &format!("spend#{month}")).await,
        spend
    );

    // The retried batch is written again, with the same debit ids to deduplicate on.
    let lines = feed_lines(&feed, 4).await;
    assert_eq!(lines[0]["debit_id"], lines[2]["debit_id"]);
    assert_eq!(lines[1]["debit_id"], lines[3]["debit_id"]);
    let _ = std::fs::remove_file(&feed);

    let control = event("cloudwatch-logs-control.payload.json", &expired);
    let reply = record_logs(&recorder, logs_event(&control)).await.unwrap();
    assert_eq!(reply, json!({"control_message": true}));

    // The fixture's full event decodes the same way the runtime decodes it.
    let raw: LogsEvent =
        serde_json::from_str(&event("cloudwatch-logs-usage.json", &expired)).unwrap();
    assert_eq!(raw.aws_logs.data.log_events.len(), 3);
}
