//! Envoy protobuf plumbing: reading headers and metadata, building replies.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::{
    ProcessingMode,
    processing_mode::{BodySendMode, HeaderSendMode},
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders,
    ImmediateResponse, ProcessingResponse, StreamedBodyResponse, body_mutation::Mutation,
    processing_response::Response as Reply,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use serde_json::{Map, Number, Value};

use crate::contract;

/// Envoy sends header values in `raw_value` (bytes); older versions in `value`.
pub fn header<'a>(headers: &'a HttpHeaders, name: &str) -> Option<&'a str> {
    headers
        .headers
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| {
            if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            }
        })
}

pub fn set_headers(headers: &[(&'static str, String)]) -> Vec<HeaderValueOption> {
    headers
        .iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key: (*key).to_owned(),
                raw_value: value.clone().into_bytes(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

fn mutation(set: &[(&'static str, String)], remove: &[&str]) -> Option<HeaderMutation> {
    (!set.is_empty() || !remove.is_empty()).then(|| HeaderMutation {
        set_headers: set_headers(set),
        remove_headers: remove.iter().map(|h| (*h).to_owned()).collect(),
    })
}

fn common(
    set: &[(&'static str, String)],
    remove: &[&str],
    body: Option<Vec<u8>>,
) -> Option<CommonResponse> {
    Some(CommonResponse {
        header_mutation: mutation(set, remove),
        body_mutation: body.map(|b| BodyMutation {
            mutation: Some(Mutation::Body(b)),
        }),
        ..Default::default()
    })
}

/// Continue the request; when `skip_bodies`, ask Envoy to send neither body (response headers
/// still come, for the rate headers).
pub fn request_headers_reply(
    set: &[(&'static str, String)],
    remove: &[&str],
    skip_bodies: bool,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::RequestHeaders(HeadersResponse {
            response: common(set, remove, None),
        })),
        mode_override: skip_bodies.then(|| ProcessingMode {
            request_body_mode: BodySendMode::None as i32,
            response_header_mode: HeaderSendMode::Send as i32,
            response_body_mode: BodySendMode::None as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Continue the request, replacing its body if `body` is given (with a matching content-length,
/// which Envoy requires in BUFFERED mode with SEND headers).
pub fn request_body_reply(body: Option<Vec<u8>>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::RequestBody(BodyResponse {
            response: buffered_body(body, &[]),
        })),
        ..Default::default()
    }
}

/// A buffered body's reply: the new body, if any, with the `content-length` Envoy requires for it
/// (BUFFERED mode with SEND headers), plus any other headers.
fn buffered_body(body: Option<Vec<u8>>, set: &[(&'static str, String)]) -> Option<CommonResponse> {
    let mut headers = set.to_vec();
    if let Some(b) = &body {
        headers.push(("content-length", b.len().to_string()));
    }
    common(&headers, &[], body)
}

/// Continue the response; when `skip_body`, ask Envoy not to send its body at all.
pub fn response_headers_reply(
    set: &[(&'static str, String)],
    skip_body: bool,
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::ResponseHeaders(HeadersResponse {
            response: common(set, &[], None),
        })),
        mode_override: skip_body.then(|| ProcessingMode {
            response_body_mode: BodySendMode::None as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Continue the response, but have Envoy buffer its whole body for one body message, so the body
/// can be checked (and replaced) before any of it reaches the client.
pub fn response_headers_buffering_reply(set: &[(&'static str, String)]) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::ResponseHeaders(HeadersResponse {
            response: common(set, &[], None),
        })),
        mode_override: Some(ProcessingMode {
            response_header_mode: HeaderSendMode::Send as i32,
            response_body_mode: BodySendMode::Buffered as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Replace a buffered response body, with a matching content-length and extra headers.
pub fn response_body_replace_reply(
    body: Vec<u8>,
    set: &[(&'static str, String)],
) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::ResponseBody(BodyResponse {
            response: buffered_body(Some(body), set),
        })),
        ..Default::default()
    }
}

/// Replace one streamed response chunk (empty: hold it back).
pub fn response_body_chunk_reply(body: Vec<u8>) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::ResponseBody(BodyResponse {
            response: common(&[], &[], Some(body)),
        })),
        ..Default::default()
    }
}

pub fn response_body_reply() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::ResponseBody(BodyResponse::default())),
        ..Default::default()
    }
}

/// One FULL_DUPLEX_STREAMED body chunk to pass on, and whether it is the last one.
pub fn streamed_body_reply(
    request: bool,
    body: Vec<u8>,
    end_of_stream: bool,
) -> ProcessingResponse {
    let reply = BodyResponse {
        response: Some(CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(Mutation::StreamedResponse(StreamedBodyResponse {
                    body,
                    end_of_stream,
                    ..Default::default()
                })),
            }),
            ..Default::default()
        }),
    };
    ProcessingResponse {
        response: Some(if request {
            Reply::RequestBody(reply)
        } else {
            Reply::ResponseBody(reply)
        }),
        ..Default::default()
    }
}

pub fn is_immediate(reply: &ProcessingResponse) -> bool {
    matches!(reply.response, Some(Reply::ImmediateResponse(_)))
}

/// What a body reply asks for: the body that replaces the one sent (`None`: pass it unchanged),
/// and the headers it sets.
pub struct BodyVerdict {
    pub body: Option<Vec<u8>>,
    pub set_headers: Vec<HeaderValueOption>,
}

pub fn body_verdict(reply: ProcessingResponse) -> BodyVerdict {
    let common = match reply.response {
        Some(Reply::RequestBody(b) | Reply::ResponseBody(b)) => b.response,
        _ => None,
    }
    .unwrap_or_default();
    let body = match common.body_mutation.and_then(|m| m.mutation) {
        Some(Mutation::Body(body)) => Some(body),
        Some(Mutation::ClearBody(true)) => Some(Vec::new()),
        Some(Mutation::StreamedResponse(streamed)) => Some(streamed.body),
        Some(Mutation::ClearBody(false)) | None => None,
    };
    BodyVerdict {
        body,
        set_headers: common
            .header_mutation
            .map(|m| m.set_headers)
            .unwrap_or_default(),
    }
}

/// Adds headers to set to a headers reply.
pub fn add_set_headers(reply: &mut ProcessingResponse, set: Vec<HeaderValueOption>) {
    if set.is_empty() {
        return;
    }
    let headers = match &mut reply.response {
        Some(Reply::RequestHeaders(h) | Reply::ResponseHeaders(h)) => h,
        _ => return,
    };
    headers
        .response
        .get_or_insert_with(CommonResponse::default)
        .header_mutation
        .get_or_insert_with(HeaderMutation::default)
        .set_headers
        .extend(set);
}

pub fn immediate_reply(reply: contract::Reply) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(Reply::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(reply.status),
            }),
            headers: mutation(&reply.headers, &[]),
            body: reply.body,
            details: "tollgate".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The `request_attributes` Envoy sends with a request's first message, under the filter's name.
/// The fast attachment asks for `request.path` and the headers tollgate reads.
pub struct Attributes<'a>(Option<&'a Struct>);

impl<'a> Attributes<'a> {
    const FILTER: &'static str = "envoy.filters.http.ext_proc";

    pub fn of(attributes: &'a std::collections::HashMap<String, Struct>) -> Self {
        Attributes(attributes.get(Self::FILTER))
    }

    /// A string attribute (`request.method`).
    pub fn string(&self, name: &str) -> Option<&'a str> {
        match self.0?.fields.get(name)?.kind.as_ref()? {
            Kind::StringValue(s) => Some(s),
            _ => None,
        }
    }

    pub fn path(&self) -> &'a str {
        self.string("request.path").unwrap_or_default()
    }

    /// A header asked for as the attribute `request.headers['NAME']` (Envoy renders a whole
    /// header map as the text "CelMap value", so each header is its own expression).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.string(&format!("request.headers['{name}']"))
    }
}

/// Sets string fields in one dynamic metadata namespace (Envoy keeps them for the request's
/// lifetime, for access logs, route header formatters and other filters).
pub fn set_dynamic_metadata(
    reply: &mut ProcessingResponse,
    namespace: &str,
    fields: &[(&'static str, String)],
) {
    let inner = Struct {
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), string_value(v.clone())))
            .collect(),
    };
    let outer = reply.dynamic_metadata.get_or_insert_with(Struct::default);
    outer.fields.insert(
        namespace.to_owned(),
        PbValue {
            kind: Some(Kind::StructValue(inner)),
        },
    );
}

fn string_value(s: String) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s)),
    }
}

/// A string in forwarded dynamic metadata (`metadata_options.forwarding_namespaces`).
pub fn metadata_string<'a>(
    metadata: &'a envoy_types::pb::envoy::config::core::v3::Metadata,
    namespace: &str,
    key: &str,
) -> Option<&'a str> {
    match metadata
        .filter_metadata
        .get(namespace)?
        .fields
        .get(key)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

/// What Envoy's `json_to_metadata` and `sse_to_metadata` filters wrote to `namespace`, as one
/// JSON document shaped like the response it came from: each key is a dotted path
/// (`usage.prompt_tokens`, `message.usage`), and a string holding a JSON object (how
/// `sse_to_metadata` writes an object) is that object.
pub fn reported_document(
    metadata: &envoy_types::pb::envoy::config::core::v3::Metadata,
    namespace: &str,
) -> Value {
    let mut document = Value::Object(Map::new());
    let Some(fields) = metadata.filter_metadata.get(namespace) else {
        return document;
    };
    for (path, value) in &fields.fields {
        let value = match value_to_json(value) {
            Value::String(text) if text.starts_with('{') => {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            other => other,
        };
        let mut at = &mut document;
        for step in path.split('.') {
            if !at.is_object() {
                // A number and an object under one path: the object (the more complete) wins.
                *at = Value::Object(Map::new());
            }
            at = at
                .as_object_mut()
                .expect("made an object above")
                .entry(step)
                .or_insert(Value::Null);
        }
        if at.is_null() || !value.is_null() {
            *at = value;
        }
    }
    document
}

/// `google.protobuf.Struct` (Envoy dynamic metadata) as JSON.
pub fn struct_to_json(s: &Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

fn value_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        // jwt_authn turns numeric claims into doubles; keep integers integral.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Value::from(*n as i64)
        }
        Some(Kind::NumberValue(n)) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}
