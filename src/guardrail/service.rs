//! Guardrails as tollgate applies them: a backend (Bedrock or local), a mode (observe or
//! enforce), a cache of texts already assessed clean, and the fail mode when the backend fails.
//! Adapters hand over texts and get back what to do with the request.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Guardrail, GuardrailError, Source};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Off,
    /// Assess, log and count; never block or change anything.
    #[default]
    Observe,
    Enforce,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Observe => "observe",
            Mode::Enforce => "enforce",
        }
    }
}

/// What the adapter does with the request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forward unchanged. `note` is the `x-tollgate-guardrail` header, if any.
    Pass { note: Option<&'static str> },
    /// Forward with these texts (one per text given, in order) in place of the originals.
    Mask { texts: Vec<String> },
    /// Refuse: the guardrail's blocked message and the policies that fired (never the match).
    Block {
        message: String,
        policies: Vec<String>,
    },
    /// The backend failed and the fail mode is closed.
    Unavailable { error: String },
}

/// Clean texts remembered, per guardrail version; beyond this the memory starts over.
const CLEAN_CACHE_ENTRIES: usize = 100_000;

pub struct GuardrailService {
    backend: Arc<dyn Guardrail>,
    mode: Mode,
    fail_closed: bool,
    clean: Mutex<HashSet<u64>>,
}

impl GuardrailService {
    /// `fail_closed` applies in enforce mode; observe mode never blocks.
    pub fn new(backend: Arc<dyn Guardrail>, mode: Mode, fail_closed: bool) -> Self {
        Self {
            backend,
            mode,
            fail_closed,
            clean: Mutex::new(HashSet::new()),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn backend(&self) -> &dyn Guardrail {
        self.backend.as_ref()
    }

    fn key(&self, source: Source, text: &str) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            self.backend.name(),
            self.backend.version(),
            source.as_str(),
            text,
        )
            .hash(&mut h);
        h.finish()
    }

    pub async fn check(&self, source: Source, texts: &[String]) -> Outcome {
        let keys: Vec<u64> = texts.iter().map(|t| self.key(source, t)).collect();
        let fresh: Vec<usize> = {
            let clean = self.clean.lock().unwrap();
            (0..texts.len())
                .filter(|&i| !clean.contains(&keys[i]))
                .collect()
        };
        let hits = (texts.len() - fresh.len()) as u64;
        if hits > 0 {
            metrics::counter!("tollgate_guardrail_cache_hits_total", "source" => source.as_str())
                .increment(hits);
        }
        if fresh.is_empty() {
            return Outcome::Pass { note: None };
        }
        let to_assess: Vec<String> = fresh.iter().map(|&i| texts[i].clone()).collect();
        let verdict = match self.backend.apply(source, &to_assess).await {
            Ok(v) => v,
            Err(e) => return self.failed(source, e),
        };
        metrics::counter!("tollgate_guardrail_text_units_total", "backend" => self.backend.name(), "source" => source.as_str())
            .increment(verdict.text_units());
        let kind = if verdict.blocked() {
            "blocked"
        } else if verdict.intervened() {
            "anonymized"
        } else {
            "none"
        };
        metrics::counter!("tollgate_guardrail_verdicts_total", "source" => source.as_str(), "verdict" => kind, "mode" => self.mode.as_str())
            .increment(1);
        if kind == "none" {
            let mut clean = self.clean.lock().unwrap();
            if clean.len() + fresh.len() > CLEAN_CACHE_ENTRIES {
                clean.clear();
            }
            clean.extend(fresh.iter().map(|&i| keys[i]));
            return Outcome::Pass { note: None };
        }
        let policies = verdict.policies_fired();
        tracing::info!(
            source = source.as_str(),
            verdict = kind,
            mode = self.mode.as_str(),
            ?policies,
            "guardrail intervened"
        );
        if self.mode == Mode::Observe {
            let note = if kind == "blocked" {
                "would-block"
            } else {
                "would-anonymize"
            };
            return Outcome::Pass { note: Some(note) };
        }
        if kind == "blocked" {
            let message = verdict
                .outputs
                .first()
                .map(|o| o.text.clone())
                .unwrap_or_default();
            return Outcome::Block { message, policies };
        }
        if verdict.outputs.len() != fresh.len() {
            // Without one output per text the masks cannot be put back in place: refuse rather
            // than forward what the guardrail wanted masked.
            tracing::warn!(
                outputs = verdict.outputs.len(),
                texts = fresh.len(),
                "masked outputs do not match the texts"
            );
            return Outcome::Block {
                message: "Request refused by the content guardrail.".into(),
                policies,
            };
        }
        let mut masked = texts.to_vec();
        for (slot, output) in fresh.iter().zip(verdict.outputs) {
            masked[*slot] = output.text;
        }
        Outcome::Mask { texts: masked }
    }

    fn failed(&self, source: Source, error: GuardrailError) -> Outcome {
        let kind = match &error {
            GuardrailError::Throttled(_) => "throttled",
            GuardrailError::Timeout => "timeout",
            GuardrailError::Unavailable(_) => "unavailable",
            GuardrailError::Invalid(_) => "invalid",
        };
        metrics::counter!("tollgate_guardrail_errors_total", "source" => source.as_str(), "error" => kind).increment(1);
        let closed = self.mode == Mode::Enforce && self.fail_closed;
        tracing::error!(source = source.as_str(), error = %error, fail_closed = closed, "guardrail failed");
        if closed {
            Outcome::Unavailable {
                error: error.to_string(),
            }
        } else {
            Outcome::Pass {
                note: Some("unavailable"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrail::local::{LocalGuardrail, LocalGuardrailConfig};

    fn service(mode: Mode) -> GuardrailService {
        let config: LocalGuardrailConfig = serde_json::from_value(serde_json::json!({
            "pii": [{"type": "EMAIL", "action": "ANONYMIZE"}, {"type": "US_SOCIAL_SECURITY_NUMBER", "action": "BLOCK"}],
            "blocked_input_message": "no can do"
        }))
        .unwrap();
        GuardrailService::new(Arc::new(LocalGuardrail::new(config).unwrap()), mode, true)
    }

    fn texts(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn enforce_blocks_masks_and_passes() {
        let s = service(Mode::Enforce);
        let out = s.check(Source::Input, &texts(&["ssn 123-45-6789"])).await;
        let Outcome::Block { message, policies } = out else {
            panic!("{out:?}")
        };
        assert_eq!(message, "no can do");
        assert!(
            policies
                .iter()
                .any(|p| p.contains("US_SOCIAL_SECURITY_NUMBER"))
        );
        assert!(
            !policies.iter().any(|p| p.contains("123-45")),
            "no PII in what is reported"
        );
        let out = s
            .check(Source::Input, &texts(&["hello", "mail a@b.example"]))
            .await;
        assert_eq!(
            out,
            Outcome::Mask {
                texts: texts(&["hello", "mail {EMAIL}"])
            }
        );
        assert_eq!(
            s.check(Source::Input, &texts(&["hello"])).await,
            Outcome::Pass { note: None }
        );
    }

    #[tokio::test]
    async fn observe_changes_nothing_but_says_what_it_would_do() {
        let s = service(Mode::Observe);
        assert_eq!(
            s.check(Source::Input, &texts(&["ssn 123-45-6789"])).await,
            Outcome::Pass {
                note: Some("would-block")
            }
        );
        assert_eq!(
            s.check(Source::Input, &texts(&["a@b.example"])).await,
            Outcome::Pass {
                note: Some("would-anonymize")
            }
        );
    }

    /// Counts calls, to see what the cache saves.
    struct Counting(LocalGuardrail, std::sync::atomic::AtomicUsize);

    #[async_trait::async_trait]
    impl Guardrail for Counting {
        async fn apply(
            &self,
            source: Source,
            texts: &[String],
        ) -> Result<super::super::ApplyGuardrailResponse, GuardrailError> {
            self.1
                .fetch_add(texts.len(), std::sync::atomic::Ordering::Relaxed);
            self.0.apply(source, texts).await
        }
        fn name(&self) -> &'static str {
            "counting"
        }
        fn version(&self) -> &str {
            "1"
        }
    }

    #[tokio::test]
    async fn clean_texts_are_assessed_once() {
        let counting = Arc::new(Counting(
            LocalGuardrail::new(LocalGuardrailConfig::default()).unwrap(),
            Default::default(),
        ));
        let s = GuardrailService::new(counting.clone(), Mode::Enforce, true);
        s.check(Source::Input, &texts(&["system prompt", "question 1"]))
            .await;
        s.check(Source::Input, &texts(&["system prompt", "question 2"]))
            .await;
        assert_eq!(
            counting.1.load(std::sync::atomic::Ordering::Relaxed),
            3,
            "the system prompt went once"
        );
    }
}
