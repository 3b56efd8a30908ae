//! Provider wire formats: which API a request speaks, the facts policy needs from its body, the
//! token usage in its response (JSON or SSE), and errors in the API's own shape.

pub mod errors;
pub mod request;
pub mod sse;
pub mod texts;
pub mod usage;

pub use request::{BodyError, ParsedRequest, RequestFacts, parse_request};
pub use usage::UsageTracker;

/// The LLM API a request is addressed to, by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    OpenAiChat,
    OpenAiResponses,
    AnthropicMessages,
    /// Anything else (model lists, health checks): admitted and rate limited, never parsed.
    Other,
}

impl ApiKind {
    /// Matches on the path's ending so that prefixed routes (`/openai/v1/chat/completions`) work.
    pub fn from_path(path: &str) -> Self {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Self::OpenAiChat
        } else if path.ends_with("/responses") {
            Self::OpenAiResponses
        } else if path.ends_with("/messages") {
            Self::AnthropicMessages
        } else {
            Self::Other
        }
    }

    /// Whether requests carry a model call whose body and usage matter.
    pub fn is_model_call(self) -> bool {
        !matches!(self, Self::Other)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAiChat => "openai_chat",
            Self::OpenAiResponses => "openai_responses",
            Self::AnthropicMessages => "anthropic_messages",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_from_path() {
        assert_eq!(
            ApiKind::from_path("/v1/chat/completions"),
            ApiKind::OpenAiChat
        );
        assert_eq!(
            ApiKind::from_path("/openai/v1/chat/completions?x=1"),
            ApiKind::OpenAiChat
        );
        assert_eq!(
            ApiKind::from_path("/v1/responses"),
            ApiKind::OpenAiResponses
        );
        assert_eq!(
            ApiKind::from_path("/v1/messages/"),
            ApiKind::AnthropicMessages
        );
        assert_eq!(ApiKind::from_path("/v1/models"), ApiKind::Other);
    }
}
