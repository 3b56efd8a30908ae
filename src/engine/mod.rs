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
use crate::llm::Endpoints;
use crate::policy::admission::{self, Charges, Crossing, Decision, Facts, ScopeRules, Values};
use crate::policy::budget;
pub use crate::policy::scopes::{Member, ProjectNotAllowed, ScopeSettings};
use crate::policy::{
    Price, PriceTable, RateHeaders, Rejection, RejectionKind, Team, TierTable, Units, Usage, rate,
};
use crate::store::{
    Counted, CounterKey, Debit, Increment, Journal, JournalEntry, MemoryStore, Opened, Scope,
    Spool, Store, StoreError,
};

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
    /// Which endpoints are metered, free or refused: asked by every adapter.
    pub endpoints: Endpoints,
    /// Admit from quota leases on the store's counters (see [`lease`]); `None`: one conditional
    /// update per request.
    pub leases: Option<LeaseSettings>,
    /// Signed threshold webhooks; `None`: crossings are only logged and counted.
    pub alerts: Option<Arc<crate::alerts::Alerts>>,
    /// A JSON line per charged call; `None`: off.
    pub usage_feed: Option<crate::usage_feed::UsageFeed>,
    /// The org above teams, user defaults, the default time zone of periods.
    pub scopes: ScopeSettings,
    /// Request header naming the caller's project (`None`: projects are not used).
    pub project_header: Option<String>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            tiers: TierTable::default(),
            fail_modes: FailModes::all(FailMode::Closed),
            cache_ttl: Duration::from_secs(5),
            prices: PriceTable::builtin(),
            unknown_model: UnknownModel::Reject,
            warn_at_percent: vec![80, 100],
            reserve: false,
            admission_deadline: Duration::from_millis(500),
            configured_teams: Vec::new(),
            endpoints: Endpoints::builtin(),
            leases: None,
            alerts: None,
            usage_feed: None,
            scopes: ScopeSettings::default(),
            project_header: None,
        }
    }
}

/// Who a request is for: its team (found from the token), the user the token names (by the
/// configured claim) and the project the request names (a header), if any.
#[derive(Clone, Debug)]
pub struct Caller {
    pub team: Arc<Team>,
    pub user: Option<String>,
    pub project: Option<String>,
}

impl std::ops::Deref for Caller {
    type Target = Team;

    fn deref(&self) -> &Team {
        &self.team
    }
}

impl<'a> From<&'a Caller> for Member<'a> {
    fn from(caller: &'a Caller) -> Self {
        Member {
            team: &caller.team,
            user: caller.user.as_deref(),
            project: caller.project.as_deref(),
        }
    }
}

/// The model a request calls, from its body.
#[derive(Clone, Copy, Debug)]
pub struct ModelCall<'a> {
    pub model: &'a str,
    pub prompt_chars: u64,
    pub max_output_tokens: Option<u64>,
    /// What the call is billed in besides tokens (images, characters), if anything.
    pub units: Option<&'a Units>,
}

impl ModelCall<'_> {
    /// The prompt's tokens, estimated from its characters, and the units asked for (images,
    /// characters of speech): what the provider bills for the call once it has received it,
    /// whatever happens to the answer.
    pub fn prompt_estimate(&self) -> Usage {
        Usage {
            input: self.prompt_chars.div_ceil(4),
            units: self.units.map_or(0, Units::count),
            estimated: true,
            ..Default::default()
        }
    }
}

/// After a store failure, admissions skip the store this long before probing it again.
const STORE_PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Output tokens assumed for a reservation when the request sets no maximum.
pub const DEFAULT_RESERVED_OUTPUT_TOKENS: u64 = 1024;
/// An admitted request: what to report in headers and what to charge once its usage is known.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub team: Arc<str>,
    pub rate: RateHeaders,
    /// `x-tollgate-budget-warning`, when a threshold is crossed or the budget is spent (warn mode).
    pub budget_warning: Option<String>,
    /// Counters to charge, fixed at admission so a response that ends after midnight is charged
    /// to the day (and month, week) it was admitted in.
    charges: Charges,
    charge: Option<Charge>,
    request_id: String,
    /// In the journal until settled (so that a crash does not lose its charge).
    journaled: bool,
}

impl Ticket {
    /// The scopes the call is charged to, broadest first (org, team, user, project): the scope
    /// chain a usage record names. Every scope has a token counter for the period.
    pub fn scopes(&self) -> impl Iterator<Item = &Scope> {
        self.charges
            .tokens
            .iter()
            .filter(|key| matches!(key.counted, Counted::Tokens(_)))
            .map(|key| &key.scope)
    }

    /// The debit charging `usage` (`None`: the request never ran) to this ticket's counters and
    /// giving its reservation back, with the cost it charges.
    fn debit(&self, usage: Option<&Usage>) -> (Debit, u64) {
        let cost = match (&self.charge, usage) {
            (Some(charge), Some(u)) => charge.price.cost_with_units_micros(u, charge.unit_price),
            _ => 0,
        };
        let mut amounts = self.charges.amounts(usage.map_or(0, Usage::total), cost);
        if let Some(charge) = &self.charge {
            amounts.extend(
                charge
                    .reserved
                    .iter()
                    .map(|(key, reserved)| (key.clone(), -(*reserved as i64))),
            );
        }
        let debit = Debit {
            id: self.request_id.clone(),
            amounts,
        };
        (debit, cost)
    }
}

/// When calls left unsettled are charged at their estimates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsettled {
    /// At startup: what an earlier process left in the journal when it died.
    Recovered,
    /// At the end of the shutdown grace period: what is still in flight.
    Abandoned,
}

/// Calls charged at their estimates by [`Engine::charge_unsettled`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnsettledCharge {
    pub calls: u64,
    pub tokens: u64,
    pub cost_micros: u64,
}

#[derive(Clone, Debug)]
struct Charge {
    /// Canonical name, for the usage feed.
    model: String,
    price: Price,
    /// Micro-dollars per million of the call's units (images, characters), resolved at admission.
    unit_price: u64,
    /// Reservations to release once the actual cost is known.
    reserved: Vec<(CounterKey, u64)>,
}

/// A model call's price, resolved at admission.
struct Priced {
    /// Canonical name.
    model: String,
    price: Price,
    unit_price: u64,
    /// Cost of the prompt and the most output the call may generate.
    estimate: u64,
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
    /// Admitted model calls until they are settled (none for the memory store).
    journal: Option<Arc<dyn Journal>>,
    clock: Arc<dyn Clock>,
    settings: EngineSettings,
    /// Thresholds already reported (team#month#threshold), so the store is asked only once.
    reported: Mutex<HashSet<String>>,
    request_seq: AtomicU64,
    /// Random: tells this process's debit ids from other instances' and earlier runs'.
    instance: u64,
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
        // The journal lives with the store itself (or the spool), never behind the lease layer.
        let journal = match &spool {
            Some(spool) => Some(spool.journal()),
            None => store.journal(),
        };
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
            journal,
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
            instance: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                (std::process::id(), SystemClock.now_ms()),
            ),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn tiers(&self) -> &TierTable {
        &self.settings.tiers
    }

    /// The endpoint catalogue: which requests are metered, free or refused.
    pub fn endpoints(&self) -> &Endpoints {
        &self.settings.endpoints
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
    pub async fn team_for(&self, principal: &Principal) -> Result<Caller, Rejection> {
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
            Ok(Some(team)) => Ok(Caller {
                team,
                user: principal.user.clone(),
                project: None,
            }),
            Ok(None) => Err(self.refuse(Rejection::new(RejectionKind::UnknownTeam, missing))),
            Err(e) => Err(self.refuse(self.store_failure("team_lookup", &e))),
        }
    }

    /// Decides whether `team` may send one more request now (calling `call`'s model, if it is a
    /// model call); counts it if so. An admitted model call is journaled until it is settled.
    pub async fn admit<'a>(
        &self,
        who: impl Into<Member<'a>>,
        call: Option<ModelCall<'_>>,
        request_id: Option<&str>,
    ) -> Result<Ticket, Rejection> {
        self.admit_journaled(who.into(), call, request_id, true)
            .await
    }

    /// Admits a model call whose usage another path reports later (an access-log record with the
    /// same request id, as for the agentgateway webhook): nothing is journaled, since that record
    /// charges the call even if this process dies, and a reservation is given back at once.
    /// Returns the budget warning, if any.
    pub async fn admit_reported_later<'a>(
        &self,
        who: impl Into<Member<'a>>,
        call: ModelCall<'_>,
        request_id: Option<&str>,
    ) -> Result<Option<String>, Rejection> {
        let ticket = self
            .admit_journaled(who.into(), Some(call), request_id, false)
            .await?;
        let warning = ticket.budget_warning.clone();
        self.settle_as(ticket, None, "").await;
        Ok(warning)
    }

    async fn admit_journaled(
        &self,
        who: Member<'_>,
        call: Option<ModelCall<'_>>,
        request_id: Option<&str>,
        journal: bool,
    ) -> Result<Ticket, Rejection> {
        let started = std::time::Instant::now();
        let now_ms = self.clock.now_ms();
        let request_id = self.debit_id(request_id);
        // Leases gate their own store calls on the breaker and report the outcomes to it: a
        // request a slice covers is admitted whatever the store's state.
        let leased = self.leases.is_some();
        let store_called = leased || self.breaker.allows();
        let (attempt, timed_out) = if store_called {
            let primary = self.admit_at(self.store.as_ref(), who, call, now_ms, &request_id);
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
                        .admit_at(&self.fallback, who, call, now_ms, &request_id)
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
        let outcome = outcome.map(|mut ticket| {
            if let (true, Some(call)) = (journal, call) {
                self.journal(&mut ticket, call, now_ms);
            }
            ticket
        });
        metrics::histogram!("tollgate_admission_seconds").record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Admission against `store`: the shared store, or the per-instance fallback. Reads the
    /// counters policy names, lets it decide, and makes the conditional adds it asks for in order;
    /// when one is refused, what the earlier ones took is given back.
    async fn admit_at(
        &self,
        store: &dyn Store,
        who: Member<'_>,
        call: Option<ModelCall<'_>>,
        now_ms: u64,
        request_id: &str,
    ) -> Result<Ticket, Failure> {
        let team = who.team;
        let scopes = self.scope_chain(who).map_err(|e| self.refuse(e.into()))?;
        let priced = match call {
            Some(call) => Some(self.price_call(team, call).await?),
            None => None,
        };
        let facts = Facts {
            now_ms,
            scopes: &scopes,
            call: call.zip(priced.as_ref()).map(|(call, p)| admission::Call {
                requested: call.model,
                model: &p.model,
                estimate_micros: p.estimate,
            }),
            reserve: self.settings.reserve,
            warn_at_percent: &self.settings.warn_at_percent,
        };
        if let Some(refusal) = facts.refuse_before_reading() {
            return Err(self.refuse(refusal).into());
        }
        let reads = facts.reads();
        let values = store
            .read_counters(&reads.iter().collect::<Vec<_>>())
            .await
            .map_err(Failure::Store)?;
        let values = Values::new(&reads, &values);
        // Whatever is decided: a budget reached refuses, and its 100 % must still be reported.
        for crossing in facts.crossings(&values) {
            self.report_crossing(crossing, now_ms / 1000);
        }
        let mut admitted = match facts.decide(&values) {
            Decision::Refused(refusal) => return Err(self.refuse(refusal).into()),
            Decision::Admitted(admitted) => admitted,
        };
        for scope in &admitted.overruns {
            metrics::counter!("tollgate_budget_overruns_total", "team" => team.id.clone(), "scope" => scope.kind())
                .increment(1);
        }
        let mut ticket = Ticket {
            team: Arc::from(team.id.as_str()),
            rate: admitted.rate,
            budget_warning: admitted.warning.clone(),
            charges: admitted.charges.clone(),
            charge: priced.as_ref().map(|p| Charge {
                model: p.model.clone(),
                price: p.price,
                unit_price: p.unit_price,
                reserved: Vec::new(),
            }),
            request_id: request_id.to_owned(),
            journaled: false,
        };
        let mut counted = Vec::new();
        for add in admitted.adds.clone() {
            let refused = match store.add_within(&add.key, add.amount, add.limit).await {
                Ok(Increment::Applied(value)) => {
                    admitted.applied(&add, value);
                    match &mut ticket.charge {
                        Some(charge) if add.is_reservation() => {
                            charge.reserved.push((add.key, add.amount))
                        }
                        _ => counted.push(add.key),
                    }
                    continue;
                }
                Ok(Increment::Refused(value)) => {
                    Failure::Refused(self.refuse(admitted.refused(&facts, &add, value)))
                }
                Err(e) => Failure::Store(e),
            };
            // Refused after counting: give back the reservations and requests counted so far.
            self.give_back(ticket, counted).await;
            return Err(refused);
        }
        ticket.rate = admitted.rate;
        metrics::counter!("tollgate_requests_total", "decision" => "allowed", "reason" => "")
            .increment(1);
        Ok(ticket)
    }

    /// Undoes an admission refused part way: its reservations are released and the requests it
    /// counted in other scopes' RPM windows taken back out.
    async fn give_back(&self, ticket: Ticket, counted: Vec<CounterKey>) {
        if !counted.is_empty() {
            self.ledger
                .record(Debit {
                    id: format!("{}~undo", ticket.request_id),
                    amounts: counted.into_iter().map(|key| (key, -1)).collect(),
                })
                .await;
        }
        self.settle_as(ticket, None, "refused").await;
    }

    /// Resolves the model's canonical name and price, enforcing the unknown-model policy. No
    /// counter is touched on refusal.
    async fn price_call(&self, team: &Team, call: ModelCall<'_>) -> Result<Priced, Rejection> {
        let table = self.prices.table().await;
        let (model, price, unit_price) = match table.model_price(call.model) {
            Some((model, price)) => {
                let unit_price = match call.units {
                    None => 0,
                    Some(units) => price.unit_price(units).map_err(|missing| {
                        self.unpriced(
                            team,
                            call.model,
                            &format!("model {:?} {missing}", call.model),
                        )
                    })?,
                };
                (model, price.tokens, unit_price)
            }
            None => match self.settings.unknown_model {
                UnknownModel::Charge(price) if call.units.is_none() => {
                    metrics::counter!("tollgate_unknown_model_total", "policy" => "charged")
                        .increment(1);
                    (
                        crate::policy::pricing::normalise_model(call.model),
                        price,
                        0,
                    )
                }
                UnknownModel::Charge(_) | UnknownModel::Reject => {
                    // A default price is for tokens: it cannot price images or characters.
                    return Err(self.unpriced(
                        team,
                        call.model,
                        &format!("model {:?} has no price", call.model),
                    ));
                }
            },
        };
        let estimate = price.cost_with_units_micros(
            &Usage {
                output: call
                    .max_output_tokens
                    .unwrap_or(DEFAULT_RESERVED_OUTPUT_TOKENS),
                ..call.prompt_estimate()
            },
            unit_price,
        );
        Ok(Priced {
            model,
            price,
            unit_price,
            estimate,
        })
    }

    /// Refuses a call nothing can price (no price for the model, or for the images or characters
    /// it asks for): nothing is spent that cannot be charged.
    fn unpriced(&self, team: &Team, model: &str, what: &str) -> Rejection {
        metrics::counter!("tollgate_unknown_model_total", "policy" => "rejected").increment(1);
        tracing::warn!(team = %team.id, model, what, "call has no price");
        self.refuse(Rejection::new(
            RejectionKind::UnknownModel,
            format!(
                "{what}; a tollgate admin can add one (PUT /admin/prices/{})",
                crate::policy::pricing::normalise_model(model)
            ),
        ))
    }

    /// Logs, counts and alerts a threshold crossing once per scope, period and threshold across
    /// the fleet: the store's conditional increment of the crossing's marker decides which
    /// instance reports it ([`crate::alerts::report_crossing`]). Asked of the store once per
    /// process.
    fn report_crossing(&self, crossing: Crossing, now: u64) {
        let marker = crossing.marker.id();
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
        crate::alerts::report_crossing(
            self.store.clone(),
            self.settings.alerts.clone(),
            crossing,
            now,
        );
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

    /// `usage: None`: the request never ran; only a reservation, if any, is released.
    async fn settle_as(&self, ticket: Ticket, usage: Option<Usage>, api: &'static str) {
        if ticket.journaled
            && let Some(journal) = &self.journal
            && !journal.claim(&ticket.request_id)
        {
            // Charged at its estimate already: the shutdown grace period ended before it did.
            tracing::debug!(team = %ticket.team, request_id = %ticket.request_id, "settled after being charged at shutdown");
            return;
        }
        let (debit, cost) = ticket.debit(usage.as_ref());
        if cost > 0 {
            metrics::counter!("tollgate_spend_micros_total", "team" => ticket.team.to_string())
                .increment(cost);
        }
        tracing::debug!(team = %ticket.team, request_id = %ticket.request_id, ?usage, cost, api, "settling");
        if let (Some(feed), Some(usage)) = (&self.settings.usage_feed, &usage) {
            feed.record(crate::usage_feed::Charged {
                debit_id: &ticket.request_id,
                scopes: ticket.scopes().cloned().collect(),
                model: ticket.charge.as_ref().map_or("", |c| c.model.as_str()),
                usage,
                cost_micros: cost,
                source: crate::usage_feed::Source::Settled,
                at_ms: self.clock.now_ms(),
            });
        }
        // A journaled call's debit settles its entry, even when it charges nothing.
        if !debit.amounts.is_empty() || ticket.journaled {
            self.ledger.record(debit).await;
        }
    }

    /// Journals an admitted model call with its estimated prompt (see [`Unsettled`]).
    fn journal(&self, ticket: &mut Ticket, call: ModelCall<'_>, now_ms: u64) {
        let Some(journal) = &self.journal else {
            return;
        };
        if ticket.charge.is_none() {
            return;
        }
        // The prompt only: the provider bills it for any call it received, while output is
        // billed only as far as it was generated, which only the lost process saw.
        let estimate = call.prompt_estimate();
        let (debit, cost_micros) = ticket.debit(Some(&estimate));
        let entry = JournalEntry {
            team: ticket.team.to_string(),
            model: call.model.to_owned(),
            admitted_at_ms: now_ms,
            tokens: estimate.total(),
            cost_micros,
            debit,
        };
        match journal.open(entry) {
            Opened::Journaled => ticket.journaled = true,
            // Debit ids are unique per admission (`debit_id`): only a full journal refuses one.
            Opened::Full | Opened::DuplicateId => {
                metrics::counter!("tollgate_journal_full_total").increment(1);
                tracing::warn!(team = %ticket.team, request_id = %ticket.request_id, "journal full: this call is not journaled, and a crash before it settles would not charge it");
            }
        }
    }

    /// Charges, at their estimates, the journaled calls nobody will settle: at startup what the
    /// last process left ([`Unsettled::Recovered`]), at the end of the shutdown grace period what
    /// is still in flight ([`Unsettled::Abandoned`]). Each is a debit with the call's request id,
    /// so a debit of it that did land before a crash is not applied twice. Returns once they are
    /// durable (applied, or spooled).
    pub async fn charge_unsettled(&self, when: Unsettled) -> UnsettledCharge {
        let Some(journal) = &self.journal else {
            return UnsettledCharge::default();
        };
        let entries = journal.claim_all();
        let mut total = UnsettledCharge::default();
        let mut by_team: std::collections::BTreeMap<String, UnsettledCharge> = Default::default();
        for entry in &entries {
            for sum in [&mut total, by_team.entry(entry.team.clone()).or_default()] {
                sum.calls += 1;
                sum.tokens += entry.tokens;
                sum.cost_micros += entry.cost_micros;
            }
            tracing::debug!(team = %entry.team, request_id = entry.id(), model = %entry.model, admitted_at_ms = entry.admitted_at_ms, tokens = entry.tokens, cost_micros = entry.cost_micros, ?when, "charging an unsettled call at its estimate");
            if let Some(feed) = &self.settings.usage_feed {
                feed.record(crate::usage_feed::Charged {
                    debit_id: entry.id(),
                    scopes: vec![Scope::Team(entry.team.clone())],
                    model: &entry.model,
                    usage: &Usage {
                        input: entry.tokens,
                        estimated: true,
                        ..Default::default()
                    },
                    cost_micros: entry.cost_micros,
                    source: match when {
                        Unsettled::Recovered => crate::usage_feed::Source::Recovered,
                        Unsettled::Abandoned => crate::usage_feed::Source::Abandoned,
                    },
                    at_ms: self.clock.now_ms(),
                });
            }
        }
        for entry in entries {
            self.ledger.record(entry.debit).await;
        }
        self.ledger.flush().await;
        if total.calls == 0 {
            return total;
        }
        let (counter, what) = match when {
            Unsettled::Recovered => (
                "tollgate_journal_recovered_total",
                "charged the calls an earlier process left unsettled at their estimated prompts",
            ),
            Unsettled::Abandoned => (
                "tollgate_journal_abandoned_total",
                "charged the calls still in flight at the end of the shutdown grace period at their estimated prompts",
            ),
        };
        for (team, sum) in &by_team {
            metrics::counter!(counter, "team" => team.clone()).increment(sum.calls);
            metrics::counter!("tollgate_spend_micros_total", "team" => team.clone())
                .increment(sum.cost_micros);
            tracing::warn!(
                team = %team,
                calls = sum.calls,
                tokens = sum.tokens,
                cost_usd = budget::json_usd(sum.cost_micros),
                "{what}"
            );
        }
        tracing::warn!(
            calls = total.calls,
            tokens = total.tokens,
            cost_usd = budget::json_usd(total.cost_micros),
            teams = by_team.len(),
            "{what}"
        );
        total
    }

    /// The debit for usage reported after the fact (an access-log record) rather than through an
    /// admission: tokens go to the day and spend to the month of `at_ms`, whenever the record is
    /// processed, and the debit carries `request_id` so a deduplicating store applies it once.
    /// A model without a price is charged tokens only; the returned cost says so (`None`).
    pub async fn usage_debit<'a>(
        &self,
        who: impl Into<Member<'a>>,
        model: &str,
        usage: &Usage,
        at_ms: u64,
        request_id: &str,
    ) -> (Debit, Option<u64>) {
        let table = self.prices.table().await;
        let priced = match (table.price(model), self.settings.unknown_model) {
            (Some(found), _) => Some(found),
            (None, UnknownModel::Charge(price)) => {
                Some((crate::policy::pricing::normalise_model(model), price))
            }
            (None, UnknownModel::Reject) => None,
        };
        // A scope the caller may not use now still gets the usage it had.
        let who = who.into();
        let scopes = self
            .scope_chain(Member {
                project: None,
                ..who
            })
            .unwrap_or_default();
        let charges = Facts {
            now_ms: at_ms,
            scopes: &scopes,
            call: priced.as_ref().map(|(canonical, _)| admission::Call {
                requested: model,
                model: canonical,
                estimate_micros: 0,
            }),
            reserve: false,
            warn_at_percent: &[],
        }
        .charges();
        let cost = priced.map(|(_, price)| price.cost_micros(usage));
        let debit = Debit {
            id: request_id.to_owned(),
            amounts: charges.amounts(usage.total(), cost.unwrap_or(0)),
        };
        (debit, cost)
    }

    /// The usage feed, when on: for charges made outside [`Engine::settle`] (access logs).
    pub fn usage_feed(&self) -> Option<&crate::usage_feed::UsageFeed> {
        self.settings.usage_feed.as_ref()
    }

    /// Every scope `who` belongs to, with its limits, broadest first (see `policy::scopes`).
    pub fn scope_chain(&self, who: Member<'_>) -> Result<Vec<ScopeRules>, ProjectNotAllowed> {
        self.settings.scopes.chain(&self.settings.tiers, who)
    }

    /// The org's limits, if the configuration sets any.
    pub fn org_rules(&self) -> Option<ScopeRules> {
        let scopes = &self.settings.scopes;
        scopes
            .org
            .as_ref()
            .map(|org| org.rules(Scope::Org, &scopes.time_zone))
    }

    /// The request header naming a caller's project, if projects are configured.
    pub fn project_header(&self) -> Option<&str> {
        self.settings.project_header.as_deref()
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

    /// The id of an admitted call's debit: the request id, made this admission's own. A client
    /// can choose its `x-request-id`, and a store that takes a debit id it has seen for a replay
    /// (DynamoDB) would charge a call that reuses one nothing.
    fn debit_id(&self, request_id: Option<&str>) -> String {
        let seq = self.request_seq.fetch_add(1, Ordering::Relaxed);
        match request_id {
            Some(id) => format!("{id}~{:x}-{seq}", self.instance),
            None => format!("tollgate-{:x}-{seq}", self.instance),
        }
    }
}

#[cfg(test)]
mod tests;
