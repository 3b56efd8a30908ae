//! Envoy ext_proc gRPC service. One gRPC stream per HTTP request, driven by a
//! [`stream::Exchange`] state machine. Messages are handled inline in the response stream that
//! tonic polls, so a reply costs no extra task hop. Envoy facts this layer honours: errors go
//! back as `Err(Status)` (a cleanly closed stream makes Envoy continue unprocessed), a stream
//! reset at the end of a request is a normal end, and accounting settles when the exchange ends
//! however it ends (see `Exchange`'s `Drop`).

mod envoy;
mod stream;
pub mod stream_guard;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    ProcessingRequest, ProcessingResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
};
use futures_util::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::Engine;
use crate::guardrail::service::GuardrailService;
use crate::identity::Authenticator;
use crate::llm::texts::Scope;

pub use stream::Exchange;

/// What every exchange needs; shared by all streams.
pub struct Context {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    /// Request bodies above this are refused with 413.
    pub max_request_body_bytes: usize,
    /// Non-streamed response bodies are buffered up to this for usage extraction.
    pub max_response_json_bytes: usize,
    /// Content guardrails; `None` when they are off.
    pub guardrail: Option<Arc<GuardrailService>>,
    /// Which texts of a prompt the guardrail assesses: how far back, and which parts.
    pub guardrail_scope: Scope,
    pub guardrail_parts: Vec<crate::llm::texts::Part>,
    /// How streamed answers are assessed.
    pub guardrail_streaming: stream_guard::StreamingSettings,
}

#[derive(Clone)]
pub struct ExtProcService {
    ctx: Arc<Context>,
    /// Open exchanges and their settlements, so shutdown can wait for both.
    exchanges: TaskTracker,
    /// Cancelled when shutdown's grace period is over: open exchanges settle what passed and end.
    abandon: CancellationToken,
}

impl ExtProcService {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            exchanges: TaskTracker::new(),
            abandon: CancellationToken::new(),
        }
    }

    /// The tonic server wrapper, with message size limits above Envoy's body buffer.
    pub fn into_server(self, max_message_bytes: usize) -> ExternalProcessorServer<Self> {
        ExternalProcessorServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    pub fn exchanges(&self) -> TaskTracker {
        self.exchanges.clone()
    }

    pub fn abandon_token(&self) -> CancellationToken {
        self.abandon.clone()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

struct Driver {
    inbound: Streaming<ProcessingRequest>,
    exchange: Exchange,
    abandon: CancellationToken,
    failed: bool,
}

impl Driver {
    async fn next_reply(mut self) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        if self.failed {
            return None;
        }
        let next = tokio::select! {
            next = self.inbound.message() => next,
            _ = self.abandon.cancelled() => return None,
        };
        match next {
            Ok(Some(message)) => {
                let reply = self.exchange.handle(message).await;
                if let Err(status) = &reply {
                    tracing::warn!(%status, "ext_proc exchange failed");
                    metrics::counter!("tollgate_extproc_errors_total").increment(1);
                    self.failed = true;
                }
                Some((reply, self))
            }
            Ok(None) => None,
            // Envoy resets the stream when the HTTP request ends: a normal end.
            Err(status) => {
                tracing::debug!(%status, "ext_proc stream ended by Envoy");
                None
            }
        }
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let driver = Driver {
            inbound: request.into_inner(),
            exchange: Exchange::new(self.ctx.clone(), self.exchanges.clone()),
            abandon: self.abandon.clone(),
            failed: false,
        };
        let replies = futures_util::stream::unfold(driver, Driver::next_reply);
        Ok(Response::new(Box::pin(replies)))
    }
}
