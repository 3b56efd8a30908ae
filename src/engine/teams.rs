//! Team lookups with a short-lived cache, so the request path rarely touches the store for
//! them. A team changed in the store is seen by every instance within the cache TTL. When the
//! store fails, a stale entry is served rather than refusing a known team.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::Breaker;
use crate::policy::Team;
use crate::store::{Store, StoreError, StoreResult};

type Entry = (Instant, Option<Arc<Team>>);

pub struct TeamDirectory {
    store: Arc<dyn Store>,
    breaker: Arc<Breaker>,
    ttl: Duration,
    cache: RwLock<HashMap<String, Entry>>,
}

/// Bound on cached lookups (including misses from unknown client ids).
const MAX_ENTRIES: usize = 10_000;

impl TeamDirectory {
    pub fn new(store: Arc<dyn Store>, ttl: Duration, breaker: Arc<Breaker>) -> Self {
        Self {
            store,
            breaker,
            ttl,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Forgets every cached lookup.
    pub fn invalidate(&self) {
        self.cache.write().unwrap().clear();
    }

    pub async fn by_id(&self, id: &str) -> StoreResult<Option<Arc<Team>>> {
        let store = self.store.clone();
        let id_owned = id.to_owned();
        self.cached(
            format!("team:{id}"),
            async move { store.team(&id_owned).await },
        )
        .await
    }

    pub async fn by_client(&self, client_id: &str) -> StoreResult<Option<Arc<Team>>> {
        let store = self.store.clone();
        let client = client_id.to_owned();
        self.cached(format!("client:{client_id}"), async move {
            store.team_for_client(&client).await
        })
        .await
    }

    async fn cached(
        &self,
        key: String,
        load: impl Future<Output = StoreResult<Option<Team>>>,
    ) -> StoreResult<Option<Arc<Team>>> {
        let stale = match self.cache.read().unwrap().get(&key) {
            Some((at, team)) if at.elapsed() < self.ttl => return Ok(team.clone()),
            Some((_, team)) => Some(team.clone()),
            None => None,
        };
        let loaded = if self.breaker.allows() {
            load.await
        } else if let Some(team) = stale {
            // The store is known to be failing: the stale entry, without a doomed call first.
            return Ok(team);
        } else {
            Err(StoreError::Unavailable(
                "not called: failing recently".into(),
            ))
        };
        match loaded {
            Ok(team) => {
                let team = team.map(Arc::new);
                let mut cache = self.cache.write().unwrap();
                if cache.len() >= MAX_ENTRIES {
                    let ttl = self.ttl;
                    cache.retain(|_, (at, _)| at.elapsed() < ttl);
                    if cache.len() >= MAX_ENTRIES {
                        cache.clear();
                    }
                }
                cache.insert(key, (Instant::now(), team.clone()));
                Ok(team)
            }
            Err(e) => match stale {
                Some(team) => {
                    tracing::warn!(error = %e, "store failed; serving a stale team entry");
                    Ok(team)
                }
                None => Err(e),
            },
        }
    }
}
