//! The ext_proc server driven over real gRPC by a client that sends what Envoy sends, including
//! the awkward cases: response headers with no request headers (jwt_authn's 401), a stream that
//! ends without `end_of_stream`, a malformed message, a body rewrite, and jwt_authn claims that a
//! misconfigured Envoy let through.

#[path = "support/extproc.rs"]
mod extproc_support;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
    processing_request::Request as Message, processing_response::Response as Reply,
};
use jsonwebtoken::get_current_timestamp;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate::engine::EngineSettings;
use tollgate::extproc::Context;
use tollgate::identity::INVOKE_SCOPE;
use tonic::Streaming;

use extproc_support::{
    Harness, charged_since, engine_with_team, serve, token, tokens_today, trusting_upstream,
};

async fn start() -> Harness {
    start_with_issuer(None).await
}

/// `issuer`: `identity.issuer`, which tokens (or Envoy's verified claims) must carry.
async fn start_with_issuer(issuer: Option<&str>) -> Harness {
    let (store, engine) = engine_with_team(100, EngineSettings::default()).await;
    serve(
        store,
        Context {
            engine,
            auth: trusting_upstream(issuer),
            max_request_body_bytes: 1 << 20,
            max_response_json_bytes: 1 << 20,
            guardrails: tollgate::guardrail::apply::Guardrails::off(),
        },
    )
    .await
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> HttpHeaders {
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        end_of_stream,
        ..Default::default()
    }
}

/// A request (`true`) or response body chunk.
fn body_message(request: bool, body: Vec<u8>, end_of_stream: bool) -> Message {
    let body = HttpBody {
        body,
        end_of_stream,
        ..Default::default()
    };
    if request {
        Message::RequestBody(body)
    } else {
        Message::ResponseBody(body)
    }
}

fn msg(request: Message) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

struct Exchange {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: Streaming<ProcessingResponse>,
}

impl Exchange {
    async fn open(h: &mut Harness) -> Self {
        let (tx, outbound) = mpsc::channel(8);
        let rx = h
            .client
            .process(ReceiverStream::new(outbound))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&mut self, request: Message) -> Result<Reply, tonic::Status> {
        self.tx.send(msg(request)).await.unwrap();
        let reply = self.rx.message().await?.expect("a reply");
        Ok(reply.response.expect("a response"))
    }
}

fn chat_request_headers(id: &str) -> Message {
    let auth = format!("Bearer {}", token());
    Message::RequestHeaders(headers(
        &[
            (":path", "/v1/chat/completions"),
            (":method", "POST"),
            ("authorization", &auth),
            ("x-request-id", id),
        ],
        false,
    ))
}

#[tokio::test]
async fn response_headers_without_request_headers_pass_through_and_skip_the_body() {
    let mut h = start().await;
    let mut ex = Exchange::open(&mut h).await;
    ex.tx
        .send(msg(Message::ResponseHeaders(headers(
            &[(":status", "401")],
            false,
        ))))
        .await
        .unwrap();
    let reply = ex.rx.message().await.unwrap().unwrap();
    assert!(matches!(reply.response, Some(Reply::ResponseHeaders(_))));
    assert_eq!(
        reply
            .mode_override
            .expect("body skipped")
            .response_body_mode,
        0,
        "NONE"
    );
}

#[tokio::test]
async fn free_paths_are_admitted_at_the_headers_and_their_bodies_skipped() {
    let mut h = start().await;
    let mut ex = Exchange::open(&mut h).await;
    let auth = format!("Bearer {}", token());
    ex.tx
        .send(msg(Message::RequestHeaders(headers(
            &[
                (":method", "GET"),
                (":path", "/v1/models"),
                ("authorization", &auth),
            ],
            false,
        ))))
        .await
        .unwrap();
    let reply = ex.rx.message().await.unwrap().unwrap();
    assert!(matches!(reply.response, Some(Reply::RequestHeaders(_))));
    let mode = reply.mode_override.expect("bodies skipped");
    assert_eq!(
        (mode.request_body_mode, mode.response_body_mode),
        (0, 0),
        "NONE, NONE"
    );
    assert_eq!(
        mode.response_header_mode, 1,
        "SEND: rate headers still go on the response"
    );
}

#[tokio::test]
async fn a_message_without_a_request_is_an_error_status_not_a_clean_close() {
    let mut h = start().await;
    let mut ex = Exchange::open(&mut h).await;
    ex.tx.send(ProcessingRequest::default()).await.unwrap();
    let status = ex.rx.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn stream_injection_rewrites_the_body_with_a_matching_content_length() {
    let mut h = start().await;
    let mut ex = Exchange::open(&mut h).await;
    assert!(matches!(
        ex.send(chat_request_headers("r1")).await.unwrap(),
        Reply::RequestHeaders(_)
    ));
    let body = br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let Reply::RequestBody(reply) = ex
        .send(body_message(true, body.to_vec(), true))
        .await
        .unwrap()
    else {
        panic!("expected a body reply");
    };
    let common = reply.response.unwrap();
    let Some(envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation::Body(
        new_body,
    )) = common.body_mutation.unwrap().mutation
    else {
        panic!("expected a body mutation");
    };
    let v: serde_json::Value = serde_json::from_slice(&new_body).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], json!(true));
    let set = &common.header_mutation.unwrap().set_headers;
    let content_length = set
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == "content-length")
        .unwrap();
    assert_eq!(
        content_length.header.as_ref().unwrap().raw_value,
        new_body.len().to_string().into_bytes()
    );
}

#[tokio::test]
async fn a_stream_that_ends_without_end_of_stream_is_still_charged() {
    let mut h = start().await;
    let before = tokens_today(&h).await;
    let mut ex = Exchange::open(&mut h).await;
    ex.send(chat_request_headers("r2")).await.unwrap();
    let body = br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
    ex.send(body_message(true, body.to_vec(), true))
        .await
        .unwrap();
    let reply = ex
        .send(Message::ResponseHeaders(headers(
            &[(":status", "200"), ("content-type", "text/event-stream")],
            false,
        )))
        .await
        .unwrap();
    assert!(matches!(reply, Reply::ResponseHeaders(_)));
    let chunk = format!(
        "data: {}\n\n",
        json!({"choices": [{"delta": {"content": "x".repeat(400)}}]})
    );
    ex.send(body_message(false, chunk.into_bytes(), false))
        .await
        .unwrap();
    // The client disconnects: Envoy resets the stream, no end_of_stream chunk ever comes.
    drop(ex);
    let charged = charged_since(&h, before).await;
    // 400 generated characters ~ 100 tokens, plus the estimated prompt.
    assert!(charged >= 100, "charged {charged}");
}

#[tokio::test]
async fn a_completed_stream_is_charged_its_reported_usage_exactly() {
    let mut h = start().await;
    let before = tokens_today(&h).await;
    let mut ex = Exchange::open(&mut h).await;
    ex.send(chat_request_headers("r3")).await.unwrap();
    let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    ex.send(body_message(true, body.to_vec(), true))
        .await
        .unwrap();
    ex.send(Message::ResponseHeaders(headers(
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )))
    .await
    .unwrap();
    let response = json!({"usage": {"prompt_tokens": 7, "completion_tokens": 5}})
        .to_string()
        .into_bytes();
    let (a, b) = response.split_at(10);
    for (part, end) in [(a, false), (b, true)] {
        ex.send(body_message(false, part.to_vec(), end))
            .await
            .unwrap();
    }
    drop(ex);
    let charged = charged_since(&h, before).await;
    assert_eq!(charged, 12);
}

/// Request headers as Envoy sends them after `jwt_authn` verified the token: the claims in the
/// filter's dynamic metadata (numbers as doubles), and no need to read the Authorization header.
fn verified_request(claims: serde_json::Value) -> ProcessingRequest {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    fn to_pb(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            other => panic!("not a claim this test sends: {other}"),
        };
        Value { kind: Some(kind) }
    }
    let payload = Struct {
        fields: claims
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), to_pb(v)))
            .collect(),
    };
    let namespace = Struct {
        fields: [(
            "jwt_payload".to_owned(),
            Value {
                kind: Some(Kind::StructValue(payload)),
            },
        )]
        .into(),
    };
    ProcessingRequest {
        request: Some(Message::RequestHeaders(headers(
            &[(":path", "/v1/chat/completions"), (":method", "POST")],
            false,
        ))),
        metadata_context: Some(Metadata {
            filter_metadata: [("envoy.filters.http.jwt_authn".to_owned(), namespace)].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn verified_claims_without_exp_or_iss_or_not_yet_valid_are_refused_with_401() {
    let issuer = "https://issuer.example";
    let mut h = start_with_issuer(Some(issuer)).await;
    let now = get_current_timestamp();
    let good = json!({"iss": issuer, "client_id": "c", "scope": INVOKE_SCOPE, "exp": now + 600});
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut early = good.clone();
    early["nbf"] = json!(now + 600);
    let mut expired = good.clone();
    expired["exp"] = json!(now - 60);
    let mut no_iss = good.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut other_iss = good.clone();
    other_iss["iss"] = json!("https://elsewhere.example");
    for (claims, said) in [
        (no_exp, "token has no exp claim"),
        (
            no_iss,
            "token has no iss claim; expected https://issuer.example",
        ),
        (
            other_iss,
            "token was issued by https://elsewhere.example, expected https://issuer.example",
        ),
        (early, "token not valid before "),
        (expired, "token expired at "),
    ] {
        let mut ex = Exchange::open(&mut h).await;
        ex.tx.send(verified_request(claims)).await.unwrap();
        let reply = ex.rx.message().await.unwrap().unwrap().response.unwrap();
        let Reply::ImmediateResponse(refusal) = reply else {
            panic!("admitted: {reply:?}")
        };
        assert_eq!(refusal.status.unwrap().code, 401);
        let body: serde_json::Value = serde_json::from_slice(&refusal.body).unwrap();
        let reason = body["reason"].as_str().unwrap();
        assert!(reason.starts_with(said), "{reason}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{body}");
    }
    // The same claims with an expiry pass.
    let mut ex = Exchange::open(&mut h).await;
    ex.tx.send(verified_request(good)).await.unwrap();
    let reply = ex.rx.message().await.unwrap().unwrap().response.unwrap();
    assert!(matches!(reply, Reply::RequestHeaders(_)), "{reply:?}");
}
