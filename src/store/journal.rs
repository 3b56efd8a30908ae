//! The journal of admitted model calls: for each call whose exchange has not ended yet, what it
//! costs at least. The provider bills the prompt of every call it received, even one whose answer
//! never came back; if tollgate dies (SIGKILL, OOM, a lost host) before the exchange ends, its
//! settlement never runs, and without the journal the call would never be charged.
//!
//! An entry is written when a call is admitted and leaves the journal once the debit that settles
//! the call is durable. The next process charges whatever the last one left at its estimate, as a
//! debit with the call's request id, so a debit that did land before the crash is not counted
//! twice. Where the journal lives decides how that holds:
//!
//! - embedded store: in the same redb database, written by the same group commit as the counters;
//!   an entry leaves in the very commit that applies its debit, so a crash keeps both or neither;
//! - DynamoDB: in the spool's redb file on local disk (admission must not wait on DynamoDB for
//!   it); an entry leaves after its debit was applied or spooled, and if the process dies in
//!   between, DynamoDB's `debit#<id>` marker makes the recovered charge a no-op;
//! - memory store: nothing survives the process, so there is nothing to recover.
//!
//! Admission does not wait for the entry to be durable: it starts the group commit and goes on.
//! A call is unjournaled from its admission until that commit ends (one commit, about a
//! millisecond on a local disk, plus the commit delay if one is configured), while Envoy is still
//! sending it to the provider.
//!
//! Each database is committed by a thread of its own ([`spawn_committer`]), which the journal,
//! a debit waiting for durability and its interval wake.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Debit, StoreError, StoreResult};

const CALLS: TableDefinition<&str, &str> = TableDefinition::new("journal");

/// Most calls held open at once. Calls leave as they settle, so only a leak or a flood reaches
/// this; beyond it, calls are admitted unjournaled (and counted) rather than refused: the journal
/// insures against a crash, it is not what meters a call.
pub const MAX_OPEN_CALLS: usize = 100_000;

/// How long [`GroupCommit::wait`] waits for a commit before calling it failed.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

/// An admitted call that has not been settled yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub team: String,
    /// The model as the request named it (for logs; its canonical name is in the counters).
    pub model: String,
    pub admitted_at_ms: u64,
    /// The estimated prompt: tokens and cost the provider bills for any call it received.
    pub tokens: u64,
    pub cost_micros: u64,
    /// What an unsettled call is charged: the estimate on the counters fixed at admission, and its
    /// budget reservation given back. Its id is the request id, the id of the call's own debit.
    pub debit: Debit,
}

impl JournalEntry {
    pub fn id(&self) -> &str {
        &self.debit.id
    }
}

/// Outcome of [`Journal::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    Journaled,
    /// A call with the same request id is open: the first one keeps the entry.
    DuplicateId,
    /// [`MAX_OPEN_CALLS`] are open.
    Full,
}

/// Where admitted calls are journaled (see the module documentation). An entry leaves the
/// journal when its settling debit (same id; without amounts when nothing is charged) is durable:
/// the embedded store removes it in the commit that applies that debit, the spool once the ledger
/// has it applied or spooled ([`super::Spool::settle`]).
#[async_trait]
pub trait Journal: Send + Sync {
    /// Journals an admitted call and starts a group commit; does not wait for it.
    fn open(&self, entry: JournalEntry) -> Opened;

    /// Takes an open call for settlement: true once per call, false if it was taken already (by
    /// [`Journal::claim_all`] at shutdown), in which case its settlement must charge nothing. Only
    /// a claimed call leaves the journal when a debit with its id is durable.
    fn claim(&self, id: &str) -> bool;

    /// Takes every call not taken yet: at startup, what an earlier process left; at the end of
    /// the shutdown grace period, what is still in flight.
    fn claim_all(&self) -> Vec<JournalEntry>;

    /// Resolves once every change made so far is durable.
    async fn flush(&self) -> StoreResult<()>;
}

struct OpenCall {
    entry: JournalEntry,
    json: String,
    claimed: bool,
}

/// The open calls of one database, and which of them changed since a commit last took them.
/// Not locked itself: its owner keeps it under the lock that also orders its commits, so that
/// marking a change and the generation that commits it are one step.
#[derive(Default)]
pub(super) struct OpenCalls {
    calls: HashMap<String, OpenCall>,
    /// Opened or settled since a commit last took them. An open call found here has never been
    /// written (a failed commit puts its ids back), so settling it needs no disk write at all.
    changed: HashSet<String>,
}

impl OpenCalls {
    /// The calls an earlier process left, as read from its database.
    pub(super) fn load(tx: &ReadTransaction) -> StoreResult<Self> {
        let mut calls = HashMap::new();
        let table = tx.open_table(CALLS).map_err(corrupt)?;
        for row in table.iter().map_err(corrupt)? {
            let (id, json) = row.map_err(corrupt)?;
            let entry: JournalEntry = serde_json::from_str(json.value())
                .map_err(|e| StoreError::Corrupt(format!("journal entry {}: {e}", id.value())))?;
            let json = json.value().to_owned();
            calls.insert(
                id.value().to_owned(),
                OpenCall {
                    entry,
                    json,
                    claimed: false,
                },
            );
        }
        let open = Self {
            calls,
            changed: HashSet::new(),
        };
        open.count();
        Ok(open)
    }

    pub(super) fn create_table(tx: &WriteTransaction) -> StoreResult<()> {
        tx.open_table(CALLS).map_err(corrupt)?;
        Ok(())
    }

    pub(super) fn open(&mut self, entry: JournalEntry, json: String) -> Opened {
        if self.calls.contains_key(entry.id()) {
            return Opened::DuplicateId;
        }
        if self.calls.len() >= MAX_OPEN_CALLS {
            return Opened::Full;
        }
        let id = entry.id().to_owned();
        self.changed.insert(id.clone());
        self.calls.insert(
            id,
            OpenCall {
                entry,
                json,
                claimed: false,
            },
        );
        self.count();
        Opened::Journaled
    }

    pub(super) fn claim(&mut self, id: &str) -> bool {
        self.calls
            .get_mut(id)
            .is_some_and(|call| !std::mem::replace(&mut call.claimed, true))
    }

    pub(super) fn claim_all(&mut self) -> Vec<JournalEntry> {
        self.calls
            .values_mut()
            .filter_map(|call| (!std::mem::replace(&mut call.claimed, true)).then_some(&call.entry))
            .cloned()
            .collect()
    }

    /// The call's debit is durable (or commits with this change): the entry goes. Only a claimed
    /// call settles: a debit with the same id that nobody claimed for it (another request that
    /// reused the request id, a usage record) leaves an open call alone.
    pub(super) fn settle(&mut self, id: &str) {
        if !self.calls.get(id).is_some_and(|call| call.claimed) {
            return;
        }
        self.calls.remove(id);
        if !self.changed.remove(id) {
            // Written, or being written by a commit in progress: its row must go.
            self.changed.insert(id.to_owned());
        }
        self.count();
    }

    /// What the next commit writes: each changed id with its row, or `None` to delete it.
    pub(super) fn take_changes(&mut self) -> Vec<(String, Option<String>)> {
        self.changed
            .drain()
            .map(|id| {
                let row = self.calls.get(&id).map(|call| call.json.clone());
                (id, row)
            })
            .collect()
    }

    /// A commit of these changes failed: the next one writes them.
    pub(super) fn restore_changes(&mut self, changes: Vec<(String, Option<String>)>) {
        self.changed.extend(changes.into_iter().map(|(id, _)| id));
    }

    fn count(&self) {
        metrics::gauge!("tollgate_journal_open").set(self.calls.len() as f64);
    }
}

/// Writes changes taken by [`OpenCalls::take_changes`] in a write transaction.
pub(super) fn write_changes(
    tx: &WriteTransaction,
    changes: &[(String, Option<String>)],
) -> StoreResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(CALLS).map_err(corrupt)?;
    for (id, row) in changes {
        match row {
            Some(json) => table.insert(id.as_str(), json.as_str()),
            None => table.remove(id.as_str()),
        }
        .map_err(|e| StoreError::Unavailable(format!("journal: {e}")))?;
    }
    Ok(())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("journal: {e}"))
}

/// The longest [`CommitTiming::delay`] a configuration may ask for: beyond it, a debit's
/// durability and a call's journaling wait long enough to matter, for little more grouping.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(50);

/// When a committer commits.
#[derive(Clone, Copy, Debug)]
pub(super) struct CommitTiming {
    /// Commits at least this often, also when nobody asks (counters marked without a waiter).
    pub interval: Duration,
    /// Once asked, waits this long before committing, so that what is marked meanwhile shares
    /// the commit's fsync. Zero: commits at once (back to back under load).
    pub delay: Duration,
}

/// Group commits of one database: whoever marks changes gets the generation that commits them
/// (from the owner's lock), wakes the committer, and may wait for that generation.
pub(super) struct GroupCommit {
    /// Shared with the committer thread, which must not keep the database alive while it waits.
    wake: Arc<Wake>,
    /// How many generations are committed: the changes of generation `g` are durable once this
    /// is above `g`.
    committed: watch::Sender<u64>,
    /// Commits that wrote something (`tollgate_store_commits_total`, per database).
    written: AtomicU64,
}

impl GroupCommit {
    pub(super) fn new() -> Self {
        Self {
            wake: Arc::new(Wake::default()),
            committed: watch::Sender::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// How many commits wrote something so far.
    #[cfg(test)]
    pub(super) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Commit soon, without waiting for the interval.
    pub(super) fn start(&self) {
        self.wake.ask();
    }

    pub(super) async fn wait(&self, generation: u64) -> StoreResult<()> {
        self.start();
        let mut committed = self.committed.subscribe();
        match tokio::time::timeout(DURABLE_WAIT, committed.wait_for(|&g| g > generation)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Unavailable(
                "the commit did not complete in time".into(),
            )),
        }
    }

    fn done(&self, generation: u64) {
        self.committed.send_replace(generation + 1);
    }
}

impl Drop for GroupCommit {
    /// The database is gone: its committer ends now instead of at its next interval.
    fn drop(&mut self) {
        self.wake.close();
    }
}

/// Wakes a committer thread. Only the first ask after a commit takes the lock (and costs a
/// futex wake); later ones only see the flag set.
#[derive(Default)]
struct Wake {
    asked: AtomicBool,
    closed: AtomicBool,
    lock: Mutex<()>,
    bell: Condvar,
}

/// Why [`Wake::wait`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Woken {
    Asked,
    Interval,
    Closed,
}

impl Wake {
    fn ask(&self) {
        if !self.asked.swap(true, Ordering::AcqRel) {
            // Taking the lock orders this after a committer's check of the flag: it is either
            // seen there or the committer is already waiting for the bell.
            drop(self.lock.lock().unwrap());
            self.bell.notify_one();
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        drop(self.lock.lock().unwrap());
        self.bell.notify_all();
    }

    /// Until asked (when `asks_wake`), closed or `timeout` passed.
    fn wait(&self, timeout: Duration, asks_wake: bool) -> Woken {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Woken::Closed;
            }
            if asks_wake && self.asked.load(Ordering::Acquire) {
                return Woken::Asked;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Woken::Interval;
            };
            guard = self.bell.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// The commit about to start takes everything asked for so far.
    fn taken(&self) {
        self.asked.store(false, Ordering::Release);
    }
}

/// What [`Committed::commit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Commit {
    /// The generation it covered: everything marked in it is durable.
    pub generation: u64,
    /// False when nothing was marked, so nothing was written.
    pub wrote: bool,
}

/// A database committed in groups by its committer thread ([`spawn_committer`]).
pub(super) trait Committed: Send + Sync + 'static {
    fn commits(&self) -> &GroupCommit;
    /// Writes everything marked so far in one transaction; on failure the changes stay marked
    /// for the next attempt.
    fn commit(&self) -> StoreResult<Commit>;
    /// Runs before each commit, on the committer (housekeeping such as evicting expired counters).
    fn before_commit(&self) {}
    /// For logs, metrics and the committer thread's name.
    fn name(&self) -> &'static str;
}

/// A database that keeps the open calls under its own lock and commits them in groups.
pub(super) trait KeepsJournal: Committed {
    fn with_calls<R>(&self, change: impl FnOnce(&mut OpenCalls) -> R) -> R;
    /// The generation whose commit covers a change marked now.
    fn generation(&self) -> u64;
}

#[async_trait]
impl<T: KeepsJournal> Journal for T {
    fn open(&self, entry: JournalEntry) -> Opened {
        let json = serde_json::to_string(&entry).expect("journal entries serialize");
        let opened = self.with_calls(|calls| calls.open(entry, json));
        if opened == Opened::Journaled {
            self.commits().start();
        }
        opened
    }

    fn claim(&self, id: &str) -> bool {
        self.with_calls(|calls| calls.claim(id))
    }

    fn claim_all(&self) -> Vec<JournalEntry> {
        self.with_calls(OpenCalls::claim_all)
    }

    async fn flush(&self) -> StoreResult<()> {
        self.commits().wait(self.generation()).await
    }
}

/// Starts the thread that commits `db` when asked (after `timing.delay`) and at least every
/// `timing.interval`, until `db` is dropped. A commit is blocking disk work (writes and an
/// fsync): one thread of its own does it where it is woken, instead of a runtime task handing
/// each commit to the blocking pool and back (two more thread hops per commit). The thread holds
/// `db` only while it commits, so dropping the last handle ends it and releases the file.
pub(super) fn spawn_committer<T: Committed>(
    db: &Arc<T>,
    timing: CommitTiming,
) -> StoreResult<std::thread::JoinHandle<()>> {
    let wake = db.commits().wake.clone();
    let name = db.name();
    let db = Arc::downgrade(db);
    std::thread::Builder::new()
        .name(format!("commit-{name}"))
        .spawn(move || commit_until_dropped(db, &wake, timing))
        .map_err(|e| StoreError::Unavailable(format!("starting the {name} committer: {e}")))
}

fn commit_until_dropped<T: Committed>(db: Weak<T>, wake: &Wake, timing: CommitTiming) {
    let mut failed = false;
    loop {
        // A failing disk is tried again each interval, not at every ask.
        let woken = wake.wait(timing.interval, !failed);
        let woken = match woken {
            Woken::Asked if !timing.delay.is_zero() => wake.wait(timing.delay, false),
            woken => woken,
        };
        if woken == Woken::Closed {
            return;
        }
        let Some(db) = db.upgrade() else {
            return;
        };
        wake.taken();
        failed = !commit_once(db.as_ref());
    }
}

/// One commit, its waiters told; a failure (or a panic) is logged and counted, and its changes
/// stay marked for the next attempt. True if it committed.
fn commit_once<T: Committed>(db: &T) -> bool {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        db.before_commit();
        db.commit()
    }));
    let error = match outcome {
        Ok(Ok(commit)) => {
            if commit.wrote {
                db.commits().written.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tollgate_store_commits_total", "db" => db.name()).increment(1);
            }
            db.commits().done(commit.generation);
            return true;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the commit panicked".to_owned(),
    };
    metrics::counter!("tollgate_store_errors_total", "backend" => db.name(), "op" => "commit")
        .increment(1);
    tracing::error!(db = db.name(), error, "commit failed; retrying");
    false
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::CounterKey;

    pub(crate) fn entry(id: &str) -> JournalEntry {
        JournalEntry {
            team: "t".into(),
            model: "m".into(),
            admitted_at_ms: 1,
            tokens: 10,
            cost_micros: 20,
            debit: Debit {
                id: id.into(),
                amounts: vec![(CounterKey::parse("t", "tokens#2026-11-21", 9).unwrap(), 10)],
            },
        }
    }

    fn open(calls: &mut OpenCalls, id: &str) -> Opened {
        calls.open(entry(id), serde_json::to_string(&entry(id)).unwrap())
    }

    fn ids(changes: &[(String, Option<String>)]) -> Vec<(&str, bool)> {
        let mut ids: Vec<_> = changes
            .iter()
            .map(|(id, row)| (id.as_str(), row.is_some()))
            .collect();
        ids.sort();
        ids
    }

    fn settle(calls: &mut OpenCalls, id: &str) {
        assert!(calls.claim(id));
        calls.settle(id);
    }

    /// A database whose commits fail while told to, for the committer's own behaviour.
    struct Scripted {
        commits: GroupCommit,
        attempts: AtomicU64,
        failing: AtomicBool,
        generation: Mutex<u64>,
    }

    impl Scripted {
        fn start(timing: CommitTiming) -> (Arc<Self>, std::thread::JoinHandle<()>) {
            let db = Arc::new(Self {
                commits: GroupCommit::new(),
                attempts: AtomicU64::new(0),
                failing: AtomicBool::new(false),
                generation: Mutex::new(0),
            });
            let committer = spawn_committer(&db, timing).unwrap();
            (db, committer)
        }

        fn attempts(&self) -> u64 {
            self.attempts.load(Ordering::SeqCst)
        }

        /// The generation a change marked now is committed by.
        fn mark(&self) -> u64 {
            *self.generation.lock().unwrap()
        }
    }

    impl Committed for Scripted {
        fn commits(&self) -> &GroupCommit {
            &self.commits
        }

        fn commit(&self) -> StoreResult<Commit> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("disk full".into()));
            }
            let mut generation = self.generation.lock().unwrap();
            *generation += 1;
            Ok(Commit {
                generation: *generation - 1,
                wrote: true,
            })
        }

        fn name(&self) -> &'static str {
            "scripted"
        }
    }

    const NEVER: Duration = Duration::from_secs(3600);

    /// Waits (generously: the machine may be busy) until `done` holds.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "still not {what} after 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_committer_commits_when_asked_without_waiting_for_the_interval() {
        let (db, _committer) = Scripted::start(CommitTiming {
            interval: NEVER,
            delay: Duration::ZERO,
        });
        for round in 1..=3 {
            db.commits().wait(db.mark()).await.unwrap();
            assert_eq!(db.attempts(), round);
        }
        assert_eq!(db.commits().written(), 3);
    }

    #[tokio::test]
    async fn the_committer_commits_every_interval_unasked() {
        let (db, _committer) = Scripted::start(CommitTiming {
            interval: Duration::from_millis(10),
            delay: Duration::ZERO,
        });
        eventually("committed three times", || db.attempts() >= 3).await;
    }

    #[tokio::test]
    async fn a_failed_commit_keeps_its_waiters_waiting_and_is_retried_unasked() {
        let (db, _committer) = Scripted::start(CommitTiming {
            interval: Duration::from_millis(20),
            delay: Duration::ZERO,
        });
        db.failing.store(true, Ordering::SeqCst);
        let generation = db.mark();
        db.commits().start();
        eventually("retried", || db.attempts() >= 2).await;
        assert_eq!(
            *db.commits().committed.borrow(),
            0,
            "told done after a failure"
        );
        assert_eq!(db.commits().written(), 0);
        db.failing.store(false, Ordering::SeqCst);
        let attempts = db.attempts();
        // Not asked again: the retry after the failure is what commits it.
        let mut committed = db.commits().committed.subscribe();
        tokio::time::timeout(
            Duration::from_secs(30),
            committed.wait_for(|&g| g > generation),
        )
        .await
        .expect("retried within 30 s")
        .unwrap();
        assert!(db.attempts() > attempts);
    }

    #[test]
    fn the_committer_ends_when_its_database_is_dropped() {
        let (db, committer) = Scripted::start(CommitTiming {
            interval: NEVER,
            delay: NEVER,
        });
        db.commits().start();
        // Dropped while it waits out its delay (and with an interval it would never reach).
        drop(db);
        let (ended, ending) = std::sync::mpsc::channel();
        std::thread::spawn(move || ended.send(committer.join().is_ok()));
        assert_eq!(
            ending.recv_timeout(Duration::from_secs(30)),
            Ok(true),
            "the committer thread outlived its database"
        );
    }

    #[test]
    fn a_call_settled_before_any_commit_never_touches_the_disk() {
        let mut calls = OpenCalls::default();
        assert_eq!(open(&mut calls, "a"), Opened::Journaled);
        assert_eq!(open(&mut calls, "b"), Opened::Journaled);
        settle(&mut calls, "a");
        assert_eq!(ids(&calls.take_changes()), vec![("b", true)]);
        settle(&mut calls, "b");
        assert_eq!(ids(&calls.take_changes()), vec![("b", false)]);
        assert!(calls.take_changes().is_empty());
    }

    #[test]
    fn only_a_claimed_call_settles() {
        let mut calls = OpenCalls::default();
        open(&mut calls, "a");
        calls.take_changes();
        // A debit with the same id that is not this call's own settlement.
        calls.settle("a");
        assert!(calls.take_changes().is_empty());
        settle(&mut calls, "a");
        assert_eq!(ids(&calls.take_changes()), vec![("a", false)]);
    }

    #[test]
    fn a_call_settled_while_its_write_commits_is_deleted_by_the_next_commit() {
        let mut calls = OpenCalls::default();
        open(&mut calls, "a");
        let in_progress = calls.take_changes();
        settle(&mut calls, "a");
        // Whether the commit in progress lands or fails, the row must go.
        calls.restore_changes(in_progress);
        assert_eq!(ids(&calls.take_changes()), vec![("a", false)]);
    }

    #[test]
    fn a_failed_commit_is_written_again() {
        let mut calls = OpenCalls::default();
        open(&mut calls, "a");
        let failed = calls.take_changes();
        calls.restore_changes(failed);
        assert_eq!(ids(&calls.take_changes()), vec![("a", true)]);
    }

    #[test]
    fn each_call_is_claimed_once_and_duplicates_are_refused() {
        let mut calls = OpenCalls::default();
        open(&mut calls, "a");
        assert_eq!(open(&mut calls, "a"), Opened::DuplicateId);
        open(&mut calls, "b");
        assert!(calls.claim("a"));
        assert!(!calls.claim("a"), "claimed twice");
        let rest: Vec<String> = calls.claim_all().iter().map(|e| e.id().into()).collect();
        assert_eq!(rest, vec!["b"], "claim_all takes only what is not claimed");
        assert!(calls.claim_all().is_empty());
        assert!(!calls.claim("b"));
        assert!(!calls.claim("unknown"));
    }

    #[test]
    fn the_journal_is_bounded() {
        let mut calls = OpenCalls::default();
        for i in 0..MAX_OPEN_CALLS {
            calls.calls.insert(
                i.to_string(),
                OpenCall {
                    entry: entry(&i.to_string()),
                    json: String::new(),
                    claimed: false,
                },
            );
        }
        assert_eq!(open(&mut calls, "one-more"), Opened::Full);
        settle(&mut calls, "0");
        assert_eq!(open(&mut calls, "one-more"), Opened::Journaled);
    }
}
