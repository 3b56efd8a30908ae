//! Amazon Bedrock guardrails through `ApplyGuardrail` (aws-sdk-bedrockruntime). The SDK's answer
//! is rebuilt into the REST shape both backends share, so deciding what to do with it is one path.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::apply_guardrail::{
    ApplyGuardrailError, ApplyGuardrailOutput,
};
use aws_sdk_bedrockruntime::types::{
    GuardrailAssessment, GuardrailContentBlock, GuardrailContentSource, GuardrailTextBlock,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApplyGuardrailResponse, Guardrail, GuardrailError, Source};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockSettings {
    /// Guardrail id or ARN.
    pub guardrail_id: String,
    /// A published version number, or `DRAFT`.
    pub guardrail_version: String,
    /// Region; the standard provider chain when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// For tests and VPC endpoints; `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` works too.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Deadline of one call, retries of throttling included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    1500
}

pub struct BedrockGuardrail {
    client: Client,
    id: String,
    version: String,
}

impl BedrockGuardrail {
    pub async fn connect(settings: &BedrockSettings) -> Self {
        let config = crate::aws::sdk_config(
            settings.region.as_deref(),
            settings.endpoint_url.as_deref(),
            Duration::from_millis(settings.timeout_ms),
        )
        .await;
        Self {
            client: Client::new(&config),
            id: settings.guardrail_id.clone(),
            version: settings.guardrail_version.clone(),
        }
    }

    /// The same client (region, endpoint, credentials) for another guardrail: a team's own.
    pub fn with_guardrail(&self, id: String, version: String) -> Self {
        Self {
            client: self.client.clone(),
            id,
            version,
        }
    }
}

#[async_trait]
impl Guardrail for BedrockGuardrail {
    async fn apply(
        &self,
        source: Source,
        texts: &[String],
    ) -> Result<ApplyGuardrailResponse, GuardrailError> {
        let content = texts
            .iter()
            .map(|text| {
                GuardrailTextBlock::builder()
                    .text(text)
                    .build()
                    .map(GuardrailContentBlock::Text)
                    .map_err(|e| GuardrailError::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let source = match source {
            Source::Input => GuardrailContentSource::Input,
            Source::Output => GuardrailContentSource::Output,
        };
        let output = self
            .client
            .apply_guardrail()
            .guardrail_identifier(&self.id)
            .guardrail_version(&self.version)
            .source(source)
            .set_content(Some(content))
            .send()
            .await
            .map_err(classify)?;
        serde_json::from_value(rest_shape(&output))
            .map_err(|e| GuardrailError::Invalid(format!("unexpected ApplyGuardrail answer: {e}")))
    }

    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn version(&self) -> &str {
        &self.version
    }
}

fn classify(
    e: SdkError<ApplyGuardrailError, aws_sdk_bedrockruntime::config::http::HttpResponse>,
) -> GuardrailError {
    match &e {
        SdkError::TimeoutError(_) => GuardrailError::Timeout,
        SdkError::ServiceError(s)
            if matches!(s.err(), ApplyGuardrailError::ThrottlingException(_)) =>
        {
            GuardrailError::Throttled(s.err().message().unwrap_or("throttled").to_owned())
        }
        SdkError::ServiceError(s) => GuardrailError::Unavailable(format!(
            "{}: {}",
            s.err().code().unwrap_or("error"),
            s.err().message().unwrap_or_default()
        )),
        _ => GuardrailError::Unavailable(DisplayErrorContext(&e).to_string()),
    }
}

/// The SDK's typed answer as the REST API's JSON.
fn rest_shape(out: &ApplyGuardrailOutput) -> Value {
    let usage = out.usage().map(|u| {
        json!({
            "topicPolicyUnits": u.topic_policy_units(),
            "contentPolicyUnits": u.content_policy_units(),
            "wordPolicyUnits": u.word_policy_units(),
            "sensitiveInformationPolicyUnits": u.sensitive_information_policy_units(),
            "sensitiveInformationPolicyFreeUnits": u.sensitive_information_policy_free_units(),
            "contextualGroundingPolicyUnits": u.contextual_grounding_policy_units(),
        })
    });
    json!({
        "action": out.action().as_str(),
        "actionReason": out.action_reason(),
        "outputs": out.outputs().iter().map(|o| json!({"text": o.text().unwrap_or_default()})).collect::<Vec<_>>(),
        "assessments": out.assessments().iter().map(assessment).collect::<Vec<_>>(),
        "usage": usage,
    })
}

fn assessment(a: &GuardrailAssessment) -> Value {
    let mut v = json!({});
    if let Some(p) = a.sensitive_information_policy() {
        v["sensitiveInformationPolicy"] = json!({
            "piiEntities": p.pii_entities().iter().map(|e| json!({
                "type": e.r#type().as_str(), "match": e.r#match(), "action": e.action().as_str(), "detected": e.detected(),
            })).collect::<Vec<_>>(),
            "regexes": p.regexes().iter().map(|r| json!({
                "name": r.name(), "match": r.r#match(), "regex": r.regex(), "action": r.action().as_str(), "detected": r.detected(),
            })).collect::<Vec<_>>(),
        });
    }
    if let Some(p) = a.word_policy() {
        v["wordPolicy"] = json!({
            "customWords": p.custom_words().iter().map(|w| json!({
                "match": w.r#match(), "action": w.action().as_str(), "detected": w.detected(),
            })).collect::<Vec<_>>(),
            "managedWordLists": p.managed_word_lists().iter().map(|w| json!({
                "match": w.r#match(), "type": w.r#type().as_str(), "action": w.action().as_str(), "detected": w.detected(),
            })).collect::<Vec<_>>(),
        });
    }
    if let Some(p) = a.content_policy() {
        v["contentPolicy"] = json!({
            "filters": p.filters().iter().map(|f| json!({
                "type": f.r#type().as_str(), "confidence": f.confidence().as_str(),
                "filterStrength": f.filter_strength().map(|s| s.as_str()), "action": f.action().as_str(), "detected": f.detected(),
            })).collect::<Vec<_>>(),
        });
    }
    if let Some(p) = a.topic_policy() {
        v["topicPolicy"] = json!({
            "topics": p.topics().iter().map(|t| json!({
                "name": t.name(), "type": t.r#type().as_str(), "action": t.action().as_str(), "detected": t.detected(),
            })).collect::<Vec<_>>(),
        });
    }
    v
}
