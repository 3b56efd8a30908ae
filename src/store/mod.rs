//! Where counters and team definitions live. One small trait; each backend is one file:
//! `memory` (tests, throwaway runs) and `embedded` (redb on local disk, the default). Shared
//! backends (DynamoDB) implement the same trait.
//!
//! Counter operations are the atomic primitives policy needs: a conditional increment (admit a
//! request only if the bucket is below a ceiling, consuming nothing otherwise) and additive debits
//! applied after a response.

mod embedded;
mod memory;

use async_trait::async_trait;

pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;

use crate::policy::Team;

/// A counter of one team for one period. Expired counters may be deleted by the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub team: String,
    /// The counter and its period, e.g. `rpm#29596740` or `tokens#2026-11-21`.
    pub counter: String,
    /// Unix seconds after which the counter no longer matters.
    pub expires_at: u64,
}

impl CounterKey {
    pub fn requests_in_minute(team: &str, minute: u64, expires_at: u64) -> Self {
        Self {
            team: team.to_owned(),
            counter: format!("rpm#{minute}"),
            expires_at,
        }
    }

    pub fn tokens_on_day(team: &str, day: &str, expires_at: u64) -> Self {
        Self {
            team: team.to_owned(),
            counter: format!("tokens#{day}"),
            expires_at,
        }
    }

    /// Flat identity for key-value backends.
    pub fn id(&self) -> String {
        format!("{}#{}", self.team, self.counter)
    }
}

/// Outcome of [`Store::increment_below`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Increment {
    /// The counter was below the ceiling and now holds this value.
    Applied(u64),
    /// The counter was at or above the ceiling and was left at this value.
    Refused(u64),
}

/// Amounts to add to several counters for one completed request, identified so that a backend
/// that may see a debit twice (a replayed queue) can apply it once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debit {
    pub id: String,
    pub amounts: Vec<(CounterKey, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Current values (0 when absent), in the order of `keys`.
    async fn read_counters(&self, keys: &[&CounterKey]) -> StoreResult<Vec<u64>>;

    /// Atomically: if the counter is below `ceiling`, add one.
    async fn increment_below(&self, key: &CounterKey, ceiling: u64) -> StoreResult<Increment>;

    /// Adds every amount of every debit. Returns once all are durable. Debits arrive in batches
    /// so that a backend can make many durable at the cost of one (a group commit); a batch
    /// may be retried after a failure, so backends that can half-apply one must deduplicate by
    /// debit id.
    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()>;

    async fn put_team(&self, team: &Team) -> StoreResult<()>;
    async fn delete_team(&self, id: &str) -> StoreResult<bool>;
    async fn team(&self, id: &str) -> StoreResult<Option<Team>>;
    async fn team_for_client(&self, client_id: &str) -> StoreResult<Option<Team>>;
    async fn list_teams(&self) -> StoreResult<Vec<Team>>;

    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    /// Makes everything written so far durable (called at shutdown).
    async fn flush(&self) -> StoreResult<()>;

    fn backend_name(&self) -> &'static str;
}
