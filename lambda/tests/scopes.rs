//! The webhook Lambda function checks every scope a request belongs to, on DynamoDB Local: a user
//! inside the team (named by `identity.user_claim`) has a window of their own, and the refusal
//! names that scope.

#[path = "../../tests/support/dynamodb_local.rs"]
mod dynamodb_local;

use std::path::PathBuf;

use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use tower::ServiceExt;

use dynamodb_local::{dynamo_settings, dynamo_store, start_dynamodb_local};
use tollgate::config::{Settings, StoreBackend};
use tollgate::identity::INVOKE_SCOPE;
use tollgate::policy::{Team, Tier};
use tollgate::store::{Counted, CounterKey, Scope, Store};
use tollgate_lambda::{boot_with, webhook_app};

const ISSUER: &str = "https://tollgate.local/dev";
const SECRET: &str = "webhook-secret";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn token() -> String {
    let claims = json!({
        "iss": ISSUER, "exp": get_current_timestamp() + 600, "client_id": "agent",
        "scope": INVOKE_SCOPE, "token_use": "access",
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("dev-1".into());
    let key = std::fs::read(repo().join("dev/keys/dev-private.pem")).unwrap();
    encode(&header, &claims, &EncodingKey::from_rsa_pem(&key).unwrap()).unwrap()
}

#[tokio::test]
async fn a_users_window_refuses_through_the_webhook_function() {
    let local = start_dynamodb_local().await;
    let store = dynamo_store(&local, "scopes").await;
    store
        .put_team(&Team {
            client_ids: vec!["agent".into()],
            rpm: Some(5),
            ..Team::new("search", Tier::Standard)
        })
        .await
        .unwrap();
    let mut settings = Settings::default();
    settings.store.backend = StoreBackend::Dynamodb;
    settings.store.dynamodb = dynamo_settings(&local, "scopes");
    settings.identity.jwks_file = Some(repo().join("dev/keys/jwks.json"));
    settings.identity.issuer = Some(ISSUER.into());
    settings.identity.user_claim = Some("client_id".into());
    settings.user_defaults.rpm = Some(1);
    settings.webhook.secret = Some(SECRET.into());
    settings.policy.admission_timeout_ms = 10_000;
    let app = webhook_app(boot_with(settings).await.unwrap())
        .await
        .unwrap();
    let request = std::fs::read_to_string(repo().join("tests/events/alb-webhook-request.json"))
        .unwrap()
        .replace("__TOKEN__", &token())
        .replace("__SECRET__", SECRET)
        .replace("__TEAM__", "search");
    let invoke = async || {
        let request = lambda_http::request::from_str(&request).expect("a Lambda HTTP event");
        let response = app.clone().oneshot(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };

    let minute = get_current_timestamp() / 60;
    let first = invoke().await;
    assert_eq!(
        first,
        json!({"action": {"reason": "admitted for team search"}})
    );
    let refused = invoke().await;
    assert_eq!(refused["action"]["status_code"], 429, "{refused}");
    let body: Value = serde_json::from_str(refused["action"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rpm_limit_exceeded");
    assert_eq!(
        body["reason"],
        "user agent in team search: RPM limit exceeded: 1 request in the last 60 s, limit 1"
    );
    // The user's bucket is an item of its own. The team's counted both calls before the user's
    // window refused the second, then got that count back (a debit, applied in the background).
    let bucket = |scope: Scope| CounterKey::new(scope, Counted::Requests { minute });
    let keys = [
        bucket(Scope::User {
            team: "search".into(),
            user: "agent".into(),
        }),
        bucket(Scope::Team("search".into())),
    ];
    let mut values = Vec::new();
    for _ in 0..100 {
        values = store
            .read_counters(&keys.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        if values == [1, 1] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if get_current_timestamp() / 60 == minute {
        assert_eq!(values, vec![1, 1]);
    }
}
