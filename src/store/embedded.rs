//! Embedded store: an in-memory live view made durable in a local redb file.
//!
//! Admission (conditional increments) works on memory only, so the request path never waits for
//! a disk. A background flusher group-commits every changed counter in one fsynced transaction
//! (at most every `FLUSH_INTERVAL`, sooner when a debit asks); debits wait for that commit, so a
//! debit that returned is on disk. Requests-per-minute buckets written since the last commit are
//! lost in a crash, which at worst forgives one window; token debits are not.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, watch};

use super::memory::{Counter, MemoryStore};
use super::{Claim, CounterKey, Debit, Increment, Store, StoreError, StoreResult};
use crate::policy::Team;
use crate::policy::pricing::PriceUsd;

const COUNTERS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("counters");
const TEAMS: TableDefinition<&str, &str> = TableDefinition::new("teams");
const PRICES: TableDefinition<&str, &str> = TableDefinition::new("prices");
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const EVICT_INTERVAL: Duration = Duration::from_secs(60);
/// How long a debit waits for its commit before giving up waiting (the debit stays applied in
/// memory and is committed when the disk recovers).
const DURABLE_WAIT: Duration = Duration::from_secs(10);

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    live: MemoryStore,
    db: Database,
    dirty: Mutex<Dirty>,
    wake: Notify,
    /// Highest generation whose changes are committed.
    flushed: watch::Sender<u64>,
}

#[derive(Default)]
struct Dirty {
    ids: HashSet<String>,
    /// Changes marked now are committed by the flush of this generation.
    generation: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) the database file and loads its unexpired counters and teams.
    /// Must be called inside a Tokio runtime: it starts the flusher task.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let db = Database::create(path).map_err(unavailable)?;
        let live = MemoryStore::new();
        let now = unix_now();
        {
            let tx = db.begin_write().map_err(unavailable)?;
            // Creating the tables up front lets readers assume they exist.
            tx.open_table(COUNTERS).map_err(corrupt)?;
            tx.open_table(TEAMS).map_err(corrupt)?;
            tx.open_table(PRICES).map_err(corrupt)?;
            tx.commit().map_err(unavailable)?;
        }
        {
            let tx = db.begin_read().map_err(unavailable)?;
            for row in tx
                .open_table(COUNTERS)
                .map_err(corrupt)?
                .iter()
                .map_err(corrupt)?
            {
                let (id, value) = row.map_err(corrupt)?;
                let (value, expires_at) = value.value();
                if expires_at >= now {
                    live.load_counter(id.value().to_owned(), Counter { value, expires_at });
                }
            }
            for row in tx
                .open_table(TEAMS)
                .map_err(corrupt)?
                .iter()
                .map_err(corrupt)?
            {
                let (_, json) = row.map_err(corrupt)?;
                live.load_team(serde_json::from_str(json.value()).map_err(corrupt)?);
            }
        }
        let inner = Arc::new(Inner {
            live,
            db,
            dirty: Mutex::new(Dirty::default()),
            wake: Notify::new(),
            flushed: watch::Sender::new(0),
        });
        tokio::spawn(run_flusher(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    fn mark_dirty(&self, ids: impl IntoIterator<Item = String>) -> u64 {
        let mut dirty = self.inner.dirty.lock().unwrap();
        dirty.ids.extend(ids);
        dirty.generation
    }

    async fn wait_committed(&self, generation: u64) -> StoreResult<()> {
        self.inner.wake.notify_one();
        let mut flushed = self.inner.flushed.subscribe();
        match tokio::time::timeout(DURABLE_WAIT, flushed.wait_for(|&g| g >= generation)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(unavailable(
                "embedded store commit did not complete in time",
            )),
        }
    }

    /// Writes (or, with `None`, deletes) one JSON document durably; reports whether it existed.
    async fn write_document(
        &self,
        table: TableDefinition<'static, &'static str, &'static str>,
        id: &str,
        json: Option<String>,
    ) -> StoreResult<bool> {
        let inner = self.inner.clone();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || -> StoreResult<bool> {
            let tx = inner.db.begin_write().map_err(unavailable)?;
            let existed = {
                let mut table = tx.open_table(table).map_err(corrupt)?;
                match &json {
                    Some(json) => table
                        .insert(id.as_str(), json.as_str())
                        .map_err(unavailable)?
                        .is_some(),
                    None => table.remove(id.as_str()).map_err(unavailable)?.is_some(),
                }
            };
            tx.commit().map_err(unavailable)?;
            Ok(existed)
        })
        .await
        .map_err(unavailable)?
    }
}

async fn run_flusher(inner: Weak<Inner>) {
    let mut last_evict = tokio::time::Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let _ = tokio::time::timeout(FLUSH_INTERVAL, strong.wake.notified()).await;
        if last_evict.elapsed() >= EVICT_INTERVAL {
            last_evict = tokio::time::Instant::now();
            let expired = strong.live.evict_expired(unix_now());
            strong.dirty.lock().unwrap().ids.extend(expired);
        }
        let flushing = strong.clone();
        match tokio::task::spawn_blocking(move || flushing.commit_dirty()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                metrics::counter!("tollgate_store_errors_total", "backend" => "embedded", "op" => "commit").increment(1);
                tracing::error!(error = %e, "embedded store commit failed; retrying");
            }
            Err(e) => tracing::error!(error = %e, "embedded store flusher panicked"),
        }
    }
}

impl Inner {
    /// Commits every dirty counter in one transaction. On failure the ids go back to the dirty
    /// set, so the next attempt writes them.
    fn commit_dirty(&self) -> StoreResult<()> {
        let (ids, generation) = {
            let mut dirty = self.dirty.lock().unwrap();
            let generation = dirty.generation;
            dirty.generation += 1;
            (std::mem::take(&mut dirty.ids), generation)
        };
        if !ids.is_empty()
            && let Err(e) = self.write_counters(&ids)
        {
            let mut dirty = self.dirty.lock().unwrap();
            dirty.ids.extend(ids);
            return Err(e);
        }
        self.flushed.send_replace(generation);
        Ok(())
    }

    fn write_counters(&self, ids: &HashSet<String>) -> StoreResult<()> {
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = tx.open_table(COUNTERS).map_err(corrupt)?;
            for id in ids {
                // Written from the live view at commit time, so a later commit never loses to an
                // earlier one.
                match self.live.counter(id) {
                    Some(c) => table
                        .insert(id.as_str(), (c.value, c.expires_at))
                        .map_err(unavailable)?,
                    None => table.remove(id.as_str()).map_err(unavailable)?,
                };
            }
        }
        tx.commit().map_err(unavailable)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn read_counters(&self, keys: &[&CounterKey]) -> StoreResult<Vec<u64>> {
        self.inner.live.read_counters(keys).await
    }

    async fn add_within(
        &self,
        key: &CounterKey,
        amount: u64,
        limit: u64,
    ) -> StoreResult<Increment> {
        let outcome = self.inner.live.add_within_now(key, amount, limit);
        if matches!(outcome, Increment::Applied(_)) {
            self.mark_dirty([key.id()]);
        }
        Ok(outcome)
    }

    async fn claim_within(
        &self,
        key: &CounterKey,
        at_least: u64,
        up_to: u64,
        limit: u64,
    ) -> StoreResult<Claim> {
        let claim = self
            .inner
            .live
            .claim_within_now(key, at_least, up_to, limit);
        if claim.granted > 0 {
            self.mark_dirty([key.id()]);
        }
        Ok(claim)
    }

    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()> {
        debits
            .iter()
            .for_each(|d| self.inner.live.apply_debit_now(d));
        let generation = self.mark_dirty(
            debits
                .iter()
                .flat_map(|d| d.amounts.iter().map(|(k, _)| k.id())),
        );
        // Already applied in memory: a caller that sees an error must not apply them again.
        if let Err(e) = self.wait_committed(generation).await {
            tracing::warn!(debits = debits.len(), error = %e, "debits applied but not yet durable");
        }
        Ok(())
    }

    async fn put_team(&self, team: &Team) -> StoreResult<()> {
        let json = serde_json::to_string(team).map_err(corrupt)?;
        self.write_document(TEAMS, &team.id, Some(json)).await?;
        self.inner.live.load_team(team.clone());
        Ok(())
    }

    async fn delete_team(&self, id: &str) -> StoreResult<bool> {
        self.write_document(TEAMS, id, None).await?;
        self.inner.live.delete_team(id).await
    }

    async fn team(&self, id: &str) -> StoreResult<Option<Team>> {
        self.inner.live.team(id).await
    }

    async fn list_counters(&self, team: &str, prefix: &str) -> StoreResult<Vec<(String, u64)>> {
        self.inner.live.list_counters(team, prefix).await
    }

    async fn prices(&self) -> StoreResult<Vec<(String, PriceUsd)>> {
        self.inner.live.prices().await
    }

    async fn put_price(&self, model: &str, price: &PriceUsd) -> StoreResult<()> {
        let json = serde_json::to_string(price).map_err(corrupt)?;
        self.write_document(PRICES, model, Some(json)).await?;
        self.inner.live.put_price(model, price).await
    }

    async fn delete_price(&self, model: &str) -> StoreResult<bool> {
        self.write_document(PRICES, model, None).await?;
        self.inner.live.delete_price(model).await
    }

    async fn team_for_client(&self, client_id: &str) -> StoreResult<Option<Team>> {
        self.inner.live.team_for_client(client_id).await
    }

    async fn list_teams(&self) -> StoreResult<Vec<Team>> {
        self.inner.live.list_teams().await
    }

    async fn ping(&self) -> StoreResult<()> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let tx = inner.db.begin_read().map_err(unavailable)?;
            tx.open_table(COUNTERS).map_err(corrupt)?;
            Ok(())
        })
        .await
        .map_err(unavailable)?
    }

    async fn flush(&self) -> StoreResult<()> {
        let generation = self.mark_dirty([]);
        self.wait_committed(generation).await
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(counter: &str) -> CounterKey {
        CounterKey {
            team: "t".into(),
            counter: counter.into(),
            expires_at: unix_now() + 3600,
        }
    }

    #[tokio::test]
    async fn counters_and_teams_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let team = Team {
            client_ids: vec!["c".into()],
            ..Team::new("t", crate::policy::Tier::Sandbox)
        };
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store.put_team(&team).await.unwrap();
            store
                .apply_debits(&[Debit {
                    id: "r1".into(),
                    amounts: vec![(key("tokens#d"), 42)],
                }])
                .await
                .unwrap();
            assert_eq!(
                store.add_within(&key("rpm#1"), 1, 5).await.unwrap(),
                Increment::Applied(1)
            );
            store.flush().await.unwrap();
        }
        // The flusher holds only a weak reference: once the store is dropped the file is free.
        tokio::time::sleep(FLUSH_INTERVAL * 2).await;
        let store = EmbeddedStore::open(&path).unwrap();
        let values = store
            .read_counters(&[&key("tokens#d"), &key("rpm#1"), &key("absent")])
            .await
            .unwrap();
        assert_eq!(values, vec![42, 1, 0]);
        assert_eq!(store.team_for_client("c").await.unwrap(), Some(team));
    }

    #[tokio::test]
    async fn expired_counters_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let old = CounterKey {
            team: "t".into(),
            counter: "rpm#0".into(),
            expires_at: 1,
        };
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .apply_debits(&[Debit {
                    id: "x".into(),
                    amounts: vec![(old.clone(), 3)],
                }])
                .await
                .unwrap();
        }
        tokio::time::sleep(FLUSH_INTERVAL * 2).await;
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.read_counters(&[&old]).await.unwrap(), vec![0]);
    }
}
