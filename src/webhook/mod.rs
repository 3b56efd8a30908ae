//! The agentgateway promptGuard webhook contract (docs/design.md): `POST /request` decides
//! whether a prompt may go (identity, RPM, daily tokens, budget and model caps, then the input
//! guardrail), `POST /response` runs the output guardrail on the answer.
//!
//! agentgateway reads the reply as an untagged enum tried in the order mask, reject, pass. So a
//! reject always carries `status_code` and a string `body` (without them it would read as a
//! pass), and a mask always carries every message or choice it was given (agentgateway replaces
//! the whole list with it), each with only `role` and `content`.
//!
//! Usage is not seen here (the answer's usage never reaches the webhook): tokens and spend of
//! webhook-admitted requests are debited from agentgateway's access logs (`accesslog`).

pub mod http;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{Engine, ModelCall};
use crate::guardrail::Source;
use crate::guardrail::service::{GuardrailService, Outcome};
use crate::identity::{Authenticator, INVOKE_SCOPE};
use crate::llm::ApiKind;
use crate::llm::errors::rejection_body;
use crate::llm::texts::{Part, Scope, replace_texts, request_texts, response_texts};
use crate::policy::{Rejection, RejectionKind};

/// One chat message as agentgateway sends it: its text only, flattened.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Choice {
    pub message: Message,
}

/// `POST /request`: `{"body":{"messages":[...]}}`.
#[derive(Debug, Deserialize)]
pub struct PromptCheck {
    pub body: PromptMessages,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct PromptMessages {
    pub messages: Vec<Message>,
}

/// `POST /response`: `{"body":{"choices":[...]}}`.
#[derive(Debug, Deserialize)]
pub struct AnswerCheck {
    pub body: AnswerChoices,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct AnswerChoices {
    pub choices: Vec<Choice>,
}

/// The reply's `action`.
#[derive(Debug, PartialEq)]
pub enum Action {
    Pass {
        reason: String,
    },
    /// `body` is `{"messages":[...]}` or `{"choices":[...]}`, as many as were sent.
    Mask {
        body: Value,
        reason: String,
    },
    /// What agentgateway answers the client with instead of calling (or returning) the model.
    Reject {
        status_code: u16,
        body: String,
        reason: String,
    },
}

impl Action {
    /// The reply document, `{"action": {...}}`.
    pub fn to_reply(&self) -> Value {
        let action = match self {
            Action::Pass { reason } => json!({"reason": reason}),
            Action::Mask { body, reason } => json!({"body": body, "reason": reason}),
            Action::Reject {
                status_code,
                body,
                reason,
            } => json!({"body": body, "status_code": status_code, "reason": reason}),
        };
        json!({ "action": action })
    }

    fn name(&self) -> &'static str {
        match self {
            Action::Pass { .. } => "pass",
            Action::Mask { .. } => "mask",
            Action::Reject { .. } => "reject",
        }
    }

    /// A refusal in the contract's shape for the client's API (`allowed`, `reason`, and the
    /// API's own error object), as the string agentgateway sends back verbatim.
    pub fn refuse(api: ApiKind, rejection: &Rejection) -> Self {
        Action::Reject {
            status_code: rejection.kind.status(),
            body: String::from_utf8(rejection_body(api, rejection)).expect("JSON is UTF-8"),
            reason: format!("{}: {}", rejection.kind.code(), rejection.reason),
        }
    }
}

/// What agentgateway tells about the client's request besides the messages: headers it forwards
/// (`forwardHeaderMatches`) or computes with CEL (`headers:`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestFacts<'a> {
    pub authorization: Option<&'a str>,
    /// CEL `llmRequest.model`.
    pub model: Option<&'a str>,
    /// CEL `request.path`: which API's error shape refusals take.
    pub path: Option<&'a str>,
    pub request_id: Option<&'a str>,
}

pub struct Webhook {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    pub guardrail: Option<Arc<GuardrailService>>,
    pub guardrail_scope: Scope,
    pub guardrail_parts: Vec<Part>,
    /// Named in the refusal when the model header is missing, so the fix is obvious.
    pub model_header: String,
}

impl Webhook {
    /// `POST /request`: admission, then the input guardrail.
    pub async fn check_prompt(&self, facts: RequestFacts<'_>, prompt: PromptMessages) -> Action {
        let api = api_of(facts.path);
        let action = match self.admit(api, facts, &prompt).await {
            Err(action) => action,
            Ok(team) => match self.guard_prompt(api, prompt).await {
                Some(action) => action,
                None => Action::Pass {
                    reason: format!("admitted for team {team}"),
                },
            },
        };
        count("request", &action);
        action
    }

    /// `POST /response`: the output guardrail. A blocked answer is replaced by the guardrail's
    /// message in every choice (as Bedrock's own blocked-output message would be), so the client
    /// gets a normal answer that says it was filtered.
    pub async fn check_answer(&self, answer: AnswerChoices) -> Action {
        let action = self.guard_answer(answer).await;
        count("response", &action);
        action
    }

    /// The team, once the request is admitted and counted; else the refusal.
    async fn admit(
        &self,
        api: ApiKind,
        facts: RequestFacts<'_>,
        prompt: &PromptMessages,
    ) -> Result<String, Action> {
        let principal = self
            .auth
            .authenticate_header(facts.authorization, INVOKE_SCOPE)
            .await
            .map_err(|e| self.refuse_here(api, e.rejection()))?;
        let team = self
            .engine
            .team_for(&principal)
            .await
            .map_err(|r| refused(api, &r))?;
        let model = facts.model.filter(|m| !m.trim().is_empty()).ok_or_else(|| {
            tracing::error!(
                header = %self.model_header,
                "webhook call without the model header: set it in the agentgateway webhook's `headers:` to the CEL `llmRequest.model`"
            );
            let reason = format!(
                "the gateway did not say which model is called (header {})",
                self.model_header
            );
            self.refuse_here(api, Rejection::new(RejectionKind::InvalidBody, reason))
        })?;
        let call = ModelCall {
            model,
            prompt_chars: prompt.messages.iter().map(|m| m.content.len() as u64).sum(),
            max_output_tokens: None,
        };
        let ticket = self
            .engine
            .admit(&team, Some(call), facts.request_id)
            .await
            .map_err(|r| refused(api, &r))?;
        if let Some(warning) = &ticket.budget_warning {
            // No response headers can be set through the webhook: the warning is logged only.
            tracing::warn!(team = %team.id, warning, "budget warning");
        }
        // Usage arrives later from access logs; a reservation would never be settled here.
        self.engine.release(ticket).await;
        Ok(team.id.clone())
    }

    async fn guard_prompt(&self, api: ApiKind, prompt: PromptMessages) -> Option<Action> {
        let guard = self.guardrail.as_ref()?;
        // The messages are chat-shaped whatever the client's API: assess them as such.
        let mut body = json!(prompt);
        let mut slots = request_texts(ApiKind::OpenAiChat, &body, self.guardrail_scope);
        slots.retain(|s| self.guardrail_parts.contains(&Part::of(&body, &s.pointer)));
        if slots.is_empty() {
            return None;
        }
        let texts: Vec<String> = slots.iter().map(|s| s.text.clone()).collect();
        match guard.check(Source::Input, &texts).await {
            Outcome::Pass { .. } => None,
            Outcome::Mask { texts: masked } => {
                replace_texts(&mut body, slots, masked);
                Some(Action::Mask {
                    body,
                    reason: "guardrail anonymized the prompt".into(),
                })
            }
            Outcome::Block { message, policies } => {
                let mut rejection = Rejection::new(RejectionKind::GuardrailIntervened, message);
                rejection.policies = policies;
                Some(self.refuse_here(api, rejection))
            }
            Outcome::Unavailable { error } => {
                tracing::warn!(%error, "guardrail unavailable; refusing (fail mode closed)");
                Some(self.refuse_here(
                    api,
                    Rejection::new(
                        RejectionKind::GuardrailUnavailable,
                        "content guardrail unavailable",
                    ),
                ))
            }
        }
    }

    /// A refusal decided here rather than by the engine (which counts its own): counted, then
    /// answered.
    pub fn refuse_here(&self, api: ApiKind, rejection: Rejection) -> Action {
        self.engine.count_decision(rejection.kind);
        refused(api, &rejection)
    }

    async fn guard_answer(&self, answer: AnswerChoices) -> Action {
        let pass = || Action::Pass {
            reason: "answer allowed".into(),
        };
        let Some(guard) = &self.guardrail else {
            return pass();
        };
        let mut body = json!(answer);
        let slots = response_texts(ApiKind::OpenAiChat, &body);
        if slots.is_empty() {
            return pass();
        }
        let texts: Vec<String> = slots.iter().map(|s| s.text.clone()).collect();
        match guard.check(Source::Output, &texts).await {
            Outcome::Pass { .. } => pass(),
            Outcome::Mask { texts: masked } => {
                replace_texts(&mut body, slots, masked);
                Action::Mask {
                    body,
                    reason: "guardrail anonymized the answer".into(),
                }
            }
            Outcome::Block { message, policies } => {
                let filtered = slots.iter().map(|_| message.clone()).collect();
                replace_texts(&mut body, slots, filtered);
                Action::Mask {
                    body,
                    reason: format!("guardrail blocked the answer ({})", policies.join(", ")),
                }
            }
            Outcome::Unavailable { error } => {
                tracing::warn!(%error, "guardrail unavailable; withholding the answer (fail mode closed)");
                refused(
                    ApiKind::OpenAiChat,
                    &Rejection::new(
                        RejectionKind::GuardrailUnavailable,
                        "the answer could not be checked and was withheld",
                    ),
                )
            }
        }
    }
}

/// The API whose error shape refusals take, from the client's request path (chat when unknown).
pub fn api_of(path: Option<&str>) -> ApiKind {
    path.map(ApiKind::from_path)
        .filter(|api| api.is_model_call())
        .unwrap_or(ApiKind::OpenAiChat)
}

fn refused(api: ApiKind, rejection: &Rejection) -> Action {
    tracing::info!(
        status = rejection.kind.status(),
        reason = %rejection.reason,
        "webhook refused"
    );
    Action::refuse(api, rejection)
}

fn count(phase: &'static str, action: &Action) {
    metrics::counter!("tollgate_webhook_calls_total", "phase" => phase, "action" => action.name())
        .increment(1);
}
