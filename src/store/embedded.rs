//! Embedded store: an in-memory live view made durable in a local redb file.
//!
//! Admission (conditional increments) works on memory only, so the request path never waits for
//! a disk. A committer thread (see `journal::spawn_committer`) group-commits every changed counter
//! in one fsynced transaction (at least every `FLUSH_INTERVAL`, sooner when a debit or a journaled
//! call asks, after the configured commit delay); debits wait for that commit, so a debit that
//! returned is on disk. Requests-per-minute buckets written since the
//! last commit are lost in a crash, which at worst forgives one window; token debits are not.
//!
//! The journal of admitted calls (see `journal`) lives in the same database and goes through the
//! same commits: a commit takes the counters' values and the journal's changes at one instant, and
//! a debit settles its call's entry in the step that applies it, so the debit and the removal of
//! the entry it settles are durable together or not at all.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::journal::{
    Commit, CommitTiming, Committed, GroupCommit, Journal, KeepsJournal, OpenCalls,
    spawn_committer, write_changes,
};
use super::memory::{Counter, MemoryStore};
use super::{Claim, Counted, CounterKey, Debit, Increment, Scope, Store, StoreError, StoreResult};
use crate::policy::Team;
use crate::policy::pricing::PriceUsd;

const COUNTERS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("counters");
const TEAMS: TableDefinition<&str, &str> = TableDefinition::new("teams");
const PRICES: TableDefinition<&str, &str> = TableDefinition::new("prices");
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const EVICT_INTERVAL: Duration = Duration::from_secs(60);

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    live: MemoryStore,
    db: Database,
    dirty: Mutex<Dirty>,
    commits: GroupCommit,
    /// When the committer last dropped expired counters.
    last_evict: Mutex<std::time::Instant>,
}

#[derive(Default)]
struct Dirty {
    ids: HashSet<String>,
    /// The journal: under the same lock as the counters, so a debit and the entry it settles are
    /// marked for the same commit.
    calls: OpenCalls,
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
    /// Opens (or creates) the database file and loads its unexpired counters and teams; commits
    /// start as soon as asked.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with_commit_delay(path, Duration::ZERO)
    }

    /// [`EmbeddedStore::open`] whose committer, once asked, waits `commit_delay` (at most
    /// [`super::MAX_COMMIT_DELAY`]) before committing, so that more calls share one fsync.
    pub fn open_with_commit_delay(path: &Path, commit_delay: Duration) -> StoreResult<Self> {
        Self::open_timed(
            path,
            CommitTiming {
                interval: FLUSH_INTERVAL,
                delay: commit_delay.min(super::MAX_COMMIT_DELAY),
            },
        )
    }

    fn open_timed(path: &Path, timing: CommitTiming) -> StoreResult<Self> {
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
            OpenCalls::create_table(&tx)?;
            tx.commit().map_err(unavailable)?;
        }
        let calls = {
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
            OpenCalls::load(&tx)?
        };
        let inner = Arc::new(Inner {
            live,
            db,
            dirty: Mutex::new(Dirty {
                calls,
                ..Dirty::default()
            }),
            commits: GroupCommit::new(),
            last_evict: Mutex::new(std::time::Instant::now()),
        });
        spawn_committer(&inner, timing)?;
        Ok(Self { inner })
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

impl Inner {
    fn mark_dirty(&self, ids: impl IntoIterator<Item = String>) -> u64 {
        let mut dirty = self.dirty.lock().unwrap();
        dirty.ids.extend(ids);
        dirty.generation
    }

    fn write(
        &self,
        counters: &[(String, Option<Counter>)],
        calls: &[(String, Option<String>)],
    ) -> StoreResult<()> {
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = tx.open_table(COUNTERS).map_err(corrupt)?;
            for (id, counter) in counters {
                match counter {
                    Some(c) => table
                        .insert(id.as_str(), (c.value, c.expires_at))
                        .map_err(unavailable)?,
                    None => table.remove(id.as_str()).map_err(unavailable)?,
                };
            }
        }
        write_changes(&tx, calls)?;
        tx.commit().map_err(unavailable)
    }
}

impl Committed for Inner {
    fn commits(&self) -> &GroupCommit {
        &self.commits
    }

    /// Commits every dirty counter and the journal's changes in one transaction. Counter values
    /// are read from the live view with the dirty marks, under their lock: a later commit never
    /// loses to an earlier one, and a debit is never committed without the removal of the entry
    /// it settles. On failure the marks go back, so the next attempt writes them.
    fn commit(&self) -> StoreResult<Commit> {
        let (counters, calls, generation) = {
            let mut dirty = self.dirty.lock().unwrap();
            let generation = dirty.generation;
            dirty.generation += 1;
            let ids = std::mem::take(&mut dirty.ids);
            (
                self.live.counters_now(ids),
                dirty.calls.take_changes(),
                generation,
            )
        };
        let wrote = !(counters.is_empty() && calls.is_empty());
        if wrote && let Err(e) = self.write(&counters, &calls) {
            let mut dirty = self.dirty.lock().unwrap();
            dirty.ids.extend(counters.into_iter().map(|(id, _)| id));
            dirty.calls.restore_changes(calls);
            return Err(e);
        }
        Ok(Commit { generation, wrote })
    }

    fn before_commit(&self) {
        let mut last_evict = self.last_evict.lock().unwrap();
        if last_evict.elapsed() >= EVICT_INTERVAL {
            *last_evict = std::time::Instant::now();
            let expired = self.live.evict_expired(unix_now());
            self.dirty.lock().unwrap().ids.extend(expired);
        }
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

impl KeepsJournal for Inner {
    fn with_calls<R>(&self, change: impl FnOnce(&mut OpenCalls) -> R) -> R {
        change(&mut self.dirty.lock().unwrap().calls)
    }

    fn generation(&self) -> u64 {
        self.dirty.lock().unwrap().generation
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
            self.inner.mark_dirty([key.id()]);
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
            self.inner.mark_dirty([key.id()]);
        }
        Ok(claim)
    }

    /// Each debit also settles the journaled call with its id, in the same commit.
    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()> {
        let generation = {
            let mut dirty = self.inner.dirty.lock().unwrap();
            for debit in debits {
                self.inner.live.apply_debit_now(debit);
                dirty.ids.extend(debit.amounts.iter().map(|(k, _)| k.id()));
                dirty.calls.settle(&debit.id);
            }
            dirty.generation
        };
        // Already applied in memory: a caller that sees an error must not apply them again.
        if let Err(e) = self.inner.commits.wait(generation).await {
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

    async fn list_counters(&self, scope: &Scope, prefix: &str) -> StoreResult<Vec<(Counted, u64)>> {
        self.inner.live.list_counters(scope, prefix).await
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
        Journal::flush(self.inner.as_ref()).await
    }

    fn journal(&self) -> Option<Arc<dyn Journal>> {
        Some(self.inner.clone())
    }

    fn backend_name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(counter: &str) -> CounterKey {
        CounterKey::parse("t", counter, unix_now() + 3600).unwrap()
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
                    amounts: vec![(key("tokens#2026-11-21"), 42)],
                }])
                .await
                .unwrap();
            assert_eq!(
                store.add_within(&key("rpm#1"), 1, 5).await.unwrap(),
                Increment::Applied(1)
            );
            store.flush().await.unwrap();
        }
        // The committer holds only a weak reference: once the store is dropped the file is free.
        let store = crate::store::reopen_when_released(|| EmbeddedStore::open(&path)).await;
        let values = store
            .read_counters(&[
                &key("tokens#2026-11-21"),
                &key("rpm#1"),
                &key("tokens#2026-11-22"),
            ])
            .await
            .unwrap();
        assert_eq!(values, vec![42, 1, 0]);
        assert_eq!(store.team_for_client("c").await.unwrap(), Some(team));
    }

    #[tokio::test]
    async fn with_a_commit_delay_calls_journaled_during_it_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = EmbeddedStore::open_timed(
            &path,
            CommitTiming {
                // Only asked commits: the count below is theirs alone.
                interval: Duration::from_secs(3600),
                delay: Duration::from_secs(1),
            },
        )
        .unwrap();
        let journal = store.journal().unwrap();
        let ids = ["a", "b", "c", "d"];
        for id in ids {
            assert_eq!(
                journal.open(crate::store::journal::tests::entry(id)),
                crate::store::Opened::Journaled
            );
            // Later than a commit without a delay would have started.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        journal.flush().await.unwrap();
        assert_eq!(store.inner.commits.written(), 1, "one commit for all four");
        let tx = store.inner.db.begin_read().unwrap();
        let rows = OpenCalls::load(&tx).unwrap().claim_all().len();
        assert_eq!(rows, ids.len(), "all four are on disk");
    }

    #[tokio::test]
    async fn expired_counters_are_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let old = CounterKey::parse("t", "rpm#0", 1).unwrap();
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
        let store = crate::store::reopen_when_released(|| EmbeddedStore::open(&path)).await;
        assert_eq!(store.read_counters(&[&old]).await.unwrap(), vec![0]);
    }
}
