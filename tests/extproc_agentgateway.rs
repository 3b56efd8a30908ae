//! The ext_proc server driven over real gRPC by a client that behaves as agentgateway's `extProc`
//! client does (`crates/agentgateway/src/http/ext_proc.rs`, `ExtProcInstance`):
//!
//! - `protocol_config` (FULL_DUPLEX_STREAMED both ways, its defaults) on the first message only;
//! - pseudo-headers in `value`, the others in `raw_value`;
//! - body chunks sent as they arrive, without waiting for the headers reply; the last data chunk
//!   carries `end_of_stream` when the body's end is known, else an empty chunk follows with it, and
//!   with trailers no chunk ends the body: the trailers message follows;
//! - a body's replies are read as agentgateway reads them: each must carry a
//!   `StreamedBodyResponse` (agentgateway ends the body at any reply that does not), and the body
//!   ends at the one with `end_of_stream` or at a trailers reply;
//! - an ImmediateResponse answers the HTTP request; chunks already on their way still go out;
//! - the request stream is half-closed when agentgateway drops its senders (after the last body
//!   message, or when a body stops at an upstream error); only a lost connection resets it.

#[path = "support/extproc.rs"]
mod extproc_support;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, HttpBody, HttpHeaders, HttpTrailers, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, ProtocolConfiguration, body_mutation::Mutation,
    processing_request::Request as Message, processing_response::Response as Reply,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tollgate::engine::EngineSettings;
use tollgate::extproc::Context;
use tollgate::guardrail::apply::{Application, Guardrails};
use tollgate::guardrail::local::{LocalGuardrail, LocalGuardrailConfig};
use tollgate::guardrail::service::{GuardrailService, Mode};
use tollgate::guardrail::stream::{Strategy, StreamingSettings};
use tollgate::llm::Endpoints;
use tollgate::llm::texts::Part;
use tonic::Streaming;

use extproc_support::{
    Harness, charged_since, engine_with_team, serve, token, tokens_today, trusting_upstream,
};

const DENIED_WORD: &str = "moonshine";

struct Options {
    rpm: u64,
    max_request_body_bytes: usize,
    /// Guardrails in enforce mode with the local engine denying [`DENIED_WORD`].
    guardrail: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rpm: 100,
            max_request_body_bytes: 1 << 20,
            guardrail: false,
        }
    }
}

async fn start(options: Options) -> Harness {
    // Uploads are not free by default; an operator who lets them through lists them.
    let settings = EngineSettings {
        endpoints: Endpoints::with_free(&["POST /v1/files".into()]).unwrap(),
        ..Default::default()
    };
    let (store, engine) = engine_with_team(options.rpm, settings).await;
    let guardrail = options.guardrail.then(|| {
        let local = LocalGuardrail::new(LocalGuardrailConfig {
            words: vec![DENIED_WORD.into()],
            ..Default::default()
        })
        .unwrap();
        Arc::new(GuardrailService::new(Arc::new(local), Mode::Enforce, true))
    });
    serve(
        store,
        Context {
            engine,
            auth: trusting_upstream(None),
            max_request_body_bytes: options.max_request_body_bytes,
            max_response_json_bytes: 1 << 20,
            guardrails: Guardrails::new(
                guardrail,
                Application {
                    scope: Default::default(),
                    parts: Part::ALL.to_vec(),
                    streaming: StreamingSettings {
                        strategy: Strategy::Buffered,
                        window_chars: 40,
                        overlap_chars: 10,
                    },
                },
            ),
        },
    )
    .await
}

/// Headers as agentgateway's `req_to_header_map` / `resp_to_header_map` build them: the regular
/// ones as raw bytes, then the pseudo-headers as strings.
fn agw_headers(
    pseudo: &[(&str, &str)],
    regular: &[(&str, &str)],
    end_of_stream: bool,
) -> HttpHeaders {
    let raw = regular.iter().map(|(k, v)| HeaderValue {
        key: (*k).into(),
        raw_value: v.as_bytes().to_vec(),
        ..Default::default()
    });
    let strings = pseudo.iter().map(|(k, v)| HeaderValue {
        key: (*k).into(),
        value: (*v).into(),
        ..Default::default()
    });
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: raw.chain(strings).collect(),
        }),
        end_of_stream,
        ..Default::default()
    }
}

fn request_headers(path: &str, has_body: bool) -> Message {
    let auth = format!("Bearer {}", token());
    Message::RequestHeaders(agw_headers(
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "gateway.local"),
            (":path", path),
        ],
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ],
        !has_body,
    ))
}

fn response_headers(status: &str, content_type: &str) -> Message {
    Message::ResponseHeaders(agw_headers(
        &[(":status", status)],
        &[("content-type", content_type)],
        false,
    ))
}

/// How the client ends a body.
#[derive(Clone, Copy)]
enum End {
    /// `end_of_stream` on the last data chunk (a body whose length is known).
    LastChunk,
    /// An empty chunk with `end_of_stream` after the data (a streamed body).
    EmptyChunk,
    /// Trailers after the data; no chunk ends the body.
    Trailers,
}

/// `body` cut at the given offsets (awkward places: inside a key, a UTF-8 character, an SSE line).
fn cut<'a>(body: &'a [u8], offsets: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for &offset in offsets {
        pieces.push(&body[start..offset]);
        start = offset;
    }
    pieces.push(&body[start..]);
    pieces
}

fn offset_of(body: &[u8], needle: &str) -> usize {
    body.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle:?} in the body"))
}

/// What agentgateway passes on of a body: the bytes of each streamed reply, in order.
#[derive(Debug, Default)]
struct Passed {
    chunks: Vec<Vec<u8>>,
    ended_by_trailers: bool,
}

impl Passed {
    fn bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes()).expect("the passed body is JSON")
    }
}

#[derive(Debug)]
enum Outcome {
    /// The headers reply, and the body as it would be forwarded.
    Passed(HeadersResponse, Passed),
    /// An ImmediateResponse came in place of the headers reply.
    Refused(ImmediateResponse),
}

impl Outcome {
    fn passed(self) -> (HeadersResponse, Passed) {
        match self {
            Outcome::Passed(headers, body) => (headers, body),
            Outcome::Refused(refusal) => panic!("expected to pass, was refused: {refusal:?}"),
        }
    }

    fn refused(self) -> ImmediateResponse {
        match self {
            Outcome::Refused(refusal) => refusal,
            Outcome::Passed(headers, _) => panic!("expected a refusal, passed: {headers:?}"),
        }
    }
}

/// One HTTP request's ext_proc stream, driven the way agentgateway's `ExtProcInstance` drives it.
struct AgwStream {
    tx: Option<mpsc::Sender<ProcessingRequest>>,
    rx: Streaming<ProcessingResponse>,
    /// `protocol_config`, until the first message takes it.
    protocol_config: Option<ProtocolConfiguration>,
}

impl AgwStream {
    /// A stream with agentgateway's default processing options.
    async fn open(h: &mut Harness) -> Self {
        Self::with_modes(h, BodySendMode::FullDuplexStreamed).await
    }

    async fn with_modes(h: &mut Harness, request_body_mode: BodySendMode) -> Self {
        // agentgateway's request channel holds 10 messages.
        let (tx, outbound) = mpsc::channel(10);
        let rx = h
            .client
            .process(ReceiverStream::new(outbound))
            .await
            .unwrap()
            .into_inner();
        Self {
            tx: Some(tx),
            rx,
            protocol_config: Some(ProtocolConfiguration {
                request_body_mode: request_body_mode as i32,
                response_body_mode: BodySendMode::FullDuplexStreamed as i32,
                ..Default::default()
            }),
        }
    }

    async fn send(&mut self, request: Message) {
        let message = ProcessingRequest {
            request: Some(request),
            // On the first message only (`protocol_config_for_headers`).
            protocol_config: self.protocol_config.take(),
            ..Default::default()
        };
        self.tx
            .as_ref()
            .expect("still sending")
            .send(message)
            .await
            .unwrap();
    }

    async fn send_chunk(&mut self, request: bool, chunk: &[u8], end_of_stream: bool) {
        let body = HttpBody {
            body: chunk.to_vec(),
            end_of_stream,
            ..Default::default()
        };
        self.send(if request {
            Message::RequestBody(body)
        } else {
            Message::ResponseBody(body)
        })
        .await;
    }

    /// The body as agentgateway's `send_body_stream` sends it: every chunk at once, then its end.
    async fn send_body(&mut self, request: bool, chunks: &[&[u8]], end: End) {
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.send_chunk(request, chunk, last && matches!(end, End::LastChunk))
                .await;
        }
        match end {
            End::LastChunk => {}
            End::EmptyChunk => self.send_chunk(request, b"", true).await,
            End::Trailers => {
                let trailers = HttpTrailers {
                    trailers: Some(HeaderMap::default()),
                };
                self.send(if request {
                    Message::RequestTrailers(trailers)
                } else {
                    Message::ResponseTrailers(trailers)
                })
                .await;
            }
        }
    }

    /// The next reply. None may carry a `mode_override`: agentgateway applies none to these bodies.
    async fn next(&mut self) -> Reply {
        let reply = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a reply within 5 s")
            .expect("no gRPC error")
            .expect("a reply, not the end of the stream");
        assert_eq!(
            reply.mode_override, None,
            "mode_override sent to agentgateway"
        );
        reply.response.expect("a response in the reply")
    }

    /// Whether the server stays silent for `wait`.
    async fn silent_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.rx.message()).await.is_err()
    }

    /// agentgateway's request or response loop: the headers reply (or an ImmediateResponse in its
    /// place), then the body replies until one ends the body.
    async fn outcome(&mut self, request: bool) -> Outcome {
        let headers = match (self.next().await, request) {
            (Reply::ImmediateResponse(refusal), _) => return Outcome::Refused(refusal),
            (Reply::RequestHeaders(h), true) | (Reply::ResponseHeaders(h), false) => h,
            (other, _) => panic!("expected the headers reply, got {other:?}"),
        };
        Outcome::Passed(headers, self.read_body(request).await)
    }

    async fn read_body(&mut self, request: bool) -> Passed {
        let mut passed = Passed::default();
        loop {
            let body = match (self.next().await, request) {
                (Reply::RequestBody(b), true) | (Reply::ResponseBody(b), false) => b,
                (Reply::RequestTrailers(_), true) | (Reply::ResponseTrailers(_), false) => {
                    passed.ended_by_trailers = true;
                    return passed;
                }
                (other, _) => panic!("unexpected reply while the body streams: {other:?}"),
            };
            let chunk = streamed(body);
            passed.chunks.push(chunk.body);
            if chunk.end_of_stream {
                return passed;
            }
        }
    }

    /// A whole request as agentgateway's `mutate_request` sends it, and what becomes of it.
    async fn request(&mut self, path: &str, chunks: &[&[u8]], end: End) -> Outcome {
        self.send(request_headers(path, true)).await;
        self.send_body(true, chunks, end).await;
        self.outcome(true).await
    }

    /// A whole response as agentgateway's `mutate_response` sends it, and what becomes of it.
    async fn response(&mut self, content_type: &str, chunks: &[&[u8]], end: End) -> Outcome {
        self.send(response_headers("200", content_type)).await;
        self.send_body(false, chunks, end).await;
        self.outcome(false).await
    }

    /// agentgateway drops its senders when the exchange is over: the server must end its stream
    /// cleanly, with no reply left.
    async fn finish(mut self) {
        self.tx.take();
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
            Ok(Ok(None)) => {}
            other => panic!("expected the stream to end cleanly, got {other:?}"),
        }
    }
}

/// The streamed body of a body reply; agentgateway ends the body at any reply without one.
fn streamed(
    body: BodyResponse,
) -> envoy_types::pb::envoy::service::ext_proc::v3::StreamedBodyResponse {
    match body
        .response
        .and_then(|c| c.body_mutation)
        .and_then(|m| m.mutation)
    {
        Some(Mutation::StreamedResponse(s)) => s,
        other => panic!("a full-duplex body reply without a streamed body: {other:?}"),
    }
}

fn set_header(headers: &HeadersResponse, name: &str) -> Option<String> {
    headers
        .response
        .as_ref()?
        .header_mutation
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8(h.raw_value.clone()).unwrap())
}

fn removed_headers(headers: &HeadersResponse) -> Vec<String> {
    headers
        .response
        .as_ref()
        .and_then(|c| c.header_mutation.as_ref())
        .map(|m| m.remove_headers.clone())
        .unwrap_or_default()
}

fn refusal_header(refusal: &ImmediateResponse, name: &str) -> Option<String> {
    refusal
        .headers
        .as_ref()?
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8(h.raw_value.clone()).unwrap())
}

fn refusal_json(refusal: &ImmediateResponse) -> Value {
    serde_json::from_slice(refusal.body.as_ref()).expect("a JSON refusal body")
}

fn status(refusal: &ImmediateResponse) -> i32 {
    refusal.status.as_ref().map_or(0, |s| s.code)
}

fn chat(content: &str, extra: Value) -> Vec<u8> {
    let mut body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::to_vec(&body).unwrap()
}

fn answer(content: &str, prompt_tokens: u64, completion_tokens: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }))
    .unwrap()
}

fn sse_event(data: Value) -> String {
    format!("data: {data}\n\n")
}

fn sse_delta(text: &str) -> String {
    sse_event(json!({"choices": [{"index": 0, "delta": {"content": text}}]}))
}

#[tokio::test]
async fn a_chat_request_passes_through_intact_and_its_usage_is_debited() {
    let mut h = start(Options::default()).await;
    let before = tokens_today(&h).await;
    let mut ex = AgwStream::open(&mut h).await;

    let body = chat("héllo wörld", json!({}));
    let e_acute = offset_of(&body, "é") + 1;
    let chunks = cut(&body, &[5, e_acute, body.len() - 3]);
    ex.send(request_headers("/v1/chat/completions", true)).await;
    ex.send_chunk(true, chunks[0], false).await;
    assert!(
        ex.silent_for(Duration::from_millis(200)).await,
        "the headers reply waits for the whole body: once it is out, agentgateway calls the provider"
    );
    ex.send_body(true, &chunks[1..], End::LastChunk).await;
    let (headers, passed) = ex.outcome(true).await.passed();
    assert_eq!(passed.bytes(), body, "the request body passes unchanged");
    assert!(
        removed_headers(&headers).contains(&"accept-encoding".to_owned()),
        "usage is read from the answer, which must not come compressed"
    );

    let response = answer("hi there", 7, 5);
    let chunks = cut(&response, &[1, 40, 90]);
    let (headers, passed) = ex
        .response("application/json", &chunks, End::LastChunk)
        .await
        .passed();
    assert_eq!(
        set_header(&headers, "x-ratelimit-limit").as_deref(),
        Some("100")
    );
    assert_eq!(
        passed.chunks,
        chunks.iter().map(|c| c.to_vec()).collect::<Vec<_>>(),
        "the answer passes chunk for chunk"
    );
    ex.finish().await;
    assert_eq!(charged_since(&h, before).await, 12, "the reported usage");
}

#[tokio::test]
async fn streamed_answers_pass_chunk_for_chunk_as_they_come_and_are_charged_their_usage() {
    let mut h = start(Options::default()).await;
    let before = tokens_today(&h).await;
    let mut ex = AgwStream::open(&mut h).await;
    let body = chat(
        "count to three",
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (_, passed) = ex
        .request("/v1/chat/completions", &cut(&body, &[30]), End::EmptyChunk)
        .await
        .passed();
    assert_eq!(
        passed.bytes(),
        body,
        "nothing to inject: the body passes unchanged"
    );

    let events = [
        sse_delta("one, "),
        sse_delta("two, "),
        sse_delta("three"),
        sse_event(json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat()
    .into_bytes();
    // Cuts inside "data:", inside a JSON string, between an event's two newlines, inside the usage.
    let cuts = [
        3,
        offset_of(&events, "two") + 1,
        offset_of(&events, "\n\ndata: {\"choices\":[]") + 1,
        offset_of(&events, "prompt_tokens") + 4,
    ];
    ex.send(response_headers("200", "text/event-stream")).await;
    let Reply::ResponseHeaders(headers) = ex.next().await else {
        panic!("the response headers reply first");
    };
    assert!(set_header(&headers, "x-ratelimit-remaining").is_some());
    for chunk in cut(&events, &cuts) {
        ex.send_chunk(false, chunk, false).await;
        // Each chunk comes back before the next one is sent: nothing is held back.
        let Reply::ResponseBody(reply) = ex.next().await else {
            panic!("a body reply");
        };
        let passed = streamed(reply);
        assert_eq!(passed.body, chunk);
        assert!(!passed.end_of_stream);
    }
    ex.send_chunk(false, b"", true).await;
    let Reply::ResponseBody(reply) = ex.next().await else {
        panic!("a body reply");
    };
    let last = streamed(reply);
    assert!(
        last.body.is_empty() && last.end_of_stream,
        "the end passes as it came"
    );
    ex.finish().await;
    assert_eq!(charged_since(&h, before).await, 13);
}

#[tokio::test]
async fn include_usage_is_injected_into_a_streamed_request_that_stays_valid_json() {
    let mut h = start(Options::default()).await;
    let mut ex = AgwStream::open(&mut h).await;
    let body = chat(
        "tell me a story",
        json!({"stream": true, "temperature": 0.5}),
    );
    let cuts = [
        offset_of(&body, "story") + 1,
        offset_of(&body, "stream") + 2,
    ];
    let (_, passed) = ex
        .request("/v1/chat/completions", &cut(&body, &cuts), End::LastChunk)
        .await
        .passed();
    assert_eq!(passed.chunks.len(), 1, "the new body in one streamed reply");
    let forwarded = passed.json();
    assert_eq!(forwarded["stream_options"]["include_usage"], json!(true));
    let original: Value = serde_json::from_slice(&body).unwrap();
    for field in ["model", "messages", "stream", "temperature"] {
        assert_eq!(forwarded[field], original[field], "{field} kept");
    }
}

#[tokio::test]
async fn an_over_rpm_request_gets_a_429_in_place_of_the_headers_reply() {
    let mut h = start(Options {
        rpm: 1,
        ..Default::default()
    })
    .await;
    let body = chat("hi", json!({}));
    let mut first = AgwStream::open(&mut h).await;
    first
        .request("/v1/chat/completions", &[&body], End::LastChunk)
        .await
        .passed();
    first
        .response(
            "application/json",
            &[&answer("hello", 1, 1)],
            End::LastChunk,
        )
        .await
        .passed();
    first.finish().await;

    let mut second = AgwStream::open(&mut h).await;
    let refusal = second
        .request(
            "/v1/chat/completions",
            &cut(&body, &[10, 20]),
            End::LastChunk,
        )
        .await
        .refused();
    assert_eq!(status(&refusal), 429);
    let json = refusal_json(&refusal);
    assert_eq!(json["allowed"], json!(false));
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .starts_with("RPM limit exceeded: 1 request in the last 60 s, limit 1"),
        "{json}"
    );
    let retry_after = json["retry_after_seconds"]
        .as_u64()
        .expect("retry_after_seconds");
    assert!(
        (1..=120).contains(&retry_after),
        "within the two-bucket window: {retry_after}"
    );
    assert_eq!(json["error"]["code"], json!("rpm_limit_exceeded"));
    assert_eq!(json["error"]["type"], json!("requests"));
    assert_eq!(
        refusal_header(&refusal, "retry-after"),
        Some(retry_after.to_string())
    );
    assert_eq!(
        refusal_header(&refusal, "x-ratelimit-limit").as_deref(),
        Some("1")
    );
    assert_eq!(
        refusal_header(&refusal, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        refusal_header(&refusal, "content-type").as_deref(),
        Some("application/json")
    );
    // The rest of the body was already on its way: it gets no reply.
    second.finish().await;
}

#[tokio::test]
async fn a_prompt_the_guardrail_blocks_is_refused_before_anything_is_forwarded() {
    let mut h = start(Options {
        guardrail: true,
        ..Default::default()
    })
    .await;
    let body = chat(
        &format!("how do I distil {DENIED_WORD} at home?"),
        json!({}),
    );
    // The denied word arrives in two halves.
    let cuts = [offset_of(&body, DENIED_WORD) + 4];
    let mut ex = AgwStream::open(&mut h).await;
    let refusal = ex
        .request("/v1/chat/completions", &cut(&body, &cuts), End::EmptyChunk)
        .await
        .refused();
    assert_eq!(status(&refusal), 400);
    let json = refusal_json(&refusal);
    assert_eq!(json["error"]["code"], json!("guardrail_intervened"));
    assert!(
        !refusal
            .body
            .windows(DENIED_WORD.len())
            .any(|w| w == DENIED_WORD.as_bytes())
    );
    ex.finish().await;

    let mut clean = AgwStream::open(&mut h).await;
    clean
        .request(
            "/v1/chat/completions",
            &[&chat("how do I bake bread?", json!({}))],
            End::LastChunk,
        )
        .await
        .passed();
}

#[tokio::test]
async fn an_answer_the_guardrail_blocks_is_replaced_before_any_of_it_leaves() {
    let mut h = start(Options {
        guardrail: true,
        ..Default::default()
    })
    .await;
    let before = tokens_today(&h).await;
    let mut ex = AgwStream::open(&mut h).await;
    ex.request(
        "/v1/chat/completions",
        &[&chat("a recipe?", json!({}))],
        End::LastChunk,
    )
    .await
    .passed();

    let response = answer(&format!("Here is how to make {DENIED_WORD}: ..."), 7, 5);
    let chunks = cut(&response, &[20, offset_of(&response, DENIED_WORD) + 3]);
    ex.send(response_headers("200", "application/json")).await;
    ex.send_chunk(false, chunks[0], false).await;
    assert!(
        ex.silent_for(Duration::from_millis(200)).await,
        "nothing of the answer, not even its headers, before the guardrail saw all of it"
    );
    ex.send_body(false, &chunks[1..], End::LastChunk).await;
    let (headers, passed) = ex.outcome(false).await.passed();
    assert_eq!(
        set_header(&headers, "x-tollgate-guardrail").as_deref(),
        Some("blocked")
    );
    assert!(set_header(&headers, "x-ratelimit-limit").is_some());
    let delivered = passed.json();
    assert_eq!(
        delivered["choices"][0]["finish_reason"],
        json!("content_filter")
    );
    assert!(
        !passed
            .bytes()
            .windows(DENIED_WORD.len())
            .any(|w| w == DENIED_WORD.as_bytes())
    );
    ex.finish().await;
    assert_eq!(
        charged_since(&h, before).await,
        12,
        "the provider billed it"
    );
}

#[tokio::test]
async fn a_streamed_answer_the_guardrail_blocks_ends_with_a_content_filter_event() {
    let mut h = start(Options {
        guardrail: true,
        ..Default::default()
    })
    .await;
    let mut ex = AgwStream::open(&mut h).await;
    let body = chat("a story", json!({"stream": true}));
    ex.request("/v1/chat/completions", &[&body], End::LastChunk)
        .await
        .passed();
    let events = [
        sse_delta("Once upon a time there was a quiet village "),
        sse_delta(&format!("where everyone brewed {DENIED_WORD} in secret ")),
        sse_delta("and nobody ever talked about it."),
        "data: [DONE]\n\n".to_owned(),
    ];
    let chunks: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
    let (_, passed) = ex
        .response("text/event-stream", &chunks, End::EmptyChunk)
        .await
        .passed();
    let delivered = String::from_utf8(passed.bytes()).unwrap();
    assert!(delivered.contains("Once upon a time"), "{delivered}");
    assert!(!delivered.contains(DENIED_WORD), "{delivered}");
    assert!(
        delivered.contains("\"finish_reason\":\"content_filter\""),
        "{delivered}"
    );
    assert!(delivered.ends_with("data: [DONE]\n\n"), "{delivered}");
    ex.finish().await;
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413_before_it_ends() {
    let mut h = start(Options {
        max_request_body_bytes: 1000,
        ..Default::default()
    })
    .await;
    let mut ex = AgwStream::open(&mut h).await;
    ex.send(request_headers("/v1/chat/completions", true)).await;
    let filler = vec![b' '; 400];
    for _ in 0..3 {
        ex.send_chunk(true, &filler, false).await;
    }
    let Reply::ImmediateResponse(refusal) = ex.next().await else {
        panic!("a refusal as soon as the body outgrew the limit, in place of the headers reply");
    };
    assert_eq!(status(&refusal), 413);
    assert_eq!(
        refusal_json(&refusal)["error"]["code"],
        json!("request_too_large")
    );
    // The client is still sending: what comes gets no reply.
    ex.send_chunk(true, &filler, false).await;
    ex.send_chunk(true, b"", true).await;
    ex.finish().await;
}

#[tokio::test]
async fn trailers_end_the_request_and_the_response_bodies() {
    let mut h = start(Options::default()).await;
    let before = tokens_today(&h).await;
    let mut ex = AgwStream::open(&mut h).await;
    let body = chat("hi", json!({}));
    let (_, passed) = ex
        .request("/v1/chat/completions", &cut(&body, &[12]), End::Trailers)
        .await
        .passed();
    assert_eq!(passed.bytes(), body);
    assert!(passed.ended_by_trailers, "the trailers reply ends the body");

    let response = answer("hello", 3, 2);
    let chunks = cut(&response, &[50]);
    let (_, passed) = ex
        .response("application/json", &chunks, End::Trailers)
        .await
        .passed();
    assert_eq!(passed.bytes(), response);
    assert!(passed.ended_by_trailers);
    ex.finish().await;
    assert_eq!(charged_since(&h, before).await, 5);
}

#[tokio::test]
async fn an_unknown_endpoint_is_refused_in_place_of_the_headers_reply() {
    let mut h = start(Options::default()).await;
    let mut ex = AgwStream::open(&mut h).await;
    let body = br#"{"training_file":"file-1","model":"gpt-4o-mini"}"#;
    let refusal = ex
        .request("/v1/fine_tuning/jobs", &cut(body, &[10]), End::LastChunk)
        .await
        .refused();
    assert_eq!(status(&refusal), 404);
    let json = refusal_json(&refusal);
    assert_eq!(json["error"]["code"], json!("endpoint_not_supported"));
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .starts_with("POST /v1/fine_tuning/jobs is not an endpoint tollgate meters"),
        "{json}"
    );
    assert_eq!(
        refusal_header(&refusal, "x-should-retry").as_deref(),
        Some("false")
    );
    ex.finish().await;
}

#[tokio::test]
async fn free_paths_are_admitted_at_the_headers_and_their_bodies_pass_unread() {
    let mut h = start(Options::default()).await;
    let mut ex = AgwStream::open(&mut h).await;
    ex.send(request_headers("/v1/files", true)).await;
    let Reply::RequestHeaders(_) = ex.next().await else {
        panic!("admitted at once: the body is not needed to decide");
    };
    let upload =
        b"--boundary\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\xff\xfe binary";
    for (i, chunk) in cut(upload, &[7, 30]).into_iter().enumerate() {
        ex.send_chunk(true, chunk, i == 2).await;
        let Reply::RequestBody(reply) = ex.next().await else {
            panic!("a body reply");
        };
        assert_eq!(streamed(reply).body, chunk, "echoed unchanged");
    }
    let (headers, passed) = ex
        .response("application/json", &[br#"{"id":"file-1"}"#], End::LastChunk)
        .await
        .passed();
    assert!(set_header(&headers, "x-ratelimit-limit").is_some());
    assert_eq!(passed.bytes(), br#"{"id":"file-1"}"#);
    ex.finish().await;
}

#[tokio::test]
async fn a_guarded_stream_ended_by_trailers_still_delivers_its_last_window() {
    let mut h = start(Options {
        guardrail: true,
        ..Default::default()
    })
    .await;
    let mut ex = AgwStream::open(&mut h).await;
    let body = chat("hi", json!({"stream": true}));
    ex.request("/v1/chat/completions", &[&body], End::LastChunk)
        .await
        .passed();
    // Shorter than a guardrail window: held until the stream ends, which only the trailers say.
    let event = sse_delta("Hello!");
    let (_, passed) = ex
        .response("text/event-stream", &[event.as_bytes()], End::Trailers)
        .await
        .passed();
    assert_eq!(
        passed.bytes(),
        event.as_bytes(),
        "released before the trailers reply"
    );
    assert!(passed.ended_by_trailers);
    ex.finish().await;
}

#[tokio::test]
async fn a_client_that_never_sends_request_bodies_cannot_pass_model_calls_unchecked() {
    let mut h = start(Options::default()).await;
    // requestBodyMode: none; other calls are still admitted at their headers.
    let mut files = AgwStream::with_modes(&mut h, BodySendMode::None).await;
    files.send(request_headers("/v1/files", true)).await;
    assert!(matches!(files.next().await, Reply::RequestHeaders(_)));

    let mut chat = AgwStream::with_modes(&mut h, BodySendMode::None).await;
    chat.send(request_headers("/v1/chat/completions", true))
        .await;
    let status = tokio::time::timeout(Duration::from_secs(5), chat.rx.message())
        .await
        .expect("an answer in time")
        .expect_err("an error, which agentgateway's failClosed turns into a failed request");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}

/// A streamed answer cut after 400 generated characters (about 100 tokens), by `end`.
async fn answer_cut_short(end: impl AsyncFnOnce(AgwStream)) {
    let mut h = start(Options::default()).await;
    let before = tokens_today(&h).await;
    let mut ex = AgwStream::open(&mut h).await;
    let body = chat("write a lot", json!({"stream": true}));
    ex.request("/v1/chat/completions", &[&body], End::LastChunk)
        .await
        .passed();
    ex.send(response_headers("200", "text/event-stream")).await;
    ex.next().await;
    ex.send_chunk(false, sse_delta(&"x".repeat(400)).as_bytes(), false)
        .await;
    ex.next().await;
    end(ex).await;
    let charged = charged_since(&h, before).await;
    assert!(charged >= 100, "charged {charged}");
}

#[tokio::test]
async fn an_answer_whose_body_fails_mid_stream_is_charged_for_what_passed() {
    // agentgateway's body task stops at an upstream body error and drops its sender: the stream
    // is half-closed with no end_of_stream chunk.
    answer_cut_short(async |ex: AgwStream| ex.finish().await).await;
}

#[tokio::test]
async fn an_exchange_reset_mid_answer_is_charged_for_what_passed() {
    // The connection to tollgate is lost (agentgateway restarts): the gRPC stream is reset.
    answer_cut_short(async |ex: AgwStream| drop(ex)).await;
}
