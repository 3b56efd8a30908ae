//! The agentgateway promptGuard webhook contract (docs/design.md): `POST /request` decides
//! whether a prompt may go (identity, the endpoint catalogue, RPM, daily tokens, budget and model
//! caps, then the input guardrail), `POST /response` runs the output guardrail on the answer.
//!
//! agentgateway reads the reply as an untagged enum tried in the order mask, reject, pass. So a
//! reject always carries `status_code` and a string `body` (without them it would read as a
//! pass), and a mask always carries every message or choice it was given (agentgateway replaces
//! the whole list with it), each with only `role` and `content`.
//!
//! Usage is not seen here (the answer's usage never reaches the webhook): tokens and spend of
//! webhook-admitted requests are debited from agentgateway's access logs (`accesslog`). Those
//! carry token counts only, so endpoints billed per image or character are refused here.

pub mod http;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine::{Caller, Engine, ModelCall};
use crate::guardrail::apply::{AnswerForm, AnswerVerdict, Guardrails, PromptVerdict};
use crate::identity::{Authenticator, INVOKE_SCOPE};
use crate::llm::errors::rejection_body;
use crate::llm::{ApiKind, Endpoint, Endpoints, ErrorShape, Refusal, Treatment};
use crate::policy::{Rejection, RejectionKind, Team};

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
    pub fn refuse(shape: impl Into<ErrorShape>, rejection: &Rejection) -> Self {
        Action::Reject {
            status_code: rejection.kind.status(),
            body: String::from_utf8(rejection_body(shape, rejection)).expect("JSON is UTF-8"),
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
    /// CEL `request.path`: which endpoint is called (metered, free or refused), and so the
    /// error shape refusals take.
    pub path: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// The project the request names (`policy.project_header`), if any.
    pub project: Option<&'a str>,
}

pub struct Webhook {
    pub engine: Arc<Engine>,
    pub auth: Arc<Authenticator>,
    /// Content guardrails, applied as `guardrail::apply` decides.
    pub guardrails: Guardrails,
    /// Named in the refusal when the model header is missing, so the fix is obvious.
    pub model_header: String,
    /// Named in the refusal when the path header is missing.
    pub path_header: String,
}

impl Webhook {
    /// `POST /request`: admission, then the input guardrail.
    pub async fn check_prompt(&self, facts: RequestFacts<'_>, prompt: PromptMessages) -> Action {
        let endpoint = endpoint_of(self.engine.endpoints(), facts.path);
        let shape = shape_of(endpoint.as_ref());
        let action = match self.admit(endpoint, facts, &prompt).await {
            Err(action) => action,
            Ok(team) => match self.guard_prompt(&team, shape, prompt).await {
                Some(action) => action,
                None => Action::Pass {
                    reason: format!("admitted for team {}", team.id),
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
        endpoint: Option<Endpoint>,
        facts: RequestFacts<'_>,
        prompt: &PromptMessages,
    ) -> Result<Caller, Action> {
        let shape = shape_of(endpoint.as_ref());
        let principal = self
            .auth
            .authenticate_header(facts.authorization, INVOKE_SCOPE)
            .await
            .map_err(|e| self.refuse_here(shape, e.rejection()))?;
        let mut team = self
            .engine
            .team_for(&principal)
            .await
            .map_err(|r| refused(shape, &r))?;
        team.project = facts.project.map(str::to_owned);
        let endpoint = endpoint.ok_or_else(|| {
            self.misconfigured(
                shape,
                &self.path_header,
                "request.path",
                "which endpoint is called",
            )
        })?;
        let api = match endpoint.treatment {
            Treatment::Refused(why) => return Err(self.refuse_here(shape, endpoint.rejection(why))),
            Treatment::Metered(api) if !api.billed_by_tokens() => {
                return Err(self.refuse_here(shape, endpoint.rejection(Refusal::UnitsNotReported)));
            }
            Treatment::Metered(api) => api,
            Treatment::Free => {
                // A free call counts against RPM only: its ticket has nothing to charge or release.
                self.engine
                    .admit(&team, None, facts.request_id)
                    .await
                    .map_err(|r| refused(shape, &r))?;
                return Ok(team);
            }
        };
        let model = facts
            .model
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| {
                self.misconfigured(
                    shape,
                    &self.model_header,
                    "llmRequest.model",
                    "which model is called",
                )
            })?;
        let call = ModelCall {
            model,
            prompt_chars: prompt.messages.iter().map(|m| m.content.len() as u64).sum(),
            // Embeddings generate no tokens; other calls are capped by nothing the webhook sees.
            max_output_tokens: (api == ApiKind::OpenAiEmbeddings).then_some(0),
            units: None,
        };
        // Usage arrives later from access logs, which charge the call whatever happens here.
        let warning = self
            .engine
            .admit_reported_later(&team, call, facts.request_id)
            .await
            .map_err(|r| refused(shape, &r))?;
        if let Some(warning) = warning {
            // No response headers can be set through the webhook: the warning is logged only.
            tracing::warn!(team = %team.id, warning, "budget warning");
        }
        Ok(team)
    }

    /// A refusal for a header the gateway's webhook configuration must set and did not.
    fn misconfigured(&self, shape: ErrorShape, header: &str, cel: &str, what: &str) -> Action {
        tracing::error!(
            header,
            "webhook call without the {header} header: set it in the agentgateway webhook's `headers:` to the CEL `{cel}`"
        );
        let reason = format!("the gateway did not say {what} (header {header})");
        self.refuse_here(shape, Rejection::new(RejectionKind::InvalidBody, reason))
    }

    async fn guard_prompt(
        &self,
        team: &Team,
        shape: ErrorShape,
        prompt: PromptMessages,
    ) -> Option<Action> {
        let guardrail = self.guardrails.for_request(Some(team))?;
        // The messages are chat-shaped whatever the client's API: assess them as such.
        let mut body = json!(prompt);
        match guardrail.check_prompt(ApiKind::OpenAiChat, &mut body).await {
            PromptVerdict::Pass { .. } => None,
            PromptVerdict::Masked => Some(Action::Mask {
                body,
                reason: "guardrail anonymized the prompt".into(),
            }),
            PromptVerdict::Refused(rejection) => Some(self.refuse_here(shape, rejection)),
        }
    }

    /// A refusal decided here rather than by the engine (which counts its own): counted, then
    /// answered.
    pub fn refuse_here(&self, shape: impl Into<ErrorShape>, rejection: Rejection) -> Action {
        self.engine.count_decision(rejection.kind);
        refused(shape, &rejection)
    }

    async fn guard_answer(&self, answer: AnswerChoices) -> Action {
        let pass = || Action::Pass {
            reason: "answer allowed".into(),
        };
        // The answer call does not say whose request it was.
        let Some(guardrail) = self.guardrails.for_request(None) else {
            return pass();
        };
        let mut body = json!(answer);
        let verdict = guardrail
            .check_answer(ApiKind::OpenAiChat, &mut body, AnswerForm::TextsOnly)
            .await;
        match verdict {
            AnswerVerdict::Pass => pass(),
            AnswerVerdict::Masked => Action::Mask {
                body,
                reason: "guardrail anonymized the answer".into(),
            },
            AnswerVerdict::Blocked { policies } => Action::Mask {
                body,
                reason: format!("guardrail blocked the answer ({})", policies.join(", ")),
            },
            AnswerVerdict::Withheld => refused(
                ApiKind::OpenAiChat,
                &Rejection::new(
                    RejectionKind::GuardrailUnavailable,
                    "the answer could not be checked and was withheld",
                ),
            ),
        }
    }
}

/// The endpoint of the client's request, from its path. agentgateway calls the webhook for the
/// LLM requests it parsed, which are POSTs.
pub fn endpoint_of(endpoints: &Endpoints, path: Option<&str>) -> Option<Endpoint> {
    path.map(|path| endpoints.classify("POST", path))
}

/// The error shape refusals take: the endpoint's, OpenAI's when the path is unknown.
pub fn shape_of(endpoint: Option<&Endpoint>) -> ErrorShape {
    endpoint.map_or(ErrorShape::OpenAi, |e| e.shape)
}

fn refused(shape: impl Into<ErrorShape>, rejection: &Rejection) -> Action {
    tracing::info!(
        status = rejection.kind.status(),
        reason = %rejection.reason,
        "webhook refused"
    );
    Action::refuse(shape, rejection)
}

fn count(phase: &'static str, action: &Action) {
    metrics::counter!("tollgate_webhook_calls_total", "phase" => phase, "action" => action.name())
        .increment(1);
}
