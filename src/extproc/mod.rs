//! Envoy ext_proc gRPC service. One gRPC stream per HTTP request; each is driven by a
//! [`stream::Exchange`] state machine on its own task. Envoy facts this layer honours:
//! errors go back as `Err(Status)` (a cleanly closed stream makes Envoy continue unprocessed),
//! a stream reset at the end of a request is a normal end, and accounting settles when the
//! stream ends whether or not an `end_of_stream` body chunk arrived.

mod envoy;
mod stream;

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    ProcessingRequest, ProcessingResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::Engine;
use crate::identity::Authenticator;

pub use stream::Exchange;

/// What every exchange needs; shared by all streams.
pub struct Context {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    /// Request bodies above this are refused with 413.
    pub max_request_body_bytes: usize,
    /// Non-streamed response bodies are buffered up to this for usage extraction.
    pub max_response_json_bytes: usize,
}

#[derive(Clone)]
pub struct ExtProcService {
    ctx: Arc<Context>,
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

    /// Tracks every exchange until it has finished and settled.
    pub fn exchanges(&self) -> TaskTracker {
        self.exchanges.clone()
    }

    pub fn abandon_token(&self) -> CancellationToken {
        self.abandon.clone()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProcService {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        // Envoy waits for each reply before sending the next message, so little buffering is needed.
        let (replies, outbound) = mpsc::channel(4);
        let mut exchange = Exchange::new(self.ctx.clone());
        let abandon = self.abandon.clone();
        self.exchanges.spawn(async move {
            metrics::gauge!("tollgate_extproc_streams_active").increment(1.0);
            loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = abandon.cancelled() => break,
                };
                match next {
                    Ok(Some(message)) => {
                        let reply = exchange.handle(message).await;
                        let failed = reply.is_err();
                        if let Err(status) = &reply {
                            tracing::warn!(%status, "ext_proc exchange failed");
                            metrics::counter!("tollgate_extproc_errors_total").increment(1);
                        }
                        if replies.send(reply).await.is_err() || failed {
                            break;
                        }
                        exchange.after_reply().await;
                    }
                    Ok(None) => break,
                    // Envoy resets the stream when the HTTP request ends: a normal end.
                    Err(status) => {
                        tracing::debug!(%status, "ext_proc stream ended by Envoy");
                        break;
                    }
                }
            }
            exchange.finish().await;
            metrics::gauge!("tollgate_extproc_streams_active").decrement(1.0);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }
}
