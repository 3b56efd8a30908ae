//! The counter values admission reads (RPM buckets, tokens today, spend and reservations this
//! month), cached so that the request path does not wait for the store:
//!
//! - a value read less than `ttl` ago is used as it is;
//! - an older one (up to [`STALE_LIMIT`]) is used while one background read refreshes it, so a
//!   slow store slows no request down; token and spend checks then see other instances' debits
//!   up to `ttl` plus one read later (this instance's own debits at once);
//! - a value not cached is read before the admission goes on, once for all the admissions that
//!   need it at the same time (single flight).
//!
//! An RPM bucket is special, because the window's ceiling depends on the previous bucket: once its
//! minute is over, a value read before the end is not used at all (it may lack the last claims of
//! any instance), and a value read [`BUCKET_SETTLES_MS`] after the end is final.
//!
//! With `ttl` zero nothing is served stale: every admission reads (shared with the others in
//! flight).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::engine::{Breaker, Clock};
use crate::policy::rate::BUCKET_MS;
use crate::store::{BUCKET_SETTLES_MS, CounterKey, Store, StoreError, StoreResult};

/// Cached values are never used once this old.
pub const STALE_LIMIT: Duration = Duration::from_secs(300);

type Fetch = Shared<BoxFuture<'static, StoreResult<()>>>;

pub struct ReadCache {
    ttl: Duration,
    inner: Arc<dyn Store>,
    breaker: Arc<Breaker>,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<State>>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// Reads in flight, by key id: (read number, the read).
    in_flight: HashMap<String, (u64, Fetch)>,
}

#[derive(Clone, Copy)]
struct Entry {
    value: u64,
    /// When the read that produced `value` started (`None`: never read, only adjusted).
    read_at: Option<Instant>,
    /// The same moment on the engine's clock, which decides the RPM buckets.
    read_at_ms: u64,
    /// Everything this instance ever added to the counter. A read that started before some of
    /// it was applied gets it added back: it may not have seen it.
    added: u64,
}

/// How a cached value may be used now.
enum Use {
    Fresh(Entry),
    /// Usable, but due for a refresh.
    Stale(Entry),
    Missing,
}

/// What a read found: each value with when the read behind it started (`None`: never read, only
/// this instance's own changes), and how many store calls an admission waited for.
pub struct Read {
    pub values: Vec<(u64, Option<Instant>)>,
    pub waited_for: u64,
}

impl ReadCache {
    pub fn new(
        ttl: Duration,
        inner: Arc<dyn Store>,
        breaker: Arc<Breaker>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            ttl,
            inner,
            breaker,
            clock,
            state: Arc::default(),
            fetches: AtomicU64::new(0),
        }
    }

    /// Values of `keys`, from the cache where it can answer; background reads started here are
    /// counted in `background`.
    pub async fn read(&self, keys: &[&CounterKey], background: &AtomicU64) -> StoreResult<Read> {
        let (now, now_ms) = (Instant::now(), self.clock.now_ms());
        let may_call = self.breaker.allows();
        let mut values = Vec::with_capacity(keys.len());
        let (mut missing, mut stale) = (Vec::new(), Vec::new());
        {
            let state = self.state.lock().unwrap();
            for key in keys {
                match self.usable(state.entries.get(&key.id()), key, now, now_ms, may_call) {
                    Use::Fresh(e) => values.push(Some((e.value, e.read_at))),
                    Use::Stale(e) => {
                        values.push(Some((e.value, e.read_at)));
                        stale.push((*key).clone());
                    }
                    Use::Missing => {
                        values.push(None);
                        missing.push((*key).clone());
                    }
                }
            }
        }
        if !stale.is_empty() && may_call {
            let started = self.start(stale);
            background.fetch_add(started.new_reads, Ordering::Relaxed);
        }
        let mut waited_for = 0;
        if !missing.is_empty() {
            if !may_call {
                return Err(StoreError::Paused);
            }
            let started = self.start(missing.clone());
            waited_for = started.reads.len() as u64;
            for fetch in started.reads {
                fetch.await?;
            }
            let state = self.state.lock().unwrap();
            for (slot, key) in values.iter_mut().zip(keys) {
                if slot.is_none() {
                    *slot = Some(
                        state
                            .entries
                            .get(&key.id())
                            .map_or((0, None), |e| (e.value, e.read_at)),
                    );
                }
            }
        }
        Ok(Read {
            values: values.into_iter().map(Option::unwrap_or_default).collect(),
            waited_for,
        })
    }

    /// Counts what this instance added to a counter (a debit) at once. Decreases (released
    /// reservations, returned slices) wait for the next read: a read may already include one,
    /// and subtracting it twice would make a limit look further away than it is.
    pub fn add(&self, key: &CounterKey, amount: i64) {
        let Ok(amount) = u64::try_from(amount) else {
            return;
        };
        let mut state = self.state.lock().unwrap();
        let entry = state.entries.entry(key.id()).or_insert(Entry {
            value: 0,
            read_at: None,
            read_at_ms: 0,
            added: 0,
        });
        entry.value = entry.value.saturating_add(amount);
        entry.added = entry.added.saturating_add(amount);
    }

    /// Drops what can no longer be used.
    pub fn evict_old(&self) {
        let now = Instant::now();
        self.state
            .lock()
            .unwrap()
            .entries
            .retain(|_, e| e.read_at.is_some_and(|at| now - at < STALE_LIMIT));
    }

    fn usable(
        &self,
        entry: Option<&Entry>,
        key: &CounterKey,
        now: Instant,
        now_ms: u64,
        may_call: bool,
    ) -> Use {
        let Some(entry) = entry else {
            return Use::Missing;
        };
        let Some(read_at) = entry.read_at else {
            return Use::Missing;
        };
        if let Some(minute) = key.rpm_minute() {
            let end = (minute + 1) * BUCKET_MS;
            if now_ms >= end {
                if entry.read_at_ms < end {
                    return Use::Missing;
                }
                if entry.read_at_ms >= end + BUCKET_SETTLES_MS {
                    return Use::Fresh(*entry);
                }
            }
        }
        let age = now - read_at;
        if age < self.ttl {
            Use::Fresh(*entry)
        } else if age < STALE_LIMIT && (!self.ttl.is_zero() || !may_call) {
            // With no cache wanted, stale values still stand in while the store is failing.
            Use::Stale(*entry)
        } else {
            Use::Missing
        }
    }

    /// The reads that will answer for `keys`: those in flight, and one new read for the rest.
    fn start(&self, keys: Vec<CounterKey>) -> Started {
        let mut state = self.state.lock().unwrap();
        let mut reads: Vec<(u64, Fetch)> = Vec::new();
        let mut to_read = Vec::new();
        for key in keys {
            match state.in_flight.get(&key.id()) {
                Some((number, fetch)) => {
                    if !reads.iter().any(|(n, _)| n == number) {
                        reads.push((*number, fetch.clone()));
                    }
                }
                None => to_read.push(key),
            }
        }
        let mut new_reads = 0;
        if !to_read.is_empty() {
            new_reads = 1;
            let number = self.fetches.fetch_add(1, Ordering::Relaxed);
            let added: Vec<u64> = to_read
                .iter()
                .map(|k| state.entries.get(&k.id()).map_or(0, |e| e.added))
                .collect();
            let ids: Vec<String> = to_read.iter().map(CounterKey::id).collect();
            let task = tokio::spawn(fetch(
                self.inner.clone(),
                self.breaker.clone(),
                self.state.clone(),
                (Instant::now(), self.clock.now_ms()),
                (number, to_read, added),
            ));
            let read = async move {
                task.await
                    .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("read task: {e}"))))
            }
            .boxed()
            .shared();
            for id in ids {
                state.in_flight.insert(id, (number, read.clone()));
            }
            reads.push((number, read));
        }
        Started {
            reads: reads.into_iter().map(|(_, r)| r).collect(),
            new_reads,
        }
    }
}

struct Started {
    reads: Vec<Fetch>,
    new_reads: u64,
}

/// One read of several counters, stored in the cache when it answers.
async fn fetch(
    inner: Arc<dyn Store>,
    breaker: Arc<Breaker>,
    state: Arc<Mutex<State>>,
    (started, started_ms): (Instant, u64),
    (number, keys, added_before): (u64, Vec<CounterKey>, Vec<u64>),
) -> StoreResult<()> {
    let refs: Vec<&CounterKey> = keys.iter().collect();
    let outcome = inner.read_counters(&refs).await;
    match &outcome {
        Ok(_) => breaker.succeeded(),
        Err(StoreError::Paused) => {}
        Err(_) => breaker.failed(),
    }
    let mut state = state.lock().unwrap();
    for key in &keys {
        let id = key.id();
        if state.in_flight.get(&id).is_some_and(|(n, _)| *n == number) {
            state.in_flight.remove(&id);
        }
    }
    let values = outcome?;
    for ((key, value), added_before) in keys.iter().zip(values).zip(added_before) {
        let entry = state.entries.entry(key.id()).or_insert(Entry {
            value: 0,
            read_at: None,
            read_at_ms: 0,
            added: 0,
        });
        if entry.read_at.is_some_and(|at| at > started) {
            continue; // a later read answered first
        }
        let added_since = entry.added.saturating_sub(added_before);
        *entry = Entry {
            value: value.saturating_add(added_since),
            read_at: Some(started),
            read_at_ms: started_ms,
            added: entry.added,
        };
    }
    Ok(())
}
