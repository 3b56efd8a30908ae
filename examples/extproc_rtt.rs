//! Per-message cost of tollgate's ext_proc service, measured from a separate process the way
//! Envoy talks to it: one gRPC stream per request, one round trip per message. Also measures a
//! bare gRPC health check on the same connection type, the floor any ext_proc round trip sits on.
//!
//!   cargo run --release --example extproc_rtt -- ADDR TOKEN [EXCHANGES]

use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, external_processor_client::ExternalProcessorClient,
    processing_request::Request as Message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn headers(pairs: &[(&str, &str)]) -> HttpHeaders {
    let headers = pairs
        .iter()
        .map(|(k, v)| HeaderValue {
            key: (*k).into(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        })
        .collect();
    HttpHeaders {
        headers: Some(HeaderMap { headers }),
        ..Default::default()
    }
}

fn body(bytes: &[u8]) -> HttpBody {
    HttpBody {
        body: bytes.to_vec(),
        end_of_stream: true,
        ..Default::default()
    }
}

fn percentiles(name: &str, mut micros: Vec<u128>) {
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!("{name:<32} p50 {:>5} us   p99 {:>5} us", at(0.5), at(0.99));
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, token) = (format!("http://{}", args[1]), format!("Bearer {}", args[2]));
    let exchanges: usize = args.get(3).map_or(2000, |n| n.parse().unwrap());
    let channel = Endpoint::from_shared(addr)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    let mut floor = Vec::new();
    for _ in 0..exchanges {
        let t = Instant::now();
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        floor.push(t.elapsed().as_micros());
    }

    let mut client = ExternalProcessorClient::new(channel);
    let names = [
        "request headers (+ new stream)",
        "request body (admission)",
        "response headers",
        "response body (usage)",
    ];
    let mut per_message: Vec<Vec<u128>> = vec![Vec::new(); names.len()];
    let mut per_exchange = Vec::new();
    for i in 0..exchanges {
        let request_id = format!("rtt-{i}");
        let messages = [
            Message::RequestHeaders(headers(&[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                ("authorization", &token),
                ("x-request-id", &request_id),
            ])),
            Message::RequestBody(body(
                br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            )),
            Message::ResponseHeaders(headers(&[
                (":status", "200"),
                ("content-type", "application/json"),
            ])),
            Message::ResponseBody(body(
                br#"{"usage":{"prompt_tokens":12,"completion_tokens":8}}"#,
            )),
        ];
        let started = Instant::now();
        let (tx, rx) = mpsc::channel(4);
        let mut replies = client
            .process(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for (slot, message) in messages.into_iter().enumerate() {
            let t = Instant::now();
            tx.send(ProcessingRequest {
                request: Some(message),
                ..Default::default()
            })
            .await
            .unwrap();
            replies.message().await.unwrap().expect("a reply");
            per_message[slot].push(t.elapsed().as_micros());
        }
        per_exchange.push(started.elapsed().as_micros());
    }
    percentiles("grpc health check (floor)", floor);
    for (name, samples) in names.iter().zip(per_message) {
        percentiles(name, samples);
    }
    percentiles("whole exchange (4 messages)", per_exchange);
}
