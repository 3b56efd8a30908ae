//! Provider wire formats: which endpoint a request is addressed to (the catalogue), the facts
//! policy needs from its body, the usage in its response (JSON or SSE), and errors in the API's
//! own shape.

pub mod endpoints;
pub mod errors;
pub mod request;
pub mod sse;
pub mod texts;
pub mod usage;

pub use endpoints::{Endpoint, Endpoints, ErrorShape, Refusal, Treatment};
pub use request::{BodyError, ParsedRequest, RequestFacts, parse_request};
pub use usage::UsageTracker;

/// The wire format of a request, as the endpoint catalogue classified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    OpenAiChat,
    OpenAiResponses,
    AnthropicMessages,
    /// OpenAI legacy text completions (`POST /v1/completions`).
    OpenAiCompletions,
    /// `POST /v1/embeddings`: input tokens only.
    OpenAiEmbeddings,
    /// `POST /v1/images/generations`: per image, or by tokens where the response reports them.
    OpenAiImages,
    /// `POST /v1/audio/speech`: per character of input.
    OpenAiSpeech,
    /// Not a model call (a free endpoint): admitted and rate limited, never parsed.
    Other,
}

impl ApiKind {
    /// Whether requests carry a model call whose body and usage matter.
    pub fn is_model_call(self) -> bool {
        !matches!(self, Self::Other)
    }

    /// Whether the provider reports what the call is billed for as token counts (which is all an
    /// access log carries), rather than as images or characters.
    pub fn billed_by_tokens(self) -> bool {
        matches!(
            self,
            Self::OpenAiChat
                | Self::OpenAiResponses
                | Self::AnthropicMessages
                | Self::OpenAiCompletions
                | Self::OpenAiEmbeddings
        )
    }

    pub fn error_shape(self) -> ErrorShape {
        match self {
            Self::AnthropicMessages => ErrorShape::Anthropic,
            _ => ErrorShape::OpenAi,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAiChat => "openai_chat",
            Self::OpenAiResponses => "openai_responses",
            Self::AnthropicMessages => "anthropic_messages",
            Self::OpenAiCompletions => "openai_completions",
            Self::OpenAiEmbeddings => "openai_embeddings",
            Self::OpenAiImages => "openai_images",
            Self::OpenAiSpeech => "openai_speech",
            Self::Other => "other",
        }
    }
}

impl From<ApiKind> for ErrorShape {
    fn from(api: ApiKind) -> Self {
        api.error_shape()
    }
}
