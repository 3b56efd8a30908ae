//! Content guardrails on prompts and responses.
//!
//! Two backends answer the same question with the same type: Amazon Bedrock `ApplyGuardrail`
//! and [`local::LocalGuardrail`], which implements the deterministic part of a Bedrock guardrail
//! (pattern-based PII, custom regexes, denied words) without AWS. Both return
//! [`ApplyGuardrailResponse`], a serde mirror of the ApplyGuardrail REST response, so the code
//! that decides what to do with a verdict has one path.
//!
//! Field names follow the AWS API reference (`ApplyGuardrail`, `GuardrailAssessment`,
//! `GuardrailUsage`, ...). Policies the local engine never produces and tollgate does not act on
//! (automated reasoning, invocation metrics, coverage) are kept as raw JSON.
//!
//! How a verdict is applied to a request (which texts, streamed answers, masking, refusals) is
//! [`apply`]'s, once for every adapter.
//!
//! The `matched` fields hold the sensitive text itself: never log them. Use
//! [`ApplyGuardrailResponse::policies_fired`] for logs and metrics.

pub mod apply;
pub mod bedrock;
pub mod local;
pub mod policy;
pub mod service;
pub mod stream;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Which side of the model call the texts come from (`INPUT` = prompt, `OUTPUT` = response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Source {
    Input,
    Output,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Input => "INPUT",
            Source::Output => "OUTPUT",
        }
    }
}

/// The overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GuardrailAction {
    None,
    GuardrailIntervened,
}

/// What a policy did with one finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterAction {
    Anonymized,
    Blocked,
    /// Detected only (a policy configured with action `NONE`).
    None,
}

/// The ApplyGuardrail response body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyGuardrailResponse {
    pub action: GuardrailAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_reason: Option<String>,
    /// Empty when `action` is `NONE`; the masked texts (one per input text) when only
    /// anonymisation happened; the single blocked message when something was blocked.
    #[serde(default)]
    pub outputs: Vec<Output>,
    #[serde(default)]
    pub assessments: Vec<Assessment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail_coverage: Option<Value>,
}

/// `GuardrailOutputContent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    #[serde(default)]
    pub text: String,
}

/// `GuardrailAssessment`: what each policy found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assessment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_policy: Option<TopicPolicyAssessment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_policy: Option<ContentPolicyAssessment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_policy: Option<WordPolicyAssessment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive_information_policy: Option<SensitiveInformationPolicyAssessment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contextual_grounding_policy: Option<ContextualGroundingPolicyAssessment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automated_reasoning_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_metrics: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_guardrail_details: Option<Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicPolicyAssessment {
    #[serde(default)]
    pub topics: Vec<Topic>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    #[serde(default)]
    pub name: String,
    /// `DENY`.
    #[serde(rename = "type", default)]
    pub kind: String,
    pub action: FilterAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentPolicyAssessment {
    #[serde(default)]
    pub filters: Vec<ContentFilter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentFilter {
    /// `HATE`, `INSULTS`, `SEXUAL`, `VIOLENCE`, `MISCONDUCT`, `PROMPT_ATTACK`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_strength: Option<String>,
    pub action: FilterAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WordPolicyAssessment {
    #[serde(default)]
    pub custom_words: Vec<CustomWord>,
    #[serde(default)]
    pub managed_word_lists: Vec<ManagedWord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomWord {
    #[serde(rename = "match")]
    pub matched: String,
    pub action: FilterAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedWord {
    #[serde(rename = "match")]
    pub matched: String,
    /// `PROFANITY`.
    #[serde(rename = "type")]
    pub kind: String,
    pub action: FilterAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SensitiveInformationPolicyAssessment {
    #[serde(default)]
    pub pii_entities: Vec<PiiEntity>,
    #[serde(default)]
    pub regexes: Vec<RegexFilter>,
}

/// `GuardrailPiiEntityFilter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PiiEntity {
    /// `EMAIL`, `PHONE`, `US_SOCIAL_SECURITY_NUMBER`, ...
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "match", default)]
    pub matched: String,
    pub action: FilterAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

/// `GuardrailRegexFilter`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegexFilter {
    #[serde(default)]
    pub name: String,
    #[serde(rename = "match", default)]
    pub matched: String,
    /// The pattern.
    #[serde(default)]
    pub regex: String,
    pub action: FilterAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextualGroundingPolicyAssessment {
    #[serde(default)]
    pub filters: Vec<ContextualGroundingFilter>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContextualGroundingFilter {
    /// `GROUNDING` or `RELEVANCE`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub threshold: f64,
    #[serde(default)]
    pub score: f64,
    pub action: FilterAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected: Option<bool>,
}

/// `GuardrailUsage`: text units processed, per policy. A text unit is up to 1,000 characters of
/// one text block, counted once per policy type evaluated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(default)]
    pub topic_policy_units: u64,
    #[serde(default)]
    pub content_policy_units: u64,
    #[serde(default)]
    pub word_policy_units: u64,
    #[serde(default)]
    pub sensitive_information_policy_units: u64,
    #[serde(default)]
    pub sensitive_information_policy_free_units: u64,
    #[serde(default)]
    pub contextual_grounding_policy_units: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_policy_image_units: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automated_reasoning_policy_units: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automated_reasoning_policies: Option<u64>,
}

impl Usage {
    /// The text units Bedrock charges for. Word filters and custom regexes are free (they are
    /// counted in `wordPolicyUnits` and `sensitiveInformationPolicyFreeUnits`); images are
    /// priced per image, not per text unit.
    pub fn billed_text_units(&self) -> u64 {
        self.topic_policy_units
            + self.content_policy_units
            + self.sensitive_information_policy_units
            + self.contextual_grounding_policy_units
            + self.automated_reasoning_policy_units.unwrap_or(0)
    }
}

/// One detected finding, reduced to what may be logged.
struct Fired {
    policy: String,
    action: FilterAction,
}

impl Assessment {
    /// Every finding that was detected (Bedrock's `outputScope = FULL` also lists entries with
    /// `detected: false`; those did not fire).
    fn fired(&self) -> Vec<Fired> {
        let mut fired = Vec::new();
        let mut push = |policy: String, action: FilterAction, detected: Option<bool>| {
            if detected != Some(false) {
                fired.push(Fired { policy, action });
            }
        };
        if let Some(p) = &self.sensitive_information_policy {
            for e in &p.pii_entities {
                push(
                    format!("sensitiveInformation:{}", e.kind),
                    e.action,
                    e.detected,
                );
            }
            for r in &p.regexes {
                push(format!("regex:{}", r.name), r.action, r.detected);
            }
        }
        if let Some(p) = &self.word_policy {
            for w in &p.custom_words {
                push("word".to_owned(), w.action, w.detected);
            }
            for w in &p.managed_word_lists {
                push(format!("managedWord:{}", w.kind), w.action, w.detected);
            }
        }
        if let Some(p) = &self.content_policy {
            for f in &p.filters {
                push(format!("content:{}", f.kind), f.action, f.detected);
            }
        }
        if let Some(p) = &self.topic_policy {
            for t in &p.topics {
                push(format!("topic:{}", t.name), t.action, t.detected);
            }
        }
        if let Some(p) = &self.contextual_grounding_policy {
            for f in &p.filters {
                push(
                    format!("contextualGrounding:{}", f.kind),
                    f.action,
                    f.detected,
                );
            }
        }
        fired
    }
}

impl ApplyGuardrailResponse {
    fn fired(&self) -> Vec<Fired> {
        self.assessments
            .iter()
            .flat_map(Assessment::fired)
            .collect()
    }

    pub fn intervened(&self) -> bool {
        self.action == GuardrailAction::GuardrailIntervened
    }

    /// The guardrail intervened and at least one finding was blocked: the request (or response)
    /// must be replaced by the blocked message.
    pub fn blocked(&self) -> bool {
        self.intervened()
            && self
                .fired()
                .iter()
                .any(|f| f.action == FilterAction::Blocked)
    }

    /// The guardrail intervened only to mask: `outputs` holds the texts to forward instead.
    pub fn anonymized_only(&self) -> bool {
        let fired = self.fired();
        self.intervened()
            && fired.iter().any(|f| f.action == FilterAction::Anonymized)
            && !fired.iter().any(|f| f.action == FilterAction::Blocked)
    }

    /// The policies that fired, for logs and metrics, in first-seen order without repeats:
    /// `sensitiveInformation:EMAIL`, `regex:ticket`, `word`, `managedWord:PROFANITY`,
    /// `content:HATE`, `topic:<name>`, `contextualGrounding:GROUNDING`. Never the matched text.
    pub fn policies_fired(&self) -> Vec<String> {
        let mut policies: Vec<String> = Vec::new();
        for fired in self.fired() {
            if !policies.contains(&fired.policy) {
                policies.push(fired.policy);
            }
        }
        policies
    }

    /// Text units billed for this call (see [`Usage::billed_text_units`]); 0 without usage.
    pub fn text_units(&self) -> u64 {
        self.usage.as_ref().map_or(0, Usage::billed_text_units)
    }
}

/// Why a guardrail gave no verdict. The caller decides whether that fails open or closed.
#[derive(Debug, thiserror::Error)]
pub enum GuardrailError {
    /// Network failure, 5xx, missing credentials or guardrail.
    #[error("guardrail unavailable: {0}")]
    Unavailable(String),
    /// 429 / ThrottlingException / ServiceQuotaExceededException.
    #[error("guardrail throttled: {0}")]
    Throttled(String),
    #[error("guardrail call timed out")]
    Timeout,
    /// The request was refused as malformed, or the response could not be understood.
    #[error("invalid guardrail request or response: {0}")]
    Invalid(String),
}

/// A guardrail backend.
#[async_trait]
pub trait Guardrail: Send + Sync {
    /// Evaluates `texts` (one content block each) as a prompt (`Input`) or a response (`Output`).
    async fn apply(
        &self,
        source: Source,
        texts: &[String],
    ) -> Result<ApplyGuardrailResponse, GuardrailError>;

    /// Backend name for logs and metrics: `bedrock`, `local`.
    fn name(&self) -> &'static str;

    /// Guardrail version (Bedrock's version number or `DRAFT`; a config fingerprint locally).
    fn version(&self) -> &str;
}

/// A guardrail's full verdict on one text, as `tollgate guardrail test` and the admin API show it.
pub async fn test_report(
    guardrail: &dyn Guardrail,
    source: Source,
    text: String,
) -> serde_json::Value {
    let mut report = serde_json::json!({
        "backend": guardrail.name(),
        "version": guardrail.version(),
        "source": source.as_str(),
    });
    match guardrail.apply(source, &[text]).await {
        Ok(response) => {
            report["verdict"] = serde_json::json!(if response.blocked() {
                "blocked"
            } else if response.intervened() {
                "anonymized"
            } else {
                "none"
            });
            report["policies"] = serde_json::json!(response.policies_fired());
            report["text_units"] = serde_json::json!(response.text_units());
            report["response"] = serde_json::to_value(&response).unwrap_or_default();
        }
        Err(e) => report["error"] = serde_json::json!(e.to_string()),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A response as Bedrock documents it, with policies the local engine never produces.
    fn bedrock_response() -> ApplyGuardrailResponse {
        serde_json::from_value(json!({
            "action": "GUARDRAIL_INTERVENED",
            "actionReason": "Guardrail blocked.",
            "outputs": [{"text": "Sorry."}],
            "assessments": [{
                "topicPolicy": {"topics": [{"name": "Investing", "type": "DENY", "action": "BLOCKED", "detected": true}]},
                "contentPolicy": {"filters": [
                    {"type": "HATE", "confidence": "HIGH", "filterStrength": "HIGH", "action": "BLOCKED", "detected": true},
                    {"type": "INSULTS", "confidence": "NONE", "filterStrength": "LOW", "action": "NONE", "detected": false}
                ]},
                "wordPolicy": {"customWords": [], "managedWordLists": [{"match": "darn", "type": "PROFANITY", "action": "BLOCKED"}]},
                "sensitiveInformationPolicy": {
                    "piiEntities": [{"type": "NAME", "match": "Jane", "action": "ANONYMIZED"}],
                    "regexes": [{"name": "ticket", "match": "TCK-123456", "regex": "TCK-[0-9]{6}", "action": "NONE"}]
                },
                "contextualGroundingPolicy": {"filters": [{"type": "GROUNDING", "threshold": 0.7, "score": 0.2, "action": "BLOCKED"}]},
                "invocationMetrics": {"guardrailProcessingLatency": 120}
            }],
            "usage": {
                "topicPolicyUnits": 1, "contentPolicyUnits": 1, "wordPolicyUnits": 1,
                "sensitiveInformationPolicyUnits": 1, "sensitiveInformationPolicyFreeUnits": 1,
                "contextualGroundingPolicyUnits": 1, "contentPolicyImageUnits": 0
            },
            "guardrailCoverage": {"textCharacters": {"guarded": 10, "total": 10}}
        }))
        .unwrap()
    }

    #[test]
    fn bedrock_response_round_trips_with_aws_field_names() {
        let response = bedrock_response();
        let value = serde_json::to_value(&response).unwrap();
        let back: ApplyGuardrailResponse = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, response);
        assert_eq!(
            value["assessments"][0]["contentPolicy"]["filters"][0]["filterStrength"],
            "HIGH"
        );
        assert_eq!(
            value["assessments"][0]["invocationMetrics"]["guardrailProcessingLatency"],
            120
        );
        assert_eq!(value["usage"]["contentPolicyImageUnits"], 0);
        assert!(
            value["usage"]
                .get("automatedReasoningPolicyUnits")
                .is_none()
        );
    }

    #[test]
    fn helpers_read_every_policy_and_skip_undetected_entries() {
        let response = bedrock_response();
        assert!(response.blocked());
        assert!(!response.anonymized_only());
        assert_eq!(
            response.policies_fired(),
            [
                "sensitiveInformation:NAME",
                "regex:ticket",
                "managedWord:PROFANITY",
                "content:HATE",
                "topic:Investing",
                "contextualGrounding:GROUNDING",
            ]
        );
        // topic + content + PII + grounding; word and free (regex) units are not billed
        assert_eq!(response.text_units(), 4);
    }

    #[test]
    fn a_minimal_none_response_parses() {
        let response: ApplyGuardrailResponse =
            serde_json::from_value(json!({"action": "NONE", "outputs": [], "assessments": [{}]}))
                .unwrap();
        assert!(!response.intervened());
        assert!(!response.blocked());
        assert!(!response.anonymized_only());
        assert!(response.policies_fired().is_empty());
        assert_eq!(response.text_units(), 0);
    }

    #[test]
    fn source_serialises_as_bedrock_spells_it() {
        assert_eq!(serde_json::to_value(Source::Input).unwrap(), "INPUT");
        assert_eq!(serde_json::to_value(Source::Output).unwrap(), "OUTPUT");
        assert_eq!(Source::Output.as_str(), "OUTPUT");
    }
}
