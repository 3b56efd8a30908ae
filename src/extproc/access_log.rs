//! Envoy's gRPC access log (`envoy.access_loggers.http_grpc`, service
//! `envoy.service.accesslog.v3.AccessLogService`): how the fast attachment charges a response
//! without Envoy ever waiting for tollgate. Envoy reads the provider's usage out of the response
//! itself (`json_to_metadata` for JSON bodies, `sse_to_metadata` for event streams) into the
//! `tollgate.usage` metadata namespace, and when the request ends, however it ends, logs it with
//! that metadata, the hand-off key the admission set, the response status and the body bytes
//! sent. Envoy batches entries (`buffer_flush_interval`) on one long-lived stream, so the whole
//! response path costs Envoy a few hundred bytes per request and tollgate no reply at all.
//!
//! What an entry is charged, decided here once:
//! - no response (status 0: the client left while the provider worked): the prompt, as providers
//!   bill a prompt they received, and the units asked for;
//! - a failed call (not 2xx): nothing, as providers do not bill it;
//! - otherwise the usage Envoy extracted, or, when the provider's final report is missing (a
//!   stream cut short), an estimate (`UsageTracker::finish_reported`), at most the output its
//!   admission reserved (its `max_tokens`, or the engine's default when it set none).

use std::sync::Arc;

use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
    access_log_service_server::{AccessLogService, AccessLogServiceServer},
    stream_access_logs_message::LogEntries,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::envoy;
use super::handoff::{self, Handoffs};
use crate::engine::Engine;
use crate::llm::{ApiKind, RequestFacts, UsageTracker};
use crate::policy::Usage;

#[derive(Clone)]
pub struct AccessLogReceiver {
    engine: Arc<Engine>,
    handoffs: Arc<Handoffs>,
    /// Settlements run here, and shutdown waits for them.
    settlements: TaskTracker,
    /// Cancelled when shutdown begins, and when its grace is over.
    stop: CancellationToken,
    abandon: CancellationToken,
}

impl AccessLogReceiver {
    pub fn new(
        engine: Arc<Engine>,
        handoffs: Arc<Handoffs>,
        settlements: TaskTracker,
        stop: CancellationToken,
        abandon: CancellationToken,
    ) -> Self {
        Self {
            engine,
            handoffs,
            settlements,
            stop,
            abandon,
        }
    }

    /// Envoy never ends its access-log stream, and a graceful shutdown waits for every stream:
    /// once shutdown began, the stream ends when nothing admitted waits for its entry any more
    /// (or the grace is over; the engine then charges what is still open).
    async fn drained(&self) {
        self.stop.cancelled().await;
        while !(self.handoffs.is_empty() || self.abandon.is_cancelled()) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn into_server(self, max_message_bytes: usize) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(self).max_decoding_message_size(max_message_bytes)
    }

    /// Claims the request an entry logs and charges it in the background.
    fn meter(&self, entry: &HttpAccessLogEntry) {
        let Some(metadata) = entry
            .common_properties
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
        else {
            count("no_handoff");
            return;
        };
        let Some(key) = envoy::metadata_string(metadata, handoff::NAMESPACE, handoff::KEY) else {
            // A request tollgate refused, or one with nothing billable: nothing was parked.
            count("no_handoff");
            return;
        };
        let Some(parked) = key.parse().ok().and_then(|key| self.handoffs.claim(key)) else {
            // Charged already: its grace ran out before this entry came (or Envoy sent it twice).
            tracing::warn!(
                key,
                "access-log entry for a request that was already charged"
            );
            count("late");
            return;
        };
        let response = entry.response.as_ref();
        let status = response
            .and_then(|r| r.response_code)
            .map_or(0, |code| code.value);
        let body_bytes = response.map_or(0, |r| r.response_body_bytes);
        let reported = envoy::reported_document(metadata, handoff::USAGE_NAMESPACE);
        let usage = usage_of_entry(parked.api, &parked.facts, status, &reported, body_bytes);
        count(if usage.estimated {
            "estimated"
        } else {
            "charged"
        });
        tracing::debug!(key, status, ?usage, "access-log entry charged");
        let engine = self.engine.clone();
        self.settlements.spawn(async move {
            engine
                .settle(parked.ticket, usage, parked.api.as_str())
                .await
        });
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("tollgate_access_log_entries_total", "outcome" => outcome).increment(1);
}

/// What a request the access log reports is charged (see the module docs).
fn usage_of_entry(
    api: ApiKind,
    facts: &RequestFacts,
    status: u32,
    reported: &serde_json::Value,
    body_bytes: u64,
) -> Usage {
    let tracker = UsageTracker::for_request(api, Some(facts), facts.stream, 0);
    match status {
        0 => tracker.finish(),
        200..=299 => {
            // Bytes over-estimate a stream's text (its framing counts too): never more output than
            // admission reserved for it.
            let reserved = facts
                .max_output_tokens
                .unwrap_or(crate::engine::DEFAULT_RESERVED_OUTPUT_TOKENS);
            tracker.finish_reported(reported, body_bytes, Some(reserved))
        }
        _ => Usage::default(),
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLogReceiver {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut inbound = request.into_inner();
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                _ = self.drained() => break,
            };
            match next {
                Ok(Some(message)) => match message.log_entries {
                    Some(LogEntries::HttpLogs(logs)) => {
                        for entry in &logs.log_entry {
                            self.meter(entry);
                        }
                    }
                    Some(LogEntries::TcpLogs(_)) | None => {}
                },
                Ok(None) => break,
                // Envoy closes the stream when it shuts down or the connection drops; what it had
                // not sent is lost with it, and the admissions' grace charges their prompts.
                Err(status) => {
                    tracing::debug!(%status, "access-log stream ended by Envoy");
                    break;
                }
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(stream: bool, max_output_tokens: Option<u64>) -> RequestFacts {
        RequestFacts {
            model: "m".into(),
            stream,
            max_output_tokens,
            prompt_chars: 400,
            units: None,
        }
    }

    fn usage(
        api: ApiKind,
        facts: RequestFacts,
        status: u32,
        reported: serde_json::Value,
        bytes: u64,
    ) -> Usage {
        usage_of_entry(api, &facts, status, &reported, bytes)
    }

    #[test]
    fn json_numbers_are_exact() {
        let reported = json!({"usage": {"prompt_tokens": 11, "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 3}}});
        let u = usage(ApiKind::OpenAiChat, facts(false, None), 200, reported, 120);
        assert_eq!(
            (u.input, u.output, u.cache_read, u.estimated),
            (8, 7, 3, false)
        );
    }

    #[test]
    fn anthropic_stream_combines_start_and_final_usage() {
        let reported = json!({"message": {"usage": {"input_tokens": 20, "output_tokens": 1,
            "cache_read_input_tokens": 5}}, "usage": {"output_tokens": 15}});
        let u = usage(
            ApiKind::AnthropicMessages,
            facts(true, None),
            200,
            reported,
            900,
        );
        assert_eq!(
            (u.input, u.output, u.cache_read, u.estimated),
            (20, 15, 5, false)
        );
    }

    #[test]
    fn responses_stream_reports_in_its_completed_event() {
        let reported = json!({"response": {"usage": {"input_tokens": 9, "output_tokens": 4}}});
        let u = usage(
            ApiKind::OpenAiResponses,
            facts(true, None),
            200,
            reported,
            500,
        );
        assert_eq!((u.input, u.output, u.estimated), (9, 4, false));
    }

    #[test]
    fn a_stream_cut_short_is_estimated_and_capped_at_what_it_allowed() {
        let u = usage(ApiKind::OpenAiChat, facts(true, None), 200, json!({}), 4000);
        assert_eq!((u.input, u.output, u.estimated), (100, 1000, true));
        // Without max_tokens, the reservation's default output caps it.
        let u = usage(
            ApiKind::OpenAiChat,
            facts(true, None),
            200,
            json!({}),
            400_000,
        );
        assert_eq!((u.input, u.output, u.estimated), (100, 1024, true));
        let u = usage(
            ApiKind::OpenAiChat,
            facts(true, Some(50)),
            200,
            json!({}),
            4000,
        );
        assert_eq!((u.input, u.output, u.estimated), (100, 50, true));
    }

    #[test]
    fn no_response_charges_the_prompt_and_a_failed_call_nothing() {
        let u = usage(ApiKind::OpenAiChat, facts(false, None), 0, json!({}), 0);
        assert_eq!((u.input, u.output, u.estimated), (100, 0, true));
        let u = usage(ApiKind::OpenAiChat, facts(false, None), 503, json!({}), 80);
        assert_eq!(u, Usage::default());
    }
}
