//! Request bodies: the facts policy needs (model, streaming, size of the prompt) and the one
//! rewrite tollgate makes, asking OpenAI Chat streams to report usage.

use serde_json::{Map, Value};

use super::ApiKind;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: String,
    pub stream: bool,
    pub max_output_tokens: Option<u64>,
    /// Characters of prompt text: the basis of the input estimate when a response is cut short.
    pub prompt_chars: u64,
}

#[derive(Debug)]
pub struct ParsedRequest {
    pub facts: RequestFacts,
    /// The body, with any change tollgate made to it.
    pub body: Value,
    /// Whether `body` differs from what the client sent.
    pub changed: bool,
}

impl ParsedRequest {
    /// The body to forward instead of the original, when tollgate changed it.
    pub fn rewritten(&self) -> Option<Vec<u8>> {
        self.changed
            .then(|| serde_json::to_vec(&self.body).expect("a parsed JSON value serializes"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("request body must be a JSON object")]
    NotObject,
    #[error("request body has no \"model\" string")]
    MissingModel,
}

/// Fields holding prompt text, per API.
const PROMPT_FIELDS: &[&str] = &[
    "messages",
    "input",
    "system",
    "instructions",
    "prompt",
    "tools",
];

pub fn parse_request(api: ApiKind, body: &[u8]) -> Result<ParsedRequest, BodyError> {
    let mut value: Value =
        serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    let object = value.as_object_mut().ok_or(BodyError::NotObject)?;
    let model = object
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or(BodyError::MissingModel)?
        .to_owned();
    let stream = object
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_output_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| object.get(*k).and_then(Value::as_u64));
    let prompt_chars = PROMPT_FIELDS
        .iter()
        .filter_map(|k| object.get(*k))
        .map(text_chars)
        .sum();
    let changed = api == ApiKind::OpenAiChat && stream && request_usage_in_stream(object);
    Ok(ParsedRequest {
        facts: RequestFacts {
            model,
            stream,
            max_output_tokens,
            prompt_chars,
        },
        body: value,
        changed,
    })
}

/// OpenAI Chat streams carry usage only when `stream_options.include_usage` is true. Sets it and
/// reports whether the body changed.
fn request_usage_in_stream(object: &mut Map<String, Value>) -> bool {
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(Map::new()));
    if !options.is_object() {
        *options = Value::Object(Map::new());
    }
    let options = options.as_object_mut().expect("made an object above");
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return false;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    true
}

/// Characters in every string under `value` except structural fields (roles, types, ids).
fn text_chars(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.chars().count() as u64,
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "role" | "type" | "id" | "tool_call_id" | "tool_use_id" | "cache_control"
                )
            })
            .map(|(_, v)| text_chars(v))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(api: ApiKind, v: Value) -> ParsedRequest {
        parse_request(api, &serde_json::to_vec(&v).unwrap()).unwrap()
    }

    #[test]
    fn extracts_model_stream_and_prompt_size() {
        let p = parse(
            ApiKind::AnthropicMessages,
            json!({"model": "claude-sonnet-4-5", "max_tokens": 512, "stream": true,
                   "system": "Be brief.",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}),
        );
        assert_eq!(p.facts.model, "claude-sonnet-4-5");
        assert!(p.facts.stream);
        assert_eq!(p.facts.max_output_tokens, Some(512));
        assert_eq!(p.facts.prompt_chars, "Be brief.".len() as u64 + 5);
        assert!(
            p.rewritten().is_none(),
            "Anthropic streams report usage unasked"
        );
    }

    #[test]
    fn injects_include_usage_into_openai_chat_streams() {
        let p = parse(
            ApiKind::OpenAiChat,
            json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        );
        let body: Value = serde_json::from_slice(&p.rewritten().unwrap()).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], json!(true));
        assert_eq!(body["messages"][0]["content"], json!("hi"));
    }

    #[test]
    fn leaves_bodies_alone_when_usage_is_already_requested_or_not_streaming() {
        let asked = parse(
            ApiKind::OpenAiChat,
            json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": []}),
        );
        assert!(asked.rewritten().is_none());
        let plain = parse(
            ApiKind::OpenAiChat,
            json!({"model": "gpt-4o", "messages": []}),
        );
        assert!(plain.rewritten().is_none());
    }

    #[test]
    fn overrides_include_usage_false_keeping_other_options() {
        let p = parse(
            ApiKind::OpenAiChat,
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": false, "x": 1}}),
        );
        let body: Value = serde_json::from_slice(&p.rewritten().unwrap()).unwrap();
        assert_eq!(
            body["stream_options"],
            json!({"include_usage": true, "x": 1})
        );
    }

    #[test]
    fn rejects_bad_bodies_with_clear_errors() {
        assert!(matches!(
            parse_request(ApiKind::OpenAiChat, b"{not json"),
            Err(BodyError::NotJson(_))
        ));
        assert_eq!(
            parse_request(ApiKind::OpenAiChat, b"[1]").unwrap_err(),
            BodyError::NotObject
        );
        assert_eq!(
            parse_request(ApiKind::OpenAiChat, b"{\"messages\":[]}").unwrap_err(),
            BodyError::MissingModel
        );
        assert_eq!(
            parse_request(ApiKind::OpenAiChat, b"{\"model\":\"\"}").unwrap_err(),
            BodyError::MissingModel
        );
        assert!(matches!(
            parse_request(ApiKind::OpenAiChat, b""),
            Err(BodyError::NotJson(_))
        ));
    }
}
