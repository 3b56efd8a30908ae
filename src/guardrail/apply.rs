//! Guardrail application: which texts of a prompt or an answer are assessed, how a streamed
//! answer is assessed (windows, `stream`), and what a verdict does to the request (forward,
//! mask in place, refuse, or only a note saying what enforce mode would have done). Written once
//! here; the adapters (Envoy ext_proc, agentgateway's ext_proc client, the promptGuard webhook and
//! its Lambda) only translate what comes back into their wire formats.
//!
//! The guardrail that applies to a request is resolved once, by [`Guardrails::for_request`], when
//! the request's team is known: everything after that (prompt, answer, stream) uses what it
//! returned, so a policy that differs per team has a single place to be decided.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use super::Source;
use super::policy::TeamPolicies;
use super::service::{GuardrailService, Mode, Outcome};
use super::stream::{Strategy, StreamGuard, StreamingSettings};
use crate::llm::ApiKind;
use crate::llm::texts::{
    Part, Scope, TextSlot, content_filtered, replace_texts, request_texts, response_texts,
};
use crate::policy::{Rejection, RejectionKind, Team};

/// What an answer becomes when the guardrail could not check it and fails closed.
pub const WITHHELD_ANSWER: &str = "The response could not be checked and was withheld.";

/// Which texts are assessed and how streamed answers are.
#[derive(Clone, Debug)]
pub struct Application {
    /// How far back in a conversation the prompt's texts are assessed.
    pub scope: Scope,
    /// Which parts of a prompt are assessed (system, user, tool results).
    pub parts: Vec<Part>,
    pub streaming: StreamingSettings,
}

impl Default for Application {
    fn default() -> Self {
        Self {
            scope: Scope::default(),
            parts: Part::ALL.to_vec(),
            streaming: StreamingSettings::default(),
        }
    }
}

/// The configured guardrails, shared by every adapter.
#[derive(Clone, Default)]
pub struct Guardrails {
    /// `None` when guardrails are off.
    service: Option<Arc<GuardrailService>>,
    application: Arc<Application>,
    /// For teams with a guardrail policy of their own (`Team::guardrail`); `None`: every team
    /// has the global one.
    teams: Option<Arc<TeamPolicies>>,
}

impl Guardrails {
    pub fn new(service: Option<Arc<GuardrailService>>, application: Application) -> Self {
        Self {
            service,
            application: Arc::new(application),
            teams: None,
        }
    }

    /// With per-team policies: a team's `guardrail` mode and Bedrock guardrail win over the
    /// global ones.
    pub fn with_team_policies(mut self, teams: TeamPolicies) -> Self {
        self.teams = Some(Arc::new(teams));
        self
    }

    /// Guardrails off.
    pub fn off() -> Self {
        Self::default()
    }

    /// The guardrail that applies to one request, or `None` when none does. `team` is the
    /// request's team where the adapter knows it (the webhook's answer call does not say).
    pub fn for_request(&self, team: Option<&Team>) -> Option<RequestGuardrail> {
        let service = match (team.and_then(|t| t.guardrail.as_ref()), &self.teams) {
            (Some(policy), Some(teams)) => teams.service(policy, self.service.as_ref())?,
            _ => self.service.clone()?,
        };
        Some(RequestGuardrail {
            service,
            application: self.application.clone(),
        })
    }
}

/// The guardrail of one request.
#[derive(Clone)]
pub struct RequestGuardrail {
    service: Arc<GuardrailService>,
    application: Arc<Application>,
}

/// What the prompt check decided.
#[derive(Debug)]
pub enum PromptVerdict {
    /// Forward unchanged; `note` is what the guardrail would have done (`x-tollgate-guardrail`).
    Pass { note: Option<&'static str> },
    /// The prompt's texts were masked in the body: forward the body.
    Masked,
    /// Refuse: the guardrail blocked the prompt, or could not check it and fails closed.
    Refused(Rejection),
}

impl PromptVerdict {
    /// `x-tollgate-guardrail` for the response to a forwarded prompt.
    pub fn note(&self) -> Option<&'static str> {
        match self {
            PromptVerdict::Pass { note } => *note,
            PromptVerdict::Masked => Some("anonymized"),
            PromptVerdict::Refused(_) => None,
        }
    }
}

/// What the body of an answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerForm {
    /// The provider's whole response, in its API's shape: a blocked or unchecked answer ends
    /// with the API's content-filter ending.
    Api,
    /// Only the answer's texts (`{"choices":[{"message":{"role","content"}}]}`, as agentgateway
    /// sends them): a blocked answer's texts are each replaced by the guardrail's message, and an
    /// unchecked one is left for the adapter to refuse.
    TextsOnly,
}

/// What the answer check decided. The body was rewritten in place where the verdict says so.
#[derive(Debug, PartialEq)]
pub enum AnswerVerdict {
    Pass,
    Masked,
    Blocked {
        policies: Vec<String>,
    },
    /// Not checked (the guardrail failed, fail mode closed): must not be delivered as it was.
    Withheld,
}

impl AnswerVerdict {
    /// `x-tollgate-guardrail` for a changed answer.
    pub fn note(&self) -> Option<&'static str> {
        match self {
            AnswerVerdict::Pass => None,
            AnswerVerdict::Masked => Some("anonymized"),
            AnswerVerdict::Blocked { .. } => Some("blocked"),
            AnswerVerdict::Withheld => Some("unavailable"),
        }
    }
}

/// How the answer passes the guardrail, decided when the response starts.
pub enum AnswerPlan {
    /// Enforce mode, whole answer: nothing of it may reach the client before the guardrail saw
    /// all of it, so the adapter holds the body and calls [`RequestGuardrail::check_answer`].
    HoldWhole,
    /// A streamed answer, assessed in windows as it passes (held per window in enforce mode with
    /// the buffered strategy; alongside otherwise).
    Stream(Box<StreamGuard>),
    /// Observe mode, whole answer: it passes at once and is assessed afterwards, off the
    /// response path ([`RequestGuardrail::assess_answer_later`]).
    AssessAfter,
}

impl RequestGuardrail {
    pub fn mode(&self) -> Mode {
        self.service.mode()
    }

    /// Runs the input guardrail on the prompt's texts (those `scope` and `parts` select), masking
    /// them in `body` when it says so. `api` is the shape of `body`.
    pub async fn check_prompt(&self, api: ApiKind, body: &mut Value) -> PromptVerdict {
        let app = &self.application;
        let mut slots = request_texts(api, body, app.scope);
        slots.retain(|s| app.parts.contains(&Part::of(body, &s.pointer)));
        if slots.is_empty() {
            return PromptVerdict::Pass { note: None };
        }
        match self.service.check(Source::Input, &texts_of(&slots)).await {
            Outcome::Pass { note } => PromptVerdict::Pass { note },
            Outcome::Mask { texts } => {
                replace_texts(body, slots, texts);
                PromptVerdict::Masked
            }
            Outcome::Block { message, policies } => {
                let mut rejection = Rejection::new(RejectionKind::GuardrailIntervened, message);
                rejection.policies = policies;
                PromptVerdict::Refused(rejection)
            }
            Outcome::Unavailable { error } => {
                tracing::warn!(%error, "guardrail unavailable; refusing (fail mode closed)");
                PromptVerdict::Refused(Rejection::new(
                    RejectionKind::GuardrailUnavailable,
                    "content guardrail unavailable",
                ))
            }
        }
    }

    /// Answers must be held until the guardrail saw them (enforce mode): only an attachment with
    /// a synchronous response phase can apply this guardrail.
    pub fn holds_answers(&self) -> bool {
        self.mode() == Mode::Enforce
    }

    /// How an answer of `api` passes the guardrail; `event_stream`: it comes as server-sent events.
    pub fn answer_plan(&self, api: ApiKind, event_stream: bool) -> AnswerPlan {
        let enforcing = self.holds_answers();
        if !event_stream {
            return if enforcing {
                AnswerPlan::HoldWhole
            } else {
                AnswerPlan::AssessAfter
            };
        }
        let mut streaming = self.application.streaming;
        if !enforcing {
            // Observe mode never blocks: it assesses alongside, as the async strategy does.
            streaming.strategy = Strategy::Async;
        }
        AnswerPlan::Stream(Box::new(StreamGuard::new(
            api,
            self.service.clone(),
            streaming,
        )))
    }

    /// Runs the output guardrail on a whole answer, rewriting `body` (of `form`) as the verdict
    /// says: masked texts, or the guardrail's message in place of the answer.
    pub async fn check_answer(
        &self,
        api: ApiKind,
        body: &mut Value,
        form: AnswerForm,
    ) -> AnswerVerdict {
        let slots = response_texts(api, body);
        if slots.is_empty() {
            return AnswerVerdict::Pass;
        }
        match self.service.check(Source::Output, &texts_of(&slots)).await {
            Outcome::Pass { .. } => AnswerVerdict::Pass,
            Outcome::Mask { texts } => {
                replace_texts(body, slots, texts);
                AnswerVerdict::Masked
            }
            Outcome::Block { message, policies } => {
                match form {
                    AnswerForm::Api => content_filtered(api, body, &message),
                    AnswerForm::TextsOnly => {
                        let filtered = slots.iter().map(|_| message.clone()).collect();
                        replace_texts(body, slots, filtered);
                    }
                }
                AnswerVerdict::Blocked { policies }
            }
            Outcome::Unavailable { error } => {
                tracing::warn!(%error, "guardrail unavailable; withholding the answer (fail mode closed)");
                if form == AnswerForm::Api {
                    content_filtered(api, body, WITHHELD_ANSWER);
                }
                AnswerVerdict::Withheld
            }
        }
    }

    /// Observe mode, whole answer: the assessment of an answer that already passed, for the
    /// record. The adapter runs it in the background, off the response path.
    pub fn assess_answer_later(
        &self,
        api: ApiKind,
        body: Vec<u8>,
    ) -> impl Future<Output = ()> + Send + use<> {
        let service = self.service.clone();
        async move {
            if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                let texts = texts_of(&response_texts(api, &value));
                if !texts.is_empty() {
                    service.check(Source::Output, &texts).await;
                }
            }
        }
    }
}

fn texts_of(slots: &[TextSlot]) -> Vec<String> {
    slots.iter().map(|s| s.text.clone()).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::guardrail::local::{LocalGuardrail, LocalGuardrailConfig};

    fn guardrails(mode: Mode, parts: Vec<Part>) -> Guardrails {
        let config: LocalGuardrailConfig = serde_json::from_value(json!({
            "pii": [{"type": "EMAIL", "action": "ANONYMIZE"}],
            "words": ["moonshine"],
            "blocked_input_message": "prompt blocked",
            "blocked_output_message": "answer blocked"
        }))
        .unwrap();
        let service =
            GuardrailService::new(Arc::new(LocalGuardrail::new(config).unwrap()), mode, true);
        Guardrails::new(
            Some(Arc::new(service)),
            Application {
                parts,
                ..Default::default()
            },
        )
    }

    fn enforcing() -> RequestGuardrail {
        guardrails(Mode::Enforce, Part::ALL.to_vec())
            .for_request(None)
            .unwrap()
    }

    fn chat(system: &str, user: &str) -> Value {
        json!({"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]})
    }

    #[test]
    fn guardrails_off_apply_to_no_request() {
        assert!(Guardrails::off().for_request(None).is_none());
    }

    #[tokio::test]
    async fn a_prompt_is_masked_in_place_or_refused_with_the_guardrails_message() {
        let guardrail = enforcing();
        let mut body = chat("be brief", "mail me at a@b.example");
        let verdict = guardrail.check_prompt(ApiKind::OpenAiChat, &mut body).await;
        assert_eq!(verdict.note(), Some("anonymized"));
        assert_eq!(body["messages"][1]["content"], "mail me at {EMAIL}");

        let mut body = chat("be brief", "some moonshine please");
        let PromptVerdict::Refused(rejection) =
            guardrail.check_prompt(ApiKind::OpenAiChat, &mut body).await
        else {
            panic!("not refused")
        };
        assert_eq!(rejection.kind, RejectionKind::GuardrailIntervened);
        assert_eq!(rejection.reason, "prompt blocked");
        assert_eq!(rejection.policies, ["word"]);
    }

    #[tokio::test]
    async fn only_the_configured_parts_of_a_prompt_are_assessed() {
        let guardrail = guardrails(Mode::Enforce, vec![Part::User])
            .for_request(None)
            .unwrap();
        let mut body = chat("moonshine in the system prompt", "hello");
        let verdict = guardrail.check_prompt(ApiKind::OpenAiChat, &mut body).await;
        assert!(
            matches!(verdict, PromptVerdict::Pass { note: None }),
            "{verdict:?}"
        );
    }

    #[tokio::test]
    async fn observe_mode_notes_what_enforce_would_do_and_changes_nothing() {
        let guardrail = guardrails(Mode::Observe, Part::ALL.to_vec())
            .for_request(None)
            .unwrap();
        let mut body = chat("", "some moonshine please");
        let before = body.clone();
        let verdict = guardrail.check_prompt(ApiKind::OpenAiChat, &mut body).await;
        assert_eq!(verdict.note(), Some("would-block"));
        assert_eq!(body, before);
        assert!(matches!(
            guardrail.answer_plan(ApiKind::OpenAiChat, false),
            AnswerPlan::AssessAfter
        ));
    }

    #[tokio::test]
    async fn a_blocked_answer_takes_the_form_of_its_body() {
        let guardrail = enforcing();
        let mut api = json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "moonshine recipe"}}]});
        let verdict = guardrail
            .check_answer(ApiKind::OpenAiChat, &mut api, AnswerForm::Api)
            .await;
        assert_eq!(verdict.note(), Some("blocked"));
        assert_eq!(api["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(api["choices"][0]["message"]["content"], "answer blocked");

        let mut texts =
            json!({"choices": [{"message": {"role": "assistant", "content": "moonshine"}}]});
        guardrail
            .check_answer(ApiKind::OpenAiChat, &mut texts, AnswerForm::TextsOnly)
            .await;
        assert_eq!(
            texts,
            json!({"choices": [{"message": {"role": "assistant", "content": "answer blocked"}}]}),
            "agentgateway's mask carries role and content only"
        );
    }

    #[test]
    fn enforce_mode_holds_whole_answers_and_streams_in_windows() {
        let guardrail = enforcing();
        assert!(matches!(
            guardrail.answer_plan(ApiKind::OpenAiChat, false),
            AnswerPlan::HoldWhole
        ));
        assert!(matches!(
            guardrail.answer_plan(ApiKind::OpenAiChat, true),
            AnswerPlan::Stream(_)
        ));
    }
}
