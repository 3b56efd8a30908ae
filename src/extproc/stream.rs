//! One HTTP request's exchange with Envoy, message by message:
//!
//! 1. request headers: classify the endpoint (metered, free or refused: `llm::endpoints`),
//!    authenticate, resolve the team; refused endpoints are answered here, free ones admitted
//!    here with their bodies skipped, model calls wait for their body to be admitted;
//! 2. request body (BUFFERED): size and JSON checks, admission, `include_usage` injection;
//! 3. response headers: rate headers; keep the (STREAMED) body only where usage is in it;
//! 4. response body chunks: usage extraction as they pass;
//! 5. the exchange ends, however it ends: settle whatever was not settled yet (`Drop`).
//!
//! In the fast attachment (see [`Attachment`]) the stream usually sees only step 2, its body
//! message carrying the path and headers as `request_attributes`; the admitted request is parked
//! in [`Handoffs`] until Envoy's access log reports its response (`access_log.rs`).

use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, TrailersResponse,
    processing_request::Request as Message, processing_response::Response as Reply,
};
use tonic::Status;

use super::Context;
use super::envoy::{self, header};
use super::handoff::{self, Handoffs, Parked};
use crate::contract::{rate_headers, rejection_reply};
use crate::engine::{Caller, ModelCall, Ticket};
use crate::guardrail::apply::{
    AnswerForm, AnswerPlan, AnswerVerdict, PromptVerdict, RequestGuardrail,
};
use crate::guardrail::stream::{ChunkAction, StreamGuard};
use crate::identity::INVOKE_SCOPE;
use crate::llm::{
    ApiKind, ErrorShape, ParsedRequest, RequestFacts, Treatment, UsageTracker, parse_request,
    usage::reported_by_envoy,
};
use crate::policy::{Rejection, RejectionKind, Usage};

const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
const JWT_PAYLOAD_KEY: &str = "jwt_payload";

pub struct Exchange {
    ctx: Arc<Context>,
    /// Settlements run here, and shutdown waits for them.
    settlements: TaskTracker,
    /// Keeps shutdown waiting while this exchange is open.
    _open: TaskTrackerToken,
    api: ApiKind,
    /// The error shape of refusals: the API's, or for other endpoints the provider's.
    shape: ErrorShape,
    request_id: Option<String>,
    team: Option<Caller>,
    facts: Option<RequestFacts>,
    ticket: Option<Ticket>,
    response_started: bool,
    tracker: Option<UsageTracker>,
    /// The guardrail of this request, resolved once its team is known.
    guardrail: Option<RequestGuardrail>,
    /// `x-tollgate-guardrail` for the response: what the input guardrail did or would do.
    guardrail_note: Option<&'static str>,
    /// The whole response body comes in one message, to pass the output guardrail first.
    guard_response: bool,
    /// The output guardrail on a streamed answer.
    stream_guard: Option<Box<StreamGuard>>,
    /// Observe mode: the non-streamed answer is assessed after it passed.
    observe_answer: bool,
    attachment: Attachment,
    handoffs: Arc<Handoffs>,
    /// Admission stream of the fast attachment: the key its admitted request is parked under.
    parked: Option<u64>,
    /// The caller was looked at (from the headers message, or the body's attributes).
    identified: bool,
}

/// What tollgate reads of a request's headers, from the headers message or, in the fast
/// attachment, from the body message's attributes.
struct RequestHead<'a> {
    method: &'a str,
    path: &'a str,
    request_id: Option<&'a str>,
    authorization: Option<&'a str>,
    /// The project header's value (`engine.project_header`), if one is configured and sent.
    project: Option<&'a str>,
}

/// Which part of a request's processing Envoy gives this stream, as its filter declares in the
/// gRPC initial metadata `x-tollgate-attachment` (`grpc_service.initial_metadata`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// One stream sees the request and its response (the guarded attachment, agentgateway).
    Whole,
    /// The fast attachment: the request only; Envoy's access log reports the response.
    Admission,
}

impl Attachment {
    pub const METADATA_KEY: &'static str = "x-tollgate-attachment";

    pub fn from_metadata(value: Option<&str>) -> Self {
        match value {
            Some("admission") => Attachment::Admission,
            _ => Attachment::Whole,
        }
    }
}

impl Exchange {
    pub fn new(
        ctx: Arc<Context>,
        settlements: TaskTracker,
        handoffs: Arc<Handoffs>,
        attachment: Attachment,
    ) -> Self {
        metrics::gauge!("tollgate_extproc_streams_active").increment(1.0);
        Self {
            ctx,
            _open: settlements.token(),
            settlements,
            api: ApiKind::Other,
            shape: ErrorShape::OpenAi,
            request_id: None,
            team: None,
            facts: None,
            ticket: None,
            response_started: false,
            tracker: None,
            guardrail: None,
            guardrail_note: None,
            guard_response: false,
            stream_guard: None,
            observe_answer: false,
            attachment,
            handoffs,
            parked: None,
            identified: false,
        }
    }

    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    pub async fn handle(
        &mut self,
        message: ProcessingRequest,
    ) -> Result<ProcessingResponse, Status> {
        let metadata = message.metadata_context;
        match message.request {
            Some(Message::RequestHeaders(h)) => Ok(self.on_request_headers(h, metadata).await),
            // The fast attachment skips the headers message: what it would carry comes as
            // attributes with the body.
            Some(Message::RequestBody(b)) if !self.identified => Ok(self
                .on_request_body_first(b, &message.attributes, metadata)
                .await),
            Some(Message::RequestBody(b)) => Ok(self.on_request_body(b).await),
            Some(Message::ResponseHeaders(h)) => Ok(self.on_response_headers(h)),
            Some(Message::ResponseBody(b)) => Ok(self.on_response_body(b).await),
            Some(Message::RequestTrailers(_)) => Ok(trailers(true)),
            Some(Message::ResponseTrailers(_)) => Ok(trailers(false)),
            None => Err(Status::invalid_argument(
                "ProcessingRequest without a request",
            )),
        }
    }

    /// Usage to charge when the exchange ends before the response did.
    fn usage_so_far(&mut self) -> Usage {
        match self.tracker.take() {
            Some(tracker) => tracker.finish(),
            // Admitted, but the response never started: the client went away while the provider
            // worked. Providers bill the prompt they received (and the images or speech asked
            // for), so that is charged.
            None if !self.response_started => self.usage_tracker(true, 0).finish(),
            None => Usage::default(),
        }
    }

    /// A tracker of this call's usage, knowing its prompt and the units it asked for.
    fn usage_tracker(&self, event_stream: bool, max_json_bytes: usize) -> UsageTracker {
        UsageTracker::for_request(self.api, self.facts.as_ref(), event_stream, max_json_bytes)
    }

    /// Charges the admitted request, once, in the background: never on the reply path.
    fn settle(&mut self, usage: Usage) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let engine = self.ctx.engine.clone();
        let api = self.api.as_str();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.settlements.spawn_on(
                    async move { engine.settle(ticket, usage, api).await },
                    &runtime,
                );
            }
            Err(_) => {
                tracing::error!(team = %ticket.team, ?usage, "no runtime left to settle a request")
            }
        }
    }

    /// A refusal decided here (identity, body checks) rather than by the engine, which counts its own.
    fn refuse_here(&self, rejection: Rejection) -> ProcessingResponse {
        self.ctx.engine.count_decision(rejection.kind);
        self.refuse(rejection)
    }

    fn refuse(&self, rejection: Rejection) -> ProcessingResponse {
        tracing::info!(
            team = self.team.as_ref().map(|t| t.id.as_str()),
            request_id = self.request_id.as_deref(),
            status = rejection.kind.status(),
            reason = %rejection.reason,
            "request refused"
        );
        envoy::immediate_reply(rejection_reply(self.shape, &rejection))
    }

    async fn on_request_headers(
        &mut self,
        headers: HttpHeaders,
        metadata: Option<envoy_types::pb::envoy::config::core::v3::Metadata>,
    ) -> ProcessingResponse {
        let head = RequestHead {
            method: header(&headers, ":method").unwrap_or_default(),
            path: header(&headers, ":path").unwrap_or_default(),
            request_id: header(&headers, "x-request-id"),
            authorization: header(&headers, "authorization"),
            project: (self.ctx.engine.project_header()).and_then(|name| header(&headers, name)),
        };
        let team = match self.identify(head, metadata).await {
            Ok(team) => team,
            Err(refusal) => return refusal,
        };
        if !self.api.is_model_call() {
            // Nothing in its bodies matters: admit now and ask Envoy not to send them.
            let skip_bodies = envoy::request_headers_reply(&[], &[], true);
            return self.admit_regardless_of_body(&team, skip_bodies).await;
        }
        if headers.end_of_stream {
            return self.refuse_here(Rejection::new(
                RejectionKind::InvalidBody,
                "request body is required",
            ));
        }
        // Usage is read from the response body, which must not arrive compressed.
        envoy::request_headers_reply(&[], &["accept-encoding"], false)
    }

    /// The fast attachment's one message: the request body, with what the headers message would
    /// have carried as attributes.
    async fn on_request_body_first(
        &mut self,
        body: HttpBody,
        attributes: &std::collections::HashMap<String, envoy_types::pb::google::protobuf::Struct>,
        metadata: Option<envoy_types::pb::envoy::config::core::v3::Metadata>,
    ) -> ProcessingResponse {
        let attributes = envoy::Attributes::of(attributes);
        let head = RequestHead {
            method: attributes.string("request.method").unwrap_or("POST"),
            path: attributes.path(),
            request_id: attributes.header("x-request-id"),
            authorization: attributes.header("authorization"),
            // Sent only when the filter's request_attributes name it (docs/envoy.md).
            project: (self.ctx.engine.project_header())
                .and_then(|name| attributes.header(&name.to_ascii_lowercase())),
        };
        let team = match self.identify(head, metadata).await {
            Ok(team) => team,
            Err(refusal) => return refusal,
        };
        if !self.api.is_model_call() {
            let pass = envoy::request_body_reply(None);
            return self.admit_regardless_of_body(&team, pass).await;
        }
        self.on_request_body(body).await
    }

    /// Admits a call whose body does not matter (not a model call), answering `reply` if admitted.
    async fn admit_regardless_of_body(
        &mut self,
        team: &Caller,
        reply: ProcessingResponse,
    ) -> ProcessingResponse {
        if let Err(rejection) = self.admit(team, None).await {
            return self.refuse(rejection);
        }
        self.hand_over(reply)
    }

    /// Who is calling and what: the endpoint (refused ones are answered here), the API, the
    /// request id, the team (from the token, or jwt_authn's verified claims) and the guardrail
    /// that applies. Returns the team, or the refusal to send.
    async fn identify(
        &mut self,
        head: RequestHead<'_>,
        metadata: Option<envoy_types::pb::envoy::config::core::v3::Metadata>,
    ) -> Result<Caller, ProcessingResponse> {
        self.identified = true;
        let endpoint = self.ctx.engine.endpoints().classify(head.method, head.path);
        self.shape = endpoint.shape;
        self.api = endpoint.metered().unwrap_or(ApiKind::Other);
        self.request_id = head.request_id.map(str::to_owned);

        let verified_claims = metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get(JWT_AUTHN_NAMESPACE))
            .and_then(|s| s.fields.get(JWT_PAYLOAD_KEY))
            .and_then(|v| match &v.kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) => {
                    Some(envoy::struct_to_json(s))
                }
                _ => None,
            });
        let auth = &self.ctx.auth;
        let principal = match verified_claims {
            Some(claims) => auth.authenticate_verified_claims(&claims, INVOKE_SCOPE),
            None => {
                auth.authenticate_header(head.authorization, INVOKE_SCOPE)
                    .await
            }
        };
        let principal = match principal {
            Ok(p) => p,
            Err(e) => return Err(self.refuse_here(e.rejection())),
        };
        let mut team = match self.ctx.engine.team_for(&principal).await {
            Ok(team) => team,
            Err(rejection) => return Err(self.refuse(rejection)),
        };
        team.project = head.project.map(str::to_owned);
        self.guardrail = self.ctx.guardrails.for_request(Some(&team));
        self.team = Some(team.clone());

        if let Treatment::Refused(why) = endpoint.treatment {
            // Never reaches the upstream; counts no request against the team's RPM.
            tracing::info!(team = %team.id, method = %endpoint.method, path = %endpoint.path, ?why, "endpoint refused");
            return Err(self.refuse_here(endpoint.rejection(why)));
        }
        if self.attachment == Attachment::Admission
            && self
                .guardrail
                .as_ref()
                .is_some_and(RequestGuardrail::holds_answers)
        {
            // Answers never pass through tollgate on the fast attachment: they could not be held.
            tracing::error!(
                team = %team.id,
                "guardrail mode is enforce but tollgate is attached with the fast path; refusing"
            );
            return Err(self.refuse_here(Rejection::new(
                RejectionKind::GuardrailUnavailable,
                "the content guardrail enforces on answers, which needs the guarded attachment \
                 (the four-phase one, envoy/local.yaml): answers do not pass through tollgate on \
                 the fast attachment. Attach tollgate that way, or set this team's guardrail mode \
                 to observe or off",
            )));
        }
        Ok(team)
    }

    /// Admission stream of the fast attachment: the response is not ours to see, so what it
    /// needs goes to Envoy now, as dynamic metadata: the headers the route adds to the response
    /// (`%DYNAMIC_METADATA(tollgate:...)%`) and the key the access-log entry claims the request by.
    fn hand_over(&mut self, mut reply: ProcessingResponse) -> ProcessingResponse {
        if self.attachment != Attachment::Admission {
            return reply;
        }
        let Some(ticket) = &self.ticket else {
            return reply;
        };
        let mut fields: Vec<(&'static str, String)> = rate_headers(&ticket.rate);
        if let Some(note) = self.guardrail_note {
            fields.push(("x-tollgate-guardrail", note.to_owned()));
        }
        if let Some(warning) = &ticket.budget_warning {
            fields.push(("x-tollgate-budget-warning", warning.clone()));
        }
        match &self.facts {
            Some(facts) if reported_by_envoy(self.api) => {
                let ticket = self.ticket.take().expect("checked above");
                let key = self.handoffs.park(Parked {
                    ticket,
                    api: self.api,
                    facts: facts.clone(),
                });
                self.parked = Some(key);
                tracing::debug!(key, "admitted request parked for its access-log entry");
                if self.guardrail.is_some() {
                    // Observe mode (enforce is refused above): the prompt was assessed; the
                    // answer never passes through tollgate on this attachment.
                    metrics::counter!("tollgate_guardrail_answers_unassessed_total").increment(1);
                }
                fields.push((handoff::KEY, key.to_string()));
            }
            // Billed by what Envoy cannot report (how many images came back): charged as the
            // request asked when it ends, or exactly if the route sends the response here.
            Some(_) => {}
            // Not a model call: nothing billable follows.
            None => self.settle(Usage::default()),
        }
        envoy::set_dynamic_metadata(&mut reply, handoff::NAMESPACE, &fields);
        reply
    }

    /// Admission stream of the fast attachment, ending with its request still parked: the
    /// access-log entry is on its way (Envoy batches them), or will never come (Envoy could not
    /// send it). After a grace period an unclaimed request is charged its prompt, as providers
    /// bill a prompt they received.
    fn settle_unclaimed_later(&self, key: u64) {
        let handoffs = self.handoffs.clone();
        let engine = self.ctx.engine.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(key, "no runtime left to settle a parked request");
            return;
        };
        self.settlements.spawn_on(
            async move {
                tokio::time::sleep(handoff::CLAIM_GRACE).await;
                let Some(parked) = handoffs.claim(key) else {
                    return;
                };
                metrics::counter!("tollgate_extproc_handoffs_unclaimed_total").increment(1);
                tracing::warn!(
                    key,
                    "no access-log entry came for an admitted request; charging its prompt"
                );
                let usage =
                    UsageTracker::for_request(parked.api, Some(&parked.facts), true, 0).finish();
                engine
                    .settle(parked.ticket, usage, parked.api.as_str())
                    .await;
            },
            &runtime,
        );
    }

    async fn admit(&mut self, team: &Caller, call: Option<ModelCall<'_>>) -> Result<(), Rejection> {
        let ticket = self
            .ctx
            .engine
            .admit(team, call, self.request_id.as_deref())
            .await?;
        self.ticket = Some(ticket);
        Ok(())
    }

    async fn on_request_body(&mut self, body: HttpBody) -> ProcessingResponse {
        let Some(team) = self.team.clone() else {
            // Headers were refused (and Envoy stopped) or never seen: nothing to decide.
            return envoy::request_body_reply(None);
        };
        if self.ticket.is_some() {
            // Admitted at the headers (not a model call): the body is not ours to read.
            return envoy::request_body_reply(None);
        }
        if body.body.len() > self.ctx.max_request_body_bytes || !body.end_of_stream {
            return self.refuse_oversized_request();
        }
        let parsed = match parse_request(self.api, &body.body) {
            Ok(parsed) => parsed,
            Err(e) => {
                return self.refuse_here(Rejection::new(RejectionKind::InvalidBody, e.to_string()));
            }
        };
        let mut parsed = parsed;
        let call = ModelCall {
            model: &parsed.facts.model,
            prompt_chars: parsed.facts.prompt_chars,
            max_output_tokens: parsed.facts.max_output_tokens,
            units: parsed.facts.units.as_ref(),
        };
        if let Err(rejection) = self.admit(&team, Some(call)).await {
            return self.refuse(rejection);
        }
        if let Some(refusal) = self.guard_prompt(&mut parsed).await {
            // Never reached the model: nothing to charge (the RPM slot stays used).
            self.settle(Usage::default());
            return refusal;
        }
        let reply = envoy::request_body_reply(parsed.rewritten());
        self.facts = Some(parsed.facts);
        self.hand_over(reply)
    }

    /// Refuses a request body beyond the configured limit (also before all of it arrived).
    pub fn refuse_oversized_request(&self) -> ProcessingResponse {
        let limit = self.ctx.max_request_body_bytes;
        self.refuse_here(Rejection::new(
            RejectionKind::BodyTooLarge,
            format!("request body exceeds the {limit}-byte limit"),
        ))
    }

    /// Withholds an answer the output guardrail had to see whole but that outgrew what tollgate
    /// holds: it could not be checked, so, as when the guardrail fails closed, it is not delivered.
    pub fn withhold_oversized_answer(&self) -> ProcessingResponse {
        let limit = self.ctx.max_response_json_bytes;
        tracing::warn!(limit, "answer too large for the output guardrail; withheld");
        self.refuse_here(Rejection::new(
            RejectionKind::GuardrailUnavailable,
            format!("the response exceeds the {limit}-byte limit of the content guardrail and was withheld"),
        ))
    }

    /// Runs the input guardrail on the prompt. Masks its texts in the body, or returns the
    /// refusal to send instead of forwarding.
    async fn guard_prompt(&mut self, parsed: &mut ParsedRequest) -> Option<ProcessingResponse> {
        let guardrail = self.guardrail.as_ref()?;
        let verdict = guardrail.check_prompt(self.api, &mut parsed.body).await;
        self.guardrail_note = verdict.note();
        match verdict {
            PromptVerdict::Pass { .. } => None,
            PromptVerdict::Masked => {
                parsed.changed = true;
                None
            }
            PromptVerdict::Refused(mut rejection) => {
                // The request was admitted and counted: say what is left.
                rejection.rate = self.ticket.as_ref().map(|t| t.rate);
                Some(self.refuse_here(rejection))
            }
        }
    }

    fn on_response_headers(&mut self, headers: HttpHeaders) -> ProcessingResponse {
        self.response_started = true;
        let Some(ticket) = &self.ticket else {
            // A response tollgate did not admit, e.g. jwt_authn's own 401: pass it through.
            return envoy::response_headers_reply(&[], true);
        };
        let mut set = rate_headers(&ticket.rate);
        if let Some(note) = self.guardrail_note {
            set.push(("x-tollgate-guardrail", note.to_owned()));
        }
        if let Some(warning) = &ticket.budget_warning {
            set.push(("x-tollgate-budget-warning", warning.clone()));
        }
        let success = header(&headers, ":status").is_some_and(|s| s.starts_with('2'));
        let facts = self.facts.as_ref();
        if !(success && self.api.is_model_call() && facts.is_some()) || headers.end_of_stream {
            // Nothing billable follows: providers do not charge failed calls.
            self.settle(Usage::default());
            return envoy::response_headers_reply(&set, true);
        }
        let event_stream =
            header(&headers, "content-type").is_some_and(|c| c.starts_with("text/event-stream"));
        let tracker = self.usage_tracker(event_stream, self.ctx.max_response_json_bytes);
        if self.api == ApiKind::OpenAiSpeech {
            // Billed by the characters sent, known already: the audio need not pass through here.
            self.settle(tracker.finish());
            return envoy::response_headers_reply(&set, true);
        }
        self.tracker = Some(tracker);
        match self
            .guardrail
            .as_ref()
            .map(|g| g.answer_plan(self.api, event_stream))
        {
            Some(AnswerPlan::HoldWhole) => {
                self.guard_response = true;
                return envoy::response_headers_buffering_reply(&set);
            }
            Some(AnswerPlan::Stream(guard)) => self.stream_guard = Some(guard),
            Some(AnswerPlan::AssessAfter) => self.observe_answer = true,
            None => {}
        }
        envoy::response_headers_reply(&set, false)
    }

    /// Observe mode, non-streamed answer: assessed after it passed, off the response path, from
    /// the body the usage tracker buffered anyway.
    fn assess_answer_later(&self, json: Option<Vec<u8>>) {
        if let (Some(body), Some(guardrail)) = (json, &self.guardrail) {
            self.settlements
                .spawn(guardrail.assess_answer_later(self.api, body));
        }
    }

    /// Runs the output guardrail on a whole (buffered) response body; returns the replacement
    /// to send when the guardrail masks or blocks it.
    async fn guard_answer(&self, body: &[u8]) -> Option<ProcessingResponse> {
        let guardrail = self.guardrail.as_ref()?;
        let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
        let verdict = guardrail
            .check_answer(self.api, &mut value, AnswerForm::Api)
            .await;
        let note = match verdict {
            AnswerVerdict::Pass => return None,
            changed => changed.note()?,
        };
        let body = serde_json::to_vec(&value).expect("JSON values serialize");
        Some(envoy::response_body_replace_reply(
            body,
            &[("x-tollgate-guardrail", note.to_owned())],
        ))
    }

    async fn on_response_body(&mut self, body: HttpBody) -> ProcessingResponse {
        let ended = body.end_of_stream;
        if let Some(tracker) = &mut self.tracker {
            tracker.feed(&body.body);
            if ended && let Some(tracker) = self.tracker.take() {
                let (usage, json) = tracker.finish_with_body();
                self.settle(usage);
                if self.observe_answer {
                    self.assess_answer_later(json);
                }
            }
        }
        if let Some(guard) = &mut self.stream_guard {
            match guard.on_chunk(&body.body, ended).await {
                ChunkAction::Pass => {}
                ChunkAction::Replace(bytes) => return envoy::response_body_chunk_reply(bytes),
            }
        }
        if self.guard_response
            && body.end_of_stream
            && let Some(replacement) = self.guard_answer(&body.body).await
        {
            return replacement;
        }
        envoy::response_body_reply()
    }
}

/// However the exchange ends (end of stream, Envoy's reset, client disconnect, shutdown), an
/// admitted request is charged for what passed: resets bring no `end_of_stream` chunk.
impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(guard) = &mut self.stream_guard {
            guard.assess_rest_later();
        }
        if self.ticket.is_some() {
            let usage = self.usage_so_far();
            self.settle(usage);
        }
        if let Some(key) = self.parked.take() {
            self.settle_unclaimed_later(key);
        }
        metrics::gauge!("tollgate_extproc_streams_active").decrement(1.0);
    }
}

fn trailers(request: bool) -> ProcessingResponse {
    let reply = TrailersResponse::default();
    ProcessingResponse {
        response: Some(if request {
            Reply::RequestTrailers(reply)
        } else {
            Reply::ResponseTrailers(reply)
        }),
        ..Default::default()
    }
}
