//! Administration: teams, budgets, model caps, prices and usage. One service, reached over HTTP
//! (`http.rs`, behind the admin scope) or directly by `tollgate admin --offline`. State lives in
//! the store; each write clears this instance's caches so it applies on the next request, and
//! other instances see it within `policy.team_cache_ttl_seconds`.

pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Engine, Member};
use crate::policy::admission::ScopeRules;
use crate::policy::budget::{OnBreach, json_usd};
use crate::policy::calendar::Period;
use crate::policy::pricing::{PriceUsd, normalise_model};
use crate::policy::{FieldError, Rejection, ScopeLimits, Team, calendar, rate};
use crate::store::{Counted, CounterKey, Debit, Increment, PeriodKey, Scope, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{}", .0.message)]
    Invalid(FieldError),
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
}

fn invalid(field: &str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid(FieldError {
        field: field.to_owned(),
        message: message.into(),
    })
}

/// A partial budget change: fields left out stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetUpdate {
    pub monthly_budget_usd: Option<f64>,
    pub on_breach: Option<OnBreach>,
    /// Replaces the caps; a cap of `null` removes that model's cap.
    pub model_caps: Option<BTreeMap<String, Option<f64>>>,
}

/// Which scope an admin call is about.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeTarget {
    Org,
    Team(String),
    User { team: String, user: String },
    Project { team: String, project: String },
}

impl ScopeTarget {
    fn scope(&self) -> Scope {
        match self.clone() {
            ScopeTarget::Org => Scope::Org,
            ScopeTarget::Team(team) => Scope::Team(team),
            ScopeTarget::User { team, user } => Scope::User { team, user },
            ScopeTarget::Project { team, project } => Scope::Project { team, project },
        }
    }
}

/// A team's users or projects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberKind {
    User,
    Project,
}

impl MemberKind {
    fn name(self) -> &'static str {
        match self {
            MemberKind::User => "user",
            MemberKind::Project => "project",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdjustedCounter {
    /// USD spent in a budget period.
    Spend,
    /// Tokens used in a token period.
    Tokens,
}

/// `POST /admin/adjustments`: reset a counter or add to it (negative to take off).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    /// Chosen by the client: the same id is applied once, however often it is sent.
    pub id: String,
    /// `"org"`, `{"team": "platform"}`, `{"user": {"team": "platform", "user": "alice"}}`,
    /// `{"project": {"team": "platform", "project": "search"}}`.
    pub scope: ScopeTarget,
    pub counter: AdjustedCounter,
    /// The period's key (`2026-11`, `week-2026-11-23`); absent: the current period.
    #[serde(default)]
    pub period: Option<String>,
    /// Set the counter to zero.
    #[serde(default)]
    pub reset: bool,
    /// USD for spend, tokens for tokens; negative takes off.
    #[serde(default)]
    pub add: Option<f64>,
    /// Why: goes into the audit log.
    pub reason: String,
}

fn scope_json(scope: &Scope) -> Value {
    let mut out = json!({"kind": scope.kind(), "id": scope.id(), "label": scope.label()});
    if let Scope::User { team, .. } | Scope::Project { team, .. } = scope {
        out["team"] = json!(team);
    }
    out
}

fn period_json(period: &Period) -> Value {
    json!({"key": period.key.render(), "start": period.start, "end": period.end})
}

/// Months of spend history reported by [`Admin::usage`].
const HISTORY_MONTHS: usize = 12;

#[derive(Clone)]
pub struct Admin {
    engine: Arc<Engine>,
}

impl Admin {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }

    pub async fn list_teams(&self) -> Result<Vec<Team>, AdminError> {
        Ok(self.engine.store().list_teams().await?)
    }

    pub async fn team(&self, id: &str) -> Result<Team, AdminError> {
        self.engine
            .store()
            .team(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("team {id:?} does not exist")))
    }

    pub async fn create_team(&self, team: Team) -> Result<Team, AdminError> {
        if self.engine.store().team(&team.id).await?.is_some() {
            return Err(AdminError::Conflict(format!(
                "team {:?} already exists",
                team.id
            )));
        }
        self.save(team).await
    }

    /// Creates or replaces the team `id`.
    pub async fn put_team(&self, id: &str, team: Team) -> Result<Team, AdminError> {
        if team.id != id {
            return Err(invalid(
                "id",
                format!("body id {:?} does not match the path's {id:?}", team.id),
            ));
        }
        self.save(team).await
    }

    pub async fn delete_team(&self, id: &str) -> Result<(), AdminError> {
        if !self.engine.store().delete_team(id).await? {
            return Err(AdminError::NotFound(format!("team {id:?} does not exist")));
        }
        self.engine.invalidate_caches();
        Ok(())
    }

    pub async fn set_budget(&self, id: &str, update: BudgetUpdate) -> Result<Team, AdminError> {
        let mut team = self.team(id).await?;
        if let Some(usd) = update.monthly_budget_usd {
            team.monthly_budget_usd = Some(usd);
        }
        if let Some(on_breach) = update.on_breach {
            team.on_breach = on_breach;
        }
        if let Some(caps) = update.model_caps {
            for (model, cap) in caps {
                match cap {
                    Some(usd) => team.model_caps.insert(normalise_model(&model), usd),
                    None => team.model_caps.remove(&normalise_model(&model)),
                };
            }
        }
        self.save(team).await
    }

    async fn save(&self, team: Team) -> Result<Team, AdminError> {
        let team = team.validated().map_err(AdminError::Invalid)?;
        let store = self.engine.store();
        for other in store.list_teams().await? {
            if other.id == team.id {
                continue;
            }
            if let Some(client) = team
                .client_ids
                .iter()
                .find(|c| other.client_ids.contains(c))
            {
                return Err(invalid(
                    "client_ids",
                    format!(
                        "client_id {client:?} already belongs to team {:?}",
                        other.id
                    ),
                ));
            }
        }
        store.put_team(&team).await?;
        self.engine.invalidate_caches();
        tracing::info!(team = %team.id, "team saved");
        Ok(team)
    }

    /// A team's consumption now: requests in the RPM window, tokens today, spend this month per
    /// model, and spend in recent months.
    pub async fn usage(&self, id: &str) -> Result<Value, AdminError> {
        let team = self.team(id).await?;
        let limits = self.engine.tiers().limits_for(&team);
        let now_ms = self.engine.now_ms();
        let now = now_ms / 1000;
        let pos = rate::WindowPosition::at(now_ms);
        let month = calendar::month_key(now);
        let store = self.engine.store();
        let scope = Scope::Team(id.to_owned());
        let day = calendar::PeriodRule::utc_day().containing(now).key;
        let counters = store
            .read_counters(&[
                &CounterKey::new(
                    scope.clone(),
                    Counted::Requests {
                        minute: pos.bucket - 1,
                    },
                ),
                &CounterKey::new(scope.clone(), Counted::Requests { minute: pos.bucket }),
                &CounterKey::new(scope.clone(), Counted::Tokens(day)),
            ])
            .await?;
        let in_window = rate::window_count(counters[0], counters[1], pos);
        let mut this_month = 0;
        let mut by_model = serde_json::Map::new();
        let mut months = BTreeMap::new();
        for (counter, micros) in store.list_counters(&scope, "spend#").await? {
            match counter {
                Counted::Spend(period) => {
                    let m = period.render();
                    if m == month {
                        this_month = micros;
                    }
                    months.insert(m, micros);
                }
                Counted::ModelSpend(period, model) if period.render() == month => {
                    by_model.insert(model, json!(json_usd(micros)));
                }
                _ => {}
            }
        }
        let recent: Vec<Value> = months
            .iter()
            .rev()
            .take(HISTORY_MONTHS)
            .map(|(m, micros)| json!({"month": m, "usd": json_usd(*micros)}))
            .collect();
        Ok(json!({
            "team": team.id,
            "tier": team.tier,
            "rpm": {"limit": limits.rpm, "used": in_window},
            "tokens_today": {"used": counters[2], "limit": limits.daily_tokens},
            "spend_this_month": {
                "month": month,
                "usd": json_usd(this_month),
                "budget_usd": json_usd(limits.monthly_budget_micros),
                "by_model": by_model,
            },
            "recent_months": recent,
        }))
    }

    /// Sets (`Some`) or removes (`None`) the limits of one user or project of a team.
    pub async fn set_member_limits(
        &self,
        team_id: &str,
        member: MemberKind,
        id: &str,
        limits: Option<ScopeLimits>,
    ) -> Result<Team, AdminError> {
        let mut team = self.team(team_id).await?;
        let map = match member {
            MemberKind::User => &mut team.users,
            MemberKind::Project => &mut team.projects,
        };
        match limits {
            Some(limits) => {
                map.insert(id.to_owned(), limits);
            }
            None => {
                if map.remove(id).is_none() {
                    return Err(AdminError::NotFound(format!(
                        "team {team_id:?} has no {} {id:?}",
                        member.name()
                    )));
                }
            }
        }
        self.save(team).await
    }

    /// The rules in force for one scope (a team's user or project need not be listed in the
    /// team: users inherit the defaults; an unlisted project has none and is refused).
    async fn scope_rules(&self, target: &ScopeTarget) -> Result<ScopeRules, AdminError> {
        let team_id = match target {
            ScopeTarget::Org => {
                return self
                    .engine
                    .org_rules()
                    .ok_or_else(|| AdminError::NotFound("no [org] limits are configured".into()));
            }
            ScopeTarget::Team(team)
            | ScopeTarget::User { team, .. }
            | ScopeTarget::Project { team, .. } => team,
        };
        let team = self.team(team_id).await?;
        let member = Member {
            team: &team,
            user: match target {
                ScopeTarget::User { user, .. } => Some(user.as_str()),
                _ => None,
            },
            project: match target {
                ScopeTarget::Project { project, .. } => Some(project.as_str()),
                _ => None,
            },
        };
        let chain = self
            .engine
            .scope_chain(member)
            .map_err(|e| AdminError::NotFound(Rejection::from(e).reason))?;
        let scope = target.scope();
        chain
            .into_iter()
            .find(|rules| rules.scope == scope)
            .ok_or_else(|| AdminError::NotFound(format!("no {}", scope.label())))
    }

    /// One scope's consumption: its RPM and TPM windows, tokens and spend in the current periods
    /// (spend by model too), its limits, and the spend and tokens of every period still stored.
    pub async fn scope_usage(&self, target: &ScopeTarget) -> Result<Value, AdminError> {
        let rules = self.scope_rules(target).await?;
        let scope = rules.scope.clone();
        let now_ms = self.engine.now_ms();
        let now = now_ms / 1000;
        let pos = rate::WindowPosition::at(now_ms);
        let tokens_period = rules.tokens_period.containing(now);
        let budget_period = rules.budget_period.containing(now);
        let key = |counted| CounterKey::new(scope.clone(), counted);
        let store = self.engine.store();
        let values = store
            .read_counters(&[
                &key(Counted::Requests {
                    minute: pos.bucket - 1,
                }),
                &key(Counted::Requests { minute: pos.bucket }),
                &key(Counted::TokensInMinute {
                    minute: pos.bucket - 1,
                }),
                &key(Counted::TokensInMinute { minute: pos.bucket }),
                &key(Counted::Tokens(tokens_period.key)),
                &key(Counted::Spend(budget_period.key)),
                &key(Counted::Reserved(budget_period.key)),
            ])
            .await?;
        let mut by_model = serde_json::Map::new();
        let mut spend_history = Vec::new();
        for (counter, micros) in store.list_counters(&scope, "spend#").await? {
            match counter {
                Counted::Spend(period) => {
                    spend_history.push(json!({"period": period.render(), "usd": json_usd(micros)}))
                }
                Counted::ModelSpend(period, model) if period == budget_period.key => {
                    by_model.insert(model, json!(json_usd(micros)));
                }
                _ => {}
            }
        }
        let tokens_history: Vec<Value> = store
            .list_counters(&scope, "tokens#")
            .await?
            .into_iter()
            .filter_map(|(counter, tokens)| match counter {
                Counted::Tokens(period) => {
                    Some(json!({"period": period.render(), "tokens": tokens}))
                }
                _ => None,
            })
            .collect();
        spend_history.reverse();
        Ok(json!({
            "scope": scope_json(&scope),
            "rpm": {"limit": rules.rpm, "used": rate::window_count(values[0], values[1], pos)},
            "tpm": {"limit": rules.tpm, "used": rate::window_count(values[2], values[3], pos)},
            "tokens": {
                "period": period_json(&tokens_period),
                "used": values[4],
                "limit": rules.tokens,
            },
            "spend": {
                "period": period_json(&budget_period),
                "usd": json_usd(values[5]),
                "reserved_usd": json_usd(values[6]),
                "budget_usd": rules.budget_micros.map(json_usd),
                "on_breach": rules.on_breach,
                "by_model": by_model,
            },
            "spend_history": spend_history,
            "tokens_history": tokens_history,
        }))
    }

    /// Resets or adjusts one counter of a scope (its spend or tokens in a period), once per
    /// client-supplied id: a retry with the same id changes nothing and says so. Audited: who,
    /// when, why, and the value before and after, in the log (`tollgate::audit`).
    pub async fn adjust(&self, who: &str, request: Adjustment) -> Result<Value, AdminError> {
        let Adjustment {
            id,
            scope: target,
            counter,
            period,
            reset,
            add,
            reason,
        } = request;
        if id.trim().is_empty() || id.len() > 200 {
            return Err(invalid("id", "id must be 1-200 characters"));
        }
        if reason.trim().is_empty() {
            return Err(invalid("reason", "say why (it goes into the audit log)"));
        }
        let amount = match (reset, add) {
            (true, None) => None,
            (false, Some(add)) if add.is_finite() => Some(add),
            (false, Some(_)) => return Err(invalid("add", "add must be a number")),
            _ => return Err(invalid("reset", "give either reset = true or add")),
        };
        let rules = self.scope_rules(&target).await?;
        let scope = rules.scope.clone();
        let now = self.engine.now_ms() / 1000;
        let rule = match counter {
            AdjustedCounter::Spend => &rules.budget_period,
            AdjustedCounter::Tokens => &rules.tokens_period,
        };
        let period = match period {
            None => rule.containing(now).key,
            Some(text) => PeriodKey::parse(&text).ok_or_else(|| {
                invalid("period", format!("{text:?} is not a period (2026-11, 2026-11-21, week-2026-11-23, month-2026-11-15)"))
            })?,
        };
        let key = CounterKey::new(
            scope.clone(),
            match counter {
                AdjustedCounter::Spend => Counted::Spend(period),
                AdjustedCounter::Tokens => Counted::Tokens(period),
            },
        );
        let store = self.engine.store();
        let marker = CounterKey::adjustment(scope.clone(), &id, now);
        if let Increment::Refused(_) = store.add_within(&marker, 1, 1).await? {
            return Ok(json!({"id": id, "applied": false, "already_applied": true}));
        }
        let before = store.read_counters(&[&key]).await?[0];
        let delta: i64 = match (amount, counter) {
            (None, _) => -(before as i64),
            (Some(usd), AdjustedCounter::Spend) => (usd * 1e6).round() as i64,
            (Some(tokens), AdjustedCounter::Tokens) => tokens.round() as i64,
        };
        let mut amounts = vec![(key.clone(), delta)];
        if reset && counter == AdjustedCounter::Spend {
            // A reset period has no spend on any model either (model caps start over too).
            let prefix = format!("{}#", key.name());
            for (counted, value) in store.list_counters(&scope, &prefix).await? {
                amounts.push((CounterKey::new(scope.clone(), counted), -(value as i64)));
            }
        }
        let debit = Debit {
            id: format!("adjustment~{id}"),
            amounts,
        };
        if let Err(e) = store.apply_debits(&[debit]).await {
            // Not applied: let the same id be tried again.
            let _ = store
                .apply_debits(&[Debit {
                    id: format!("adjustment~{id}~undo"),
                    amounts: vec![(marker, -1)],
                }])
                .await;
            return Err(e.into());
        }
        self.engine.invalidate_caches();
        let after = (before as i64).saturating_add(delta).max(0) as u64;
        let shown = |v: u64| match counter {
            AdjustedCounter::Spend => json!(json_usd(v)),
            AdjustedCounter::Tokens => json!(v),
        };
        tracing::info!(
            target: "tollgate::audit",
            admin = who,
            adjustment = %id,
            scope = %scope.label(),
            counter = %key.name(),
            before,
            after,
            reason = %reason,
            at = now,
            "counter adjusted"
        );
        metrics::counter!("tollgate_admin_adjustments_total", "scope" => scope.kind()).increment(1);
        Ok(json!({
            "id": id,
            "applied": true,
            "by": who,
            "at": now,
            "reason": reason,
            "scope": scope_json(&scope),
            "counter": key.name(),
            "before": shown(before),
            "after": shown(after),
        }))
    }

    pub async fn prices(&self) -> Result<Value, AdminError> {
        let table = self.engine.price_table().await;
        let prices: serde_json::Map<String, Value> = table
            .iter()
            .map(|(model, price, source)| {
                let mut entry = serde_json::to_value(price.to_usd()).expect("prices serialize");
                entry["source"] = json!(source);
                (model.to_owned(), entry)
            })
            .collect();
        Ok(json!({"prices": prices}))
    }

    pub async fn put_price(&self, model: &str, price: PriceUsd) -> Result<Value, AdminError> {
        let canonical = normalise_model(model);
        if canonical.is_empty() {
            return Err(invalid("model", "model name is empty"));
        }
        price
            .to_price()
            .map_err(|(field, message)| invalid(field, message))?;
        self.engine.store().put_price(&canonical, &price).await?;
        self.engine.invalidate_caches();
        tracing::info!(model = %canonical, ?price, "price set");
        Ok(json!({"model": canonical, "price": price, "source": "admin"}))
    }

    pub async fn delete_price(&self, model: &str) -> Result<(), AdminError> {
        let canonical = normalise_model(model);
        if !self.engine.store().delete_price(&canonical).await? {
            return Err(AdminError::NotFound(format!(
                "no admin price for {canonical:?}"
            )));
        }
        self.engine.invalidate_caches();
        Ok(())
    }
}
