//! Where counters and team definitions live. One small trait; each backend is one file:
//! `memory` (tests, throwaway runs) and `embedded` (redb on local disk, the default). Shared
//! backends (DynamoDB) implement the same trait.
//!
//! Counter operations are the atomic primitives policy needs: a conditional add (admit a request
//! only if its bucket stays within a limit, consuming nothing otherwise), a claim (take as much of
//! the room left as fits, for a quota lease), and additive debits applied after a response.

mod dynamodb;
mod embedded;
mod journal;
mod memory;
mod spool;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use dynamodb::{Admission, DynamoDbSettings, DynamoStore};
pub use embedded::EmbeddedStore;
pub use journal::{Journal, JournalEntry, MAX_COMMIT_DELAY, MAX_OPEN_CALLS, Opened};
pub use memory::MemoryStore;
pub use spool::Spool;

use crate::policy::Team;
pub use crate::policy::counters::{Counted, CounterKey, PeriodKey, PeriodKind, Scope};
use crate::policy::pricing::PriceUsd;

/// A finished minute's RPM bucket may still change this long after the minute: a claim sent just
/// before it ended may land late, and instances hand back what they did not use of it. Readers
/// treat it as final only when read after this.
pub const BUCKET_SETTLES_MS: u64 = 5_000;

/// Outcome of [`Store::add_within`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Increment {
    /// The amount fitted and the counter now holds this value.
    Applied(u64),
    /// The amount did not fit; the counter was left at this value.
    Refused(u64),
}

/// Outcome of [`Store::claim_within`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// How much was added: at least what was asked as the minimum, or 0 when that did not fit.
    pub granted: u64,
    /// The counter's value after the claim (as it was, when nothing was granted).
    pub value: u64,
}

/// A claim tries again at most this often when other claims keep taking the room it computed.
const CLAIM_ATTEMPTS: usize = 6;

/// [`Store::claim_within`] in terms of a conditional add: try the whole amount, and on refusal
/// what the store's answer says still fits. Each refusal means another claim took room, so this
/// ends quickly; after [`CLAIM_ATTEMPTS`] it reports nothing granted (a refusal, never an excess).
pub(crate) async fn claim_by_adding<F>(
    at_least: u64,
    up_to: u64,
    limit: u64,
    mut add_within: impl FnMut(u64) -> F,
) -> StoreResult<Claim>
where
    F: std::future::Future<Output = StoreResult<Increment>>,
{
    let at_least = at_least.max(1);
    // The first attempt is made even when it cannot fit: its refusal reports the value.
    let mut want = up_to.min(limit).max(at_least);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match add_within(want).await? {
            Increment::Applied(value) => {
                return Ok(Claim {
                    granted: want,
                    value,
                });
            }
            Increment::Refused(value) => {
                want = limit.saturating_sub(value).min(up_to);
                if want < at_least || attempts == CLAIM_ATTEMPTS {
                    if want >= at_least {
                        metrics::counter!("tollgate_lease_claims_contended_total").increment(1);
                    }
                    return Ok(Claim { granted: 0, value });
                }
            }
        }
    }
}

/// Amounts to add to several counters for one completed request, identified so that a backend
/// that may see a debit twice (a replayed queue) can apply it once. Negative amounts release
/// reservations; counters never go below zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debit {
    pub id: String,
    pub amounts: Vec<(CounterKey, i64)>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Not called at all: it failed moments ago (the circuit breaker is open).
    #[error("store not called: it failed moments ago")]
    Paused,
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Current values (0 when absent), in the order of `keys`.
    async fn read_counters(&self, keys: &[&CounterKey]) -> StoreResult<Vec<u64>>;

    /// Atomically: add `amount` if the counter would then be at most `limit`, else leave it.
    async fn add_within(&self, key: &CounterKey, amount: u64, limit: u64)
    -> StoreResult<Increment>;

    /// Atomically: add as much of `up_to` as keeps the counter at most `limit`, provided that is
    /// at least `at_least`; else leave it. A quota lease claims its slice with this, so a slice can
    /// never take more than the room left. The default works through [`Store::add_within`].
    async fn claim_within(
        &self,
        key: &CounterKey,
        at_least: u64,
        up_to: u64,
        limit: u64,
    ) -> StoreResult<Claim> {
        claim_by_adding(at_least, up_to, limit, |amount| {
            self.add_within(key, amount, limit)
        })
        .await
    }

    /// Adds every amount of every debit. Returns once all are durable. Debits arrive in batches
    /// so that a backend can make many durable at the cost of one (a group commit); a batch
    /// may be retried after a failure, so backends that can half-apply one must deduplicate by
    /// debit id.
    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()>;

    /// Counters of `scope` whose name starts with `prefix`, as (counter, value); names that are
    /// not counters tollgate writes are skipped.
    async fn list_counters(&self, scope: &Scope, prefix: &str) -> StoreResult<Vec<(Counted, u64)>>;

    async fn put_team(&self, team: &Team) -> StoreResult<()>;
    async fn delete_team(&self, id: &str) -> StoreResult<bool>;
    async fn team(&self, id: &str) -> StoreResult<Option<Team>>;
    async fn team_for_client(&self, client_id: &str) -> StoreResult<Option<Team>>;
    async fn list_teams(&self) -> StoreResult<Vec<Team>>;

    /// Prices set through the admin API, by canonical model name.
    async fn prices(&self) -> StoreResult<Vec<(String, PriceUsd)>>;
    async fn put_price(&self, model: &str, price: &PriceUsd) -> StoreResult<()>;
    async fn delete_price(&self, model: &str) -> StoreResult<bool>;

    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Makes everything written so far durable (called at shutdown).
    async fn flush(&self) -> StoreResult<()>;

    /// The journal of admitted calls this store keeps in its own database, if it keeps one (the
    /// embedded store). A debit applied to such a store also settles the journaled call with the
    /// debit's id, in the same durable step; a debit without amounts does only that.
    fn journal(&self) -> Option<std::sync::Arc<dyn Journal>> {
        None
    }

    fn backend_name(&self) -> &'static str;
}

/// Opens a store file again once the background task of the instance just dropped has let go
/// of it. That task ends at its next turn, which a loaded machine can delay well past its
/// interval: tests wait for the file instead of sleeping a guess.
#[cfg(test)]
pub(crate) async fn reopen_when_released<T, E: std::fmt::Debug>(
    open: impl Fn() -> Result<T, E>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match open() {
            Ok(opened) => return opened,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("still held after 30 s: {e:?}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}
