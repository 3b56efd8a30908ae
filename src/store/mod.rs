//! Where counters and team definitions live. One small trait; each backend is one file:
//! `memory` (tests, throwaway runs) and `embedded` (redb on local disk, the default). Shared
//! backends (DynamoDB) implement the same trait.
//!
//! Counter operations are the atomic primitives policy needs: a conditional add (admit a request
//! only if its bucket stays within a limit, consuming nothing otherwise) and additive debits
//! applied after a response.

mod dynamodb;
mod embedded;
mod journal;
mod memory;
mod spool;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use dynamodb::{DynamoDbSettings, DynamoStore};
pub use embedded::EmbeddedStore;
pub use journal::{Journal, JournalEntry, MAX_OPEN_CALLS, Opened};
pub use memory::MemoryStore;
pub use spool::Spool;

use crate::policy::Team;
use crate::policy::pricing::PriceUsd;

/// A counter of one team for one period. Expired counters may be deleted by the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// USD spent (micro-dollars) in a UTC month (`YYYY-MM`).
    pub fn spend_in_month(team: &str, month: &str, expires_at: u64) -> Self {
        Self::named(team, format!("spend#{month}"), expires_at)
    }

    /// USD spent (micro-dollars) on one model (canonical name) in a UTC month.
    pub fn spend_on_model(team: &str, month: &str, model: &str, expires_at: u64) -> Self {
        Self::named(team, format!("spend#{month}#{model}"), expires_at)
    }

    /// Cost (micro-dollars) reserved by admitted requests whose usage is not known yet.
    pub fn reserved_in_month(team: &str, month: &str, expires_at: u64) -> Self {
        Self::named(team, format!("reserved#{month}"), expires_at)
    }

    /// Marks that a budget warning threshold was reported for a month (0 or 1).
    pub fn budget_warned(team: &str, month: &str, threshold: u8, expires_at: u64) -> Self {
        Self::named(team, format!("warned#{month}#{threshold}"), expires_at)
    }

    fn named(team: &str, counter: String, expires_at: u64) -> Self {
        Self {
            team: team.to_owned(),
            counter,
            expires_at,
        }
    }

    /// Flat identity for key-value backends.
    pub fn id(&self) -> String {
        format!("{}#{}", self.team, self.counter)
    }
}

/// Outcome of [`Store::add_within`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Increment {
    /// The amount fitted and the counter now holds this value.
    Applied(u64),
    /// The amount did not fit; the counter was left at this value.
    Refused(u64),
}

/// Amounts to add to several counters for one completed request, identified so that a backend
/// that may see a debit twice (a replayed queue) can apply it once. Negative amounts release
/// reservations; counters never go below zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debit {
    pub id: String,
    pub amounts: Vec<(CounterKey, i64)>,
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

    /// Atomically: add `amount` if the counter would then be at most `limit`, else leave it.
    async fn add_within(&self, key: &CounterKey, amount: u64, limit: u64)
    -> StoreResult<Increment>;

    /// Adds every amount of every debit. Returns once all are durable. Debits arrive in batches
    /// so that a backend can make many durable at the cost of one (a group commit); a batch
    /// may be retried after a failure, so backends that can half-apply one must deduplicate by
    /// debit id.
    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()>;

    /// Counters of `team` whose name starts with `prefix`, as (counter name, value).
    async fn list_counters(&self, team: &str, prefix: &str) -> StoreResult<Vec<(String, u64)>>;

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
