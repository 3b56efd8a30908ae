//! The policy engine: resolves a caller's team, reads the counters policy needs, asks `policy/`
//! for a decision, and records usage and spend after the response. Wire adapters call only this.

mod breaker;
pub mod lease;
mod ledger;
mod prices;
mod single_flight;
mod teams;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use breaker::Breaker;
pub use lease::{LeaseSettings, Leases};
pub use ledger::Ledger;
pub use prices::PriceBook;
pub use teams::TeamDirectory;

use crate::identity::Principal;
use crate::policy::budget::{self, OnBreach};
use crate::policy::{
    Price, PriceTable, RateHeaders, Rejection, RejectionKind, Team, TierTable, Usage, calendar,
    rate, tokens,
};
use crate::store::{CounterKey, Debit, Increment, MemoryStore, Spool, Store, StoreError};

/// What to do when the store cannot answer an admission query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse with 503: no request passes unaccounted.
    #[default]
    Closed,
    /// Admit: availability over enforcement while the store is down.
    Open,
}

/// Fail modes of each check, for when the store cannot answer. A request is refused if any
/// check it needs is closed; otherwise it is admitted on per-instance counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct FailModes {
    pub rpm: FailMode,
    pub tokens: FailMode,
    /// Monthly budget and model caps (model calls only).
    pub budget: FailMode,
}

impl FailModes {
    pub fn all(mode: FailMode) -> Self {
        Self {
            rpm: mode,
            tokens: mode,
            budget: mode,
        }
    }

    /// Whether a request can be admitted without the store.
    fn admits(&self, model_call: bool) -> bool {
        self.rpm == FailMode::Open
            && self.tokens == FailMode::Open
            && (!model_call || self.budget == FailMode::Open)
    }

    /// Whether any traffic still flows while the store is down.
    pub fn any_open(&self) -> bool {
        self.admits(false)
    }
}

/// What to do with a model that has no price.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownModel {
    /// Refuse with 400 `unknown_model`: nothing is spent that cannot be priced.
    Reject,
    /// Charge this price.
    Charge(Price),
}

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A settable clock for tests.
#[derive(Default)]
pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How the engine decides; from configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub tiers: TierTable,
    pub fail_modes: FailModes,
    /// Teams and admin prices are re-read from the store after this long.
    pub cache_ttl: Duration,
    /// Built-in prices with configuration overrides applied.
    pub prices: PriceTable,
    pub unknown_model: UnknownModel,
    /// Budget warning thresholds, percent.
    pub warn_at_percent: Vec<u8>,
    /// Reserve each request's estimated cost at admission (settled with the actual cost).
    pub reserve: bool,
    /// Longest admission against the store before it counts as a store failure (fail mode):
    /// keep it under Envoy's ext_proc `message_timeout`.
    pub admission_deadline: Duration,
    /// Teams from the configuration file, known even when the store is down.
    pub configured_teams: Vec<Team>,
    /// Admit from quota leases on the store's counters (see [`lease`]); `None`: one conditional
    /// update per request.
    pub leases: Option<LeaseSettings>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            tiers: TierTable::default(),
            fail_modes: FailModes::all(FailMode::Closed),
            cache_ttl: Duration::from_secs(5),
            prices: PriceTable::builtin(),
            unknown_model: UnknownModel::Reject,
            warn_at_percent: vec![80],
            reserve: false,
            admission_deadline: Duration::from_millis(500),
            configured_teams: Vec::new(),
            leases: None,
        }
    }
}

/// The model a request calls, from its body.
#[derive(Clone, Copy, Debug)]
pub struct ModelCall<'a> {
    pub model: &'a str,
    pub prompt_chars: u64,
    pub max_output_tokens: Option<u64>,
}

/// After a store failure, admissions skip the store this long before probing it again.
const STORE_PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Output tokens assumed for a reservation when the request sets no maximum.
const DEFAULT_RESERVED_OUTPUT_TOKENS: u64 = 1024;
/// Spend counters are kept this long after their month, for usage history.
const SPEND_RETENTION_SECS: u64 = 400 * 86_400;

/// An admitted request: what to report in headers and what to charge once its usage is known.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub team: Arc<str>,
    pub rate: RateHeaders,
    /// `x-tollgate-budget-warning`, when a threshold is crossed or the budget is spent (warn mode).
    pub budget_warning: Option<String>,
    /// Daily token counter to debit, fixed at admission so a response that ends after midnight
    /// is charged to the day it was admitted on (spend likewise to its month).
    tokens_key: CounterKey,
    charge: Option<Charge>,
    request_id: String,
}

#[derive(Clone, Debug)]
struct Charge {
    price: Price,
    month_key: CounterKey,
    model_key: CounterKey,
    /// Reservation to release once the actual cost is known.
    reserved: Option<(CounterKey, u64)>,
}

/// Money facts of one admission: counters read and what they decided.
struct Money {
    model: String,
    price: Price,
    estimate: u64,
    month_key: CounterKey,
    model_key: CounterKey,
    reserved_key: CounterKey,
}

/// Why an admission attempt did not produce a ticket.
enum Failure {
    Refused(Rejection),
    Store(StoreError),
}

impl From<Rejection> for Failure {
    fn from(r: Rejection) -> Self {
        Self::Refused(r)
    }
}

pub struct Engine {
    /// The store, behind the lease layer when there is one.
    store: Arc<dyn Store>,
    leases: Option<Arc<Leases>>,
    /// Per-instance counters that decide admission while the store is down and the fail mode is
    /// open, so an outage is not unlimited spend.
    fallback: MemoryStore,
    /// The last minute in which the fallback's expired counters were dropped.
    fallback_swept_minute: AtomicU64,
    breaker: Arc<Breaker>,
    teams: TeamDirectory,
    prices: PriceBook,
    ledger: Ledger,
    clock: Arc<dyn Clock>,
    settings: EngineSettings,
    /// Thresholds already reported (team#month#threshold), so the store is asked only once.
    reported: Mutex<HashSet<String>>,
    request_seq: AtomicU64,
}

impl Engine {
    /// `spool`: where debits wait while a remote store is unavailable (none for local stores).
    pub fn new(
        store: Arc<dyn Store>,
        spool: Option<Arc<Spool>>,
        settings: EngineSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let breaker = Arc::new(Breaker::new(STORE_PAUSE_AFTER_FAILURE));
        let (store, leases) = match settings.leases {
            Some(lease_settings) => {
                let leases = Arc::new(Leases::new(
                    store,
                    lease_settings,
                    breaker.clone(),
                    clock.clone(),
                ));
                (leases.clone() as Arc<dyn Store>, Some(leases))
            }
            None => (store, None),
        };
        Self {
            leases,
            teams: TeamDirectory::new(
                store.clone(),
                settings.cache_ttl,
                breaker.clone(),
                settings.configured_teams.clone(),
            ),
            breaker,
            prices: PriceBook::new(store.clone(), settings.prices.clone(), settings.cache_ttl),
            ledger: Ledger::start(store.clone(), spool),
            fallback: MemoryStore::new(),
            fallback_swept_minute: AtomicU64::new(0),
            store,
            clock,
            settings,
            reported: Mutex::new(HashSet::new()),
            request_seq: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn tiers(&self) -> &TierTable {
        &self.settings.tiers
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Prices in force: built-in, configuration, admin (cached for the cache TTL).
    pub async fn price_table(&self) -> Arc<PriceTable> {
        self.prices.table().await
    }

    /// Forget cached teams and prices: an admin change on this instance applies at once.
    pub fn invalidate_caches(&self) {
        self.teams.invalidate();
        self.prices.invalidate();
    }

    /// The team a caller acts for: the team claim if the token has one, else the team that
    /// registered the token's `client_id`. Never a shared fallback bucket.
    pub async fn team_for(&self, principal: &Principal) -> Result<Arc<Team>, Rejection> {
        let (lookup, missing) = match (&principal.team, &principal.client_id) {
            (Some(team), _) => (
                self.teams.by_id(team).await,
                format!("team {team:?} is not registered"),
            ),
            (None, Some(client)) => (
                self.teams.by_client(client).await,
                format!("client {client:?} is not registered to any team"),
            ),
            (None, None) => {
                return Err(self.refuse(Rejection::new(
                    RejectionKind::UnknownTeam,
                    "token names no team and no client_id",
                )));
            }
        };
        match lookup {
            Ok(Some(team)) => Ok(team),
            Ok(None) => Err(self.refuse(Rejection::new(RejectionKind::UnknownTeam, missing))),
            Err(e) => Err(self.refuse(self.store_failure("team_lookup", &e))),
        }
    }

    /// Decides whether `team` may send one more request now (calling `call`'s model, if it is a
    /// model call); counts it if so.
    pub async fn admit(
        &self,
        team: &Team,
        call: Option<ModelCall<'_>>,
        request_id: Option<&str>,
    ) -> Result<Ticket, Rejection> {
        let started = std::time::Instant::now();
        let now_ms = self.clock.now_ms();
        let request_id = request_id.map_or_else(|| self.next_request_id(), str::to_owned);
        // Leases gate their own store calls on the breaker and report the outcomes to it: a
        // request a slice covers is admitted whatever the store's state.
        let leased = self.leases.is_some();
        let store_called = leased || self.breaker.allows();
        let (attempt, timed_out) = if store_called {
            let primary = self.admit_at(self.store.as_ref(), team, call, now_ms, &request_id);
            match tokio::time::timeout(self.settings.admission_deadline, primary).await {
                Ok(outcome) => (outcome, false),
                Err(_) => (
                    Err(Failure::Store(StoreError::Unavailable(format!(
                        "no answer within the admission deadline ({:?})",
                        self.settings.admission_deadline
                    )))),
                    true,
                ),
            }
        } else {
            (Err(Failure::Store(StoreError::Paused)), false)
        };
        let outcome = match attempt {
            Ok(ticket) => {
                if !leased {
                    self.breaker.succeeded();
                }
                Ok(ticket)
            }
            Err(Failure::Refused(rejection)) => {
                if !leased {
                    self.breaker.succeeded();
                }
                Err(rejection)
            }
            Err(Failure::Store(error)) => {
                let unavailable = if matches!(error, StoreError::Paused) {
                    Rejection::new(RejectionKind::Unavailable, "rate-limit store unavailable")
                } else {
                    // Out of time with other calls answered meanwhile, this request waited behind
                    // a burst: it alone is refused; opening the breaker would refuse the rest.
                    // Leases report their calls' own failures (and time-outs) to the breaker.
                    let store_down =
                        !leased && (!timed_out || !self.breaker.answered_since(started));
                    if store_down {
                        self.breaker.failed();
                    }
                    self.store_failure("admit", &error)
                };
                if self.settings.fail_modes.admits(call.is_some()) {
                    metrics::counter!("tollgate_fail_open_total").increment(1);
                    // An outage can last long: drop the fallback's finished minutes as they pass.
                    let minute = now_ms / rate::BUCKET_MS;
                    if self.fallback_swept_minute.swap(minute, Ordering::Relaxed) != minute {
                        self.fallback.evict_expired(now_ms / 1000);
                    }
                    match self
                        .admit_at(&self.fallback, team, call, now_ms, &request_id)
                        .await
                    {
                        Ok(ticket) => Ok(ticket),
                        Err(Failure::Refused(rejection)) => Err(rejection),
                        Err(Failure::Store(_)) => Err(self.refuse(unavailable)),
                    }
                } else {
                    Err(self.refuse(unavailable))
                }
            }
        };
        metrics::histogram!("tollgate_admission_seconds").record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Admission against `store`: the shared store, or the per-instance fallback.
    async fn admit_at(
        &self,
        store: &dyn Store,
        team: &Team,
        call: Option<ModelCall<'_>>,
        now_ms: u64,
        request_id: &str,
    ) -> Result<Ticket, Failure> {
        let limits = self.settings.tiers.limits_for(team);
        let now = now_ms / 1000;
        let pos = rate::WindowPosition::at(now_ms);
        let previous_key =
            CounterKey::requests_in_minute(&team.id, pos.bucket - 1, pos.bucket_expiry_secs() - 60);
        let current_key =
            CounterKey::requests_in_minute(&team.id, pos.bucket, pos.bucket_expiry_secs());
        let tokens_key = tokens_key(&team.id, now);
        let money = match call {
            Some(call) => Some(self.price_call(team, call, now).await?),
            None => None,
        };

        let mut keys = vec![&previous_key, &current_key, &tokens_key];
        if let Some(m) = &money {
            keys.extend([&m.month_key, &m.model_key, &m.reserved_key]);
        }
        let mut rate_headers = RateHeaders {
            rpm_limit: limits.rpm,
            rpm_reset_secs: pos.secs_to_bucket_end(),
            tokens_limit: limits.daily_tokens,
            ..Default::default()
        };
        let mut ticket = Ticket {
            team: Arc::from(team.id.as_str()),
            rate: rate_headers,
            budget_warning: None,
            tokens_key: tokens_key.clone(),
            charge: money.as_ref().map(|m| Charge {
                price: m.price,
                month_key: m.month_key.clone(),
                model_key: m.model_key.clone(),
                reserved: None,
            }),
            request_id: request_id.to_owned(),
        };
        let values = store.read_counters(&keys).await.map_err(Failure::Store)?;
        let (previous, current, used_today) = (values[0], values[1], values[2]);
        rate_headers.tokens_remaining = tokens::remaining(used_today, limits.daily_tokens);
        rate_headers.rpm_remaining = rate::remaining(limits.rpm, previous, current, pos);

        if !tokens::within_daily_limit(used_today, limits.daily_tokens) {
            return Err(self
                .refuse(Rejection::daily_tokens_exceeded(
                    used_today,
                    limits.daily_tokens.unwrap_or_default(),
                    rate_headers,
                    calendar::secs_until_next_day(now),
                ))
                .into());
        }
        if let Some(m) = &money {
            let (spent, spent_on_model, reserved) = (values[3], values[4], values[5]);
            let retry = calendar::secs_until_next_month(now);
            let budget = limits.monthly_budget_micros;
            let incoming = if self.settings.reserve { m.estimate } else { 0 };
            if !budget::within_budget(spent, reserved, incoming, budget) {
                match team.on_breach {
                    OnBreach::Block => {
                        return Err(self
                            .refuse(Rejection::budget_exceeded(
                                RejectionKind::MonthlyBudgetExceeded,
                                budget::budget_exceeded_reason(
                                    spent.saturating_add(reserved),
                                    budget,
                                ),
                                rate_headers,
                                retry,
                            ))
                            .into());
                    }
                    OnBreach::Warn => {
                        metrics::counter!("tollgate_budget_overruns_total", "team" => team.id.clone()).increment(1);
                        ticket.budget_warning = Some(budget::budget_exceeded_reason(spent, budget));
                    }
                }
            }
            if let Some(cap) = team.model_cap_micros(&m.model)
                && spent_on_model >= cap
            {
                let reason = budget::model_budget_exceeded_reason(&m.model, spent_on_model, cap);
                match team.on_breach {
                    OnBreach::Block => {
                        return Err(self
                            .refuse(Rejection::budget_exceeded(
                                RejectionKind::ModelBudgetExceeded,
                                reason,
                                rate_headers,
                                retry,
                            ))
                            .into());
                    }
                    OnBreach::Warn => {
                        ticket.budget_warning = ticket.budget_warning.or(Some(reason))
                    }
                }
            }
            if ticket.budget_warning.is_none()
                && let Some(threshold) =
                    budget::crossed_threshold(spent, budget, &self.settings.warn_at_percent)
            {
                ticket.budget_warning = Some(budget::warning_text(threshold, spent, budget));
                self.report_crossing(team, m, threshold, spent, budget)
                    .await;
            }
            if incoming > 0 {
                // Atomic among concurrent admissions: reservations never pass what is left.
                let room = budget.saturating_sub(spent);
                match store.add_within(&m.reserved_key, incoming, room).await {
                    Ok(Increment::Applied(_)) => {
                        if let Some(charge) = &mut ticket.charge {
                            charge.reserved = Some((m.reserved_key.clone(), incoming));
                        }
                    }
                    Ok(Increment::Refused(now_reserved)) => {
                        return Err(self
                            .refuse(Rejection::budget_exceeded(
                                RejectionKind::MonthlyBudgetExceeded,
                                budget::budget_exceeded_reason(
                                    spent.saturating_add(now_reserved),
                                    budget,
                                ),
                                rate_headers,
                                retry,
                            ))
                            .into());
                    }
                    Err(e) => return Err(Failure::Store(e)),
                }
            }
        }

        let ceiling = rate::current_ceiling(limits.rpm, previous, pos);
        let refused = match store.add_within(&current_key, 1, ceiling).await {
            Ok(Increment::Applied(current)) => {
                rate_headers.rpm_remaining = rate::remaining(limits.rpm, previous, current, pos);
                ticket.rate = rate_headers;
                metrics::counter!("tollgate_requests_total", "decision" => "allowed", "reason" => "").increment(1);
                return Ok(ticket);
            }
            Ok(Increment::Refused(current)) => {
                rate_headers.rpm_remaining = 0;
                Failure::Refused(self.refuse(Rejection::rpm_exceeded(
                    rate::window_count(previous, current, pos),
                    rate_headers,
                    rate::retry_after_secs(limits.rpm, previous, current, pos),
                )))
            }
            Err(e) => Failure::Store(e),
        };
        // Refused after reserving: give the reservation back.
        self.settle_as(ticket, None, "refused").await;
        Err(refused)
    }

    /// Resolves the model's canonical name and price, enforcing the allow-list and the
    /// unknown-model policy. No counter is touched on refusal.
    async fn price_call(
        &self,
        team: &Team,
        call: ModelCall<'_>,
        now: u64,
    ) -> Result<Money, Rejection> {
        let table = self.prices.table().await;
        let (model, price) = match table.price(call.model) {
            Some(found) => found,
            None => match self.settings.unknown_model {
                UnknownModel::Charge(price) => {
                    metrics::counter!("tollgate_unknown_model_total", "policy" => "charged")
                        .increment(1);
                    (crate::policy::pricing::normalise_model(call.model), price)
                }
                UnknownModel::Reject => {
                    metrics::counter!("tollgate_unknown_model_total", "policy" => "rejected")
                        .increment(1);
                    tracing::warn!(team = %team.id, model = call.model, "model has no price");
                    return Err(self.refuse(Rejection::new(
                        RejectionKind::UnknownModel,
                        format!(
                            "model {:?} has no price; a tollgate admin can add one (PUT /admin/prices/{})",
                            call.model,
                            crate::policy::pricing::normalise_model(call.model)
                        ),
                    )));
                }
            },
        };
        if !team.allows(&model) {
            return Err(self.refuse(Rejection::new(
                RejectionKind::ModelNotAllowed,
                format!(
                    "model {:?} is not allowed for team {:?}",
                    call.model, team.id
                ),
            )));
        }
        let month = calendar::month_key(now);
        let estimate = price.cost_micros(&Usage {
            input: call.prompt_chars.div_ceil(4),
            output: call
                .max_output_tokens
                .unwrap_or(DEFAULT_RESERVED_OUTPUT_TOKENS),
            ..Default::default()
        });
        let (month_key, model_key) = spend_keys(&team.id, &model, now);
        Ok(Money {
            month_key,
            model_key,
            reserved_key: CounterKey::reserved_in_month(
                &team.id,
                &month,
                calendar::next_month_start(now) + 86_400,
            ),
            model,
            price,
            estimate,
        })
    }

    /// Logs and counts a threshold crossing once per team, month and threshold across the fleet:
    /// the store's conditional increment decides which instance reports it.
    async fn report_crossing(
        &self,
        team: &Team,
        money: &Money,
        threshold: u8,
        spent: u64,
        budget: u64,
    ) {
        let month = money
            .month_key
            .counter
            .trim_start_matches("spend#")
            .to_owned();
        let marker = format!("{}#{month}#{threshold}", team.id);
        {
            let mut reported = self.reported.lock().unwrap();
            if reported.contains(&marker) {
                return;
            }
            if reported.len() > 100_000 {
                reported.clear();
            }
            reported.insert(marker);
        }
        let key =
            CounterKey::budget_warned(&team.id, &month, threshold, money.month_key.expires_at);
        if let Ok(Increment::Applied(_)) = self.store.add_within(&key, 1, 1).await {
            metrics::counter!("tollgate_budget_threshold_crossings_total", "threshold" => threshold.to_string())
                .increment(1);
            tracing::warn!(
                team = %team.id,
                month,
                threshold,
                spent_usd = budget::json_usd(spent),
                budget_usd = budget::json_usd(budget),
                "monthly budget threshold crossed"
            );
        }
    }

    fn store_failure(&self, op: &'static str, error: &StoreError) -> Rejection {
        metrics::counter!("tollgate_store_errors_total", "backend" => self.store.backend_name(), "op" => op)
            .increment(1);
        tracing::error!(op, error = %error, fail_modes = ?self.settings.fail_modes, "store failed during admission");
        Rejection::new(RejectionKind::Unavailable, "rate-limit store unavailable")
    }

    fn refuse(&self, rejection: Rejection) -> Rejection {
        self.count_decision(rejection.kind);
        rejection
    }

    /// Counts a refusal. The engine counts every refusal it returns; adapters count their own
    /// (identity, body checks) with this.
    pub fn count_decision(&self, kind: RejectionKind) {
        metrics::counter!("tollgate_requests_total", "decision" => "rejected", "reason" => kind.code()).increment(1);
    }

    /// Charges an admitted request's usage and its cost. Returns once the debit is queued; the
    /// ledger applies it to the store in the background (never on the response path).
    pub async fn settle(&self, ticket: Ticket, usage: Usage, api: &'static str) {
        metrics::counter!("tollgate_tokens_total", "team" => ticket.team.to_string(), "api" => api)
            .increment(usage.total());
        if usage.estimated {
            metrics::counter!("tollgate_usage_estimated_total", "api" => api).increment(1);
        }
        self.settle_as(ticket, Some(usage), api).await;
    }

    /// Gives back an admitted request's reservation, if any, charging nothing: for adapters whose
    /// usage is reported later by another path (the webhook's, from access logs).
    pub async fn release(&self, ticket: Ticket) {
        self.settle_as(ticket, None, "").await;
    }

    /// `usage: None`: the request never ran; only a reservation, if any, is released.
    async fn settle_as(&self, ticket: Ticket, usage: Option<Usage>, api: &'static str) {
        let mut amounts = Vec::new();
        let total = usage.map_or(0, |u| u.total());
        if total > 0 {
            amounts.push((ticket.tokens_key, total as i64));
        }
        let mut cost = 0;
        if let Some(charge) = ticket.charge {
            cost = usage.map_or(0, |u| charge.price.cost_micros(&u));
            if cost > 0 {
                amounts.push((charge.month_key, cost as i64));
                amounts.push((charge.model_key, cost as i64));
                metrics::counter!("tollgate_spend_micros_total", "team" => ticket.team.to_string())
                    .increment(cost);
            }
            if let Some((key, reserved)) = charge.reserved {
                amounts.push((key, -(reserved as i64)));
            }
        }
        tracing::debug!(team = %ticket.team, request_id = %ticket.request_id, ?usage, cost, api, "settling");
        if !amounts.is_empty() {
            self.ledger
                .record(Debit {
                    id: ticket.request_id,
                    amounts,
                })
                .await;
        }
    }

    /// The debit for usage reported after the fact (an access-log record) rather than through an
    /// admission: tokens go to the day and spend to the month of `at_ms`, whenever the record is
    /// processed, and the debit carries `request_id` so a deduplicating store applies it once.
    /// A model without a price is charged tokens only; the returned cost says so (`None`).
    pub async fn usage_debit(
        &self,
        team: &Team,
        model: &str,
        usage: &Usage,
        at_ms: u64,
        request_id: &str,
    ) -> (Debit, Option<u64>) {
        let at = at_ms / 1000;
        let mut amounts = Vec::new();
        if usage.total() > 0 {
            amounts.push((tokens_key(&team.id, at), usage.total() as i64));
        }
        let table = self.prices.table().await;
        let priced = match (table.price(model), self.settings.unknown_model) {
            (Some(found), _) => Some(found),
            (None, UnknownModel::Charge(price)) => {
                Some((crate::policy::pricing::normalise_model(model), price))
            }
            (None, UnknownModel::Reject) => None,
        };
        let cost = priced.map(|(model, price)| {
            let cost = price.cost_micros(usage);
            if cost > 0 {
                let (month_key, model_key) = spend_keys(&team.id, &model, at);
                amounts.push((month_key, cost as i64));
                amounts.push((model_key, cost as i64));
            }
            cost
        });
        let debit = Debit {
            id: request_id.to_owned(),
            amounts,
        };
        (debit, cost)
    }

    /// Waits until every queued debit is applied and the store has made it durable.
    pub async fn flush(&self) {
        self.ledger.flush().await;
    }

    /// The lease layer, when admission uses leases.
    pub fn leases(&self) -> Option<&Leases> {
        self.leases.as_deref()
    }

    /// Hands back what this instance's leases hold unused (at shutdown): the rest of the fleet
    /// can admit it.
    pub async fn hand_back_leases(&self) {
        if let Some(leases) = &self.leases {
            let units = leases.hand_back_all().await;
            tracing::info!(units, "unused lease units handed back");
        }
    }

    fn next_request_id(&self) -> String {
        format!(
            "tollgate-{}-{}",
            self.clock.now_ms(),
            self.request_seq.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// A team's token counter for the UTC day of `at` (seconds). It outlives its day by one so late
/// debits and operators can still see it.
fn tokens_key(team: &str, at: u64) -> CounterKey {
    CounterKey::tokens_on_day(
        team,
        &calendar::day_key(at),
        calendar::next_day_start(at) + 86_400,
    )
}

/// A team's spend counters for the UTC month of `at` (seconds): all models, and `model`.
fn spend_keys(team: &str, model: &str, at: u64) -> (CounterKey, CounterKey) {
    let month = calendar::month_key(at);
    let expires = calendar::next_month_start(at) + SPEND_RETENTION_SECS;
    (
        CounterKey::spend_in_month(team, &month, expires),
        CounterKey::spend_on_model(team, &month, model, expires),
    )
}

#[cfg(test)]
mod tests;
