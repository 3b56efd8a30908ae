//! The output guardrail on streamed (SSE) answers, whatever adapter carries them: the text of the stream is assessed in windows
//! of `window_chars` (each with the last `overlap_chars` of the one before, so a match across a
//! window boundary is still seen), with one of two strategies:
//!
//! - `buffered`: chunks are held until the window they belong to is assessed clean; nothing the
//!   guardrail blocks ever reaches the client, at the cost of one window of latency;
//! - `async`: chunks pass at once while their window is assessed alongside; a blocked window ends
//!   the stream with a content-filter event, but what passed before the verdict has been seen.
//!
//! A blocked stream ends with the API's content-filter ending, and everything after is dropped.
//! Masking does not apply to streams: an anonymize verdict is logged and the text passes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::Source;
use super::apply::WITHHELD_ANSWER;
use super::service::{GuardrailService, Outcome};
use crate::llm::ApiKind;
use crate::llm::sse::SseDecoder;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Buffered,
    Async,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingSettings {
    pub strategy: Strategy,
    pub window_chars: usize,
    pub overlap_chars: usize,
}

impl Default for StreamingSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Buffered,
            window_chars: 1000,
            overlap_chars: 100,
        }
    }
}

/// What to send downstream for the chunk just received.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkAction {
    Pass,
    Replace(Vec<u8>),
}

pub struct StreamGuard {
    api: ApiKind,
    guard: Arc<GuardrailService>,
    settings: StreamingSettings,
    decoder: SseDecoder,
    window: String,
    carried: String,
    held: Vec<u8>,
    released_any: bool,
    pending: Option<JoinHandle<Outcome>>,
    terminated: bool,
}

impl StreamGuard {
    pub fn new(api: ApiKind, guard: Arc<GuardrailService>, settings: StreamingSettings) -> Self {
        Self {
            api,
            guard,
            settings,
            decoder: SseDecoder::new(4 << 20),
            window: String::new(),
            carried: String::new(),
            held: Vec::new(),
            released_any: false,
            pending: None,
            terminated: false,
        }
    }

    pub async fn on_chunk(&mut self, chunk: &[u8], end: bool) -> ChunkAction {
        if self.terminated {
            return ChunkAction::Replace(Vec::new());
        }
        let api = self.api;
        let window = &mut self.window;
        self.decoder.feed(chunk, |event| {
            if let Ok(data) = serde_json::from_str::<Value>(&event.data) {
                window.push_str(&delta_text(api, &data));
            }
        });
        match self.settings.strategy {
            Strategy::Buffered => self.buffered(chunk, end).await,
            Strategy::Async => self.asynchronous(end).await,
        }
    }

    fn window_ready(&self, end: bool) -> bool {
        self.window.chars().count() >= self.settings.window_chars
            || (end && !self.window.is_empty())
    }

    /// The next window to assess (with the overlap of the previous one); starts a new window.
    fn take_window(&mut self) -> String {
        let text = format!("{}{}", self.carried, self.window);
        let keep = self.settings.overlap_chars;
        let chars: Vec<char> = self.window.chars().collect();
        self.carried = chars[chars.len().saturating_sub(keep)..].iter().collect();
        self.window.clear();
        text
    }

    async fn buffered(&mut self, chunk: &[u8], end: bool) -> ChunkAction {
        self.held.extend_from_slice(chunk);
        if !self.window_ready(end) {
            return if end {
                self.release()
            } else {
                ChunkAction::Replace(Vec::new())
            };
        }
        let text = self.take_window();
        match self.guard.check(Source::Output, &[text]).await {
            Outcome::Block { message, .. } => self.terminate(&message),
            Outcome::Unavailable { .. } => self.terminate(WITHHELD_ANSWER),
            Outcome::Pass { .. } | Outcome::Mask { .. } => self.release(),
        }
    }

    async fn asynchronous(&mut self, end: bool) -> ChunkAction {
        self.released_any = true;
        if let Some(action) = self.verdict_if_done(end).await {
            return action;
        }
        if self.window_ready(end) && self.pending.is_none() {
            let text = self.take_window();
            let guard = self.guard.clone();
            self.pending = Some(tokio::spawn(async move {
                guard.check(Source::Output, &[text]).await
            }));
            if end {
                // The last chunk waits for the last verdict: the stream's ending is decided by it.
                if let Some(action) = self.verdict_if_done(true).await {
                    return action;
                }
            }
        }
        ChunkAction::Pass
    }

    /// A finished (or, at the end, awaited) verdict, turned into an action if it blocks.
    async fn verdict_if_done(&mut self, wait: bool) -> Option<ChunkAction> {
        let finished = self.pending.as_ref().is_some_and(JoinHandle::is_finished);
        if !finished && !wait {
            return None;
        }
        let outcome = self.pending.take()?.await.ok()?;
        match outcome {
            Outcome::Block { message, .. } => Some(self.terminate(&message)),
            Outcome::Unavailable { .. } => Some(self.terminate(WITHHELD_ANSWER)),
            _ => None,
        }
    }

    /// The stream ended without its end reaching tollgate (the client stopped reading, Envoy reset
    /// the stream): assess what was never assessed, for the record, in the background.
    pub fn assess_rest_later(&mut self) {
        if self.terminated || self.window.is_empty() {
            return;
        }
        let text = self.take_window();
        let guard = self.guard.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                guard.check(Source::Output, &[text]).await;
            });
        }
    }

    fn release(&mut self) -> ChunkAction {
        self.released_any = true;
        ChunkAction::Replace(std::mem::take(&mut self.held))
    }

    fn terminate(&mut self, message: &str) -> ChunkAction {
        self.terminated = true;
        self.held.clear();
        tracing::info!(
            api = self.api.as_str(),
            "stream ended by the output guardrail"
        );
        ChunkAction::Replace(filtered_ending(self.api, message, !self.released_any))
    }
}

/// The text an SSE event adds to the answer.
fn delta_text(api: ApiKind, data: &Value) -> String {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    match api {
        // Chat streams their text in `delta.content`, legacy completions in `text`.
        ApiKind::OpenAiChat | ApiKind::OpenAiCompletions => data
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| match api {
                ApiKind::OpenAiChat => s(c.pointer("/delta/content")),
                _ => s(c.get("text")),
            })
            .collect(),
        ApiKind::OpenAiResponses
            if data.get("type").and_then(Value::as_str) == Some("response.output_text.delta") =>
        {
            s(data.get("delta"))
        }
        ApiKind::AnthropicMessages
            if data.get("type").and_then(Value::as_str) == Some("content_block_delta") =>
        {
            s(data.pointer("/delta/text"))
        }
        _ => String::new(),
    }
}

fn event(name: Option<&str>, data: Value) -> String {
    match name {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The end of a stream cut by the guardrail, in the API's own events. `from_start`: nothing was
/// sent yet, so the opening events come first and SDKs see a well-formed stream.
pub fn filtered_ending(api: ApiKind, message: &str, from_start: bool) -> Vec<u8> {
    let mut out = String::new();
    match api {
        ApiKind::OpenAiChat => {
            out += &event(
                None,
                json!({"id": "chatcmpl-guardrail", "object": "chat.completion.chunk", "created": 0,
                "model": "guardrail", "choices": [{"index": 0, "delta": {"role": "assistant", "content": message},
                "finish_reason": "content_filter"}]}),
            );
            out += "data: [DONE]\n\n";
        }
        ApiKind::OpenAiCompletions => {
            out += &event(
                None,
                json!({"id": "cmpl-guardrail", "object": "text_completion", "created": 0,
                "model": "guardrail", "choices": [{"index": 0, "text": message, "logprobs": null,
                "finish_reason": "content_filter"}]}),
            );
            out += "data: [DONE]\n\n";
        }
        ApiKind::AnthropicMessages => {
            if from_start {
                out += &event(
                    Some("message_start"),
                    json!({"type": "message_start", "message": {"id": "msg_guardrail",
                    "type": "message", "role": "assistant", "model": "guardrail", "content": [], "stop_reason": null,
                    "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
                );
                out += &event(
                    Some("content_block_start"),
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                );
            }
            out += &event(
                Some("content_block_delta"),
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": message}}),
            );
            out += &event(
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}),
            );
            out += &event(
                Some("message_delta"),
                json!({"type": "message_delta",
                "delta": {"stop_reason": "refusal", "stop_sequence": null}, "usage": {"output_tokens": 0}}),
            );
            out += &event(Some("message_stop"), json!({"type": "message_stop"}));
        }
        ApiKind::OpenAiResponses => {
            let response = json!({"id": "resp_guardrail", "object": "response", "status": "incomplete",
                "incomplete_details": {"reason": "content_filter"}, "model": "guardrail", "output": [{"type": "message",
                "id": "msg_guardrail", "status": "incomplete", "role": "assistant",
                "content": [{"type": "output_text", "text": message, "annotations": []}]}]});
            if from_start {
                out += &event(
                    Some("response.created"),
                    json!({"type": "response.created", "sequence_number": 0,
                    "response": {"id": "resp_guardrail", "object": "response", "status": "in_progress", "model": "guardrail", "output": []}}),
                );
            }
            out += &event(
                Some("response.incomplete"),
                json!({"type": "response.incomplete", "sequence_number": 1, "response": response}),
            );
        }
        ApiKind::OpenAiEmbeddings
        | ApiKind::OpenAiImages
        | ApiKind::OpenAiSpeech
        | ApiKind::Other => {}
    }
    out.into_bytes()
}
