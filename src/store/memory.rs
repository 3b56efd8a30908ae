//! In-process store: exact and fast, forgotten at exit. Also the live view behind the embedded
//! store, which adds durability on top of it.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;

use super::{Claim, Counted, CounterKey, Debit, Increment, Scope, Store, StoreResult};
use crate::policy::Team;
use crate::policy::pricing::PriceUsd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Counter {
    pub value: u64,
    pub expires_at: u64,
}

#[derive(Default)]
pub struct MemoryStore {
    counters: Mutex<HashMap<String, Counter>>,
    teams: RwLock<HashMap<String, Team>>,
    prices: RwLock<HashMap<String, PriceUsd>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub(super) fn load_counter(&self, id: String, counter: Counter) {
        self.counters.lock().unwrap().insert(id, counter);
    }

    pub(super) fn load_team(&self, team: Team) {
        self.teams.write().unwrap().insert(team.id.clone(), team);
    }

    pub(super) fn load_price(&self, model: String, price: PriceUsd) {
        self.prices.write().unwrap().insert(model, price);
    }

    /// The counters `ids` as of one instant (`None`: absent).
    pub(super) fn counters_now(
        &self,
        ids: impl IntoIterator<Item = String>,
    ) -> Vec<(String, Option<Counter>)> {
        let counters = self.counters.lock().unwrap();
        ids.into_iter()
            .map(|id| {
                let counter = counters.get(&id).copied();
                (id, counter)
            })
            .collect()
    }

    /// Drops counters that expired before `now` and returns their ids.
    pub fn evict_expired(&self, now: u64) -> Vec<String> {
        let mut counters = self.counters.lock().unwrap();
        let expired: Vec<String> = counters
            .iter()
            .filter(|(_, c)| c.expires_at < now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            counters.remove(id);
        }
        expired
    }

    pub(super) fn add_within_now(&self, key: &CounterKey, amount: u64, limit: u64) -> Increment {
        let mut counters = self.counters.lock().unwrap();
        let counter = counters.entry(key.id()).or_insert(Counter {
            value: 0,
            expires_at: key.expires_at,
        });
        if counter
            .value
            .checked_add(amount)
            .is_some_and(|v| v <= limit)
        {
            counter.value += amount;
            Increment::Applied(counter.value)
        } else {
            Increment::Refused(counter.value)
        }
    }

    pub(super) fn claim_within_now(
        &self,
        key: &CounterKey,
        at_least: u64,
        up_to: u64,
        limit: u64,
    ) -> Claim {
        let mut counters = self.counters.lock().unwrap();
        let counter = counters.entry(key.id()).or_insert(Counter {
            value: 0,
            expires_at: key.expires_at,
        });
        let fits = limit.saturating_sub(counter.value).min(up_to);
        let granted = if fits >= at_least.max(1) { fits } else { 0 };
        counter.value += granted;
        Claim {
            granted,
            value: counter.value,
        }
    }

    pub(super) fn apply_debit_now(&self, debit: &Debit) {
        let mut counters = self.counters.lock().unwrap();
        for (key, amount) in &debit.amounts {
            let counter = counters.entry(key.id()).or_insert(Counter {
                value: 0,
                expires_at: key.expires_at,
            });
            counter.value = counter.value.saturating_add_signed(*amount);
            counter.expires_at = counter.expires_at.max(key.expires_at);
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn read_counters(&self, keys: &[&CounterKey]) -> StoreResult<Vec<u64>> {
        let counters = self.counters.lock().unwrap();
        Ok(keys
            .iter()
            .map(|k| counters.get(&k.id()).map_or(0, |c| c.value))
            .collect())
    }

    async fn add_within(
        &self,
        key: &CounterKey,
        amount: u64,
        limit: u64,
    ) -> StoreResult<Increment> {
        Ok(self.add_within_now(key, amount, limit))
    }

    async fn claim_within(
        &self,
        key: &CounterKey,
        at_least: u64,
        up_to: u64,
        limit: u64,
    ) -> StoreResult<Claim> {
        Ok(self.claim_within_now(key, at_least, up_to, limit))
    }

    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()> {
        debits.iter().for_each(|d| self.apply_debit_now(d));
        Ok(())
    }

    async fn list_counters(&self, scope: &Scope, prefix: &str) -> StoreResult<Vec<(Counted, u64)>> {
        let team_prefix = format!("{}#", scope.partition());
        let mut found: Vec<(Counted, u64)> = self
            .counters
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(id, c)| {
                let counter = id.strip_prefix(&team_prefix)?;
                if !counter.starts_with(prefix) {
                    return None;
                }
                Some((Counted::parse(counter)?, c.value))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    async fn put_team(&self, team: &Team) -> StoreResult<()> {
        self.load_team(team.clone());
        Ok(())
    }

    async fn delete_team(&self, id: &str) -> StoreResult<bool> {
        Ok(self.teams.write().unwrap().remove(id).is_some())
    }

    async fn team(&self, id: &str) -> StoreResult<Option<Team>> {
        Ok(self.teams.read().unwrap().get(id).cloned())
    }

    async fn team_for_client(&self, client_id: &str) -> StoreResult<Option<Team>> {
        Ok(self
            .teams
            .read()
            .unwrap()
            .values()
            .find(|t| t.client_ids.iter().any(|c| c == client_id))
            .cloned())
    }

    async fn list_teams(&self) -> StoreResult<Vec<Team>> {
        let mut teams: Vec<Team> = self.teams.read().unwrap().values().cloned().collect();
        teams.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(teams)
    }

    async fn prices(&self) -> StoreResult<Vec<(String, PriceUsd)>> {
        let mut prices: Vec<_> = self
            .prices
            .read()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prices.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(prices)
    }

    async fn put_price(&self, model: &str, price: &PriceUsd) -> StoreResult<()> {
        self.load_price(model.to_owned(), price.clone());
        Ok(())
    }

    async fn delete_price(&self, model: &str) -> StoreResult<bool> {
        Ok(self.prices.write().unwrap().remove(model).is_some())
    }

    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn flush(&self) -> StoreResult<()> {
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "memory"
    }
}
