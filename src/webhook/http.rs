//! The webhook over HTTP. Every answer is HTTP 200 with an action document, refusals included:
//! agentgateway acts on the action and ignores the status, and a reply it cannot parse would be
//! a webhook failure (503 to the client) rather than the refusal tollgate meant.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::de::DeserializeOwned;

use super::{Action, AnswerCheck, PromptCheck, RequestFacts, Webhook, endpoint_of, shape_of};
use crate::config::WebhookSettings;
use crate::llm::ErrorShape;
use crate::policy::{Rejection, RejectionKind};

pub struct WebhookState {
    pub webhook: Webhook,
    pub settings: WebhookSettings,
    /// Larger call bodies are refused (413 to the client).
    pub max_body_bytes: usize,
}

pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/request", post(check_prompt))
        .route("/response", post(check_answer))
        .with_state(state)
}

async fn check_prompt(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let endpoint = endpoint_of(
        state.webhook.engine.endpoints(),
        header(&parts.headers, &state.settings.path_header),
    );
    let shape = shape_of(endpoint.as_ref());
    let check: PromptCheck = match state.read(&parts.headers, body, shape).await {
        Ok(check) => check,
        Err(refusal) => return reply(&refusal),
    };
    let facts = RequestFacts {
        authorization: header(&parts.headers, header::AUTHORIZATION.as_str()),
        model: header(&parts.headers, &state.settings.model_header),
        path: header(&parts.headers, &state.settings.path_header),
        request_id: header(&parts.headers, "x-request-id"),
        project: (state.webhook.engine.project_header()).and_then(|h| header(&parts.headers, h)),
    };
    reply(&state.webhook.check_prompt(facts, check.body).await)
}

async fn check_answer(State(state): State<Arc<WebhookState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let check: AnswerCheck = match state.read(&parts.headers, body, ErrorShape::OpenAi).await {
        Ok(check) => check,
        Err(refusal) => return reply(&refusal),
    };
    reply(&state.webhook.check_answer(check.body).await)
}

impl WebhookState {
    /// The call's document, once its secret is checked; else the refusal to reply with.
    async fn read<T: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: Body,
        shape: ErrorShape,
    ) -> Result<T, Action> {
        let refuse = |kind: RejectionKind, reason: String| {
            self.webhook
                .refuse_here(shape, Rejection::new(kind, reason))
        };
        if let Some(secret) = &self.settings.secret {
            let given = header(headers, &self.settings.secret_header).unwrap_or_default();
            if !constant_time_eq(given.as_bytes(), secret.as_bytes()) {
                return Err(refuse(
                    RejectionKind::Unauthenticated,
                    format!(
                        "webhook call without the right {} header",
                        self.settings.secret_header
                    ),
                ));
            }
        }
        let bytes = axum::body::to_bytes(body, self.max_body_bytes)
            .await
            .map_err(|_| {
                refuse(
                    RejectionKind::BodyTooLarge,
                    format!(
                        "webhook call body exceeds the {}-byte limit",
                        self.max_body_bytes
                    ),
                )
            })?;
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut json).map_err(|e| {
            refuse(
                RejectionKind::InvalidBody,
                format!("malformed webhook call at {}: {}", e.path(), e.inner()),
            )
        })
    }
}

fn reply(action: &Action) -> Response {
    axum::Json(action.to_reply()).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Compares without an early exit, so the time taken says nothing about the secret.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
