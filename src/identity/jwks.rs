//! JSON Web Key Sets from a file or a URL, cached. An unknown `kid` triggers a refresh (at most
//! once per `min_refresh`), so a rotated signing key is picked up without a restart; the cache
//! also expires after `max_age`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use tokio::sync::{Mutex, RwLock};

#[derive(Clone, Debug)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS unavailable: {0}")]
    Unavailable(String),
    #[error("JWKS malformed: {0}")]
    Malformed(String),
    #[error("no signing key with kid {0:?}")]
    UnknownKid(String),
}

pub struct KeySet {
    source: JwksSource,
    http: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// When the keys were last fetched; also serialises refreshes.
    fetched_at: Mutex<Option<Instant>>,
    min_refresh: Duration,
    max_age: Duration,
}

impl KeySet {
    pub fn new(source: JwksSource, min_refresh: Duration, max_age: Duration) -> Self {
        Self {
            source,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("a TLS HTTP client builds"),
            keys: RwLock::new(Arc::new(HashMap::new())),
            fetched_at: Mutex::new(None),
            min_refresh,
            max_age,
        }
    }

    /// Loads the keys now, so that a misconfigured source fails at startup.
    pub async fn load(&self) -> Result<usize, JwksError> {
        let keys = self.fetch().await?;
        let n = keys.len();
        *self.keys.write().await = Arc::new(keys);
        *self.fetched_at.lock().await = Some(Instant::now());
        Ok(n)
    }

    pub async fn key(&self, kid: &str) -> Result<DecodingKey, JwksError> {
        let stale = self
            .fetched_at
            .lock()
            .await
            .is_none_or(|t| t.elapsed() > self.max_age);
        if !stale && let Some(key) = self.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        self.refresh(stale).await?;
        self.keys
            .read()
            .await
            .get(kid)
            .cloned()
            .ok_or_else(|| JwksError::UnknownKid(kid.to_owned()))
    }

    async fn refresh(&self, stale: bool) -> Result<(), JwksError> {
        let mut fetched_at = self.fetched_at.lock().await;
        let recent = fetched_at.is_some_and(|t| t.elapsed() < self.min_refresh);
        if recent && !stale {
            return Ok(());
        }
        match self.fetch().await {
            Ok(keys) => {
                metrics::counter!("tollgate_jwks_refreshes_total", "result" => "ok").increment(1);
                *self.keys.write().await = Arc::new(keys);
                *fetched_at = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                metrics::counter!("tollgate_jwks_refreshes_total", "result" => "error")
                    .increment(1);
                tracing::warn!(error = %e, "JWKS refresh failed; keeping the cached keys");
                // Do not hammer a failing source: count the attempt as a refresh.
                *fetched_at = Some(Instant::now());
                if self.keys.read().await.is_empty() {
                    Err(e)
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, JwksError> {
        let bytes = match &self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| JwksError::Unavailable(format!("{}: {e}", path.display())))?,
            JwksSource::Url(url) => {
                let response = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| JwksError::Unavailable(e.to_string()))?;
                response
                    .bytes()
                    .await
                    .map_err(|e| JwksError::Unavailable(e.to_string()))?
                    .to_vec()
            }
        };
        let set = super::parse_jwks(&bytes)?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                Err(e) => tracing::warn!(kid, error = %e, "skipping unusable JWK"),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::Malformed("no usable keys with a kid".into()));
        }
        Ok(keys)
    }
}
