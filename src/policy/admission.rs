//! Admission as one pure function: the facts of a request (its scopes and their limits, the model
//! it calls, the time) and the counter values read for it go in; a decision comes out, with the
//! conditional adds the store must make, in order, for it to stand, and the counters to charge
//! once the usage is known. No I/O, no clock, no logging or metrics: the engine reads the counters
//! [`Facts::reads`] names, calls [`Facts::decide`], applies the adds and reports what happened.
//!
//! Every scope a request belongs to (org, team, user, project) is checked in the same pass; any
//! scope can refuse, and the refusal that lasts longest is the one the caller hears
//! ([`decision::lasting_longest`]). Limits that admission adds to (requests per minute, budget
//! reservations) are conditional adds, each within the room its scope has left, so a burst never
//! passes a limit; limits charged after the response (tokens, spend) are checked from the
//! counters read, so concurrent calls can overshoot them by their own usage, once.

use std::collections::{BTreeMap, HashMap};

use super::budget::{self, OnBreach};
use super::calendar::{Period, PeriodRule};
use super::counters::{Counted, CounterKey, PeriodKind, Scope};
use super::decision::{self, RateHeaders, Rejection, RejectionKind};
use super::rate::{self, WindowPosition};

/// The limits of one scope, resolved (tiers, defaults and overrides already applied).
#[derive(Clone, Debug, PartialEq)]
pub struct ScopeRules {
    pub scope: Scope,
    /// Requests per minute (sliding window); `None`: unlimited.
    pub rpm: Option<u64>,
    /// Tokens per minute (sliding window, charged with actual usage); `None`: unlimited.
    pub tpm: Option<u64>,
    /// Tokens per period; `None`: unlimited (still counted, for usage reports).
    pub tokens: Option<u64>,
    pub tokens_period: PeriodRule,
    /// USD per period, micro-dollars; `None`: unlimited (spend is still counted).
    pub budget_micros: Option<u64>,
    pub budget_period: PeriodRule,
    /// USD per budget period for single models (canonical names), micro-dollars.
    pub model_caps: BTreeMap<String, u64>,
    /// Models the scope may call (canonical names); `None`: all.
    pub allowed_models: Option<Vec<String>>,
    pub on_breach: OnBreach,
}

impl ScopeRules {
    /// A scope with no limits, counted over UTC days and months.
    pub fn unlimited(scope: Scope) -> Self {
        Self {
            scope,
            rpm: None,
            tpm: None,
            tokens: None,
            tokens_period: PeriodRule::utc_day(),
            budget_micros: None,
            budget_period: PeriodRule::utc_month(),
            model_caps: BTreeMap::new(),
            allowed_models: None,
            on_breach: OnBreach::Block,
        }
    }

    /// Refusal texts name the scope, except a team's: its wording is the contract tollgate has
    /// always had (docs/design.md), and a team is the scope callers know they are in.
    fn reason(&self, text: String) -> String {
        match self.scope {
            Scope::Team(_) => text,
            _ => format!("{}: {text}", self.scope.label()),
        }
    }

    fn allows(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m == model))
    }
}

/// The model call being admitted.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// As the request named it (for messages).
    pub requested: &'a str,
    /// Canonical name (the price table's).
    pub model: &'a str,
    /// Estimated cost (prompt and the most output it may generate), micro-dollars.
    pub estimate_micros: u64,
}

/// Everything admission decides from, besides counter values.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub now_ms: u64,
    /// Broadest first (org, team, user, project).
    pub scopes: &'a [ScopeRules],
    pub call: Option<Call<'a>>,
    /// Reserve each model call's estimate at admission (released when it is settled).
    pub reserve: bool,
    /// Budget thresholds to report, percent.
    pub warn_at_percent: &'a [u8],
}

/// Counter values read for [`Facts::decide`] (absent keys read as 0).
#[derive(Clone, Debug, Default)]
pub struct Values(HashMap<CounterKey, u64>);

impl Values {
    pub fn new(keys: &[CounterKey], values: &[u64]) -> Self {
        Self(keys.iter().cloned().zip(values.iter().copied()).collect())
    }

    fn get(&self, key: &CounterKey) -> u64 {
        self.0.get(key).copied().unwrap_or_default()
    }
}

/// What admission decided.
#[derive(Clone, Debug)]
pub enum Decision {
    Refused(Rejection),
    /// Admitted once every add in [`Admitted::adds`] is applied, in order.
    Admitted(Admitted),
}

#[derive(Clone, Debug)]
pub struct Admitted {
    pub rate: RateHeaders,
    /// `x-tollgate-budget-warning`: a budget over in warn mode, or a threshold reached.
    pub warning: Option<String>,
    /// Scopes admitted over their budget or a model cap because they only warn.
    pub overruns: Vec<Scope>,
    /// Conditional adds to make, in order; the first one refused refuses the request.
    pub adds: Vec<Add>,
    /// Counters to charge once the usage is known.
    pub charges: Charges,
    /// Whether an RPM add was applied yet (the headers then report counted values).
    counted_rpm: bool,
}

/// A budget threshold a scope's spend has reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub scope: Scope,
    pub period: Period,
    /// The IANA name of the period's time zone (`UTC`).
    pub time_zone: String,
    pub threshold: u8,
    pub spent_micros: u64,
    pub budget_micros: u64,
    /// The once-only marker whose winner reports it.
    pub marker: CounterKey,
}

/// Add `amount` to `key` if it stays at most `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Add {
    pub key: CounterKey,
    pub amount: u64,
    pub limit: u64,
    why: Why,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Why {
    /// A scope's budget reservation.
    Reservation {
        scope: usize,
        spent: u64,
        budget: u64,
        retry_after: u64,
    },
    /// A scope's RPM bucket.
    Request {
        scope: usize,
        rpm: u64,
        previous: u64,
        pos: WindowPosition,
    },
}

impl Add {
    /// Whether this add is a reservation to give back should a later one be refused (or once the
    /// call is settled), as opposed to a request counted.
    pub fn is_reservation(&self) -> bool {
        matches!(self.why, Why::Reservation { .. })
    }
}

/// Counters an admitted call is charged to: `tokens` with its tokens, `spend` with its cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Charges {
    pub tokens: Vec<CounterKey>,
    pub spend: Vec<CounterKey>,
}

impl Charges {
    /// What charging a call's `tokens` and `cost_micros` adds: each to every counter of its kind.
    pub fn amounts(&self, tokens: u64, cost_micros: u64) -> Vec<(CounterKey, i64)> {
        let mut amounts = Vec::new();
        if tokens > 0 {
            amounts.extend(self.tokens.iter().map(|k| (k.clone(), tokens as i64)));
        }
        if cost_micros > 0 {
            amounts.extend(self.spend.iter().map(|k| (k.clone(), cost_micros as i64)));
        }
        amounts
    }
}

/// The counters of one scope this request touches.
struct ScopeKeys {
    rpm: Option<(CounterKey, CounterKey)>,
    tpm: Option<(CounterKey, CounterKey)>,
    tokens: CounterKey,
    tokens_period: Period,
    money: Option<MoneyKeys>,
}

struct MoneyKeys {
    period: Period,
    spend: CounterKey,
    model: CounterKey,
    reserved: CounterKey,
}

impl Facts<'_> {
    fn now(&self) -> u64 {
        self.now_ms / 1000
    }

    fn keys(&self, rules: &ScopeRules) -> ScopeKeys {
        let pos = WindowPosition::at(self.now_ms);
        let scope = &rules.scope;
        let buckets = |counted: fn(u64) -> Counted| {
            (
                CounterKey::new(scope.clone(), counted(pos.bucket - 1)),
                CounterKey::new(scope.clone(), counted(pos.bucket)),
            )
        };
        let tokens_period = rules.tokens_period.containing(self.now());
        let money = self.call.map(|call| {
            let period = rules.budget_period.containing(self.now());
            let key = |counted| CounterKey::new(scope.clone(), counted);
            MoneyKeys {
                spend: key(Counted::Spend(period.key)),
                model: key(Counted::ModelSpend(period.key, call.model.to_owned())),
                reserved: key(Counted::Reserved(period.key)),
                period,
            }
        });
        ScopeKeys {
            rpm: rules
                .rpm
                .map(|_| buckets(|minute| Counted::Requests { minute })),
            tpm: rules
                .tpm
                .map(|_| buckets(|minute| Counted::TokensInMinute { minute })),
            tokens: CounterKey::new(scope.clone(), Counted::Tokens(tokens_period.key)),
            tokens_period,
            money,
        }
    }

    /// A refusal that needs no counters (a model a scope does not allow), so that it is given
    /// even while the store is down.
    pub fn refuse_before_reading(&self) -> Option<Rejection> {
        let call = self.call?;
        let rules = self.scopes.iter().find(|r| !r.allows(call.model))?;
        let text = match &rules.scope {
            Scope::Team(team) => format!(
                "model {:?} is not allowed for team {team:?}",
                call.requested
            ),
            other => format!(
                "model {:?} is not allowed for {}",
                call.requested,
                other.label()
            ),
        };
        Some(Rejection {
            scope: Some(rules.scope.label()),
            ..Rejection::new(RejectionKind::ModelNotAllowed, text)
        })
    }

    /// The counters [`Facts::decide`] needs.
    pub fn reads(&self) -> Vec<CounterKey> {
        let mut reads = Vec::new();
        for rules in self.scopes {
            let keys = self.keys(rules);
            reads.extend(keys.rpm.into_iter().flat_map(|(p, c)| [p, c]));
            reads.extend(keys.tpm.into_iter().flat_map(|(p, c)| [p, c]));
            reads.push(keys.tokens);
            if let Some(m) = keys.money {
                reads.extend([m.spend, m.model, m.reserved]);
            }
        }
        reads
    }

    /// The counters a call's usage is charged to, without admitting it (usage reported after the
    /// fact, by an access log): tokens to each scope's token period and TPM bucket at `at_ms`,
    /// spend to each scope's budget period.
    pub fn charges(&self) -> Charges {
        let mut charges = Charges::default();
        for rules in self.scopes {
            let keys = self.keys(rules);
            charges.tokens.push(keys.tokens);
            charges.tokens.extend(keys.tpm.map(|(_, current)| current));
            if let Some(m) = keys.money {
                charges.spend.extend([m.spend, m.model]);
            }
        }
        charges
    }

    pub fn decide(&self, values: &Values) -> Decision {
        let now = self.now();
        let pos = WindowPosition::at(self.now_ms);
        let incoming = match self.call {
            Some(call) if self.reserve => call.estimate_micros,
            _ => 0,
        };
        let mut rate_headers = RateHeaders {
            rpm_reset_secs: pos.secs_to_bucket_end(),
            ..Default::default()
        };
        let mut refusals = Vec::new();
        let mut rpm_refusals = Vec::new();
        let mut admitted = Admitted {
            rate: RateHeaders::default(),
            warning: None,
            overruns: Vec::new(),
            adds: Vec::new(),
            charges: self.charges(),
            counted_rpm: false,
        };
        let mut reservations = Vec::new();
        let mut requests = Vec::new();
        let mut rpm_binding: Option<u64> = None;
        let mut tokens_binding: Option<u64> = None;
        for (index, rules) in self.scopes.iter().enumerate() {
            let keys = self.keys(rules);
            if let (Some(rpm), Some((previous_key, current_key))) = (rules.rpm, &keys.rpm) {
                let (previous, current) = (values.get(previous_key), values.get(current_key));
                let remaining = rate::remaining(rpm, previous, current, pos);
                if rpm_binding.is_none_or(|r| remaining < r) {
                    rpm_binding = Some(remaining);
                    rate_headers.rpm_limit = rpm;
                    rate_headers.rpm_remaining = remaining;
                }
                // Judged from the counters read, for when another limit refuses too (nothing is
                // counted for a refused request); else decided by the conditional add.
                if current >= rate::current_ceiling(rpm, previous, pos) {
                    rpm_refusals.push((index, rpm, previous, current));
                }
                requests.push(Add {
                    limit: rate::current_ceiling(rpm, previous, pos),
                    key: current_key.clone(),
                    amount: 1,
                    why: Why::Request {
                        scope: index,
                        rpm,
                        previous,
                        pos,
                    },
                });
            }
            let used = values.get(&keys.tokens);
            if let Some(limit) = rules.tokens {
                let remaining = limit.saturating_sub(used);
                if tokens_binding.is_none_or(|r| remaining < r) {
                    tokens_binding = Some(remaining);
                    rate_headers.tokens_limit = Some(limit);
                    rate_headers.tokens_remaining = Some(remaining);
                }
                if used >= limit {
                    refusals.push((
                        index,
                        Rejection::tokens_exceeded(
                            rules.tokens_period.kind == PeriodKind::Day,
                            rules.reason(tokens_text(&rules.tokens_period, used, limit)),
                            keys.tokens_period.end.saturating_sub(now),
                        ),
                    ));
                }
            }
            if let (Some(tpm), Some((previous_key, current_key))) = (rules.tpm, &keys.tpm) {
                let (previous, current) = (values.get(previous_key), values.get(current_key));
                let in_window = rate::window_count(previous, current, pos);
                if in_window >= tpm {
                    refusals.push((
                        index,
                        Rejection::tpm_exceeded(
                            rules.reason(format!(
                                "TPM limit exceeded: {in_window} tokens in the last 60 s, limit {tpm}"
                            )),
                            rate::retry_after_secs(tpm, previous, current, pos),
                        ),
                    ));
                }
            }
            let (Some(call), Some(m)) = (self.call, &keys.money) else {
                continue;
            };
            let to_period_end = m.period.end.saturating_sub(now);
            let spent = values.get(&m.spend);
            if let Some(budget) = rules.budget_micros {
                let reserved = values.get(&m.reserved);
                if !budget::within_budget(spent, reserved, incoming, budget) {
                    let period = &rules.budget_period;
                    match rules.on_breach {
                        OnBreach::Block => refusals.push((
                            index,
                            Rejection::budget_exceeded(
                                budget::exceeded_kind(period),
                                rules.reason(budget::exceeded_reason(
                                    period,
                                    spent.saturating_add(reserved),
                                    budget,
                                )),
                                RateHeaders::default(),
                                to_period_end,
                            ),
                        )),
                        OnBreach::Warn => {
                            admitted.overruns.push(rules.scope.clone());
                            admitted.warning.get_or_insert(
                                rules.reason(budget::exceeded_reason(period, spent, budget)),
                            );
                        }
                    }
                }
                // A scope that only warns is never refused for money, so it reserves nothing
                // (a reservation past its budget would refuse).
                if incoming > 0 && rules.on_breach == OnBreach::Block {
                    reservations.push(Add {
                        key: m.reserved.clone(),
                        amount: incoming,
                        // Atomic among concurrent admissions: reservations never pass what is left.
                        limit: budget.saturating_sub(spent),
                        why: Why::Reservation {
                            scope: index,
                            spent,
                            budget,
                            retry_after: to_period_end,
                        },
                    });
                }
            }
            let spent_on_model = values.get(&m.model);
            if let Some(&cap) = rules.model_caps.get(call.model)
                && spent_on_model >= cap
            {
                let reason = rules.reason(budget::model_exceeded_reason(
                    &rules.budget_period,
                    call.model,
                    spent_on_model,
                    cap,
                ));
                match rules.on_breach {
                    OnBreach::Block => refusals.push((
                        index,
                        Rejection::budget_exceeded(
                            RejectionKind::ModelBudgetExceeded,
                            reason,
                            RateHeaders::default(),
                            to_period_end,
                        ),
                    )),
                    OnBreach::Warn => {
                        admitted.warning.get_or_insert(reason);
                    }
                }
            }
        }
        if !refusals.is_empty() {
            for (index, rpm, previous, current) in rpm_refusals {
                let mut headers = rate_headers;
                headers.rpm_remaining = 0;
                headers.rpm_limit = rpm;
                refusals.push((
                    index,
                    self.rpm_refusal(index, headers, rpm, previous, current, pos),
                ));
            }
            return Decision::Refused(self.chosen(refusals, rate_headers));
        }
        // A budget or cap already over (warn mode) is the warning; else a threshold reached is.
        if admitted.warning.is_none() {
            for (rules, keys) in self.scopes.iter().map(|r| (r, self.keys(r))) {
                let (Some(budget), Some(m)) = (rules.budget_micros, keys.money) else {
                    continue;
                };
                let spent = values.get(&m.spend);
                if let Some(threshold) =
                    budget::crossed_threshold(spent, budget, self.warn_at_percent)
                {
                    admitted
                        .warning
                        .get_or_insert(rules.reason(budget::warning_text(
                            &rules.budget_period,
                            threshold,
                            spent,
                            budget,
                        )));
                }
            }
        }
        admitted.adds = reservations;
        admitted.adds.extend(requests);
        admitted.rate = rate_headers;
        Decision::Admitted(admitted)
    }

    /// Every budget threshold the spend read has reached, in every scope of a model call,
    /// whatever [`Facts::decide`] makes of the request: a budget just reached refuses (block
    /// mode) or only warns, and its 100 % must be reported either way; a call that jumps past
    /// several thresholds reaches each. The engine reports each once per scope, period and
    /// threshold (its marker). A zero budget has no percentages and reaches none.
    pub fn crossings(&self, values: &Values) -> Vec<Crossing> {
        let mut crossings = Vec::new();
        for (rules, keys) in self.scopes.iter().map(|r| (r, self.keys(r))) {
            let (Some(budget @ 1..), Some(m)) = (rules.budget_micros, keys.money) else {
                continue;
            };
            let spent = values.get(&m.spend);
            for &threshold in self.warn_at_percent {
                if budget::crossed_threshold(spent, budget, &[threshold]).is_none() {
                    continue;
                }
                crossings.push(Crossing {
                    scope: rules.scope.clone(),
                    marker: CounterKey::new(
                        rules.scope.clone(),
                        Counted::Warned(m.period.key, threshold),
                    ),
                    period: m.period,
                    time_zone: rules
                        .budget_period
                        .time_zone
                        .iana_name()
                        .unwrap_or("UTC")
                        .to_owned(),
                    threshold,
                    spent_micros: spent,
                    budget_micros: budget,
                });
            }
        }
        crossings
    }

    fn rpm_refusal(
        &self,
        index: usize,
        headers: RateHeaders,
        rpm: u64,
        previous: u64,
        current: u64,
        pos: WindowPosition,
    ) -> Rejection {
        let mut refusal = Rejection::rpm_exceeded(
            rate::window_count(previous, current, pos),
            headers,
            rate::retry_after_secs(rpm, previous, current, pos),
        );
        refusal.reason = self.scopes[index].reason(refusal.reason);
        refusal
    }

    /// The refusal to give, with the rate headers of the request and the scope that refused.
    fn chosen(&self, refusals: Vec<(usize, Rejection)>, rate: RateHeaders) -> Rejection {
        let refusals = refusals.into_iter().map(|(index, mut r)| {
            r.scope = Some(self.scopes[index].scope.label());
            if r.kind != RejectionKind::RpmExceeded {
                r.rate = Some(rate);
            }
            r
        });
        decision::lasting_longest(refusals.collect()).expect("at least one refusal")
    }
}

impl Admitted {
    /// The refusal when `add` was refused, the counter then holding `value`.
    pub fn refused(&self, facts: &Facts<'_>, add: &Add, value: u64) -> Rejection {
        match add.why {
            Why::Reservation {
                scope,
                spent,
                budget,
                retry_after,
            } => {
                let rules = &facts.scopes[scope];
                facts.chosen(
                    vec![(
                        scope,
                        Rejection::budget_exceeded(
                            budget::exceeded_kind(&rules.budget_period),
                            rules.reason(budget::exceeded_reason(
                                &rules.budget_period,
                                spent.saturating_add(value),
                                budget,
                            )),
                            RateHeaders::default(),
                            retry_after,
                        ),
                    )],
                    self.rate,
                )
            }
            Why::Request {
                scope,
                rpm,
                previous,
                pos,
            } => {
                let mut headers = self.rate;
                headers.rpm_remaining = 0;
                headers.rpm_limit = rpm;
                facts.chosen(
                    vec![(
                        scope,
                        facts.rpm_refusal(scope, headers, rpm, previous, value, pos),
                    )],
                    self.rate,
                )
            }
        }
    }

    /// Records that `add` was applied, the counter now holding `value`: the RPM headers report
    /// the scope with the fewest requests left.
    pub fn applied(&mut self, add: &Add, value: u64) {
        if let Why::Request {
            rpm, previous, pos, ..
        } = add.why
        {
            let remaining = rate::remaining(rpm, previous, value, pos);
            if !self.counted_rpm || remaining < self.rate.rpm_remaining {
                self.rate.rpm_limit = rpm;
                self.rate.rpm_remaining = remaining;
            }
            self.counted_rpm = true;
        }
    }
}

fn tokens_text(period: &PeriodRule, used: u64, limit: u64) -> String {
    let (name, when) = period.names();
    format!("{name} token limit exceeded ({used}/{limit} tokens {when})")
}

#[cfg(test)]
mod tests;
