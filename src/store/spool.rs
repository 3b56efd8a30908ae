//! The spool: a durable, ordered queue of debits on local disk (redb) for a remote store that
//! is down or slow. Debits go in as they would have gone to the store and come out oldest first;
//! an entry is removed only after the store applied it, so a crash in between replays it, and the
//! store's idempotency by debit id makes that replay harmless.
//!
//! The same file holds the journal of admitted calls for the remote store (see `journal`): local
//! disk, so admission never waits on the remote store for it. Its entries are group-committed by
//! their own committer and removed once the ledger has their debits applied or spooled.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::journal::{
    Commit, CommitTiming, Committed, GroupCommit, Journal, KeepsJournal, OpenCalls,
    spawn_committer, write_changes,
};
use super::{Debit, StoreError, StoreResult};

const QUEUE: TableDefinition<u64, &str> = TableDefinition::new("debits");
/// Journal changes wait at most this long for a commit when nothing starts one sooner.
const JOURNAL_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

pub struct Spool {
    db: Arc<Database>,
    next_seq: AtomicU64,
    pending: AtomicU64,
    journal: Arc<SpoolJournal>,
}

struct SpoolJournal {
    db: Arc<Database>,
    calls: Mutex<JournalChanges>,
    commits: GroupCommit,
}

struct JournalChanges {
    calls: OpenCalls,
    /// Changes marked now are committed by the commit of this generation.
    generation: u64,
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("spool: {e}"))
}

impl Spool {
    /// Opens (or creates) the spool file and starts the journal's committer.
    pub fn open(path: &Path) -> StoreResult<Self> {
        Self::open_with_commit_delay(path, Duration::ZERO)
    }

    /// [`Spool::open`] whose journal committer, once asked, waits `commit_delay` (at most
    /// [`super::MAX_COMMIT_DELAY`]) before committing, so that more calls share one fsync.
    pub fn open_with_commit_delay(path: &Path, commit_delay: Duration) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let db = Database::create(path).map_err(failed)?;
        let tx = db.begin_write().map_err(failed)?;
        tx.open_table(QUEUE).map_err(failed)?;
        OpenCalls::create_table(&tx)?;
        tx.commit().map_err(failed)?;
        let (pending, next_seq, calls) = {
            let tx = db.begin_read().map_err(failed)?;
            let table = tx.open_table(QUEUE).map_err(failed)?;
            let last = table
                .last()
                .map_err(failed)?
                .map_or(0, |(k, _)| k.value() + 1);
            (table.len().map_err(failed)?, last, OpenCalls::load(&tx)?)
        };
        if pending > 0 {
            tracing::warn!(pending, path = %path.display(), "spooled debits from an earlier run will be replayed");
        }
        metrics::gauge!("tollgate_spool_pending").set(pending as f64);
        let db = Arc::new(db);
        let journal = Arc::new(SpoolJournal {
            db: db.clone(),
            calls: Mutex::new(JournalChanges {
                calls,
                generation: 0,
            }),
            commits: GroupCommit::new(),
        });
        spawn_committer(
            &journal,
            CommitTiming {
                interval: JOURNAL_COMMIT_INTERVAL,
                delay: commit_delay.min(super::MAX_COMMIT_DELAY),
            },
        )?;
        Ok(Self {
            db,
            next_seq: AtomicU64::new(next_seq),
            pending: AtomicU64::new(pending),
            journal,
        })
    }

    /// The journal of admitted calls for the remote store.
    pub fn journal(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }

    /// The debits of these calls were applied or spooled: their entries go, with the next
    /// journal commit (started now, not waited for: if the process dies first, recovery charges
    /// them again under the same ids, which the store ignores as repeats).
    pub fn settle<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        self.journal
            .with_calls(|calls| ids.into_iter().for_each(|id| calls.settle(id)));
        self.journal.commits.start();
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Appends durably (fsync) before returning.
    pub async fn push(&self, debits: &[Debit]) -> StoreResult<()> {
        let entries: Vec<(u64, String)> = debits
            .iter()
            .map(|d| {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                (seq, serde_json::to_string(d).expect("debits serialize"))
            })
            .collect();
        let db = self.db.clone();
        let n = entries.len() as u64;
        tokio::task::spawn_blocking(move || -> StoreResult<()> {
            let tx = db.begin_write().map_err(failed)?;
            {
                let mut table = tx.open_table(QUEUE).map_err(failed)?;
                for (seq, json) in &entries {
                    table.insert(*seq, json.as_str()).map_err(failed)?;
                }
            }
            tx.commit().map_err(failed)
        })
        .await
        .map_err(failed)??;
        let now = self.pending.fetch_add(n, Ordering::Relaxed) + n;
        metrics::gauge!("tollgate_spool_pending").set(now as f64);
        Ok(())
    }

    /// Up to `limit` of the oldest debits, with their sequence numbers.
    pub async fn oldest(&self, limit: usize) -> StoreResult<Vec<(u64, Debit)>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> StoreResult<Vec<(u64, Debit)>> {
            let tx = db.begin_read().map_err(failed)?;
            let table = tx.open_table(QUEUE).map_err(failed)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(failed)?.take(limit) {
                let (seq, json) = row.map_err(failed)?;
                let debit = serde_json::from_str(json.value())
                    .map_err(|e| StoreError::Corrupt(format!("spool entry: {e}")))?;
                out.push((seq.value(), debit));
            }
            Ok(out)
        })
        .await
        .map_err(failed)?
    }

    /// Removes entries the store has applied.
    pub async fn remove(&self, seqs: Vec<u64>) -> StoreResult<()> {
        let db = self.db.clone();
        let n = seqs.len() as u64;
        tokio::task::spawn_blocking(move || -> StoreResult<()> {
            let tx = db.begin_write().map_err(failed)?;
            {
                let mut table = tx.open_table(QUEUE).map_err(failed)?;
                for seq in seqs {
                    table.remove(seq).map_err(failed)?;
                }
            }
            tx.commit().map_err(failed)
        })
        .await
        .map_err(failed)??;
        let now = self
            .pending
            .fetch_sub(n, Ordering::Relaxed)
            .saturating_sub(n);
        metrics::gauge!("tollgate_spool_pending").set(now as f64);
        Ok(())
    }
}

impl Committed for SpoolJournal {
    fn commits(&self) -> &GroupCommit {
        &self.commits
    }

    fn commit(&self) -> StoreResult<Commit> {
        let (changes, generation) = {
            let mut journal = self.calls.lock().unwrap();
            let generation = journal.generation;
            journal.generation += 1;
            (journal.calls.take_changes(), generation)
        };
        if changes.is_empty() {
            return Ok(Commit {
                generation,
                wrote: false,
            });
        }
        let written = (|| {
            let tx = self.db.begin_write().map_err(failed)?;
            write_changes(&tx, &changes)?;
            tx.commit().map_err(failed)
        })();
        if let Err(e) = written {
            self.calls.lock().unwrap().calls.restore_changes(changes);
            return Err(e);
        }
        Ok(Commit {
            generation,
            wrote: true,
        })
    }

    fn name(&self) -> &'static str {
        "spool"
    }
}

impl KeepsJournal for SpoolJournal {
    fn with_calls<R>(&self, change: impl FnOnce(&mut OpenCalls) -> R) -> R {
        change(&mut self.calls.lock().unwrap().calls)
    }

    fn generation(&self) -> u64 {
        self.calls.lock().unwrap().generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CounterKey, JournalEntry, Opened};

    fn debit(id: &str) -> Debit {
        Debit {
            id: id.into(),
            amounts: vec![
                (CounterKey::parse("t", "tokens#2026-11-21", 9).unwrap(), 5),
                (CounterKey::parse("t", "reserved#2026-11", 9).unwrap(), -3),
            ],
        }
    }

    #[tokio::test]
    async fn debits_come_out_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        {
            let spool = Spool::open(&path).unwrap();
            spool.push(&[debit("a"), debit("b")]).await.unwrap();
            spool.push(&[debit("c")]).await.unwrap();
            assert_eq!(spool.pending(), 3);
            let first = spool.oldest(1).await.unwrap();
            assert_eq!(first[0].1, debit("a"));
            spool.remove(vec![first[0].0]).await.unwrap();
        }
        // The journal's committer lets go of the file at its next turn.
        let spool = crate::store::reopen_when_released(|| Spool::open(&path)).await;
        assert_eq!(spool.pending(), 2);
        let rest: Vec<String> = spool
            .oldest(10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.id)
            .collect();
        assert_eq!(rest, vec!["b", "c"]);
        spool.push(&[debit("d")]).await.unwrap();
        let all: Vec<String> = spool
            .oldest(10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.id)
            .collect();
        assert_eq!(
            all,
            vec!["b", "c", "d"],
            "new entries go after the old ones"
        );
    }

    #[tokio::test]
    async fn journaled_calls_survive_a_reopen_until_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let entry = |id: &str| JournalEntry {
            team: "t".into(),
            model: "m".into(),
            admitted_at_ms: 1,
            tokens: 5,
            cost_micros: 7,
            debit: debit(id),
        };
        {
            let spool = Spool::open(&path).unwrap();
            let journal = spool.journal();
            for id in ["a", "b", "c"] {
                assert_eq!(journal.open(entry(id)), Opened::Journaled);
            }
            journal.flush().await.unwrap();
            assert!(journal.claim("a"));
            spool.settle(["a", "b"]);
            journal.flush().await.unwrap();
        }
        let spool = crate::store::reopen_when_released(|| Spool::open(&path)).await;
        let mut left: Vec<String> = spool
            .journal()
            .claim_all()
            .iter()
            .map(|e| e.id().to_owned())
            .collect();
        left.sort();
        // "b" was never claimed for settlement: a debit with its id did not settle it.
        assert_eq!(left, vec!["b", "c"]);
        assert_eq!(spool.pending(), 0, "journal entries are not spooled debits");
    }
}
