//! Envoy ext_proc gRPC service. One gRPC stream per HTTP request, driven by a
//! [`stream::Exchange`] state machine. Messages are handled inline in the response stream that
//! tonic polls, so a reply costs no extra task hop. Envoy facts this layer honours: errors go
//! back as `Err(Status)` (a cleanly closed stream makes Envoy continue unprocessed), a stream
//! reset at the end of a request is a normal end, and accounting settles when the exchange ends
//! however it ends (see `Exchange`'s `Drop`).
//!
//! A client that streams bodies full-duplex (agentgateway's `extProc`) is recognised by its first
//! message and served through [`duplex::Duplex`], which may answer a message with no reply or
//! several.
//!
//! Envoy's fast attachment (`envoy/local-fast.yaml`) names its filter's role in the gRPC initial
//! metadata `x-tollgate-attachment` ([`Attachment`]): one synchronous message per request, the
//! admission; the response reaches tollgate through Envoy's gRPC access log
//! ([`access_log::AccessLogReceiver`]), joined to its admission by [`handoff::Handoffs`].

mod access_log;
mod duplex;
mod envoy;
mod handoff;
mod stream;

use std::collections::VecDeque;
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
use crate::guardrail::apply::Guardrails;
use crate::identity::Authenticator;

pub use access_log::AccessLogReceiver;
use duplex::Duplex;
use handoff::Handoffs;
pub use stream::{Attachment, Exchange};

/// What every exchange needs; shared by all streams.
pub struct Context {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    /// Request bodies above this are refused with 413.
    pub max_request_body_bytes: usize,
    /// Non-streamed response bodies are buffered up to this for usage extraction.
    pub max_response_json_bytes: usize,
    /// Content guardrails, applied as `guardrail::apply` decides.
    pub guardrails: Guardrails,
}

#[derive(Clone)]
pub struct ExtProcService {
    ctx: Arc<Context>,
    /// Open exchanges and their settlements, so shutdown can wait for both.
    exchanges: TaskTracker,
    /// Cancelled when shutdown's grace period is over: open exchanges settle what passed and end.
    abandon: CancellationToken,
    /// Admitted requests passing from the fast attachment's admission to its access-log entry.
    handoffs: Arc<Handoffs>,
}

impl ExtProcService {
    pub fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            exchanges: TaskTracker::new(),
            abandon: CancellationToken::new(),
            handoffs: Arc::default(),
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

    /// The fast attachment's other half: Envoy's access log, charging what this service admitted.
    /// `stop`: cancelled when shutdown begins.
    pub fn access_log(&self, stop: CancellationToken) -> AccessLogReceiver {
        AccessLogReceiver::new(
            self.ctx.engine.clone(),
            self.handoffs.clone(),
            self.exchanges.clone(),
            stop,
            self.abandon.clone(),
        )
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

/// How replies are shaped for the client, decided by its first message.
enum Client {
    /// Envoy (BUFFERED request bodies, STREAMED response bodies): one reply per message, the
    /// exchange's own.
    Envoy,
    FullDuplex(Duplex),
}

impl Client {
    fn for_first_message(message: &ProcessingRequest, limits: duplex::Limits) -> Self {
        match Duplex::for_client(message.protocol_config.as_ref(), limits) {
            Some(duplex) => {
                tracing::debug!("ext_proc client streams bodies full-duplex");
                Client::FullDuplex(duplex)
            }
            None => Client::Envoy,
        }
    }
}

struct Driver {
    inbound: Streaming<ProcessingRequest>,
    exchange: Exchange,
    client: Option<Client>,
    limits: duplex::Limits,
    /// Replies decided but not yet sent: a message may call for several.
    queued: VecDeque<ProcessingResponse>,
    abandon: CancellationToken,
    failed: bool,
}

impl Driver {
    async fn next_reply(mut self) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        loop {
            if let Some(reply) = self.queued.pop_front() {
                return Some((Ok(reply), self));
            }
            if self.failed {
                return None;
            }
            let next = tokio::select! {
                next = self.inbound.message() => next,
                _ = self.abandon.cancelled() => return None,
            };
            match next {
                Ok(Some(message)) => match self.replies_to(message).await {
                    Ok(replies) => self.queued.extend(replies),
                    Err(status) => {
                        tracing::warn!(%status, "ext_proc exchange failed");
                        metrics::counter!("tollgate_extproc_errors_total").increment(1);
                        self.failed = true;
                        return Some((Err(status), self));
                    }
                },
                Ok(None) => return None,
                // Envoy resets the stream when the HTTP request ends (agentgateway cancels it
                // when it gives up on a request): a normal end.
                Err(status) => {
                    tracing::debug!(%status, "ext_proc stream reset by the client");
                    return None;
                }
            }
        }
    }

    async fn replies_to(
        &mut self,
        message: ProcessingRequest,
    ) -> Result<Vec<ProcessingResponse>, Status> {
        let limits = self.limits;
        let client = self
            .client
            .get_or_insert_with(|| Client::for_first_message(&message, limits));
        match client {
            Client::Envoy => Ok(vec![self.exchange.handle(message).await?]),
            Client::FullDuplex(duplex) => duplex.handle(&mut self.exchange, message).await,
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
        let attachment = Attachment::from_metadata(
            request
                .metadata()
                .get(Attachment::METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
        );
        let driver = Driver {
            inbound: request.into_inner(),
            exchange: Exchange::new(
                self.ctx.clone(),
                self.exchanges.clone(),
                self.handoffs.clone(),
                attachment,
            ),
            client: None,
            limits: duplex::Limits {
                request_body: self.ctx.max_request_body_bytes,
                held_answer: self.ctx.max_response_json_bytes,
            },
            queued: VecDeque::new(),
            abandon: self.abandon.clone(),
            failed: false,
        };
        let replies = futures_util::stream::unfold(driver, Driver::next_reply);
        Ok(Response::new(Box::pin(replies)))
    }
}
