//! A no-op ext_proc server: answers every message with "continue, unchanged" and does nothing
//! else; it also takes Envoy's gRPC access log (the fast attachment's) and discards it. `dev/bench`
//! puts it where tollgate sits, with the same Envoy attachment, to show the floor of that
//! attachment: what Envoy and gRPC cost before tollgate does any work.
//!
//!   cargo run --release --example extproc_noop -- ADDR

use std::pin::Pin;

use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
    access_log_service_server::{AccessLogService, AccessLogServiceServer},
};
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

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Noop {
    type ProcessStream = Replies;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let replies = request
            .into_inner()
            .filter_map(|message| async move { reply(message.ok()?).map(Ok) });
        Ok(Response::new(Box::pin(replies)))
    }
}

#[tonic::async_trait]
impl AccessLogService for Noop {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut inbound = request.into_inner();
        while let Ok(Some(_entries)) = inbound.message().await {}
        Ok(Response::new(StreamAccessLogsResponse {}))
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
        .add_service(AccessLogServiceServer::new(Noop))
        .serve(addr)
        .await?;
    Ok(())
}
