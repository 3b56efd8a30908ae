//! `[alerts]`: where threshold alerts go, how they are signed, how hard delivery tries. The
//! signing secret is never a configuration value (files and variables get logged and committed):
//! it is read from the environment variable `secret_env` names, or from `secret_file`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// The receiver's URL; alerts are off without it (crossings are still logged and counted).
    pub url: Option<String>,
    /// The environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// A file holding the signing secret (a trailing newline is ignored).
    pub secret_file: Option<PathBuf>,
    /// Per attempt, connection included.
    pub timeout_ms: u64,
    /// Attempts before an alert goes to the dead-letter log.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each, up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Alerts this instance claimed and has not delivered yet; replayed at startup.
    pub outbox_path: PathBuf,
    /// Alerts whose every attempt failed, one JSON object a line.
    pub dead_letter_path: PathBuf,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            url: None,
            secret_env: None,
            secret_file: None,
            timeout_ms: 5_000,
            max_attempts: 8,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
            outbox_path: PathBuf::from("tollgate-alerts-outbox.jsonl"),
            dead_letter_path: PathBuf::from("tollgate-alerts-dead-letter.jsonl"),
        }
    }
}

impl AlertSettings {
    /// Configuration errors that need no I/O (the secret is read at startup).
    pub fn validate(&self) -> anyhow::Result<()> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let parsed: reqwest::Url = url
            .parse()
            .with_context(|| "alerts.url is not a URL".to_owned())?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("alerts.url: scheme must be http or https");
        }
        match (&self.secret_env, &self.secret_file) {
            (None, None) => bail!(
                "alerts.url needs a signing secret: set alerts.secret_env (an environment variable's name) or alerts.secret_file"
            ),
            (Some(_), Some(_)) => bail!("alerts: set secret_env or secret_file, not both"),
            _ => {}
        }
        if self.max_attempts == 0 {
            bail!("alerts.max_attempts must be at least 1");
        }
        Ok(())
    }

    /// The signing secret; an error names where it was looked for, never what it holds.
    pub fn secret(&self) -> anyhow::Result<Vec<u8>> {
        let secret = match (&self.secret_env, &self.secret_file) {
            (Some(var), _) => std::env::var(var)
                .with_context(|| {
                    format!("alerts.secret_env: environment variable {var} is not set")
                })?
                .into_bytes(),
            (None, Some(file)) => {
                let mut bytes = std::fs::read(file)
                    .with_context(|| format!("alerts.secret_file: reading {}", file.display()))?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                bytes
            }
            (None, None) => bail!("alerts: no secret_env or secret_file"),
        };
        if secret.is_empty() {
            bail!("alerts: the signing secret is empty");
        }
        Ok(secret)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(30);
        Duration::from_millis(
            self.backoff_initial_ms
                .saturating_mul(factor)
                .min(self.backoff_max_ms),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = AlertSettings {
            backoff_initial_ms: 100,
            backoff_max_ms: 500,
            ..Default::default()
        };
        let waits: Vec<u64> = (1..=5).map(|a| s.backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn a_url_needs_exactly_one_secret_source() {
        let mut s = AlertSettings {
            url: Some("http://127.0.0.1:1/hook".into()),
            ..Default::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("secret"));
        s.secret_env = Some("X".into());
        s.validate().unwrap();
        s.secret_file = Some("/x".into());
        assert!(s.validate().is_err());
        s.secret_file = None;
        s.url = Some("ftp://x".into());
        assert!(s.validate().is_err());
    }
}
