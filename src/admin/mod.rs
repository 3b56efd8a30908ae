//! Administration: teams, budgets, model caps, prices and usage. One service, reached over HTTP
//! (`http.rs`, behind the admin scope) or directly by `tollgate admin --offline`. State lives in
//! the store; each write clears this instance's caches so it applies on the next request, and
//! other instances see it within `policy.team_cache_ttl_seconds`.

pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::Engine;
use crate::policy::budget::{OnBreach, json_usd};
use crate::policy::pricing::{PriceUsd, normalise_model};
use crate::policy::{FieldError, Team, calendar, rate};
use crate::store::{Counted, CounterKey, Scope, StoreError};

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
