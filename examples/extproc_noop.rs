//! A no-op ext_proc server: answers every message with "continue, unchanged" and does nothing
//! else; it also takes Envoy's gRPC access log (the fast attachment's) and discards it. `dev/bench`
//! puts it where tollgate sits, with the same Envoy attachment, to show the floor of that
//! attachment: what Envoy and gRPC cost before tollgate does any work. On the fast attachment
//! (`x-tollgate-attachment: admission`) it hands Envoy the dynamic metadata tollgate would (fixed
//! rate-limit values and a hand-off key), so that Envoy formats the same response headers and
//! logs the same access-log entries as with tollgate.
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
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
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

/// The `tollgate` metadata namespace as tollgate's admission sets it (values are fixed here).
fn what_tollgate_hands_over() -> Struct {
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let fields = [
        ("x-ratelimit-limit", "1000"),
        ("x-ratelimit-remaining", "999"),
        ("x-ratelimit-reset", "60"),
        ("x-ratelimit-limit-tokens", "1000000"),
        ("x-ratelimit-remaining-tokens", "999000"),
        ("handoff", "1"),
    ];
    let tollgate = Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string(v)))
            .collect(),
    };
    Struct {
        fields: [(
            "tollgate".to_owned(),
            Value {
                kind: Some(Kind::StructValue(tollgate)),
            },
        )]
        .into(),
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
        let admission = request
            .metadata()
            .get("x-tollgate-attachment")
            .is_some_and(|v| v == "admission");
        let replies = request.into_inner().filter_map(move |message| async move {
            let message = message.ok()?;
            let body = matches!(message.request, Some(Message::RequestBody(_)));
            let mut reply = reply(message)?;
            if admission && body {
                reply.dynamic_metadata = Some(what_tollgate_hands_over());
            }
            Some(Ok(reply))
        });
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
