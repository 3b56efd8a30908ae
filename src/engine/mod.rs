//! The policy engine: resolves a caller's team, reads the counters policy needs, asks `policy/`
//! for a decision, and records usage after the response. Wire adapters call only this.

mod ledger;
mod teams;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use ledger::Ledger;
pub use teams::TeamDirectory;

use crate::identity::Principal;
use crate::policy::{
    RateHeaders, Rejection, RejectionKind, Team, TierTable, Usage, calendar, rate, tokens,
};
use crate::store::{CounterKey, Debit, Increment, Store, StoreError};

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

/// An admitted request: what to report in headers and what to charge once its usage is known.
#[derive(Clone, Debug)]
pub struct Ticket {
    pub team: Arc<str>,
    pub rate: RateHeaders,
    /// Daily token counter to debit, fixed at admission so a response that ends after midnight
    /// is charged to the day it was admitted on.
    tokens_key: CounterKey,
    request_id: String,
}

pub struct Engine {
    store: Arc<dyn Store>,
    teams: TeamDirectory,
    tiers: TierTable,
    ledger: Ledger,
    clock: Arc<dyn Clock>,
    fail_mode: FailMode,
    request_seq: AtomicU64,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        tiers: TierTable,
        team_cache_ttl: Duration,
        fail_mode: FailMode,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            teams: TeamDirectory::new(store.clone(), team_cache_ttl),
            ledger: Ledger::start(store.clone()),
            store,
            tiers,
            clock,
            fail_mode,
            request_seq: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
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
                self.count_decision(RejectionKind::UnknownTeam);
                return Err(Rejection::new(
                    RejectionKind::UnknownTeam,
                    "token names no team and no client_id",
                ));
            }
        };
        let rejection = match lookup {
            Ok(Some(team)) => return Ok(team),
            Ok(None) => Rejection::new(RejectionKind::UnknownTeam, missing),
            Err(e) => self.store_failure("team_lookup", &e),
        };
        self.count_decision(rejection.kind);
        Err(rejection)
    }

    /// Decides whether `team` may send one more request now; counts it if so.
    pub async fn admit(&self, team: &Team, request_id: Option<&str>) -> Result<Ticket, Rejection> {
        let started = std::time::Instant::now();
        let outcome = self.admit_at(team, self.clock.now_ms(), request_id).await;
        metrics::histogram!("tollgate_admission_seconds").record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn admit_at(
        &self,
        team: &Team,
        now_ms: u64,
        request_id: Option<&str>,
    ) -> Result<Ticket, Rejection> {
        let limits = self.tiers.limits_for(team);
        let now = now_ms / 1000;
        let pos = rate::WindowPosition::at(now_ms);
        let day = calendar::day_key(now);
        let previous_key =
            CounterKey::requests_in_minute(&team.id, pos.bucket - 1, pos.bucket_expiry_secs() - 60);
        let current_key =
            CounterKey::requests_in_minute(&team.id, pos.bucket, pos.bucket_expiry_secs());
        // Token counters outlive their day by one so late debits and operators can still see them.
        let tokens_key =
            CounterKey::tokens_on_day(&team.id, &day, calendar::next_day_start(now) + 86_400);
        let request_id = request_id.map_or_else(|| self.next_request_id(), str::to_owned);
        let ticket = |rate| Ticket {
            team: Arc::from(team.id.as_str()),
            rate,
            tokens_key: tokens_key.clone(),
            request_id: request_id.clone(),
        };

        let (previous, used_today) = match self
            .store
            .read_counters(&[&previous_key, &tokens_key])
            .await
        {
            Ok(v) => (v[0], v[1]),
            Err(e) => {
                return self.fail(
                    e,
                    ticket(RateHeaders {
                        rpm_limit: limits.rpm,
                        ..Default::default()
                    }),
                );
            }
        };
        let mut headers = RateHeaders {
            rpm_limit: limits.rpm,
            rpm_remaining: 0,
            rpm_reset_secs: pos.secs_to_bucket_end(),
            tokens_limit: limits.daily_tokens,
            tokens_remaining: tokens::remaining(used_today, limits.daily_tokens),
        };

        if !tokens::within_daily_limit(used_today, limits.daily_tokens) {
            headers.rpm_remaining = rate::remaining(limits.rpm, previous, 0, pos);
            let secs = calendar::secs_until_next_day(now);
            self.count_decision(RejectionKind::DailyTokensExceeded);
            return Err(Rejection::daily_tokens_exceeded(
                used_today,
                limits.daily_tokens.unwrap_or_default(),
                headers,
                secs,
            ));
        }

        let ceiling = rate::current_ceiling(limits.rpm, previous, pos);
        match self.store.increment_below(&current_key, ceiling).await {
            Ok(Increment::Applied(current)) => {
                headers.rpm_remaining = rate::remaining(limits.rpm, previous, current, pos);
                metrics::counter!("tollgate_requests_total", "decision" => "allowed", "reason" => "").increment(1);
                Ok(ticket(headers))
            }
            Ok(Increment::Refused(current)) => {
                let count = rate::window_count(previous, current, pos);
                let retry = rate::retry_after_secs(limits.rpm, previous, current, pos);
                self.count_decision(RejectionKind::RpmExceeded);
                Err(Rejection::rpm_exceeded(count, headers, retry))
            }
            Err(e) => self.fail(e, ticket(headers)),
        }
    }

    fn fail(&self, error: StoreError, ticket: Ticket) -> Result<Ticket, Rejection> {
        let rejection = self.store_failure("admit", &error);
        match self.fail_mode {
            FailMode::Closed => {
                self.count_decision(rejection.kind);
                Err(rejection)
            }
            FailMode::Open => {
                metrics::counter!("tollgate_fail_open_total").increment(1);
                Ok(ticket)
            }
        }
    }

    fn store_failure(&self, op: &'static str, error: &StoreError) -> Rejection {
        metrics::counter!("tollgate_store_errors_total", "backend" => self.store.backend_name(), "op" => op)
            .increment(1);
        tracing::error!(op, error = %error, fail_mode = ?self.fail_mode, "store failed during admission");
        Rejection::new(RejectionKind::Unavailable, "rate-limit store unavailable")
    }

    /// Counts a refusal. The engine counts every refusal it returns; adapters count their own
    /// (identity, body checks) with this.
    pub fn count_decision(&self, kind: RejectionKind) {
        metrics::counter!("tollgate_requests_total", "decision" => "rejected", "reason" => kind.code()).increment(1);
    }

    /// Charges an admitted request's usage. Returns once the debit is queued; the ledger applies it
    /// to the store in the background (never on the response path).
    pub async fn settle(&self, ticket: Ticket, usage: Usage, api: &'static str) {
        let total = usage.total();
        metrics::counter!("tollgate_tokens_total", "team" => ticket.team.to_string(), "api" => api)
            .increment(total);
        if usage.estimated {
            metrics::counter!("tollgate_usage_estimated_total", "api" => api).increment(1);
        }
        tracing::debug!(team = %ticket.team, request_id = %ticket.request_id, ?usage, "settling");
        if total == 0 {
            return;
        }
        self.ledger
            .record(Debit {
                id: ticket.request_id,
                amounts: vec![(ticket.tokens_key, total)],
            })
            .await;
    }

    /// Waits until every queued debit is applied and the store has made it durable.
    pub async fn flush(&self) {
        self.ledger.flush().await;
    }

    fn next_request_id(&self) -> String {
        format!(
            "tollgate-{}-{}",
            self.clock.now_ms(),
            self.request_seq.fetch_add(1, Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests;
