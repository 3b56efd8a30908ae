//! Request bodies: the facts policy needs (model, streaming, size of the prompt, and for calls
//! billed per image or character the units they ask for) and the one rewrite tollgate makes,
//! asking OpenAI Chat and Completions streams to report usage.
//!
//! What is charged must be what is sent. tollgate forwards the client's bytes unless it changed
//! the body, so a body that means one thing to tollgate and another to the provider is refused
//! before it is admitted ([`check_shape`]): two `"model"` keys (serde keeps the last, a provider's
//! parser may keep the first and run a dearer model), or a prompt field of a type the provider
//! refuses (which would cost an RPM slot and fail upstream).

use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
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
    #[error("request body has the key {0:?} more than once")]
    DuplicateKey(String),
    #[error("request body field {field:?} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("request body has no {field:?} ({expected})")]
    MissingField {
        field: &'static str,
        expected: &'static str,
    },
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
    let mut object = top_level_object(body)?;
    check_shape(api, &object)?;
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
    endpoint_facts(api, &object, &mut facts)?;
    let changed = matches!(api, ApiKind::OpenAiChat | ApiKind::OpenAiCompletions)
        && facts.stream
        && request_usage_in_stream(&mut object);
    Ok(ParsedRequest {
        facts,
        body: Value::Object(object),
        changed,
    })
}

/// The body's top-level object, parsed once, refusing a key that appears twice. (`serde_json`
/// keeps the last of two equal keys without a word; which one a provider keeps is its parser's
/// choice.) Nested objects are not checked: what tollgate prices is read from the top level.
fn top_level_object(body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = de
        .deserialize_any(TopLevelVisitor)
        .and_then(|top| de.end().map(|()| top))
        .map_err(|e| BodyError::NotJson(e.to_string()))?;
    match top {
        TopLevel::Object(object) => Ok(object),
        TopLevel::Duplicate(key) => Err(BodyError::DuplicateKey(key)),
        TopLevel::NotObject => Err(BodyError::NotObject),
    }
}

enum TopLevel {
    Object(Map<String, Value>),
    /// The first key seen twice (the rest of the body was still read, so syntax errors win).
    Duplicate(String),
    NotObject,
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut object = Map::new();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            if duplicate.is_some() {
                map.next_value::<IgnoredAny>()?;
            } else if object.contains_key(&key) {
                map.next_value::<IgnoredAny>()?;
                duplicate = Some(key);
            } else {
                let value = map.next_value::<Value>()?;
                object.insert(key, value);
            }
        }
        Ok(duplicate.map_or(TopLevel::Object(object), TopLevel::Duplicate))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::NotObject)
    }
}

/// What a field may hold, in the provider's terms. `null` is accepted wherever a field is
/// optional (OpenAI's schemas allow it; it means "not set").
#[derive(Clone, Copy)]
enum Shape {
    String,
    Bool,
    /// A non-negative integer (token counts).
    Count,
    Array,
    StringOrArray,
}

impl Shape {
    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Self::String, Value::String(_)) => true,
            (Self::Bool, Value::Bool(_)) => true,
            (Self::Count, Value::Number(n)) => n.is_u64(),
            (Self::Array, Value::Array(_)) => true,
            (Self::StringOrArray, Value::String(_) | Value::Array(_)) => true,
            _ => false,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Bool => "true or false",
            Self::Count => "a non-negative integer",
            Self::Array => "an array",
            Self::StringOrArray => "a string or an array",
        }
    }
}

/// A field and what it may hold.
type FieldRule = (&'static str, Shape);

/// Fields every model call may carry, whatever its API: a wrong type is refused by every provider.
const COMMON_FIELDS: &[FieldRule] = &[
    ("model", Shape::String),
    ("stream", Shape::Bool),
    ("max_tokens", Shape::Count),
    ("max_completion_tokens", Shape::Count),
    ("max_output_tokens", Shape::Count),
];

/// The fields an API's calls must carry, and those checked when present.
fn api_fields(api: ApiKind) -> (&'static [FieldRule], &'static [FieldRule]) {
    match api {
        ApiKind::OpenAiChat => (&[("messages", Shape::Array)], &[("tools", Shape::Array)]),
        ApiKind::AnthropicMessages => (
            &[("messages", Shape::Array)],
            &[("system", Shape::StringOrArray), ("tools", Shape::Array)],
        ),
        ApiKind::OpenAiResponses => (
            &[],
            &[
                ("input", Shape::StringOrArray),
                ("instructions", Shape::String),
                ("tools", Shape::Array),
            ],
        ),
        ApiKind::OpenAiCompletions => (&[("prompt", Shape::StringOrArray)], &[]),
        ApiKind::OpenAiEmbeddings => (&[("input", Shape::StringOrArray)], &[]),
        _ => (&[], &[]),
    }
}

/// Refuses a body whose fields tollgate reads (or the provider needs) have a type the provider
/// would refuse, before the request costs an RPM slot. Missing optional fields are left alone;
/// `messages`, without which Chat and Messages calls fail, is required.
pub fn check_shape(api: ApiKind, object: &Map<String, Value>) -> Result<(), BodyError> {
    let (required, optional) = api_fields(api);
    if let Some(&(field, shape)) = required
        .iter()
        .find(|(field, _)| object.get(*field).is_none_or(Value::is_null))
    {
        return Err(BodyError::MissingField {
            field,
            expected: shape.expected(),
        });
    }
    for &(field, shape) in COMMON_FIELDS.iter().chain(required).chain(optional) {
        if let Some(value) = object.get(field)
            && !shape.admits(value)
        {
            return Err(BodyError::WrongType {
                field,
                expected: shape.expected(),
            });
        }
    }
    Ok(())
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
            json!({"model": "m", "stream": true, "stream_options": {"include_usage": false, "x": 1},
                   "messages": []}),
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
            parse_request(ApiKind::OpenAiChat, b"{\"model\":\"\",\"messages\":[]}").unwrap_err(),
            BodyError::MissingModel
        );
        assert!(matches!(
            parse_request(ApiKind::OpenAiChat, b""),
            Err(BodyError::NotJson(_))
        ));
    }

    fn refusal(api: ApiKind, body: &str) -> String {
        parse_request(api, body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_key_given_twice_at_the_top_level_is_refused_by_name() {
        let body = r#"{"model": "gpt-4o-mini", "messages": [], "model": "gpt-4o"}"#;
        assert_eq!(
            parse_request(ApiKind::OpenAiChat, body.as_bytes()).unwrap_err(),
            BodyError::DuplicateKey("model".into())
        );
        assert_eq!(
            refusal(ApiKind::OpenAiChat, body),
            "request body has the key \"model\" more than once"
        );
        for api in [ApiKind::OpenAiResponses, ApiKind::AnthropicMessages] {
            assert_eq!(
                refusal(
                    api,
                    r#"{"model": "a", "stream": false, "messages": [], "stream": true}"#
                ),
                "request body has the key \"stream\" more than once"
            );
        }
        // Nested objects are the provider's to read; equal keys there are not tollgate's concern.
        let nested =
            r#"{"model": "m", "messages": [{"role": "user", "role": "system", "content": "x"}]}"#;
        assert!(parse_request(ApiKind::OpenAiChat, nested.as_bytes()).is_ok());
        // A syntax error after the duplicate is still a syntax error.
        assert!(matches!(
            parse_request(ApiKind::OpenAiChat, br#"{"model": "a", "model": "b", "#),
            Err(BodyError::NotJson(_))
        ));
        // Trailing bytes after the object are not JSON.
        assert!(matches!(
            parse_request(ApiKind::OpenAiChat, br#"{"model": "a", "messages": []} {}"#),
            Err(BodyError::NotJson(_))
        ));
    }

    #[test]
    fn the_body_forwarded_is_the_body_parsed_in_its_order() {
        let p = parse(
            ApiKind::OpenAiChat,
            json!({"stream": true, "model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
        );
        let keys: Vec<_> = p.body.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["stream", "model", "messages", "stream_options"]);
    }

    #[test]
    fn prompt_fields_of_the_wrong_type_are_refused() {
        for api in [ApiKind::OpenAiChat, ApiKind::AnthropicMessages] {
            for messages in [r#""hello""#, r#"{"role": "user", "content": "hi"}"#, "42"] {
                assert_eq!(
                    refusal(
                        api,
                        &format!(r#"{{"model": "m", "max_tokens": 5, "messages": {messages}}}"#)
                    ),
                    "request body field \"messages\" must be an array",
                    "{api:?} {messages}"
                );
            }
            assert_eq!(
                refusal(api, r#"{"model": "m", "max_tokens": 5}"#),
                "request body has no \"messages\" (an array)"
            );
        }
        assert_eq!(
            refusal(
                ApiKind::OpenAiResponses,
                r#"{"model": "m", "input": {"text": "hi"}}"#
            ),
            "request body field \"input\" must be a string or an array"
        );
        assert_eq!(
            refusal(
                ApiKind::AnthropicMessages,
                r#"{"model": "m", "messages": [], "system": 7}"#
            ),
            "request body field \"system\" must be a string or an array"
        );
        assert_eq!(
            refusal(ApiKind::OpenAiChat, r#"{"model": 4, "messages": []}"#),
            "request body field \"model\" must be a string"
        );
        assert_eq!(
            refusal(
                ApiKind::OpenAiChat,
                r#"{"model": "m", "messages": [], "stream": "yes"}"#
            ),
            "request body field \"stream\" must be true or false"
        );
        for tokens in ["-1", "1.5", "\"100\"", "1e3"] {
            assert_eq!(
                refusal(
                    ApiKind::OpenAiChat,
                    &format!(r#"{{"model": "m", "messages": [], "max_tokens": {tokens}}}"#)
                ),
                "request body field \"max_tokens\" must be a non-negative integer",
                "{tokens}"
            );
        }
    }

    #[test]
    fn what_providers_accept_passes() {
        for (api, body) in [
            (
                ApiKind::OpenAiResponses,
                json!({"model": "m", "input": "hi"}),
            ),
            (
                ApiKind::OpenAiResponses,
                json!({"model": "m", "input": [{"role": "user", "content": "hi"}], "instructions": "x"}),
            ),
            // A Responses call may continue a previous one without new input.
            (
                ApiKind::OpenAiResponses,
                json!({"model": "m", "previous_response_id": "resp_1"}),
            ),
            (
                ApiKind::AnthropicMessages,
                json!({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "x"}], "messages": []}),
            ),
            // `null` is "not set" in OpenAI's schemas.
            (
                ApiKind::OpenAiChat,
                json!({"model": "m", "messages": [], "stream": null, "max_tokens": null, "tools": null}),
            ),
            (
                ApiKind::OpenAiChat,
                json!({"model": "m", "messages": [], "max_completion_tokens": 0}),
            ),
        ] {
            let p = parse(api, body.clone());
            assert_eq!(p.facts.model, "m", "{body}");
        }
    }
}
