//! The promptGuard webhook over real HTTP, called with the exact bodies agentgateway sends
//! (`crates/agentgateway/src/llm/policy/webhook.rs`: `{"body":{"messages":[...]}}` to /request,
//! `{"body":{"choices":[...]}}` to /response), every reply read the way agentgateway reads it:
//! an untagged enum tried mask, then reject, then pass. A reply that parses as the wrong
//! variant (a reject missing `status_code` reads as a pass) fails the test.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate::config::WebhookSettings;
use tollgate::engine::{Engine, EngineSettings, SystemClock};
use tollgate::guardrail::apply::{Application, Guardrails};
use tollgate::guardrail::local::{LocalGuardrail, LocalGuardrailConfig};
use tollgate::guardrail::service::{GuardrailService, Mode};
use tollgate::identity::{Authenticator, INVOKE_SCOPE, Verification};
use tollgate::llm::texts::Part;
use tollgate::policy::{Team, Tier, Usage};
use tollgate::store::{MemoryStore, Store};
use tollgate::webhook::Webhook;
use tollgate::webhook::http::{WebhookState, router};

/// agentgateway's reading of a reply, field for field: serde's untagged enums try variants in
/// order and ignore unknown fields, as agentgateway's do.
#[derive(Debug, Deserialize)]
struct Reply {
    action: GatewayAction,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum GatewayAction {
    Mask {
        body: MaskBody,
        #[allow(dead_code)]
        reason: Option<String>,
    },
    Reject {
        body: String,
        status_code: u16,
        #[allow(dead_code)]
        reason: Option<String>,
    },
    Pass {
        #[allow(dead_code)]
        reason: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MaskBody {
    Messages { messages: Vec<GatewayMessage> },
    Choices { choices: Vec<GatewayChoice> },
}

#[derive(Debug, Deserialize)]
struct GatewayMessage {
    role: String,
    content: String,
}

#[derive(Debug, Deserialize)]
struct GatewayChoice {
    message: GatewayMessage,
}

const SECRET: &str = "s3cret-from-the-gateway-config";

struct Harness {
    base: String,
    http: reqwest::Client,
    engine: Arc<Engine>,
}

async fn start(guardrail: Option<LocalGuardrailConfig>, secret: Option<&str>) -> Harness {
    let store = Arc::new(MemoryStore::new());
    store
        .put_team(&Team {
            client_ids: vec!["agent".into()],
            rpm: Some(3),
            daily_tokens: Some(10_000_000),
            monthly_budget_usd: Some(1.0),
            ..Team::new("search", Tier::Standard)
        })
        .await
        .unwrap();
    let engine = Arc::new(Engine::new(
        store,
        None,
        EngineSettings::default(),
        Arc::new(SystemClock),
    ));
    let auth = Arc::new(Authenticator::new(
        Verification::TrustUpstream,
        None,
        None,
        Duration::ZERO,
    ));
    let guardrail = guardrail.map(|config| {
        Arc::new(GuardrailService::new(
            Arc::new(LocalGuardrail::new(config).unwrap()),
            Mode::Enforce,
            true,
        ))
    });
    let settings = WebhookSettings {
        secret: secret.map(str::to_owned),
        ..Default::default()
    };
    let state = Arc::new(WebhookState {
        webhook: Webhook {
            engine: engine.clone(),
            auth,
            guardrails: Guardrails::new(
                guardrail,
                Application {
                    scope: Default::default(),
                    parts: Part::ALL.to_vec(),
                    ..Default::default()
                },
            ),
            model_header: settings.model_header.clone(),
            path_header: settings.path_header.clone(),
        },
        settings,
        max_body_bytes: 64 << 10,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Harness {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        engine,
    }
}

fn token(client_id: &str) -> String {
    let claims = json!({"client_id": client_id, "scope": INVOKE_SCOPE, "exp": get_current_timestamp() + 600});
    let key = include_bytes!("../dev/keys/dev-private.pem");
    encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(key).unwrap(),
    )
    .unwrap()
}

/// A call as agentgateway makes it: its forwarded and CEL-computed headers, then the body.
struct Call<'a> {
    path: &'a str,
    body: Vec<u8>,
    headers: Vec<(&'a str, String)>,
}

impl<'a> Call<'a> {
    fn prompt(messages: Value) -> Self {
        Self::new("/request", json!({"body": {"messages": messages}}))
    }

    fn answer(choices: Value) -> Self {
        Self::new("/response", json!({"body": {"choices": choices}}))
    }

    fn new(path: &'a str, body: Value) -> Self {
        Self {
            path,
            body: serde_json::to_vec(&body).unwrap(),
            headers: vec![
                ("authorization", format!("Bearer {}", token("agent"))),
                ("x-tollgate-model", "gpt-4o-mini".into()),
                ("x-tollgate-path", "/v1/chat/completions".into()),
            ],
        }
    }

    fn header(mut self, name: &'a str, value: &str) -> Self {
        self.headers.retain(|(k, _)| *k != name);
        self.headers.push((name, value.to_owned()));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(k, _)| *k != name);
        self
    }

    async fn send(self, h: &Harness) -> (GatewayAction, Value) {
        let mut request = h
            .http
            .post(format!("{}{}", h.base, self.path))
            .header("content-type", "application/json")
            .body(self.body);
        for (k, v) in self.headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "every decision is an HTTP 200");
        let raw: Value = response.json().await.unwrap();
        let reply: Reply = serde_json::from_value(raw.clone()).unwrap_or_else(|e| {
            panic!("agentgateway could not parse {raw}: {e}");
        });
        (reply.action, raw)
    }
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The reject's status and its body parsed as JSON (it is the contract body, as a string).
fn rejected(action: GatewayAction) -> (u16, Value) {
    match action {
        GatewayAction::Reject {
            body, status_code, ..
        } => (
            status_code,
            serde_json::from_str(&body).expect("reject body is JSON text"),
        ),
        other => panic!("expected a reject, got {other:?}"),
    }
}

fn assert_pass(action: GatewayAction) {
    assert!(
        matches!(action, GatewayAction::Pass { .. }),
        "expected a pass, got {action:?}"
    );
}

#[tokio::test]
async fn an_admitted_prompt_passes() {
    let h = start(None, None).await;
    let (action, raw) = Call::prompt(user("hello")).send(&h).await;
    assert_pass(action);
    assert_eq!(raw["action"]["reason"], "admitted for team search");
}

#[tokio::test]
async fn rpm_refusals_are_429_rejects_in_the_callers_api_shape() {
    let h = start(None, None).await;
    for _ in 0..3 {
        assert_pass(Call::prompt(user("hi")).send(&h).await.0);
    }
    let (status, body) = rejected(Call::prompt(user("hi")).send(&h).await.0);
    assert_eq!(status, 429);
    assert_eq!(body["allowed"], false);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("RPM limit exceeded"),
        "{body}"
    );
    // The sliding window spans two one-minute buckets: a full bucket fades over the next minute.
    let retry = body["retry_after_seconds"].as_u64().unwrap();
    assert!((1..=120).contains(&retry), "retry after {retry}s");
    assert_eq!(
        body["error"]["type"], "requests",
        "OpenAI error shape: {body}"
    );

    let anthropic = Call::prompt(user("hi"))
        .header("x-tollgate-path", "/v1/messages")
        .send(&h)
        .await;
    let (status, body) = rejected(anthropic.0);
    assert_eq!(status, 429);
    assert_eq!(body["type"], "error");
    assert_eq!(
        body["error"]["type"], "rate_limit_error",
        "Anthropic error shape: {body}"
    );
}

#[tokio::test]
async fn identity_failures_are_rejects_not_passes() {
    let h = start(None, None).await;
    let (status, body) = rejected(
        Call::prompt(user("hi"))
            .without("authorization")
            .send(&h)
            .await
            .0,
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthenticated", "{body}");

    let stranger = Call::prompt(user("hi"))
        .header("authorization", &format!("Bearer {}", token("nobody")))
        .send(&h)
        .await;
    assert_eq!(rejected(stranger.0).0, 403);
}

#[tokio::test]
async fn the_model_decides_price_and_a_missing_or_unknown_model_is_refused() {
    let h = start(None, None).await;
    let (status, body) = rejected(
        Call::prompt(user("hi"))
            .without("x-tollgate-model")
            .send(&h)
            .await
            .0,
    );
    assert_eq!(status, 400);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("x-tollgate-model"),
        "{body}"
    );

    let unknown = Call::prompt(user("hi"))
        .header("x-tollgate-model", "no-such-model")
        .send(&h)
        .await;
    let (status, body) = rejected(unknown.0);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "unknown_model", "{body}");
}

#[tokio::test]
async fn a_spent_budget_is_refused_until_next_month() {
    let h = start(None, None).await;
    let team = h.engine.store().team("search").await.unwrap().unwrap();
    // A $1 budget; 2M output tokens of gpt-4o-mini at $0.60/M cost $1.20.
    let usage = Usage {
        output: 2_000_000,
        ..Default::default()
    };
    let (debit, cost) = h
        .engine
        .usage_debit(&team, "gpt-4o-mini", &usage, h.engine.now_ms(), "spent-1")
        .await;
    assert!(cost.unwrap() >= 1_000_000, "cost {cost:?} micro-dollars");
    h.engine.store().apply_debits(&[debit]).await.unwrap();
    h.engine.invalidate_caches();

    let (status, body) = rejected(Call::prompt(user("hi")).send(&h).await.0);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "monthly_budget_exceeded", "{body}");
}

#[tokio::test]
async fn embeddings_are_metered_like_any_model_call() {
    let h = start(None, None).await;
    let embed = || {
        Call::prompt(user("embed me"))
            .header("x-tollgate-path", "/v1/embeddings")
            .header("x-tollgate-model", "text-embedding-3-large")
    };
    assert_pass(embed().send(&h).await.0);
    // Spend the $1 budget (within the daily tokens): 9M input tokens at $0.13/M cost $1.17.
    let team = h.engine.store().team("search").await.unwrap().unwrap();
    let usage = Usage {
        input: 9_000_000,
        ..Default::default()
    };
    let (debit, cost) = h
        .engine
        .usage_debit(
            &team,
            "text-embedding-3-large",
            &usage,
            h.engine.now_ms(),
            "emb-1",
        )
        .await;
    assert_eq!(cost, Some(1_170_000));
    h.engine.store().apply_debits(&[debit]).await.unwrap();
    h.engine.invalidate_caches();
    let (status, body) = rejected(embed().send(&h).await.0);
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "monthly_budget_exceeded", "{body}");
}

#[tokio::test]
async fn endpoints_the_webhook_cannot_meter_are_refused_and_free_ones_pass() {
    let h = start(None, None).await;
    let (status, body) = rejected(
        Call::prompt(user("tune"))
            .header("x-tollgate-path", "/v1/fine_tuning/jobs")
            .send(&h)
            .await
            .0,
    );
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "endpoint_not_supported", "{body}");
    // Billed per image: the access log would carry no usage to charge.
    let (status, body) = rejected(
        Call::prompt(user("a cat"))
            .header("x-tollgate-path", "/v1/images/generations")
            .header("x-tollgate-model", "dall-e-3")
            .send(&h)
            .await
            .0,
    );
    assert_eq!(status, 404);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("per image or character"),
        "{body}"
    );
    // Counting tokens is free: no model needed, in Anthropic's shape.
    let count = Call::prompt(user("how long?"))
        .header("x-tollgate-path", "/v1/messages/count_tokens")
        .without("x-tollgate-model");
    assert_pass(count.send(&h).await.0);
    // Without the path the endpoint is unknown: refused, naming the header to set.
    let (status, body) = rejected(
        Call::prompt(user("hi"))
            .without("x-tollgate-path")
            .send(&h)
            .await
            .0,
    );
    assert_eq!(status, 400);
    assert!(
        body["reason"].as_str().unwrap().contains("x-tollgate-path"),
        "{body}"
    );
}

#[tokio::test]
async fn a_shared_secret_is_required_when_configured() {
    let h = start(None, Some(SECRET)).await;
    let (status, _) = rejected(Call::prompt(user("hi")).send(&h).await.0);
    assert_eq!(status, 401);
    let wrong = Call::prompt(user("hi")).header("x-tollgate-webhook-secret", "guess");
    assert_eq!(rejected(wrong.send(&h).await.0).0, 401);
    let (status, _) = rejected(Call::answer(json!([])).send(&h).await.0);
    assert_eq!(status, 401, "/response checks the secret too");

    let right = Call::prompt(user("hi")).header("x-tollgate-webhook-secret", SECRET);
    assert_pass(right.send(&h).await.0);
}

#[tokio::test]
async fn malformed_and_oversized_calls_are_rejects() {
    let h = start(None, None).await;
    for body in [
        b"{not json".to_vec(),
        br#"{"body":{"messages":"hello"}}"#.to_vec(),
        br#"{"messages":[]}"#.to_vec(),
    ] {
        let call = Call {
            body,
            ..Call::prompt(json!([]))
        };
        let (status, parsed) = rejected(call.send(&h).await.0);
        assert_eq!(status, 400);
        assert!(
            parsed["reason"]
                .as_str()
                .unwrap()
                .starts_with("malformed webhook call")
        );
    }
    let huge = Call::prompt(user(&"a".repeat(100 << 10)));
    assert_eq!(rejected(huge.send(&h).await.0).0, 413);
}

fn guardrail() -> LocalGuardrailConfig {
    serde_json::from_value(json!({
        "words": ["project falcon"],
        "pii": [{"type": "EMAIL", "action": "ANONYMIZE"}],
        "blocked_output_message": "Sorry, the answer was filtered.",
    }))
    .unwrap()
}

#[tokio::test]
async fn anonymized_prompts_are_masked_keeping_every_message_and_only_role_and_content() {
    let h = start(Some(guardrail()), None).await;
    let messages = json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": "mail alice@example.com the report"},
    ]);
    let (action, raw) = Call::prompt(messages).send(&h).await;
    let GatewayAction::Mask {
        body: MaskBody::Messages { messages },
        ..
    } = action
    else {
        panic!("expected a mask of messages, got {raw}");
    };
    let got: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("system", "You are terse."),
            ("user", "earlier question"),
            ("assistant", "earlier answer"),
            ("user", "mail {EMAIL} the report"),
        ]
    );
    for m in raw["action"]["body"]["messages"].as_array().unwrap() {
        let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["role", "content"]);
    }
}

#[tokio::test]
async fn blocked_prompts_are_400_rejects_naming_the_policy_not_the_text() {
    let h = start(Some(guardrail()), None).await;
    let (status, body) = rejected(
        Call::prompt(user("status of Project Falcon?"))
            .send(&h)
            .await
            .0,
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "guardrail_intervened");
    assert!(
        !body.to_string().to_lowercase().contains("falcon"),
        "{body}"
    );
    assert!(!body["policies"].as_array().unwrap().is_empty(), "{body}");
}

#[tokio::test]
async fn answers_are_masked_or_replaced_choice_for_choice() {
    let h = start(Some(guardrail()), None).await;
    let clean = json!([{"message": {"role": "assistant", "content": "all good"}}]);
    assert_pass(Call::answer(clean).send(&h).await.0);

    let two = json!([
        {"message": {"role": "assistant", "content": "write to bob@example.com"}},
        {"message": {"role": "assistant", "content": "nothing to hide"}},
    ]);
    let GatewayAction::Mask {
        body: MaskBody::Choices { choices },
        ..
    } = Call::answer(two).send(&h).await.0
    else {
        panic!("expected a mask of choices");
    };
    let texts: Vec<&str> = choices.iter().map(|c| c.message.content.as_str()).collect();
    assert_eq!(texts, ["write to {EMAIL}", "nothing to hide"]);

    let leak =
        json!([{"message": {"role": "assistant", "content": "project falcon ships in May"}}]);
    let GatewayAction::Mask {
        body: MaskBody::Choices { choices },
        ..
    } = Call::answer(leak).send(&h).await.0
    else {
        panic!("a blocked answer is replaced, not passed");
    };
    assert_eq!(choices.len(), 1);
    assert_eq!(choices[0].message.role, "assistant");
    assert_eq!(
        choices[0].message.content,
        "Sorry, the answer was filtered."
    );
}
