//! Refusals rendered as the docs/design.md contract body plus an error object in the calling API's
//! own shape, so that the official SDKs raise their matching error (RateLimitError for 429, ...)
//! with tollgate's reason as the message.

use serde_json::{Value, json};

use super::ErrorShape;
use crate::policy::{Rejection, RejectionKind};

/// `shape`: the calling API's (an [`super::ApiKind`] converts into its own).
pub fn rejection_body(shape: impl Into<ErrorShape>, rejection: &Rejection) -> Vec<u8> {
    let mut body = json!({
        "allowed": false,
        "reason": rejection.reason,
    });
    if let Some(secs) = rejection.retry_after_secs {
        body["retry_after_seconds"] = json!(secs);
    }
    if !rejection.policies.is_empty() {
        body["policies"] = json!(rejection.policies);
    }
    let kind = rejection.kind;
    match shape.into() {
        ErrorShape::Anthropic => {
            body["type"] = json!("error");
            body["error"] = json!({"type": anthropic_type(kind), "message": rejection.reason});
        }
        ErrorShape::OpenAi => {
            body["error"] = json!({
                "message": rejection.reason,
                "type": openai_type(kind),
                "param": Value::Null,
                "code": kind.code(),
            });
        }
    }
    serde_json::to_vec(&body).expect("JSON values serialize")
}

fn openai_type(kind: RejectionKind) -> &'static str {
    match kind {
        RejectionKind::RpmExceeded => "requests",
        RejectionKind::DailyTokensExceeded
        | RejectionKind::TokensExceeded
        | RejectionKind::TpmExceeded => "tokens",
        RejectionKind::MonthlyBudgetExceeded
        | RejectionKind::BudgetExceeded
        | RejectionKind::ModelBudgetExceeded => "insufficient_quota",
        RejectionKind::Unauthenticated => "authentication_error",
        RejectionKind::Forbidden | RejectionKind::UnknownTeam | RejectionKind::ModelNotAllowed => {
            "permission_error"
        }
        RejectionKind::InvalidBody
        | RejectionKind::BodyTooLarge
        | RejectionKind::UnknownModel
        | RejectionKind::EndpointNotSupported
        | RejectionKind::GuardrailIntervened => "invalid_request_error",
        RejectionKind::Unavailable | RejectionKind::GuardrailUnavailable => "server_error",
    }
}

/// <https://docs.anthropic.com/en/api/errors>
fn anthropic_type(kind: RejectionKind) -> &'static str {
    match kind {
        RejectionKind::RpmExceeded
        | RejectionKind::TpmExceeded
        | RejectionKind::DailyTokensExceeded
        | RejectionKind::TokensExceeded
        | RejectionKind::MonthlyBudgetExceeded
        | RejectionKind::BudgetExceeded
        | RejectionKind::ModelBudgetExceeded => "rate_limit_error",
        RejectionKind::Unauthenticated => "authentication_error",
        RejectionKind::Forbidden | RejectionKind::UnknownTeam | RejectionKind::ModelNotAllowed => {
            "permission_error"
        }
        RejectionKind::InvalidBody
        | RejectionKind::UnknownModel
        | RejectionKind::GuardrailIntervened => "invalid_request_error",
        RejectionKind::BodyTooLarge => "request_too_large",
        RejectionKind::EndpointNotSupported => "not_found_error",
        RejectionKind::Unavailable | RejectionKind::GuardrailUnavailable => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ApiKind;
    use crate::policy::RateHeaders;

    fn rpm() -> Rejection {
        Rejection::rpm_exceeded(
            100,
            RateHeaders {
                rpm_limit: 100,
                ..Default::default()
            },
            42,
        )
    }

    #[test]
    fn openai_shape_carries_the_contract_fields() {
        let v: Value =
            serde_json::from_slice(&rejection_body(ApiKind::OpenAiChat, &rpm())).unwrap();
        assert_eq!(v["allowed"], json!(false));
        assert_eq!(
            v["reason"],
            json!("RPM limit exceeded: 100 requests in the last 60 s, limit 100")
        );
        assert_eq!(v["retry_after_seconds"], json!(42));
        assert_eq!(v["error"]["message"], v["reason"]);
        assert_eq!(v["error"]["code"], json!("rpm_limit_exceeded"));
    }

    #[test]
    fn anthropic_shape_is_a_typed_error() {
        let v: Value =
            serde_json::from_slice(&rejection_body(ApiKind::AnthropicMessages, &rpm())).unwrap();
        assert_eq!(v["type"], json!("error"));
        assert_eq!(v["error"]["type"], json!("rate_limit_error"));
        assert_eq!(v["retry_after_seconds"], json!(42));
    }

    #[test]
    fn no_retry_after_when_retrying_is_not_the_answer() {
        let r = Rejection::new(RejectionKind::Unauthenticated, "missing bearer token");
        let v: Value = serde_json::from_slice(&rejection_body(ApiKind::Other, &r)).unwrap();
        assert!(v.get("retry_after_seconds").is_none());
        assert_eq!(v["error"]["type"], json!("authentication_error"));
    }
}
