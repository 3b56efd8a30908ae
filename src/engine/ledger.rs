//! The ledger applies debits to the store after responses, off the request path, in arrival
//! order, in batches of whatever has queued up (so the store can make a whole batch durable at
//! once). Spend that happened is never dropped because a write failed:
//!
//! - with a spool (remote stores), a batch the store refuses goes to the spool on local disk,
//!   and so does everything after it while the spool is not empty; a replayer applies spooled
//!   debits oldest first once the store answers again, including after a restart;
//! - without one (local stores), a failed batch is retried with backoff until it succeeds.
//!
//! Debits also settle journaled calls (see `store::journal`): a call's debit carries its request id,
//! and one without amounts settles a call that costs nothing. The embedded store settles them
//! as it applies them; with a spool, the ledger settles them in the spool's journal once the batch
//! is applied or spooled. Stores that keep no journal never see a debit without amounts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use crate::store::{Debit, Spool, Store};

/// Debits waiting to be applied. A full queue makes settling wait (backpressure on finished
/// responses) instead of growing without bound.
const QUEUE_CAPACITY: usize = 65_536;
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BATCH: usize = 1024;
const REPLAY_BATCH: usize = 256;

enum Entry {
    Debit(Debit),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Ledger {
    queue: mpsc::Sender<Entry>,
}

impl Ledger {
    pub fn start(store: Arc<dyn Store>, spool: Option<Arc<Spool>>) -> Self {
        let (queue, entries) = mpsc::channel(QUEUE_CAPACITY);
        let replay = Arc::new(Notify::new());
        if let Some(spool) = &spool {
            tokio::spawn(replay_spool(store.clone(), spool.clone(), replay.clone()));
        }
        tokio::spawn(run(store, spool, replay, entries));
        Self { queue }
    }

    pub async fn record(&self, debit: Debit) {
        metrics::gauge!("tollgate_ledger_queued").increment(1.0);
        if self.queue.send(Entry::Debit(debit)).await.is_err() {
            tracing::error!("ledger stopped; debit not recorded");
            metrics::counter!("tollgate_debits_lost_total").increment(1);
        }
    }

    /// Resolves once everything recorded before it is durable: applied, or spooled.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Entry::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    spool: Option<Arc<Spool>>,
    replay: Arc<Notify>,
    mut entries: mpsc::Receiver<Entry>,
) {
    let store_settles_calls = store.journal().is_some();
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
            metrics::gauge!("tollgate_ledger_queued").decrement(debits.len() as f64);
            let settled: Vec<String> = match &spool {
                Some(_) => debits.iter().map(|d| d.id.clone()).collect(),
                None => Vec::new(),
            };
            if !store_settles_calls {
                debits.retain(|d| !d.amounts.is_empty());
            }
            match &spool {
                Some(spool) => {
                    if !debits.is_empty() {
                        apply_or_spool(store.as_ref(), spool, &replay, &debits).await;
                    }
                    spool.settle(settled.iter().map(String::as_str));
                }
                None if !debits.is_empty() => apply_until_done(store.as_ref(), &debits).await,
                None => {}
            }
            debits.clear();
        }
        for done in flushes.drain(..) {
            if let Err(e) = store.flush().await {
                tracing::error!(error = %e, "store flush failed");
            }
            if let Some(spool) = &spool
                && let Err(e) = spool.journal().flush().await
            {
                tracing::error!(error = %e, "journal flush failed");
            }
            let _ = done.send(());
        }
    }
}

async fn apply_or_spool(store: &dyn Store, spool: &Spool, replay: &Notify, debits: &[Debit]) {
    // While older debits wait in the spool, newer ones queue behind them.
    if spool.pending() == 0 {
        match store.apply_debits(debits).await {
            Ok(()) => {
                metrics::counter!("tollgate_debits_total", "result" => "applied")
                    .increment(debits.len() as u64);
                return;
            }
            Err(e) => {
                tracing::warn!(debits = debits.len(), error = %e, "store refused debits; spooling them")
            }
        }
    }
    match spool.push(debits).await {
        Ok(()) => {
            metrics::counter!("tollgate_debits_total", "result" => "spooled")
                .increment(debits.len() as u64);
            replay.notify_one();
        }
        Err(e) => {
            tracing::error!(error = %e, "spool unavailable; retrying the store until it answers");
            apply_until_done(store, debits).await;
        }
    }
}

async fn replay_spool(store: Arc<dyn Store>, spool: Arc<Spool>, replay: Arc<Notify>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if spool.pending() == 0 {
            let _ = tokio::time::timeout(Duration::from_secs(1), replay.notified()).await;
            continue;
        }
        let entries = match spool.oldest(REPLAY_BATCH).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        };
        let (seqs, debits): (Vec<u64>, Vec<Debit>) = entries.into_iter().unzip();
        match store.apply_debits(&debits).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                metrics::counter!("tollgate_debits_total", "result" => "replayed")
                    .increment(debits.len() as u64);
                if let Err(e) = spool.remove(seqs).await {
                    // Left in the spool, they will be replayed again: the store ignores repeats.
                    tracing::error!(error = %e, "could not remove replayed debits from the spool");
                }
                if spool.pending() == 0 {
                    tracing::info!("spool drained: every debit is in the store");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, pending = spool.pending(), retry_in = ?backoff, "store still unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
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
