//! The ledger applies debits to the store after responses, off the request path, in arrival
//! order, in batches of whatever has queued up (so the store can make a whole batch durable at
//! once). A batch that fails to apply is retried with backoff until it succeeds: spend that
//! happened is never dropped because a write failed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Debit, Store};

/// Debits waiting to be applied. A full queue makes settling wait (backpressure on finished
/// responses) instead of growing without bound.
const QUEUE_CAPACITY: usize = 65_536;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BATCH: usize = 1024;

enum Entry {
    Debit(Debit),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Ledger {
    queue: mpsc::Sender<Entry>,
}

impl Ledger {
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, entries) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(store, entries));
        Self { queue }
    }

    pub async fn record(&self, debit: Debit) {
        metrics::gauge!("tollgate_ledger_queued").increment(1.0);
        if self.queue.send(Entry::Debit(debit)).await.is_err() {
            tracing::error!("ledger stopped; debit not recorded");
            metrics::counter!("tollgate_debits_lost_total").increment(1);
        }
    }

    /// Resolves once everything recorded before it is applied and durable.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Entry::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(store: Arc<dyn Store>, mut entries: mpsc::Receiver<Entry>) {
    let mut debits = Vec::new();
    let mut flushes = Vec::new();
    while let Some(first) = entries.recv().await {
        let mut next = Some(first);
        while let Some(entry) = next.take() {
            match entry {
                Entry::Debit(debit) => debits.push(debit),
                // Everything queued before a flush is in this batch, so it is answered after it.
                Entry::Flush(done) => flushes.push(done),
            }
            if debits.len() < MAX_BATCH {
                next = entries.try_recv().ok();
            }
        }
        if !debits.is_empty() {
            apply_until_done(store.as_ref(), &debits).await;
            metrics::gauge!("tollgate_ledger_queued").decrement(debits.len() as f64);
            debits.clear();
        }
        for done in flushes.drain(..) {
            if let Err(e) = store.flush().await {
                tracing::error!(error = %e, "store flush failed");
            }
            let _ = done.send(());
        }
    }
}

async fn apply_until_done(store: &dyn Store, debits: &[Debit]) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.apply_debits(debits).await {
            Ok(()) => {
                metrics::counter!("tollgate_debits_total", "result" => "applied")
                    .increment(debits.len() as u64);
                return;
            }
            Err(e) => {
                metrics::counter!("tollgate_debits_total", "result" => "retried")
                    .increment(debits.len() as u64);
                tracing::warn!(debits = debits.len(), error = %e, retry_in = ?backoff, "debits failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
