//! The texts of a request that guardrails assess, with where each sits in the body (a JSON
//! pointer), so that masked texts can be written back in place. By default only what is new in
//! the conversation is taken: the system prompt or instructions plus the messages after the last
//! assistant turn (the latest user message and tool results), not the whole history every time.

use serde_json::Value;

use super::ApiKind;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// System prompt or instructions, and the messages after the last assistant turn.
    #[default]
    Latest,
    /// Every non-assistant message.
    All,
}

/// Which kind of prompt text a slot holds; operators choose which kinds are assessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// System prompt, developer messages, Responses `instructions`.
    System,
    User,
    /// Tool results: OpenAI `tool` messages, Anthropic `tool_result`, Responses `function_call_output`.
    ToolResults,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::System, Part::User, Part::ToolResults];

    /// The part of the prompt a text at `pointer` (from [`request_texts`]) belongs to.
    pub fn of(body: &Value, pointer: &str) -> Part {
        if pointer.starts_with("/system") || pointer.starts_with("/instructions") {
            return Part::System;
        }
        let mut segments = pointer.split('/').skip(1);
        let (list, index) = (segments.next(), segments.next());
        let rest: Vec<&str> = segments.collect();
        if rest.last() == Some(&"output")
            || (rest.len() >= 3 && rest[0] == "content" && rest[2] == "content")
        {
            return Part::ToolResults;
        }
        let message = list
            .zip(index)
            .and_then(|(l, i)| body.get(l)?.get(i.parse::<usize>().ok()?));
        match message.and_then(role) {
            Some("system" | "developer") => Part::System,
            Some("tool") => Part::ToolResults,
            _ => Part::User,
        }
    }
}

/// One text of the body and its JSON pointer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextSlot {
    pub pointer: String,
    pub text: String,
}

pub fn request_texts(api: ApiKind, body: &Value, scope: Scope) -> Vec<TextSlot> {
    let mut slots = Vec::new();
    match api {
        ApiKind::OpenAiChat => {
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let from = first_new(messages, scope, |m| role(m) == Some("assistant"));
            for (i, m) in messages.iter().enumerate() {
                let system = matches!(role(m), Some("system" | "developer"));
                if role(m) == Some("assistant") || (i < from && !system) {
                    continue;
                }
                content(
                    m.get("content"),
                    &format!("/messages/{i}/content"),
                    &mut slots,
                );
            }
        }
        ApiKind::AnthropicMessages => {
            content(body.get("system"), "/system", &mut slots);
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let from = first_new(messages, scope, |m| role(m) == Some("assistant"));
            for (i, m) in messages.iter().enumerate().skip(from) {
                if role(m) != Some("assistant") {
                    content(
                        m.get("content"),
                        &format!("/messages/{i}/content"),
                        &mut slots,
                    );
                }
            }
        }
        ApiKind::OpenAiResponses => {
            text(body.get("instructions"), "/instructions", &mut slots);
            match body.get("input") {
                Some(Value::String(_)) => text(body.get("input"), "/input", &mut slots),
                Some(Value::Array(items)) => {
                    let from = first_new(items, scope, |m| role(m) == Some("assistant"));
                    for (i, item) in items.iter().enumerate() {
                        let system = matches!(role(item), Some("system" | "developer"));
                        if role(item) == Some("assistant") || (i < from && !system) {
                            continue;
                        }
                        content(
                            item.get("content"),
                            &format!("/input/{i}/content"),
                            &mut slots,
                        );
                        // Tool results come back as function_call_output items.
                        text(
                            item.get("output"),
                            &format!("/input/{i}/output"),
                            &mut slots,
                        );
                    }
                }
                _ => {}
            }
        }
        ApiKind::OpenAiCompletions | ApiKind::OpenAiImages => {
            strings(body.get("prompt"), "/prompt", &mut slots)
        }
        ApiKind::OpenAiEmbeddings | ApiKind::OpenAiSpeech => {
            strings(body.get("input"), "/input", &mut slots)
        }
        ApiKind::Other => {}
    }
    slots
}

/// The texts of a (non-streamed) model response.
pub fn response_texts(api: ApiKind, body: &Value) -> Vec<TextSlot> {
    let mut slots = Vec::new();
    match api {
        ApiKind::OpenAiChat => {
            for (i, choice) in choices(body) {
                content(
                    choice.pointer("/message/content"),
                    &format!("/choices/{i}/message/content"),
                    &mut slots,
                );
            }
        }
        ApiKind::OpenAiResponses => {
            for (i, item) in body
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                for (j, part) in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if part.get("type").and_then(Value::as_str) == Some("output_text") {
                        text(
                            part.get("text"),
                            &format!("/output/{i}/content/{j}/text"),
                            &mut slots,
                        );
                    }
                }
            }
        }
        ApiKind::AnthropicMessages => content(body.get("content"), "/content", &mut slots),
        ApiKind::OpenAiCompletions => {
            for (i, choice) in choices(body) {
                text(
                    choice.get("text"),
                    &format!("/choices/{i}/text"),
                    &mut slots,
                );
            }
        }
        // Vectors, images and audio: no text to assess.
        ApiKind::OpenAiEmbeddings
        | ApiKind::OpenAiImages
        | ApiKind::OpenAiSpeech
        | ApiKind::Other => {}
    }
    slots
}

/// Replaces a response's content with `message`, marked the way each API marks filtered content:
/// OpenAI Chat and Completions `finish_reason: "content_filter"`, Responses `status: "incomplete"` with
/// `incomplete_details.reason: "content_filter"`, Anthropic `stop_reason: "refusal"`.
pub fn content_filtered(api: ApiKind, body: &mut Value, message: &str) {
    match api {
        ApiKind::OpenAiChat | ApiKind::OpenAiCompletions => {
            for choice in body
                .get_mut("choices")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if api == ApiKind::OpenAiChat {
                    choice["message"] =
                        serde_json::json!({"role": "assistant", "content": message});
                } else {
                    choice["text"] = Value::from(message);
                }
                choice["finish_reason"] = Value::from("content_filter");
            }
        }
        ApiKind::OpenAiResponses => {
            body["output"] = serde_json::json!([{
                "type": "message", "id": "msg_guardrail", "status": "incomplete", "role": "assistant",
                "content": [{"type": "output_text", "text": message, "annotations": []}],
            }]);
            body["status"] = Value::from("incomplete");
            body["incomplete_details"] = serde_json::json!({"reason": "content_filter"});
        }
        ApiKind::AnthropicMessages => {
            body["content"] = serde_json::json!([{"type": "text", "text": message}]);
            body["stop_reason"] = Value::from("refusal");
        }
        ApiKind::OpenAiEmbeddings
        | ApiKind::OpenAiImages
        | ApiKind::OpenAiSpeech
        | ApiKind::Other => {}
    }
}

/// Writes new texts (one per slot, as [`request_texts`] or [`response_texts`] found them) back into
/// the body, in place.
pub fn replace_texts(body: &mut Value, slots: Vec<TextSlot>, texts: Vec<String>) {
    for (slot, text) in slots.into_iter().zip(texts) {
        if slot.text != text
            && let Some(at) = body.pointer_mut(&slot.pointer)
        {
            *at = Value::String(text);
        }
    }
}

/// An OpenAI answer's `choices`, with their indexes.
fn choices(body: &Value) -> impl Iterator<Item = (usize, &Value)> {
    body.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

fn role(message: &Value) -> Option<&str> {
    message.get("role").and_then(Value::as_str)
}

/// Index of the first message to assess: after the last one `is_assistant` marks, for `Latest`.
fn first_new(messages: &[Value], scope: Scope, is_assistant: impl Fn(&Value) -> bool) -> usize {
    match scope {
        Scope::All => 0,
        Scope::Latest => messages.iter().rposition(is_assistant).map_or(0, |i| i + 1),
    }
}

/// A string, or each string of an array (legacy completion prompts, embedding inputs); token
/// arrays carry no text.
fn strings(value: Option<&Value>, pointer: &str, slots: &mut Vec<TextSlot>) {
    match value {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                text(Some(item), &format!("{pointer}/{i}"), slots);
            }
        }
        _ => text(value, pointer, slots),
    }
}

fn text(value: Option<&Value>, pointer: &str, slots: &mut Vec<TextSlot>) {
    if let Some(Value::String(s)) = value
        && !s.trim().is_empty()
    {
        slots.push(TextSlot {
            pointer: pointer.to_owned(),
            text: s.clone(),
        });
    }
}

/// A `content` value: a string, or blocks with text in `text` (OpenAI parts, Anthropic blocks) or,
/// for Anthropic tool results, in their own nested `content`.
fn content(value: Option<&Value>, pointer: &str, slots: &mut Vec<TextSlot>) {
    match value {
        Some(Value::String(_)) => text(value, pointer, slots),
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                let at = format!("{pointer}/{j}");
                match block.get("type").and_then(Value::as_str) {
                    Some("text" | "input_text") => {
                        text(block.get("text"), &format!("{at}/text"), slots)
                    }
                    Some("tool_result") => {
                        content(block.get("content"), &format!("{at}/content"), slots)
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pointers(slots: &[TextSlot]) -> Vec<&str> {
        slots.iter().map(|s| s.pointer.as_str()).collect()
    }

    #[test]
    fn openai_chat_latest_turn_and_system_prompt() {
        let body = json!({"messages": [
            {"role": "system", "content": "be kind"},
            {"role": "user", "content": "old question with a@b.example"},
            {"role": "assistant", "content": "old answer"},
            {"role": "user", "content": [{"type": "text", "text": "new question"}, {"type": "image_url", "image_url": {}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "tool output"},
        ]});
        let slots = request_texts(ApiKind::OpenAiChat, &body, Scope::Latest);
        assert_eq!(
            pointers(&slots),
            vec![
                "/messages/0/content",
                "/messages/3/content/0/text",
                "/messages/4/content"
            ]
        );
        let all = request_texts(ApiKind::OpenAiChat, &body, Scope::All);
        assert_eq!(all.len(), 4, "every non-assistant message");
    }

    #[test]
    fn anthropic_system_blocks_and_tool_results() {
        let body = json!({"system": [{"type": "text", "text": "sys"}], "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "f", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "x", "content": [{"type": "text", "text": "result"}]},
                {"type": "text", "text": "and now?"}]},
        ]});
        let slots = request_texts(ApiKind::AnthropicMessages, &body, Scope::Latest);
        assert_eq!(
            pointers(&slots),
            vec![
                "/system/0/text",
                "/messages/2/content/0/content/0/text",
                "/messages/2/content/1/text"
            ]
        );
    }

    #[test]
    fn responses_instructions_input_and_function_outputs() {
        let body = json!({"instructions": "inst", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {"type": "function_call_output", "call_id": "c", "output": "42"},
        ]});
        let slots = request_texts(ApiKind::OpenAiResponses, &body, Scope::Latest);
        assert_eq!(
            pointers(&slots),
            vec![
                "/instructions",
                "/input/0/content/0/text",
                "/input/1/output"
            ]
        );
        let with_developer = json!({"input": [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ]});
        let slots = request_texts(ApiKind::OpenAiResponses, &with_developer, Scope::Latest);
        assert_eq!(
            pointers(&slots),
            vec!["/input/0/content", "/input/3/content"],
            "system-like items always count"
        );
        let plain = request_texts(
            ApiKind::OpenAiResponses,
            &json!({"input": "just text"}),
            Scope::Latest,
        );
        assert_eq!(pointers(&plain), vec!["/input"]);
    }

    #[test]
    fn response_texts_and_content_filtering_per_api() {
        let mut chat = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "secret"}, "finish_reason": "stop"}]});
        assert_eq!(
            pointers(&response_texts(ApiKind::OpenAiChat, &chat)),
            vec!["/choices/0/message/content"]
        );
        content_filtered(ApiKind::OpenAiChat, &mut chat, "no");
        assert_eq!(chat["choices"][0]["finish_reason"], json!("content_filter"));
        assert_eq!(chat["choices"][0]["message"]["content"], json!("no"));

        let mut msg =
            json!({"content": [{"type": "text", "text": "secret"}], "stop_reason": "end_turn"});
        assert_eq!(
            pointers(&response_texts(ApiKind::AnthropicMessages, &msg)),
            vec!["/content/0/text"]
        );
        content_filtered(ApiKind::AnthropicMessages, &mut msg, "no");
        assert_eq!(
            (
                msg["stop_reason"].clone(),
                msg["content"][0]["text"].clone()
            ),
            (json!("refusal"), json!("no"))
        );

        let resp = json!({"output": [{"type": "message", "content": [{"type": "output_text", "text": "secret"}]}]});
        assert_eq!(
            pointers(&response_texts(ApiKind::OpenAiResponses, &resp)),
            vec!["/output/0/content/0/text"]
        );
    }

    #[test]
    fn each_text_knows_its_part() {
        let chat = json!({"messages": [{"role": "developer", "content": "d"}, {"role": "user", "content": "u"},
                                       {"role": "tool", "content": "t"}]});
        let parts: Vec<Part> = request_texts(ApiKind::OpenAiChat, &chat, Scope::All)
            .iter()
            .map(|s| Part::of(&chat, &s.pointer))
            .collect();
        assert_eq!(parts, vec![Part::System, Part::User, Part::ToolResults]);
        let anthropic = json!({"system": "s", "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "x", "content": "r"}, {"type": "text", "text": "q"}]}]});
        let parts: Vec<Part> = request_texts(ApiKind::AnthropicMessages, &anthropic, Scope::All)
            .iter()
            .map(|s| Part::of(&anthropic, &s.pointer))
            .collect();
        assert_eq!(parts, vec![Part::System, Part::ToolResults, Part::User]);
        let responses = json!({"instructions": "i", "input": [{"type": "function_call_output", "output": "o"}]});
        assert_eq!(Part::of(&responses, "/instructions"), Part::System);
        assert_eq!(Part::of(&responses, "/input/0/output"), Part::ToolResults);
    }

    #[test]
    fn prompts_of_the_other_model_calls_are_assessed_too() {
        let completion = json!({"model": "m", "prompt": ["a@b.example", [1, 2]]});
        let slots = request_texts(ApiKind::OpenAiCompletions, &completion, Scope::Latest);
        assert_eq!(pointers(&slots), vec!["/prompt/0"]);
        assert_eq!(Part::of(&completion, "/prompt/0"), Part::User);
        let embedding = json!({"model": "m", "input": "text"});
        assert_eq!(
            pointers(&request_texts(
                ApiKind::OpenAiEmbeddings,
                &embedding,
                Scope::Latest
            )),
            vec!["/input"]
        );
        let image = json!({"model": "m", "prompt": "a cat"});
        assert_eq!(
            pointers(&request_texts(ApiKind::OpenAiImages, &image, Scope::Latest)),
            vec!["/prompt"]
        );
        let mut answer =
            json!({"choices": [{"index": 0, "text": "secret", "finish_reason": "stop"}]});
        assert_eq!(
            pointers(&response_texts(ApiKind::OpenAiCompletions, &answer)),
            vec!["/choices/0/text"]
        );
        content_filtered(ApiKind::OpenAiCompletions, &mut answer, "no");
        assert_eq!(
            answer["choices"][0],
            json!({"index": 0, "text": "no", "finish_reason": "content_filter"})
        );
    }

    #[test]
    fn replacements_go_back_in_place() {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "mail a@b.example"}]}]});
        let slots = request_texts(ApiKind::OpenAiChat, &body, Scope::Latest);
        replace_texts(&mut body, slots, vec!["mail {EMAIL}".into()]);
        assert_eq!(
            body,
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "mail {EMAIL}"}]}]})
        );
    }
}
