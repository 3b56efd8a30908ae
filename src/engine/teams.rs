//! Team lookups with a short-lived cache, so the request path rarely touches the store for
//! them. An expired entry is served while it is re-read in the background, so a team changed in
//! the store is seen by every instance within about the cache TTL and a slow store does not slow
//! requests down. A team not in the cache is looked up once however many of its requests arrive
//! together (single flight): the first burst from a new team is one store call, not one each.
//! When the store fails, cached entries are served, and teams declared in the configuration are
//! known even if they were never looked up before the outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::Breaker;
use super::single_flight::SingleFlight;
use crate::policy::Team;
use crate::store::{Store, StoreError, StoreResult};

type Entry = (Instant, Option<Arc<Team>>);

/// Bound on cached lookups (including misses from unknown client ids).
const MAX_ENTRIES: usize = 10_000;

pub struct TeamDirectory {
    store: Arc<dyn Store>,
    breaker: Arc<Breaker>,
    ttl: Duration,
    cache: Arc<RwLock<HashMap<String, Entry>>>,
    /// Lookups in flight, by invalidation and key: one after an admin change never joins one
    /// started before it.
    loading: SingleFlight<(u64, String), StoreResult<Option<Arc<Team>>>>,
    invalidations: AtomicU64,
    /// Teams from the configuration file: the answer of last resort during an outage.
    configured: Vec<Arc<Team>>,
}

#[derive(Clone)]
enum Lookup {
    Id(String),
    Client(String),
}

impl Lookup {
    fn key(&self) -> String {
        match self {
            Lookup::Id(id) => format!("team:{id}"),
            Lookup::Client(c) => format!("client:{c}"),
        }
    }

    async fn load(&self, store: &dyn Store) -> StoreResult<Option<Team>> {
        match self {
            Lookup::Id(id) => store.team(id).await,
            Lookup::Client(c) => store.team_for_client(c).await,
        }
    }

    fn matches(&self, team: &Team) -> bool {
        match self {
            Lookup::Id(id) => &team.id == id,
            Lookup::Client(c) => team.client_ids.iter().any(|x| x == c),
        }
    }
}

impl TeamDirectory {
    pub fn new(
        store: Arc<dyn Store>,
        ttl: Duration,
        breaker: Arc<Breaker>,
        configured: Vec<Team>,
    ) -> Self {
        Self {
            store,
            breaker,
            ttl,
            cache: Arc::new(RwLock::new(HashMap::new())),
            loading: SingleFlight::default(),
            invalidations: AtomicU64::new(0),
            configured: configured.into_iter().map(Arc::new).collect(),
        }
    }

    /// Forgets every cached lookup.
    pub fn invalidate(&self) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.cache.write().unwrap().clear();
    }

    pub async fn by_id(&self, id: &str) -> StoreResult<Option<Arc<Team>>> {
        self.lookup(Lookup::Id(id.to_owned())).await
    }

    pub async fn by_client(&self, client_id: &str) -> StoreResult<Option<Arc<Team>>> {
        self.lookup(Lookup::Client(client_id.to_owned())).await
    }

    async fn lookup(&self, lookup: Lookup) -> StoreResult<Option<Arc<Team>>> {
        let key = lookup.key();
        let cached = self.cache.read().unwrap().get(&key).cloned();
        if let Some((at, team)) = cached {
            if at.elapsed() >= self.ttl && self.breaker.allows() {
                // Re-read in the background; mark the entry fresh so one refresh runs, not many.
                self.remember(&key, team.clone());
                let (store, cache, lookup) =
                    (self.store.clone(), self.cache.clone(), lookup.clone());
                tokio::spawn(async move {
                    match lookup.load(store.as_ref()).await {
                        Ok(team) => {
                            cache
                                .write()
                                .unwrap()
                                .insert(lookup.key(), (Instant::now(), team.map(Arc::new)));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "store failed; keeping the cached team")
                        }
                    }
                });
            }
            return Ok(team);
        }
        let loaded = if self.breaker.allows() {
            let (store, lookup) = (self.store.clone(), lookup.clone());
            let generation = self.invalidations.load(Ordering::Acquire);
            self.loading
                .run((generation, key.clone()), || async move {
                    Ok(lookup.load(store.as_ref()).await?.map(Arc::new))
                })
                .await
        } else {
            Err(StoreError::Unavailable(
                "not called: failing recently".into(),
            ))
        };
        match loaded {
            Ok(team) => {
                self.remember(&key, team.clone());
                Ok(team)
            }
            Err(e) => match self.configured.iter().find(|t| lookup.matches(t)) {
                Some(team) => Ok(Some(team.clone())),
                None => Err(e),
            },
        }
    }

    fn remember(&self, key: &str, team: Option<Arc<Team>>) {
        let mut cache = self.cache.write().unwrap();
        if cache.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key.to_owned(), (Instant::now(), team));
    }
}
