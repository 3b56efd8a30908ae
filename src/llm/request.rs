//! Request bodies: the facts policy needs (model, streaming, size of the prompt, and for calls
//! billed per image or character the units they ask for) and the one rewrite tollgate makes,
//! asking OpenAI Chat and Completions streams to report usage.

use serde_json::{Map, Value};

use super::ApiKind;
use crate::policy::Units;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: String,
    pub stream: bool,
    pub max_output_tokens: Option<u64>,
    /// Characters of prompt text: the basis of the input estimate when a response is cut short.
    pub prompt_chars: u64,
    /// What the call is billed in besides tokens (images, characters), as the request asks.
    pub units: Option<Units>,
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
    #[error("request body field \"{field}\" {problem}")]
    BadField {
        field: &'static str,
        problem: &'static str,
    },
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
    let mut facts = RequestFacts {
        model,
        stream,
        max_output_tokens,
        prompt_chars,
        units: None,
    };
    endpoint_facts(api, object, &mut facts)?;
    let changed = matches!(api, ApiKind::OpenAiChat | ApiKind::OpenAiCompletions)
        && facts.stream
        && request_usage_in_stream(object);
    Ok(ParsedRequest {
        facts,
        body: value,
        changed,
    })
}

/// What each endpoint adds to the common facts. Calls that generate no tokens reserve none.
fn endpoint_facts(
    api: ApiKind,
    object: &Map<String, Value>,
    facts: &mut RequestFacts,
) -> Result<(), BodyError> {
    match api {
        ApiKind::OpenAiEmbeddings => {
            facts.max_output_tokens = Some(0);
            facts.stream = false;
        }
        ApiKind::OpenAiImages => {
            let count = match object.get("n") {
                None | Some(Value::Null) => 1,
                Some(n) => n.as_u64().filter(|n| *n >= 1).ok_or(BodyError::BadField {
                    field: "n",
                    problem: "must be a positive integer",
                })?,
            };
            facts.max_output_tokens = Some(0);
            facts.units = Some(Units::Images {
                count,
                quality: optional_str(object, "quality")?,
                size: optional_str(object, "size")?,
            });
        }
        ApiKind::OpenAiSpeech => {
            let chars = object
                .get("input")
                .and_then(Value::as_str)
                .ok_or(BodyError::BadField {
                    field: "input",
                    problem: "must be the text to speak",
                })?
                .chars()
                .count() as u64;
            facts.max_output_tokens = Some(0);
            facts.units = Some(Units::Characters(chars));
        }
        ApiKind::OpenAiChat
        | ApiKind::OpenAiResponses
        | ApiKind::AnthropicMessages
        | ApiKind::OpenAiCompletions
        | ApiKind::Other => {}
    }
    Ok(())
}

fn optional_str(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, BodyError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(BodyError::BadField {
            field,
            problem: "must be a string",
        }),
    }
}

/// OpenAI Chat and Completions streams carry usage only when `stream_options.include_usage` is
/// true. Sets it and reports whether the body changed.
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
    fn legacy_completion_streams_are_asked_for_usage_too() {
        let p = parse(
            ApiKind::OpenAiCompletions,
            json!({"model": "gpt-3.5-turbo-instruct", "stream": true, "prompt": ["ab", "cd"], "max_tokens": 7}),
        );
        let body: Value = serde_json::from_slice(&p.rewritten().unwrap()).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], json!(true));
        assert_eq!(
            (p.facts.prompt_chars, p.facts.max_output_tokens),
            (4, Some(7))
        );
    }

    #[test]
    fn embeddings_reserve_no_output() {
        let p = parse(
            ApiKind::OpenAiEmbeddings,
            json!({"model": "text-embedding-3-small", "input": ["hello", "world!"]}),
        );
        assert_eq!(p.facts.prompt_chars, 11);
        assert_eq!(p.facts.max_output_tokens, Some(0));
        assert_eq!(p.facts.units, None);
        assert!(p.rewritten().is_none());
    }

    #[test]
    fn image_requests_name_their_images() {
        let p = parse(
            ApiKind::OpenAiImages,
            json!({"model": "dall-e-3", "prompt": "a cat", "n": 2, "size": "1024x1792", "quality": "hd"}),
        );
        assert_eq!(
            p.facts.units,
            Some(Units::Images {
                count: 2,
                quality: Some("hd".into()),
                size: Some("1024x1792".into())
            })
        );
        assert_eq!(p.facts.max_output_tokens, Some(0));
        let plain = parse(
            ApiKind::OpenAiImages,
            json!({"model": "dall-e-2", "prompt": "x"}),
        );
        assert_eq!(
            plain.facts.units,
            Some(Units::Images {
                count: 1,
                quality: None,
                size: None
            })
        );
        for bad in [
            json!({"n": 0}),
            json!({"n": "3"}),
            json!({"n": 1.5}),
            json!({"size": 1024}),
        ] {
            let mut body = json!({"model": "dall-e-2", "prompt": "x"});
            body.as_object_mut()
                .unwrap()
                .extend(bad.as_object().unwrap().clone());
            assert!(
                matches!(
                    parse_request(ApiKind::OpenAiImages, &serde_json::to_vec(&body).unwrap()),
                    Err(BodyError::BadField { .. })
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn speech_is_counted_in_characters() {
        let p = parse(
            ApiKind::OpenAiSpeech,
            json!({"model": "tts-1", "input": "Grüß dich", "voice": "alloy"}),
        );
        assert_eq!(p.facts.units, Some(Units::Characters(9)));
        assert!(
            parse_request(
                ApiKind::OpenAiSpeech,
                br#"{"model":"tts-1","voice":"alloy"}"#
            )
            .is_err()
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
