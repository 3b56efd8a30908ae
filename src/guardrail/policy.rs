//! Guardrail policy per team: a team can run its own mode (off, observe, enforce) and its own
//! Bedrock guardrail (id and version), and takes from the global `[guardrail]` whatever it leaves
//! out (backend settings, which texts, fail mode, streaming). Resolved by
//! [`super::apply::Guardrails::for_request`] once the request's team is known.
//!
//! A team naming a Bedrock guardrail uses the Bedrock client of `[guardrail.bedrock]` (region,
//! endpoint, timeout) with its own id and version. Without `[guardrail.bedrock]` there is no
//! client: such a team's texts meet the guardrail's fail mode (refused with 503 in enforce mode
//! when it fails closed), never a silently weaker guardrail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::bedrock::BedrockGuardrail;
use super::service::{GuardrailService, Mode};
use super::{ApplyGuardrailResponse, Guardrail, GuardrailError, Source};

/// `guardrail` of a team (`[[teams]]` or the admin API's team JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeamGuardrail {
    /// The team's mode; absent: the global `guardrail.mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The team's Bedrock guardrail; absent: the global backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockGuardrailRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockGuardrailRef {
    /// Guardrail id or ARN.
    pub guardrail_id: String,
    /// A published version number, or `DRAFT`.
    pub guardrail_version: String,
}

impl TeamGuardrail {
    /// What is wrong with it, for team validation.
    pub fn problem(&self) -> Option<&'static str> {
        let b = self.bedrock.as_ref()?;
        (b.guardrail_id.trim().is_empty() || b.guardrail_version.trim().is_empty())
            .then_some("guardrail.bedrock needs guardrail_id and guardrail_version")
    }
}

/// Services beyond this many (distinct modes and guardrails in use) start over.
const MAX_SERVICES: usize = 1_000;

/// The guardrail services teams with a policy of their own use, made as they are first needed.
pub struct TeamPolicies {
    /// The global backend, for teams that change only the mode.
    backend: Arc<dyn Guardrail>,
    /// The global mode, what a policy without one uses.
    mode: Mode,
    fail_closed: bool,
    /// `[guardrail.bedrock]`'s client, for teams naming their own Bedrock guardrail.
    bedrock: Option<Arc<BedrockGuardrail>>,
    services: Mutex<HashMap<TeamGuardrail, Arc<GuardrailService>>>,
}

impl TeamPolicies {
    pub fn new(
        backend: Arc<dyn Guardrail>,
        mode: Mode,
        fail_closed: bool,
        bedrock: Option<Arc<BedrockGuardrail>>,
    ) -> Self {
        Self {
            backend,
            mode,
            fail_closed,
            bedrock,
            services: Mutex::new(HashMap::new()),
        }
    }

    /// The service for a team with `policy`; `global`: the global one (`None` when the global
    /// mode is off). `None`: no guardrail for this team.
    pub fn service(
        &self,
        policy: &TeamGuardrail,
        global: Option<&Arc<GuardrailService>>,
    ) -> Option<Arc<GuardrailService>> {
        let mode = policy.mode.unwrap_or(self.mode);
        if mode == Mode::Off {
            return None;
        }
        if policy.bedrock.is_none() && mode == self.mode {
            // The global policy after all: its service (and its cache of clean texts).
            return global.cloned();
        }
        let key = TeamGuardrail {
            mode: Some(mode),
            bedrock: policy.bedrock.clone(),
        };
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(service) = services.get(&key) {
            return Some(service.clone());
        }
        if services.len() >= MAX_SERVICES {
            services.clear();
        }
        let backend: Arc<dyn Guardrail> = match (&policy.bedrock, &self.bedrock) {
            (None, _) => self.backend.clone(),
            (Some(own), Some(client)) => Arc::new(
                client.with_guardrail(own.guardrail_id.clone(), own.guardrail_version.clone()),
            ),
            (Some(own), None) => {
                tracing::error!(guardrail_id = %own.guardrail_id, "a team names a Bedrock guardrail but [guardrail.bedrock] is not configured: its texts meet the guardrail fail mode");
                Arc::new(NoBedrockClient(own.clone()))
            }
        };
        let service = Arc::new(GuardrailService::new(backend, mode, self.fail_closed));
        services.insert(key, service.clone());
        Some(service)
    }
}

/// A team's Bedrock guardrail without a Bedrock client to call it with: every call fails.
struct NoBedrockClient(BedrockGuardrailRef);

#[async_trait]
impl Guardrail for NoBedrockClient {
    async fn apply(
        &self,
        _source: Source,
        _texts: &[String],
    ) -> Result<ApplyGuardrailResponse, GuardrailError> {
        Err(GuardrailError::Unavailable(format!(
            "the team's Bedrock guardrail {} needs [guardrail.bedrock] (region, endpoint) to be configured",
            self.0.guardrail_id
        )))
    }

    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn version(&self) -> &str {
        &self.0.guardrail_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrail::local::{LocalGuardrail, LocalGuardrailConfig};
    use crate::guardrail::service::Outcome;

    fn policies(mode: Mode) -> (TeamPolicies, Option<Arc<GuardrailService>>) {
        let config: LocalGuardrailConfig =
            serde_json::from_value(serde_json::json!({"words": ["project falcon"]})).unwrap();
        let backend: Arc<dyn Guardrail> = Arc::new(LocalGuardrail::new(config).unwrap());
        let global = (mode != Mode::Off)
            .then(|| Arc::new(GuardrailService::new(backend.clone(), mode, true)));
        (TeamPolicies::new(backend, mode, true, None), global)
    }

    fn with_mode(mode: Mode) -> TeamGuardrail {
        TeamGuardrail {
            mode: Some(mode),
            bedrock: None,
        }
    }

    async fn check(service: &GuardrailService) -> Outcome {
        service
            .check(Source::Input, &["about project falcon".to_owned()])
            .await
    }

    #[tokio::test]
    async fn a_team_mode_overrides_the_global_one_either_way() {
        let (teams, global) = policies(Mode::Off);
        assert!(global.is_none());
        let enforce = teams.service(&with_mode(Mode::Enforce), None).unwrap();
        assert!(matches!(check(&enforce).await, Outcome::Block { .. }));
        assert!(teams.service(&TeamGuardrail::default(), None).is_none());

        let (teams, global) = policies(Mode::Enforce);
        let observe = teams
            .service(&with_mode(Mode::Observe), global.as_ref())
            .unwrap();
        assert_eq!(
            check(&observe).await,
            Outcome::Pass {
                note: Some("would-block")
            }
        );
        assert!(
            teams
                .service(&with_mode(Mode::Off), global.as_ref())
                .is_none()
        );
        // The global policy spelled out is the global service, and services are made once.
        let same = teams.service(&with_mode(Mode::Enforce), global.as_ref());
        assert!(Arc::ptr_eq(&same.unwrap(), global.as_ref().unwrap()));
        let again = teams.service(&with_mode(Mode::Observe), global.as_ref());
        assert!(Arc::ptr_eq(&again.unwrap(), &observe));
    }

    #[tokio::test]
    async fn a_bedrock_guardrail_without_a_client_fails_as_the_fail_mode_says() {
        let (teams, global) = policies(Mode::Enforce);
        let own = TeamGuardrail {
            mode: None,
            bedrock: Some(BedrockGuardrailRef {
                guardrail_id: "gr-team".into(),
                guardrail_version: "3".into(),
            }),
        };
        let service = teams.service(&own, global.as_ref()).unwrap();
        assert!(matches!(check(&service).await, Outcome::Unavailable { .. }));
        assert_eq!(own.problem(), None);
        let blank = TeamGuardrail {
            bedrock: Some(BedrockGuardrailRef {
                guardrail_id: " ".into(),
                guardrail_version: "1".into(),
            }),
            ..Default::default()
        };
        assert!(blank.problem().is_some());
    }
}
