//! Usage from provider responses, JSON or SSE, fed chunk by chunk as Envoy streams the response
//! through. When a response ends before the provider reported usage (a client that disconnected,
//! a stream cut short, a body too large to buffer), what passed is estimated at four characters per
//! token so that nothing that was generated goes uncharged; calls billed per unit are estimated at
//! the units their request asked for. Text to speech is billed per character of its request, so
//! its usage is known before the (audio) response and never read from it.

use serde_json::Value;

use super::sse::SseDecoder;
use super::{ApiKind, RequestFacts};
use crate::policy::Usage;

const CHARS_PER_TOKEN: u64 = 4;
const MAX_SSE_LINE_BYTES: usize = 4 << 20;

/// Where providers report usage, as dotted paths into a JSON response body: the numbers Envoy's
/// `json_to_metadata` filter must extract, each under its path as the key, for
/// [`UsageTracker::finish_reported`] (the fast attachment, `envoy/local-fast.yaml`).
pub const REPORTED_JSON_NUMBERS: &[&str] = &[
    "usage.prompt_tokens",
    "usage.completion_tokens",
    "usage.prompt_tokens_details.cached_tokens",
    "usage.input_tokens",
    "usage.output_tokens",
    "usage.input_tokens_details.cached_tokens",
    "usage.cache_read_input_tokens",
    "usage.cache_creation_input_tokens",
];

/// The same for streamed events: the usage objects Envoy's `sse_to_metadata` filter must extract
/// (it writes an object as its JSON text; a later event's overwrites an earlier one's).
pub const REPORTED_EVENT_OBJECTS: &[&str] = &["usage", "message.usage", "response.usage"];

/// Whether what `api` is billed by is in [`REPORTED_JSON_NUMBERS`] and
/// [`REPORTED_EVENT_OBJECTS`] (or, for text to speech, in the request). Images are not: a
/// response without token usage is billed per image it holds, which Envoy cannot count.
pub fn reported_by_envoy(api: ApiKind) -> bool {
    !matches!(api, ApiKind::OpenAiImages | ApiKind::Other)
}

#[derive(Debug)]
pub struct UsageTracker {
    api: ApiKind,
    prompt_chars: u64,
    body: Body,
    /// Usage fields seen so far; a stream may report input and output in different events.
    seen: Usage,
    /// The provider's final usage arrived: `seen` is exact.
    complete: bool,
    generated_chars: u64,
    /// Units (images, characters) the request asked for.
    requested_units: u64,
    /// Images a stream reported finished (each with its own token usage).
    images_completed: u64,
}

#[derive(Debug)]
enum Body {
    /// A JSON response, buffered up to a limit and parsed at its end.
    Json {
        buf: Vec<u8>,
        limit: usize,
        overflowed: bool,
    },
    Sse(SseDecoder),
}

impl UsageTracker {
    /// `event_stream`: the response's content type is `text/event-stream`.
    pub fn new(api: ApiKind, event_stream: bool, prompt_chars: u64, max_json_bytes: usize) -> Self {
        let body = if event_stream {
            Body::Sse(SseDecoder::new(MAX_SSE_LINE_BYTES))
        } else {
            Body::Json {
                buf: Vec::new(),
                limit: max_json_bytes,
                overflowed: false,
            }
        };
        Self {
            api,
            prompt_chars,
            body,
            seen: Usage::default(),
            complete: false,
            generated_chars: 0,
            requested_units: 0,
            images_completed: 0,
        }
    }

    /// A tracker of one call's usage, knowing its prompt and the units it asked for (`None`:
    /// nothing is known of its request).
    pub fn for_request(
        api: ApiKind,
        facts: Option<&RequestFacts>,
        event_stream: bool,
        max_json_bytes: usize,
    ) -> Self {
        Self::new(
            api,
            event_stream,
            facts.map_or(0, |f| f.prompt_chars),
            max_json_bytes,
        )
        .expecting_units(
            facts
                .and_then(|f| f.units.as_ref())
                .map_or(0, |u| u.count()),
        )
    }

    /// The units (images, characters) the request asked for: what is charged when the response
    /// does not say, and for text to speech what is charged.
    pub fn expecting_units(mut self, units: u64) -> Self {
        self.requested_units = units;
        self
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.body {
            Body::Json {
                buf,
                limit,
                overflowed,
            } => {
                if buf.len() + chunk.len() > *limit {
                    *overflowed = true;
                    // Keep counting what passed for the estimate, but stop buffering.
                    self.generated_chars += chunk.len() as u64;
                    buf.clear();
                    buf.shrink_to_fit();
                } else if !*overflowed {
                    buf.extend_from_slice(chunk);
                } else {
                    self.generated_chars += chunk.len() as u64;
                }
            }
            Body::Sse(decoder) => {
                let api = self.api;
                let mut stream = StreamState {
                    seen: &mut self.seen,
                    complete: &mut self.complete,
                    chars: &mut self.generated_chars,
                    requested_units: self.requested_units,
                    images_completed: &mut self.images_completed,
                };
                decoder.feed(chunk, |event| {
                    if let Ok(data) = serde_json::from_str::<Value>(&event.data) {
                        on_stream_event(api, &data, &mut stream);
                    }
                });
            }
        }
    }

    /// Whether the provider's own usage report has been seen.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The usage to charge, exact when the provider reported it, else estimated.
    pub fn finish(self) -> Usage {
        self.finish_with_body().0
    }

    /// [`finish`](Self::finish), also handing over the buffered JSON body (when it was one and
    /// fitted the limit), so that nothing else has to buffer the same response again.
    pub fn finish_with_body(mut self) -> (Usage, Option<Vec<u8>>) {
        let body = match &mut self.body {
            Body::Json {
                buf,
                overflowed: false,
                ..
            } => Some(std::mem::take(buf)),
            _ => None,
        };
        let usage = self.usage_from(body.as_deref());
        (usage, body)
    }

    /// The usage of a response that Envoy read instead of tollgate (the fast attachment): its
    /// `json_to_metadata` and `sse_to_metadata` filters extract the provider's usage objects
    /// into `reported` (`{"usage": .., "message": {"usage": ..}, "response": {"usage": ..}}`,
    /// whichever the response had; see [`REPORTED_JSON_NUMBERS`] and
    /// [`REPORTED_EVENT_OBJECTS`]), and the access log says how many
    /// body bytes passed. Without a final report, what passed is estimated from those bytes, which
    /// for a stream include its framing: an over-estimate, so it is capped at `max_output_tokens`
    /// (the caller passes what admission reserved for the answer).
    pub fn finish_reported(
        mut self,
        reported: &Value,
        body_bytes: u64,
        max_output_tokens: Option<u64>,
    ) -> Usage {
        let api = self.api;
        match api {
            // What the stream's first and last events carry (message_start, message_delta),
            // in their order; a JSON body has only the second.
            ApiKind::AnthropicMessages => {
                if let Some(start) = reported.pointer("/message/usage") {
                    anthropic_usage(start, &mut self.seen);
                }
                if let Some(usage) = reported.get("usage") {
                    anthropic_usage(usage, &mut self.seen);
                    self.complete = true;
                }
            }
            // A stream reports in `response.completed`, a JSON body at its top level.
            ApiKind::OpenAiResponses => {
                let body = reported.get("response").unwrap_or(reported);
                if let Some(u) = usage_of_response(api, body) {
                    (self.seen, self.complete) = (u, true);
                }
            }
            _ => {
                if let Some(u) = usage_of_response(api, reported) {
                    (self.seen, self.complete) = (u, true);
                }
            }
        }
        if self.complete {
            return self.seen;
        }
        self.generated_chars = body_bytes;
        let mut usage = self.usage_from(None);
        if let Some(max) = max_output_tokens {
            usage.output = usage.output.min(max);
        }
        usage
    }

    fn usage_from(mut self, json: Option<&[u8]>) -> Usage {
        if self.api == ApiKind::OpenAiSpeech {
            return Usage {
                units: self.requested_units,
                ..Default::default()
            };
        }
        if let Some(buf) = json {
            if let Some(usage) = serde_json::from_slice::<Value>(buf)
                .ok()
                .and_then(|v| usage_of_response(self.api, &v))
            {
                return usage;
            }
            self.generated_chars += buf.len() as u64;
        }
        if self.complete {
            return self.seen;
        }
        let mut usage = self.seen;
        if usage.input + usage.cache_read + usage.cache_write == 0 {
            usage.input = self.prompt_chars.div_ceil(CHARS_PER_TOKEN);
        }
        if generates_text(self.api) {
            usage.output = usage
                .output
                .max(self.generated_chars.div_ceil(CHARS_PER_TOKEN));
        }
        if self.api == ApiKind::OpenAiImages {
            // Images the response did not account for are charged at the per-image price.
            usage.units += self.requested_units.saturating_sub(self.images_completed);
        }
        usage.estimated = true;
        usage
    }
}

/// Whether what passed of a response is generated text, worth estimating as output tokens (not
/// vectors, images or audio).
fn generates_text(api: ApiKind) -> bool {
    matches!(
        api,
        ApiKind::OpenAiChat
            | ApiKind::OpenAiResponses
            | ApiKind::AnthropicMessages
            | ApiKind::OpenAiCompletions
    )
}

/// Usage of a complete (non-streamed) response body.
pub fn usage_of_response(api: ApiKind, body: &Value) -> Option<Usage> {
    if api == ApiKind::OpenAiImages {
        return images_usage(body);
    }
    let usage = body.get("usage")?;
    match api {
        ApiKind::OpenAiChat | ApiKind::OpenAiCompletions | ApiKind::OpenAiEmbeddings => {
            openai_usage(
                usage,
                "prompt_tokens",
                "completion_tokens",
                "prompt_tokens_details",
            )
        }
        ApiKind::OpenAiResponses => openai_usage(
            usage,
            "input_tokens",
            "output_tokens",
            "input_tokens_details",
        ),
        ApiKind::AnthropicMessages => {
            let mut u = Usage::default();
            anthropic_usage(usage, &mut u);
            Some(u)
        }
        ApiKind::OpenAiImages | ApiKind::OpenAiSpeech | ApiKind::Other => None,
    }
}

/// gpt-image-1 reports the tokens it is billed by (text in, image out); DALL-E reports nothing,
/// and is billed per image it returned.
fn images_usage(body: &Value) -> Option<Usage> {
    if let Some(usage) = body
        .get("usage")
        .filter(|u| u.get("output_tokens").is_some())
    {
        return openai_usage(
            usage,
            "input_tokens",
            "output_tokens",
            "input_tokens_details",
        );
    }
    let images = body.get("data")?.as_array()?.len() as u64;
    Some(Usage {
        units: images,
        ..Default::default()
    })
}

fn count(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// OpenAI counts cached tokens inside the input total; they are split out so each token counts once.
fn openai_usage(usage: &Value, input: &str, output: &str, details: &str) -> Option<Usage> {
    let total_input = count(usage, input)?;
    let cached = usage
        .get(details)
        .and_then(|d| count(d, "cached_tokens"))
        .unwrap_or(0)
        .min(total_input);
    // Reasoning tokens are inside the output count (`*_tokens_details` only breaks it down).
    Some(Usage {
        input: total_input - cached,
        output: count(usage, output).unwrap_or(0),
        cache_read: cached,
        ..Default::default()
    })
}

/// Anthropic reports cache reads and writes apart from `input_tokens`. In streams, later events
/// repeat or update fields, so only the fields present overwrite.
fn anthropic_usage(usage: &Value, into: &mut Usage) {
    if let Some(n) = count(usage, "input_tokens") {
        into.input = n;
    }
    if let Some(n) = count(usage, "output_tokens") {
        into.output = n;
    }
    if let Some(n) = count(usage, "cache_read_input_tokens") {
        into.cache_read = n;
    }
    if let Some(n) = count(usage, "cache_creation_input_tokens") {
        into.cache_write = n;
    }
}

fn str_chars(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_str)
        .map_or(0, |s| s.chars().count() as u64)
}

/// What a stream's events update.
struct StreamState<'a> {
    seen: &'a mut Usage,
    complete: &'a mut bool,
    chars: &'a mut u64,
    requested_units: u64,
    images_completed: &'a mut u64,
}

fn on_stream_event(api: ApiKind, data: &Value, state: &mut StreamState<'_>) {
    let StreamState {
        seen,
        complete,
        chars,
        requested_units,
        images_completed,
    } = state;
    match api {
        ApiKind::OpenAiChat | ApiKind::OpenAiCompletions => {
            if let Some(u) = data
                .get("usage")
                .filter(|u| !u.is_null())
                .and_then(|_| usage_of_response(api, data))
            {
                **seen = u;
                **complete = true;
            }
            for choice in data
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                // Legacy completions stream their text in `text`.
                **chars += str_chars(choice.get("text"));
                let delta = choice.get("delta");
                **chars += str_chars(delta.and_then(|d| d.get("content")));
                **chars += str_chars(delta.and_then(|d| d.get("reasoning_content")));
                for call in delta
                    .and_then(|d| d.get("tool_calls"))
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    **chars += str_chars(call.pointer("/function/arguments"));
                }
            }
        }
        ApiKind::OpenAiResponses => match data.get("type").and_then(Value::as_str) {
            Some("response.completed" | "response.incomplete" | "response.failed") => {
                if let Some(u) = data.get("response").and_then(|r| usage_of_response(api, r)) {
                    **seen = u;
                    **complete = true;
                }
            }
            Some(t) if t.ends_with(".delta") => **chars += str_chars(data.get("delta")),
            _ => {}
        },
        ApiKind::AnthropicMessages => match data.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(u) = data.pointer("/message/usage") {
                    anthropic_usage(u, seen);
                }
            }
            Some("message_delta") => {
                if let Some(u) = data.get("usage") {
                    anthropic_usage(u, seen);
                    **complete = true;
                }
            }
            Some("content_block_delta") => {
                let delta = data.get("delta");
                for key in ["text", "partial_json", "thinking"] {
                    **chars += str_chars(delta.and_then(|d| d.get(key)));
                }
            }
            _ => {}
        },
        // gpt-image-1 streams: one `image_generation.completed` event per image, with its usage.
        ApiKind::OpenAiImages => {
            if data.get("type").and_then(Value::as_str) == Some("image_generation.completed")
                && let Some(u) = data.get("usage").and_then(|u| {
                    openai_usage(u, "input_tokens", "output_tokens", "input_tokens_details")
                })
            {
                seen.input += u.input;
                seen.output += u.output;
                seen.cache_read += u.cache_read;
                **images_completed += 1;
                **complete = **images_completed >= (*requested_units).max(1);
            }
        }
        ApiKind::OpenAiEmbeddings | ApiKind::OpenAiSpeech | ApiKind::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn track(api: ApiKind, sse: bool, body: &str, chunk: usize) -> Usage {
        let mut t = UsageTracker::new(api, sse, 400, 1 << 20);
        for c in body.as_bytes().chunks(chunk) {
            t.feed(c);
        }
        t.finish()
    }

    fn sse(events: &[Value]) -> String {
        events
            .iter()
            .map(|e| format!("data: {e}\n\n"))
            .collect::<String>()
            + "data: [DONE]\n\n"
    }

    #[test]
    fn openai_chat_json_splits_cached_tokens_out_of_the_prompt() {
        let body = json!({"usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                                     "prompt_tokens_details": {"cached_tokens": 30}}});
        let u = track(ApiKind::OpenAiChat, false, &body.to_string(), 7);
        assert_eq!(
            u,
            Usage {
                input: 70,
                output: 20,
                cache_read: 30,
                cache_write: 0,
                units: 0,
                estimated: false
            }
        );
        assert_eq!(u.total(), 120);
    }

    #[test]
    fn openai_chat_stream_takes_the_final_usage_chunk() {
        let body = sse(&[
            json!({"choices": [{"delta": {"content": "Hello"}}]}),
            json!({"choices": [{"delta": {"content": " world"}}], "usage": null}),
            json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}}),
        ]);
        for chunk in [1, 3, 64] {
            let u = track(ApiKind::OpenAiChat, true, &body, chunk);
            assert_eq!(
                (u.input, u.output, u.estimated),
                (11, 2, false),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_stream_cut_short_is_estimated_from_what_passed() {
        let body = sse(&[json!({"choices": [{"delta": {"content": "x".repeat(40)}}]})]);
        let u = track(ApiKind::OpenAiChat, true, &body, 5);
        assert!(u.estimated);
        assert_eq!(u.input, 100, "400 prompt chars / 4");
        assert_eq!(u.output, 10, "40 generated chars / 4");
    }

    #[test]
    fn openai_responses_json_and_stream() {
        let usage = json!({"input_tokens": 50, "input_tokens_details": {"cached_tokens": 10},
                           "output_tokens": 5, "total_tokens": 55});
        let u = track(
            ApiKind::OpenAiResponses,
            false,
            &json!({"object": "response", "usage": usage}).to_string(),
            9,
        );
        assert_eq!((u.input, u.cache_read, u.output), (40, 10, 5));
        let body = [
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n".to_string(),
            format!("event: response.completed\ndata: {}\n\n", json!({"type": "response.completed", "response": {"usage": usage}})),
        ]
        .concat();
        let u = track(ApiKind::OpenAiResponses, true, &body, 4);
        assert_eq!(
            (u.input, u.cache_read, u.output, u.estimated),
            (40, 10, 5, false)
        );
    }

    #[test]
    fn anthropic_json_counts_cache_reads_and_writes() {
        let body = json!({"type": "message", "usage": {"input_tokens": 12, "output_tokens": 30,
                          "cache_creation_input_tokens": 100, "cache_read_input_tokens": 200}});
        let u = track(ApiKind::AnthropicMessages, false, &body.to_string(), 13);
        assert_eq!(
            u,
            Usage {
                input: 12,
                output: 30,
                cache_read: 200,
                cache_write: 100,
                units: 0,
                estimated: false
            }
        );
    }

    #[test]
    fn anthropic_stream_combines_message_start_and_delta() {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi there"}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        let body: String = events
            .iter()
            .map(|(n, d)| format!("event: {n}\ndata: {d}\n\n"))
            .collect();
        let u = track(ApiKind::AnthropicMessages, true, &body, 2);
        assert_eq!(
            u,
            Usage {
                input: 25,
                output: 15,
                cache_read: 5,
                cache_write: 0,
                units: 0,
                estimated: false
            }
        );
        // Cut before message_delta: input is known, output estimated from the text.
        let cut: String = events[..2]
            .iter()
            .map(|(n, d)| format!("event: {n}\ndata: {d}\n\n"))
            .collect();
        let u = track(ApiKind::AnthropicMessages, true, &cut, 2);
        assert!(u.estimated);
        assert_eq!((u.input, u.cache_read, u.output), (25, 5, 2));
    }

    #[test]
    fn truncated_json_is_estimated_not_ignored() {
        let u = track(
            ApiKind::OpenAiChat,
            false,
            "{\"choices\": [{\"message\": {\"content\": \"abc",
            5,
        );
        assert!(u.estimated);
        assert!(u.output > 0 && u.input == 100);
    }

    #[test]
    fn json_beyond_the_buffer_limit_is_estimated_without_buffering() {
        let mut t = UsageTracker::new(ApiKind::OpenAiChat, false, 0, 8);
        t.feed(&[b'x'; 40]);
        let u = t.finish();
        assert!(u.estimated);
        assert_eq!(u.output, 10);
    }

    #[test]
    fn legacy_completions_json_and_stream() {
        let body = json!({"object": "text_completion", "choices": [{"text": "hi"}],
                          "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}});
        let u = track(ApiKind::OpenAiCompletions, false, &body.to_string(), 5);
        assert_eq!((u.input, u.output, u.estimated), (12, 3, false));
        let stream = sse(&[
            json!({"choices": [{"text": "Hello", "index": 0}], "usage": null}),
            json!({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2}}),
        ]);
        let u = track(ApiKind::OpenAiCompletions, true, &stream, 3);
        assert_eq!((u.input, u.output, u.estimated), (12, 2, false));
        // Cut before the usage chunk: the text that passed is estimated as output.
        let cut = sse(&[json!({"choices": [{"text": "x".repeat(40), "index": 0}]})]);
        let u = track(ApiKind::OpenAiCompletions, true, &cut, 7);
        assert_eq!((u.input, u.output, u.estimated), (100, 10, true));
    }

    #[test]
    fn embeddings_charge_input_only_even_when_estimated() {
        let body = json!({"object": "list", "data": [{"embedding": [0.1, 0.2]}],
                          "usage": {"prompt_tokens": 8, "total_tokens": 8}});
        let u = track(ApiKind::OpenAiEmbeddings, false, &body.to_string(), 4);
        assert_eq!((u.input, u.output, u.estimated), (8, 0, false));
        // A vector body too large to buffer is not generated text: input is estimated, output 0.
        let mut t = UsageTracker::new(ApiKind::OpenAiEmbeddings, false, 400, 16);
        t.feed(&[b'1'; 4000]);
        let u = t.finish();
        assert_eq!((u.input, u.output, u.estimated), (100, 0, true));
    }

    #[test]
    fn images_are_counted_or_charged_by_the_tokens_reported() {
        let dalle = json!({"created": 1, "data": [{"url": "a"}, {"url": "b"}]});
        let mut t = UsageTracker::new(ApiKind::OpenAiImages, false, 40, 1 << 20).expecting_units(3);
        t.feed(dalle.to_string().as_bytes());
        let u = t.finish();
        assert_eq!(
            (u.units, u.total(), u.estimated),
            (2, 0, false),
            "billed per image returned"
        );
        let gpt = json!({"data": [{"b64_json": "AAAA"}], "usage": {"input_tokens": 50,
            "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}, "output_tokens": 4160, "total_tokens": 4210}});
        let mut t = UsageTracker::new(ApiKind::OpenAiImages, false, 40, 1 << 20).expecting_units(1);
        t.feed(gpt.to_string().as_bytes());
        let u = t.finish();
        assert_eq!(
            (u.input, u.output, u.units),
            (50, 4160, 0),
            "tokens, not the per-image price too"
        );
        // A body too large to read: every image asked for, at the per-image price.
        let mut t = UsageTracker::new(ApiKind::OpenAiImages, false, 40, 16).expecting_units(4);
        t.feed(&[b'A'; 4000]);
        let u = t.finish();
        assert_eq!((u.output, u.units, u.estimated), (0, 4, true));
    }

    #[test]
    fn image_streams_charge_each_completed_image_and_estimate_the_rest() {
        let completed = |n: u64| {
            format!(
                "event: image_generation.completed\ndata: {}\n\n",
                json!({"type": "image_generation.completed", "b64_json": "AAAA",
                       "usage": {"input_tokens": 10, "output_tokens": n, "total_tokens": 10 + n}})
            )
        };
        let partial = "event: image_generation.partial_image\ndata: {\"type\":\"image_generation.partial_image\",\"b64_json\":\"AAAA\"}\n\n";
        let body = format!("{partial}{}", completed(272));
        let mut t = UsageTracker::new(ApiKind::OpenAiImages, true, 40, 0).expecting_units(1);
        t.feed(body.as_bytes());
        assert!(t.is_complete());
        let u = t.finish();
        assert_eq!(
            (u.input, u.output, u.units, u.estimated),
            (10, 272, 0, false)
        );
        // Two asked for, one finished before the cut: one image's tokens plus one at the unit price.
        let mut t = UsageTracker::new(ApiKind::OpenAiImages, true, 40, 0).expecting_units(2);
        t.feed(body.as_bytes());
        let u = t.finish();
        assert_eq!((u.output, u.units, u.estimated), (272, 1, true));
    }

    #[test]
    fn speech_is_the_characters_asked_for_whatever_comes_back() {
        let mut t =
            UsageTracker::new(ApiKind::OpenAiSpeech, false, 31, 1 << 20).expecting_units(31);
        t.feed(b"ID3\x04\x00 audio bytes");
        assert_eq!(
            t.finish(),
            Usage {
                units: 31,
                ..Default::default()
            }
        );
    }
}
