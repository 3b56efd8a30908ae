//! Quota leases: admission against a shared store (DynamoDB) without a store call per request.
//!
//! Every admission adds to a counter before the call (the team's current RPM bucket, and its
//! month's reservations when budgets reserve). Per request, that is one conditional update on one
//! item per team: a burst queues on that item, and a synchronous round trip sits in every request.
//! Here an instance instead claims a *slice* of a counter's remaining room with one conditional
//! update that can never take more than the room left ([`Store::claim_within`]), and admits from
//! it locally. The store's counter includes every slice, used or not, so the fleet can never admit
//! past a limit; what leases cost is room that sits unused in some instance's slice while another
//! is refused (under-admission), which slice sizing keeps small (see [`slice`]) and which is
//! handed back when an instance stops using it (idle, the RPM minute over, shutdown).
//!
//! - **Exact where it matters.** A slice is claimed against the limit in force when it is claimed.
//!   For RPM that is the sliding window's ceiling for the current bucket, which only grows during
//!   the minute (the previous bucket fades), so units claimed earlier stay within every later
//!   ceiling: at no instant does the fleet admit more than one conditional update per request
//!   would. Near a limit slices are not claimed at all; admissions then claim exactly what they
//!   need, and a slice is used locally only while this instance's view of the counter (every
//!   slice included) is within the admission's limit.
//! - **Single flight.** Admissions that need the store for one counter at the same time share one
//!   claim; the claim runs as its own task, so an admission that gives up (its deadline) loses
//!   nothing: what was claimed for it serves the next one.
//! - **No collapse.** An admission a slice covers never waits for the store, whatever the
//!   store's state: slices are counted in the store already. Calls the store must answer are
//!   gated by the engine's breaker, and their outcomes feed it.
//!
//! Reads for admission (previous RPM bucket, tokens, spend, reservations) go through
//! [`reads::ReadCache`]; a counter this instance holds a slice of reads as the store's value less
//! what this instance holds unused (it was never admitted).

mod reads;
pub mod slice;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Breaker, Clock};
use crate::policy::Team;
use crate::policy::pricing::PriceUsd;
use crate::policy::rate::BUCKET_MS;
use crate::store::{
    Claim, Counted, CounterKey, Debit, Increment, Scope, Store, StoreError, StoreResult,
};
use reads::ReadCache;
use slice::Demand;

/// Unused units an instance has not touched for this long are handed back.
pub const IDLE_RETURN: Duration = Duration::from_secs(3);
/// How often idle slices and finished minutes are looked for.
const UPKEEP_EVERY: Duration = Duration::from_millis(500);
/// A lease with nothing in it is forgotten after this long unused.
const FORGET_AFTER: Duration = Duration::from_secs(120);
/// Slices grow to at most 2^this times the measured demand (still within their share of the room).
const MAX_BOOST: u8 = 6;

#[derive(Clone, Copy, Debug)]
pub struct LeaseSettings {
    /// Counter values read for admission are used this long before they are read again (in the
    /// background); `store.dynamodb.read_cache_ms`.
    pub read_ttl: Duration,
}

/// Store calls made by the lease layer, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Calls at least one admission waited for (claims, reads).
    pub waited_for: u64,
    /// Calls no admission waited for (refills, refreshes, returns).
    pub background: u64,
    /// Admissions served from a slice, without a store call.
    pub from_slices: u64,
    /// Admissions refused on the store's standing refusal, without a store call.
    pub refused_here: u64,
}

/// The lease layer in front of a store. It is a [`Store`] itself: admission's counter
/// operations are served from leases, everything else goes to the store.
pub struct Leases {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Arc<dyn Store>,
    breaker: Arc<Breaker>,
    clock: Arc<dyn Clock>,
    reads: ReadCache,
    leases: Mutex<HashMap<String, Lease>>,
    /// Names this instance's returns (debit ids, applied once by the store).
    instance: String,
    returns: AtomicU64,
    waited_for: AtomicU64,
    background: AtomicU64,
    from_slices: AtomicU64,
    refused_here: AtomicU64,
    /// How long a refusal from the store answers later admissions like it: as long as reads may
    /// be stale (`read_ttl`), so another instance's returned slice is seen when a read would.
    refusal_hold: Duration,
}

/// What this instance holds of one counter.
struct Lease {
    key: CounterKey,
    /// Units claimed and not admitted yet.
    unused: u64,
    /// The counter's value in the store as last seen: every instance's claims, this one's unused
    /// units among them.
    value: u64,
    /// When `value` was learned (a claim answered, a read started), to tell which is newer.
    value_at: Instant,
    /// The limit of the latest admission: refills claim against it.
    limit: u64,
    waiters: VecDeque<Waiter>,
    /// A claim task runs for this lease.
    claiming: bool,
    /// An admission waited for the claim in flight.
    waited_on: bool,
    demand: Demand,
    /// Slices are sized to `2^boost` times the measured demand: raised each time admissions
    /// had to wait for a claim because the slice ran out while it was in flight (demand grew
    /// faster than measured, as at the start of a burst), lowered when none did.
    boost: u8,
    last_used: Instant,
    /// Units being handed back: the debit id and amount, retried as they are until applied.
    returning: Option<(String, u64)>,
    /// The store's last refusal. Past its limit a team is refused here, without a store call, for
    /// as long as that answer stands (see `Shared::refusal_hold`).
    refused: Option<Refusal>,
}

/// The store refused an admission of at least `amount` under `limit` at `value`.
struct Refusal {
    at: Instant,
    limit: u64,
    amount: u64,
    value: u64,
}

struct Waiter {
    amount: u64,
    limit: u64,
    reply: oneshot::Sender<StoreResult<Increment>>,
}

/// One claim to make.
struct Plan {
    at_least: u64,
    up_to: u64,
    limit: u64,
}

impl Leases {
    /// Starts the upkeep task (returns idle and finished slices): call inside a Tokio runtime.
    pub fn new(
        inner: Arc<dyn Store>,
        settings: LeaseSettings,
        breaker: Arc<Breaker>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let shared = Arc::new(Shared {
            reads: ReadCache::new(
                settings.read_ttl,
                inner.clone(),
                breaker.clone(),
                clock.clone(),
            ),
            inner,
            breaker,
            clock,
            leases: Mutex::new(HashMap::new()),
            instance: instance_name(),
            returns: AtomicU64::new(0),
            waited_for: AtomicU64::new(0),
            background: AtomicU64::new(0),
            from_slices: AtomicU64::new(0),
            refused_here: AtomicU64::new(0),
            refusal_hold: settings.read_ttl,
        });
        tokio::spawn(upkeep(Arc::downgrade(&shared)));
        Self { shared }
    }

    pub fn stats(&self) -> LeaseStats {
        let s = &self.shared;
        LeaseStats {
            waited_for: s.waited_for.load(Ordering::Relaxed),
            background: s.background.load(Ordering::Relaxed),
            from_slices: s.from_slices.load(Ordering::Relaxed),
            refused_here: s.refused_here.load(Ordering::Relaxed),
        }
    }

    /// Hands back every unused unit (at shutdown). Returns how many units were handed back.
    pub async fn hand_back_all(&self) -> u64 {
        self.shared.hand_back(|_, _| true).await
    }

    /// Units held unused, of every counter (for tests and metrics).
    pub fn held(&self) -> u64 {
        let leases = self.shared.leases.lock().unwrap();
        leases.values().map(|l| l.unused).sum()
    }
}

fn instance_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}", std::process::id())
}

impl Lease {
    fn new(key: CounterKey, now: Instant) -> Self {
        Self {
            key,
            unused: 0,
            value: 0,
            value_at: now,
            limit: 0,
            waiters: VecDeque::new(),
            claiming: false,
            waited_on: false,
            demand: Demand::new(now),
            boost: 0,
            last_used: now,
            returning: None,
            refused: None,
        }
    }

    /// The store's refusal that still answers an admission of `amount` under `limit`: the limit
    /// has not grown (the RPM ceiling grows as the previous minute fades), the amount is no
    /// smaller, and the counter has not been seen lower since.
    fn standing_refusal(
        &self,
        amount: u64,
        limit: u64,
        hold: Duration,
        now: Instant,
    ) -> Option<u64> {
        let r = self.refused.as_ref()?;
        (now - r.at < hold && limit <= r.limit && amount >= r.amount && self.value >= r.value)
            .then_some(self.value)
    }

    /// Whether an admission of `amount` under `limit` can be served from the slice: the units are
    /// there, and the counter as last seen (every slice included) is within the limit.
    fn covers(&self, amount: u64, limit: u64) -> bool {
        self.unused >= amount && self.value <= limit
    }

    /// Takes `amount` from the slice; the counter value to report (admitted as far as known).
    fn take(&mut self, amount: u64) -> u64 {
        self.unused -= amount;
        self.value.saturating_sub(self.unused)
    }

    /// Serves every waiter the slice covers; drops those that gave up.
    fn serve_waiters(&mut self) -> u64 {
        let mut served = 0;
        let mut still = VecDeque::with_capacity(self.waiters.len());
        while let Some(w) = self.waiters.pop_front() {
            if w.reply.is_closed() {
                continue;
            }
            if self.covers(w.amount, w.limit) {
                let value = self.take(w.amount);
                let _ = w.reply.send(Ok(Increment::Applied(value)));
                served += 1;
            } else {
                still.push_back(w);
            }
        }
        self.waiters = still;
        served
    }

    /// Seconds until the counter stops counting (an RPM bucket's minute ends).
    fn secs_left(&self, now_ms: u64) -> Option<f64> {
        let minute = self.key.rpm_minute()?;
        Some(((minute + 1) * BUCKET_MS).saturating_sub(now_ms) as f64 / 1000.0)
    }

    /// The claim to make now, if any: what the waiters need (under the lowest of their limits,
    /// so it is within each) plus a slice; with no waiters, a refill once the slice runs low.
    fn plan(&self, now: Instant, now_ms: u64) -> Option<Plan> {
        let need: u64 = self.waiters.iter().map(|w| w.amount).sum();
        let limit = self
            .waiters
            .iter()
            .map(|w| w.limit)
            .min()
            .unwrap_or(self.limit);
        let room = limit.saturating_sub(self.value);
        let extra = slice::extra(
            room.saturating_sub(need),
            self.demand.per_sec(now) * f64::from(1u32 << self.boost),
            self.demand.typical(),
            self.secs_left(now_ms),
        );
        if self.waiters.is_empty() {
            // Refill before the slice runs out, so admissions do not wait for it.
            return (extra > 0 && self.unused < extra / 2).then(|| Plan {
                at_least: 1,
                up_to: extra - self.unused,
                limit,
            });
        }
        let smallest = self.waiters.iter().map(|w| w.amount).min().unwrap_or(1);
        Some(Plan {
            at_least: smallest.saturating_sub(self.unused).max(1),
            up_to: (need + extra).saturating_sub(self.unused).max(1),
            limit,
        })
    }
}

impl Shared {
    async fn admit(
        self: &Arc<Self>,
        key: &CounterKey,
        amount: u64,
        limit: u64,
    ) -> StoreResult<Increment> {
        let now = Instant::now();
        let reply = {
            let mut leases = self.leases.lock().unwrap();
            let lease = leases
                .entry(key.id())
                .or_insert_with(|| Lease::new(key.clone(), now));
            lease.demand.record(amount, now);
            lease.limit = limit;
            lease.last_used = now;
            if lease.waiters.is_empty() && lease.covers(amount, limit) {
                let value = lease.take(amount);
                self.from_slices.fetch_add(1, Ordering::Relaxed);
                if !lease.claiming
                    && self.breaker.allows()
                    && lease.plan(now, self.clock.now_ms()).is_some()
                {
                    lease.claiming = true;
                    tokio::spawn(claim(self.clone(), key.id()));
                }
                return Ok(Increment::Applied(value));
            }
            if let Some(value) = lease.standing_refusal(amount, limit, self.refusal_hold, now) {
                self.refused_here.fetch_add(1, Ordering::Relaxed);
                return Ok(Increment::Refused(value));
            }
            if !self.breaker.allows() {
                return Err(StoreError::Paused);
            }
            let (reply, answer) = oneshot::channel();
            lease.waiters.push_back(Waiter {
                amount,
                limit,
                reply,
            });
            lease.waited_on = true;
            if !lease.claiming {
                lease.claiming = true;
                tokio::spawn(claim(self.clone(), key.id()));
            }
            answer
        };
        reply
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("lease claim ended".into())))
    }

    /// Hands back the unused units of every lease `which` picks (and retries earlier returns);
    /// forgets leases that hold nothing and are no longer used. Returns the units handed back.
    async fn hand_back(&self, which: impl Fn(&Lease, u64) -> bool) -> u64 {
        let now_ms = self.clock.now_ms();
        let now = Instant::now();
        let mut to_return = Vec::new();
        {
            let mut leases = self.leases.lock().unwrap();
            for lease in leases.values_mut() {
                if lease.claiming || !lease.waiters.is_empty() {
                    continue;
                }
                if lease.returning.is_none() && lease.unused > 0 && which(lease, now_ms) {
                    let id = format!(
                        "lease-return-{}-{}",
                        self.instance,
                        self.returns.fetch_add(1, Ordering::Relaxed)
                    );
                    lease.returning = Some((id, std::mem::take(&mut lease.unused)));
                }
                if let Some((id, amount)) = &lease.returning {
                    to_return.push((lease.key.clone(), id.clone(), *amount));
                }
            }
            leases.retain(|_, l| {
                let finished = l.secs_left(now_ms).is_some_and(|left| left <= 0.0);
                let forgotten = now - l.last_used >= FORGET_AFTER;
                let empty = l.unused == 0 && l.returning.is_none();
                !(empty && !l.claiming && l.waiters.is_empty() && (finished || forgotten))
            });
        }
        let mut returned = 0;
        for (key, id, amount) in to_return {
            if !self.breaker.allows() {
                break;
            }
            let debit = Debit {
                id,
                amounts: vec![(key.clone(), -(amount as i64))],
            };
            self.background.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tollgate_lease_store_calls_total", "op" => "return", "waited" => "no").increment(1);
            match self.inner.apply_debits(std::slice::from_ref(&debit)).await {
                Ok(()) => {
                    // The counter's lower value is learnt from the next read or claim (see
                    // `ReadCache::add`).
                    self.breaker.succeeded();
                    if let Some(lease) = self.leases.lock().unwrap().get_mut(&key.id()) {
                        lease.returning = None;
                    }
                    metrics::counter!("tollgate_lease_units_total", "event" => "returned")
                        .increment(amount);
                    returned += amount;
                }
                Err(e) => {
                    // Still counted in the store: under-admission until it is applied, never more.
                    tracing::warn!(counter = %key.id(), amount, error = %e, "handing back unused units failed; retrying later");
                    self.breaker.failed();
                }
            }
        }
        returned
    }
}

/// Claims for one lease until no admission waits and the slice is full enough.
async fn claim(shared: Arc<Shared>, id: String) {
    loop {
        let (key, plan, waiting_before) = {
            let mut leases = shared.leases.lock().unwrap();
            let Some(lease) = leases.get_mut(&id) else {
                return;
            };
            lease.serve_waiters();
            match lease.plan(Instant::now(), shared.clock.now_ms()) {
                Some(plan) if shared.breaker.allows() => {
                    (lease.key.clone(), plan, lease.waiters.len())
                }
                plan => {
                    if plan.is_some() {
                        for w in lease.waiters.drain(..) {
                            let _ = w.reply.send(Err(StoreError::Paused));
                        }
                    }
                    lease.claiming = false;
                    lease.waited_on = false;
                    return;
                }
            }
        };
        let outcome = shared
            .inner
            .claim_within(&key, plan.at_least, plan.up_to, plan.limit)
            .await;
        let mut leases = shared.leases.lock().unwrap();
        let Some(lease) = leases.get_mut(&id) else {
            return;
        };
        let waited = std::mem::take(&mut lease.waited_on) || !lease.waiters.is_empty();
        lease.boost = if lease.waiters.len() > waiting_before {
            (lease.boost + 1).min(MAX_BOOST)
        } else if lease.waiters.is_empty() {
            lease.boost.saturating_sub(1)
        } else {
            lease.boost
        };
        let counter = if waited {
            &shared.waited_for
        } else {
            &shared.background
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tollgate_lease_store_calls_total", "op" => "claim", "waited" => if waited { "yes" } else { "no" }).increment(1);
        match outcome {
            Ok(Claim { granted, value }) => {
                shared.breaker.succeeded();
                metrics::counter!("tollgate_lease_units_total", "event" => "claimed")
                    .increment(granted);
                let now = Instant::now();
                lease.unused += granted;
                lease.value = value;
                lease.value_at = now;
                if granted > 0 {
                    lease.refused = None;
                }
                lease.serve_waiters();
                if granted < plan.up_to {
                    // The store had less room than asked: the waiters still uncovered are refused,
                    // as the per-request conditional update would refuse them. Waiters that came
                    // with a higher limit (the RPM ceiling grew) get a claim of their own.
                    let mut still = VecDeque::new();
                    for w in lease.waiters.drain(..) {
                        if w.limit <= plan.limit {
                            let refused = lease.refused.get_or_insert(Refusal {
                                at: now,
                                limit: plan.limit,
                                amount: w.amount,
                                value,
                            });
                            refused.amount = refused.amount.min(w.amount);
                            let _ = w.reply.send(Ok(Increment::Refused(value)));
                        } else {
                            still.push_back(w);
                        }
                    }
                    lease.waiters = still;
                }
            }
            Err(e) => {
                if !matches!(e, StoreError::Paused) {
                    shared.breaker.failed();
                }
                for w in lease.waiters.drain(..) {
                    let _ = w.reply.send(Err(e.clone()));
                }
                lease.claiming = false;
                return;
            }
        }
    }
}

/// Hands back slices of finished minutes and slices left idle, every [`UPKEEP_EVERY`].
async fn upkeep(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        shared
            .hand_back(|lease, now_ms| {
                lease.secs_left(now_ms).is_some_and(|left| left <= 0.0)
                    || now - lease.last_used >= IDLE_RETURN
            })
            .await;
        shared.reads.evict_old();
    }
}

#[async_trait]
impl Store for Leases {
    async fn read_counters(&self, keys: &[&CounterKey]) -> StoreResult<Vec<u64>> {
        let shared = &self.shared;
        let read = shared.reads.read(keys, &shared.background).await?;
        if read.waited_for > 0 {
            shared
                .waited_for
                .fetch_add(read.waited_for, Ordering::Relaxed);
            metrics::counter!("tollgate_lease_store_calls_total", "op" => "read", "waited" => "yes").increment(read.waited_for);
        }
        let mut leases = shared.leases.lock().unwrap();
        Ok(keys
            .iter()
            .zip(read.values)
            .map(|(key, (value, read_at))| match leases.get_mut(&key.id()) {
                Some(lease) => {
                    // A read that started after the lease last heard from the store is newer
                    // (other instances' claims and releases): the lease learns from it.
                    if read_at.is_some_and(|at| at >= lease.value_at) {
                        lease.value = value;
                        lease.value_at = read_at.unwrap_or(lease.value_at);
                    }
                    lease.value.saturating_sub(lease.unused)
                }
                None => value,
            })
            .collect())
    }

    async fn add_within(
        &self,
        key: &CounterKey,
        amount: u64,
        limit: u64,
    ) -> StoreResult<Increment> {
        if key.is_claimed_at_admission() {
            self.shared.admit(key, amount, limit).await
        } else {
            self.shared.inner.add_within(key, amount, limit).await
        }
    }

    async fn claim_within(
        &self,
        key: &CounterKey,
        at_least: u64,
        up_to: u64,
        limit: u64,
    ) -> StoreResult<Claim> {
        self.shared
            .inner
            .claim_within(key, at_least, up_to, limit)
            .await
    }

    async fn apply_debits(&self, debits: &[Debit]) -> StoreResult<()> {
        self.shared.inner.apply_debits(debits).await?;
        // This instance's own debits count at once; released reservations once read back.
        let mut leases = self.shared.leases.lock().unwrap();
        for (key, amount) in debits.iter().flat_map(|d| &d.amounts) {
            self.shared.reads.add(key, *amount);
            if let (Some(lease), Ok(amount)) = (leases.get_mut(&key.id()), u64::try_from(*amount)) {
                lease.value = lease.value.saturating_add(amount);
            }
        }
        Ok(())
    }

    async fn list_counters(&self, scope: &Scope, prefix: &str) -> StoreResult<Vec<(Counted, u64)>> {
        self.shared.inner.list_counters(scope, prefix).await
    }

    async fn put_team(&self, team: &Team) -> StoreResult<()> {
        self.shared.inner.put_team(team).await
    }

    async fn delete_team(&self, id: &str) -> StoreResult<bool> {
        self.shared.inner.delete_team(id).await
    }

    async fn team(&self, id: &str) -> StoreResult<Option<Team>> {
        self.shared.inner.team(id).await
    }

    async fn team_for_client(&self, client_id: &str) -> StoreResult<Option<Team>> {
        self.shared.inner.team_for_client(client_id).await
    }

    async fn list_teams(&self) -> StoreResult<Vec<Team>> {
        self.shared.inner.list_teams().await
    }

    async fn prices(&self) -> StoreResult<Vec<(String, PriceUsd)>> {
        self.shared.inner.prices().await
    }

    async fn put_price(&self, model: &str, price: &PriceUsd) -> StoreResult<()> {
        self.shared.inner.put_price(model, price).await
    }

    async fn delete_price(&self, model: &str) -> StoreResult<bool> {
        self.shared.inner.delete_price(model).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.shared.inner.ping().await
    }

    async fn flush(&self) -> StoreResult<()> {
        self.shared.inner.flush().await
    }

    fn backend_name(&self) -> &'static str {
        self.shared.inner.backend_name()
    }
}

#[cfg(test)]
mod tests;
