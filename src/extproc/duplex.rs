//! Clients that stream bodies `FULL_DUPLEX_STREAMED`, as agentgateway's ext_proc client does by
//! default, served by the same [`Exchange`] as Envoy.
//!
//! The exchange answers in the protocol tollgate's Envoy configs set up: request bodies BUFFERED
//! (one message, one reply), response bodies STREAMED (one reply per chunk), and a `mode_override`
//! in a headers reply to skip a body or to have it buffered. agentgateway's client
//! (`crates/agentgateway/src/http/ext_proc.rs`, `ExtProcInstance::mutate_request` /
//! `mutate_response`) differs in what matters here:
//!
//! - it sends body chunks as they arrive, without waiting for the headers reply, and lets the
//!   server hold that reply until it has the whole body;
//! - it sends the request upstream as soon as the request headers reply arrives: a refusal must
//!   come *instead of* that reply, or the provider gets the request anyway;
//! - it applies no `mode_override` to a FULL_DUPLEX_STREAMED body (nor any without
//!   `allowModeOverride`), so every chunk comes, wanted or not, and needs a reply;
//! - a body chunk's replacement must be a `StreamedBodyResponse`; the body ends at the first
//!   reply whose `end_of_stream` is set, or that carries no streamed body at all
//!   (`mutation.rs`, `handle_response_for_*_mutation`), or at a trailers reply.
//!
//! So this layer holds the headers reply while it buffers a body the exchange needs whole (a model
//! call's request, an answer the output guardrail must see whole) and answers both once the body is
//! complete, or sends the exchange's ImmediateResponse in their place; echoes chunks the exchange
//! does not read; turns the exchange's per-chunk replies into streamed ones; and treats trailers as
//! the end of their body. It never sends `mode_override`, `CONTINUE_AND_REPLACE` or
//! `override_message_timeout`, none of which agentgateway supports.

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
    processing_request::Request as Message,
};
use tonic::Status;

use super::envoy::{add_set_headers, body_verdict, is_immediate, streamed_body_reply};
use super::stream::Exchange;

/// How much of a body this layer holds while the exchange needs it whole.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Beyond this a request body is refused with 413.
    pub request_body: usize,
    /// Beyond this an answer the output guardrail must see whole is withheld.
    pub held_answer: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

impl Direction {
    fn is_request(self) -> bool {
        self == Direction::Request
    }

    fn body_message(self, body: Vec<u8>, end_of_stream: bool) -> ProcessingRequest {
        let body = HttpBody {
            body,
            end_of_stream,
            ..Default::default()
        };
        ProcessingRequest {
            request: Some(match self {
                Direction::Request => Message::RequestBody(body),
                Direction::Response => Message::ResponseBody(body),
            }),
            ..Default::default()
        }
    }

    fn passed(self, body: Vec<u8>, end_of_stream: bool) -> ProcessingResponse {
        streamed_body_reply(self.is_request(), body, end_of_stream)
    }
}

/// Where one direction's body stands.
enum Side {
    /// Its headers have not come yet.
    Start,
    /// The exchange does not read this body: chunks pass unchanged.
    Echo,
    /// The exchange reads each chunk as it passes (and may replace it).
    EachChunk,
    /// The exchange needs this body whole; its headers reply waits with it (boxed: it is large,
    /// and most sides never hold one).
    Holding {
        headers_reply: Box<ProcessingResponse>,
        body: Vec<u8>,
    },
    /// The whole body was answered; nothing more is expected.
    Answered,
    /// An ImmediateResponse answered the HTTP request: chunks still arriving get no reply. Those
    /// of an answer still count towards usage (the provider bills them).
    Refused,
}

/// How a body ends: with its last chunk, or with trailers after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    EndOfStream,
    Trailers,
}

pub struct Duplex {
    /// Which directions stream full-duplex; the other (if any) gets the exchange's replies as is.
    request_duplex: bool,
    response_duplex: bool,
    /// The client never sends request bodies (agentgateway's `requestBodyMode: none`).
    request_bodies_withheld: bool,
    limits: Limits,
    request: Side,
    response: Side,
}

impl Duplex {
    /// A duplex session when the client's first message declares a FULL_DUPLEX_STREAMED body
    /// (agentgateway always sends `protocol_config` first); Envoy's BUFFERED/STREAMED set-up, or
    /// no declaration at all, is served as is.
    pub fn for_client(config: Option<&ProtocolConfiguration>, limits: Limits) -> Option<Self> {
        let duplex = |mode: i32| mode == BodySendMode::FullDuplexStreamed as i32;
        let config = config?;
        let (request_duplex, response_duplex) = (
            duplex(config.request_body_mode),
            duplex(config.response_body_mode),
        );
        (request_duplex || response_duplex).then_some(Self {
            request_duplex,
            response_duplex,
            request_bodies_withheld: config.request_body_mode == BodySendMode::None as i32,
            limits,
            request: Side::Start,
            response: Side::Start,
        })
    }

    pub async fn handle(
        &mut self,
        exchange: &mut Exchange,
        message: ProcessingRequest,
    ) -> Result<Vec<ProcessingResponse>, Status> {
        use Direction::{Request, Response};
        let replies = match &message.request {
            Some(Message::RequestHeaders(h)) if self.request_duplex => {
                let end_of_stream = h.end_of_stream;
                self.on_headers(Request, exchange, message, end_of_stream)
                    .await?
            }
            Some(Message::ResponseHeaders(h)) if self.response_duplex => {
                let end_of_stream = h.end_of_stream;
                self.on_headers(Response, exchange, message, end_of_stream)
                    .await?
            }
            Some(Message::RequestBody(_)) if self.request_duplex => {
                self.on_body(Request, exchange, message).await?
            }
            Some(Message::ResponseBody(_)) if self.response_duplex => {
                self.on_body(Response, exchange, message).await?
            }
            Some(Message::RequestHeaders(_)) if self.request_bodies_withheld => {
                vec![admit_without_body(exchange, message).await?]
            }
            Some(Message::RequestTrailers(_)) if self.request_duplex => {
                self.on_trailers(Request, exchange, message).await?
            }
            Some(Message::ResponseTrailers(_)) if self.response_duplex => {
                self.on_trailers(Response, exchange, message).await?
            }
            // A direction the client buffers: the exchange's own replies fit it.
            _ if self.refused() => Vec::new(),
            _ => vec![exchange.handle(message).await?],
        };
        if replies.iter().any(is_immediate) {
            // The client answers the HTTP request with it; the rest of the exchange is moot.
            self.request = Side::Refused;
            self.response = Side::Refused;
        }
        // agentgateway ignores it (and warns) for these bodies; the bodies are handled here.
        Ok(replies.into_iter().map(without_mode_override).collect())
    }

    fn refused(&self) -> bool {
        matches!(self.request, Side::Refused)
    }

    fn side(&mut self, direction: Direction) -> &mut Side {
        match direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    async fn on_headers(
        &mut self,
        direction: Direction,
        exchange: &mut Exchange,
        message: ProcessingRequest,
        end_of_stream: bool,
    ) -> Result<Vec<ProcessingResponse>, Status> {
        if matches!(self.side(direction), Side::Refused) {
            return Ok(Vec::new());
        }
        let reply = exchange.handle(message).await?;
        if is_immediate(&reply) {
            return Ok(vec![reply]);
        }
        let side = self.side(direction);
        *side = match wanted(direction, &reply) {
            _ if end_of_stream => Side::Answered,
            BodyWanted::Not => Side::Echo,
            BodyWanted::EachChunk => Side::EachChunk,
            BodyWanted::Whole => {
                *side = Side::Holding {
                    headers_reply: Box::new(reply),
                    body: Vec::new(),
                };
                return Ok(Vec::new());
            }
        };
        Ok(vec![reply])
    }

    async fn on_body(
        &mut self,
        direction: Direction,
        exchange: &mut Exchange,
        message: ProcessingRequest,
    ) -> Result<Vec<ProcessingResponse>, Status> {
        let Some(Message::RequestBody(chunk) | Message::ResponseBody(chunk)) = message.request
        else {
            unreachable!("on_body is only called with a body message");
        };
        let limit = match direction {
            Direction::Request => self.limits.request_body,
            Direction::Response => self.limits.held_answer,
        };
        match self.side(direction) {
            Side::Start => Err(Status::failed_precondition(
                "a body before its headers: tollgate needs the headers (requestHeaderMode and \
                 responseHeaderMode: send)",
            )),
            Side::Echo | Side::Answered => {
                Ok(vec![direction.passed(chunk.body, chunk.end_of_stream)])
            }
            Side::EachChunk => {
                let end_of_stream = chunk.end_of_stream;
                let reply = exchange
                    .handle(direction.body_message(chunk.body.clone(), end_of_stream))
                    .await?;
                Ok(chunk_replies(direction, reply, chunk.body, end_of_stream))
            }
            Side::Holding { body, .. } if body.len() + chunk.body.len() > limit => {
                let held = std::mem::take(body);
                Ok(vec![
                    refuse_oversized(direction, exchange, held, chunk.body).await?,
                ])
            }
            Side::Holding { body, .. } => {
                body.extend_from_slice(&chunk.body);
                if !chunk.end_of_stream {
                    return Ok(Vec::new());
                }
                self.release(direction, exchange, Ending::EndOfStream).await
            }
            Side::Refused if direction == Direction::Response => {
                // The client got its answer, but the provider still bills what it generates.
                exchange
                    .handle(direction.body_message(chunk.body, chunk.end_of_stream))
                    .await?;
                Ok(Vec::new())
            }
            Side::Refused => Ok(Vec::new()),
        }
    }

    /// Trailers end their body: whatever waited for the end of it is answered first.
    async fn on_trailers(
        &mut self,
        direction: Direction,
        exchange: &mut Exchange,
        message: ProcessingRequest,
    ) -> Result<Vec<ProcessingResponse>, Status> {
        let mut replies = match self.side(direction) {
            Side::Refused => return Ok(Vec::new()),
            Side::Holding { .. } => self.release(direction, exchange, Ending::Trailers).await?,
            Side::EachChunk => {
                // The exchange settles usage and releases held text on an end_of_stream chunk;
                // with trailers none comes, so it gets an empty one.
                let reply = exchange
                    .handle(direction.body_message(Vec::new(), true))
                    .await?;
                chunk_replies(direction, reply, Vec::new(), false)
            }
            Side::Start | Side::Echo | Side::Answered => Vec::new(),
        };
        if !replies.iter().any(is_immediate) {
            replies.push(exchange.handle(message).await?);
        }
        *self.side(direction) = Side::Answered;
        Ok(replies)
    }

    /// The held body is complete: the exchange decides on all of it, then the held headers reply
    /// and the body (as the exchange left it) go out together, or only its ImmediateResponse.
    async fn release(
        &mut self,
        direction: Direction,
        exchange: &mut Exchange,
        ending: Ending,
    ) -> Result<Vec<ProcessingResponse>, Status> {
        let Side::Holding {
            mut headers_reply,
            body,
        } = std::mem::replace(self.side(direction), Side::Answered)
        else {
            unreachable!("release is only called while holding a body");
        };
        // Kept: the exchange says only whether it replaces the body.
        let reply = exchange
            .handle(direction.body_message(body.clone(), true))
            .await?;
        if is_immediate(&reply) {
            return Ok(vec![reply]);
        }
        let verdict = body_verdict(reply);
        // agentgateway drops content-length itself for a streamed body; other headers the exchange
        // set with the body (the guardrail's note) go with the headers, still unsent.
        let set = verdict
            .set_headers
            .into_iter()
            .filter(|h| {
                h.header
                    .as_ref()
                    .is_none_or(|h| !h.key.eq_ignore_ascii_case("content-length"))
            })
            .collect();
        add_set_headers(&mut headers_reply, set);
        let body = verdict.body.unwrap_or(body);
        Ok(vec![
            *headers_reply,
            direction.passed(body, ending == Ending::EndOfStream),
        ])
    }
}

/// Request headers from a client that never sends request bodies: fine for calls admitted at the
/// headers, but a model call is admitted on its body, and without it would pass unchecked.
async fn admit_without_body(
    exchange: &mut Exchange,
    message: ProcessingRequest,
) -> Result<ProcessingResponse, Status> {
    let reply = exchange.handle(message).await?;
    if is_immediate(&reply) || matches!(wanted(Direction::Request, &reply), BodyWanted::Not) {
        return Ok(reply);
    }
    Err(Status::failed_precondition(
        "tollgate admits model calls on their request body, which this client does not send \
         (requestBodyMode: none)",
    ))
}

/// The exchange's reply to one chunk, as streamed replies: nothing while it holds the chunk back
/// (an empty replacement), the chunk or its replacement otherwise.
fn chunk_replies(
    direction: Direction,
    reply: ProcessingResponse,
    chunk: Vec<u8>,
    end_of_stream: bool,
) -> Vec<ProcessingResponse> {
    if is_immediate(&reply) {
        return vec![reply];
    }
    let body = body_verdict(reply).body.unwrap_or(chunk);
    if body.is_empty() && !end_of_stream {
        return Vec::new();
    }
    vec![direction.passed(body, end_of_stream)]
}

/// A held body outgrew its limit: a request is refused (413); an answer is withheld, after the
/// exchange counted what came of it.
async fn refuse_oversized(
    direction: Direction,
    exchange: &mut Exchange,
    held: Vec<u8>,
    chunk: Vec<u8>,
) -> Result<ProcessingResponse, Status> {
    match direction {
        Direction::Request => Ok(exchange.refuse_oversized_request()),
        Direction::Response => {
            for part in [held, chunk] {
                exchange.handle(direction.body_message(part, false)).await?;
            }
            Ok(exchange.withhold_oversized_answer())
        }
    }
}

/// What the exchange asked for a body in its headers reply.
enum BodyWanted {
    Not,
    EachChunk,
    Whole,
}

/// Read from Envoy's `mode_override`, or, without one, the modes of tollgate's Envoy configs:
/// request bodies BUFFERED, response bodies STREAMED.
fn wanted(direction: Direction, reply: &ProcessingResponse) -> BodyWanted {
    let mode = match (&reply.mode_override, direction) {
        (Some(mode), Direction::Request) => mode.request_body_mode(),
        (Some(mode), Direction::Response) => mode.response_body_mode(),
        (None, Direction::Request) => BodySendMode::Buffered,
        (None, Direction::Response) => BodySendMode::Streamed,
    };
    match mode {
        BodySendMode::None => BodyWanted::Not,
        BodySendMode::Buffered | BodySendMode::BufferedPartial => BodyWanted::Whole,
        BodySendMode::Streamed | BodySendMode::FullDuplexStreamed | BodySendMode::Grpc => {
            BodyWanted::EachChunk
        }
    }
}

fn without_mode_override(mut reply: ProcessingResponse) -> ProcessingResponse {
    reply.mode_override = None;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extproc::envoy;

    fn config(request: BodySendMode, response: BodySendMode) -> ProtocolConfiguration {
        ProtocolConfiguration {
            request_body_mode: request as i32,
            response_body_mode: response as i32,
            ..Default::default()
        }
    }

    const LIMITS: Limits = Limits {
        request_body: 10,
        held_answer: 10,
    };

    #[test]
    fn full_duplex_in_either_direction_makes_a_duplex_session() {
        use BodySendMode::{Buffered, FullDuplexStreamed, Streamed};
        let duplex = |c: Option<ProtocolConfiguration>| {
            Duplex::for_client(c.as_ref(), LIMITS).map(|d| (d.request_duplex, d.response_duplex))
        };
        assert_eq!(
            duplex(Some(config(FullDuplexStreamed, FullDuplexStreamed))),
            Some((true, true))
        );
        assert_eq!(
            duplex(Some(config(Buffered, FullDuplexStreamed))),
            Some((false, true))
        );
        assert_eq!(
            duplex(Some(config(Buffered, Streamed))),
            None,
            "Envoy's set-up"
        );
        assert_eq!(duplex(None), None, "a client that declares nothing");
    }

    #[test]
    fn mode_overrides_read_as_what_the_exchange_wants() {
        use envoy::{request_headers_reply, response_headers_buffering_reply};
        let skip = request_headers_reply(&[], &[], true);
        assert!(matches!(wanted(Direction::Request, &skip), BodyWanted::Not));
        let model_call = request_headers_reply(&[], &["accept-encoding"], false);
        assert!(matches!(
            wanted(Direction::Request, &model_call),
            BodyWanted::Whole
        ));
        let buffer = response_headers_buffering_reply(&[]);
        assert!(matches!(
            wanted(Direction::Response, &buffer),
            BodyWanted::Whole
        ));
        let stream = envoy::response_headers_reply(&[], false);
        assert!(matches!(
            wanted(Direction::Response, &stream),
            BodyWanted::EachChunk
        ));
        let skip_answer = envoy::response_headers_reply(&[], true);
        assert!(matches!(
            wanted(Direction::Response, &skip_answer),
            BodyWanted::Not
        ));
    }

    #[test]
    fn a_held_chunk_gets_no_reply_but_the_last_one_always_does() {
        let hold = envoy::response_body_chunk_reply(Vec::new());
        assert!(chunk_replies(Direction::Response, hold.clone(), b"x".to_vec(), false).is_empty());
        assert_eq!(
            chunk_replies(Direction::Response, hold, b"x".to_vec(), true).len(),
            1
        );
        let pass = envoy::response_body_reply();
        let replies = chunk_replies(Direction::Response, pass, b"x".to_vec(), false);
        assert_eq!(
            body_verdict(replies.into_iter().next().unwrap()).body,
            Some(b"x".to_vec())
        );
    }
}
