//! A no-op ext_proc server: answers every message with "continue, unchanged" and does nothing
//! else. `dev/bench` puts it where tollgate sits, with the same Envoy attachment, to show the
//! floor of that attachment: what Envoy and gRPC cost before tollgate does any work. A stream
//! whose filter says `x-tollgate-attachment: observer` (observability mode) is never answered,
//! as tollgate never answers it.
//!
//!   cargo run --release --example extproc_noop -- ADDR

use std::pin::Pin;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as Message,
    processing_response::Response as Reply,
};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

struct Noop;

fn reply(message: ProcessingRequest) -> Option<ProcessingResponse> {
    let response = match message.request? {
        Message::RequestHeaders(_) => Reply::RequestHeaders(HeadersResponse::default()),
        Message::ResponseHeaders(_) => Reply::ResponseHeaders(HeadersResponse::default()),
        Message::RequestBody(_) => Reply::RequestBody(BodyResponse::default()),
        Message::ResponseBody(_) => Reply::ResponseBody(BodyResponse::default()),
        Message::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
        Message::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
    };
    Some(ProcessingResponse {
        response: Some(response),
        ..Default::default()
    })
}

/// The last message of a response: its end of stream, or an event stream's `[DONE]`.
fn response_over(message: &ProcessingRequest) -> bool {
    match &message.request {
        Some(Message::ResponseBody(body)) => {
            body.end_of_stream || body.body.windows(6).any(|w| w == b"[DONE]")
        }
        Some(Message::ResponseHeaders(headers)) => headers.end_of_stream,
        _ => false,
    }
}

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let observer = request
            .metadata()
            .get("x-tollgate-attachment")
            .is_some_and(|v| v == "observer");
        let inbound = request.into_inner();
        // An observer ends its stream once the response is over (as tollgate does once it has
        // charged it), rather than being held open `deferred_close_timeout` by Envoy.
        let inbound = inbound.take_while(move |message| {
            let over = observer && message.as_ref().map_or(true, response_over);
            async move { !over }
        });
        let replies = inbound.filter_map(move |message| async move {
            match message {
                Ok(message) if !observer => reply(message).map(Ok),
                _ => None,
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:10160".into())
        .parse()?;
    tonic::transport::Server::builder()
        .add_service(ExternalProcessorServer::new(Noop))
        .serve(addr)
        .await?;
    Ok(())
}
