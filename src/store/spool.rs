//! The spool: a durable, ordered queue of debits on local disk (redb) for a remote store that
//! is down or slow. Debits go in as they would have gone to the store and come out oldest first;
//! an entry is removed only after the store applied it, so a crash in between replays it, and the
//! store's idempotency by debit id makes that replay harmless.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Debit, StoreError, StoreResult};

const QUEUE: TableDefinition<u64, &str> = TableDefinition::new("debits");

pub struct Spool {
    db: Arc<Database>,
    next_seq: AtomicU64,
    pending: AtomicU64,
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("spool: {e}"))
}

impl Spool {
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let db = Database::create(path).map_err(failed)?;
        let tx = db.begin_write().map_err(failed)?;
        tx.open_table(QUEUE).map_err(failed)?;
        tx.commit().map_err(failed)?;
        let (pending, next_seq) = {
            let tx = db.begin_read().map_err(failed)?;
            let table = tx.open_table(QUEUE).map_err(failed)?;
            let last = table
                .last()
                .map_err(failed)?
                .map_or(0, |(k, _)| k.value() + 1);
            (table.len().map_err(failed)?, last)
        };
        if pending > 0 {
            tracing::warn!(pending, path = %path.display(), "spooled debits from an earlier run will be replayed");
        }
        metrics::gauge!("tollgate_spool_pending").set(pending as f64);
        Ok(Self {
            db: Arc::new(db),
            next_seq: AtomicU64::new(next_seq),
            pending: AtomicU64::new(pending),
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CounterKey;

    fn debit(id: &str) -> Debit {
        Debit {
            id: id.into(),
            amounts: vec![
                (CounterKey::tokens_on_day("t", "2026-11-21", 9), 5),
                (CounterKey::reserved_in_month("t", "2026-11", 9), -3),
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
        let spool = Spool::open(&path).unwrap();
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
}
