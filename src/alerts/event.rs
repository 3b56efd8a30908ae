//! What an alert says. A budget threshold event names its scope, its period, the threshold and
//! the spend against the budget; its id is derived from (scope, period, threshold) alone, so every
//! instance that could send it, and every retry, carries the same id (the receiver's
//! deduplication key).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::policy::admission::Crossing;
use crate::policy::budget;
use crate::policy::calendar;
use crate::policy::counters::{self, PeriodKind};

/// The `type` of a budget threshold event.
pub const BUDGET_THRESHOLD: &str = "budget.threshold_crossed";

/// Whose budget it is: `org`, `team`, `user` or `project`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub kind: String,
    pub id: String,
    /// The team a user or project belongs to (user and project ids are unique per team only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// For people: `team platform`, `user alice in team platform`.
    pub label: String,
}

impl Scope {
    pub fn of(scope: &counters::Scope) -> Self {
        let team = match scope {
            counters::Scope::User { team, .. } | counters::Scope::Project { team, .. } => {
                Some(team.clone())
            }
            counters::Scope::Org | counters::Scope::Team(_) => None,
        };
        Self {
            kind: scope.kind().into(),
            id: scope.id().into(),
            team,
            label: scope.label(),
        }
    }
}

/// The budget period a threshold was reached in: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// `day`, `week` or `month`.
    pub name: String,
    /// The period's name in counters (`2026-11`, `week-2026-11-23`, `month-2026-11-15`).
    pub key: String,
    /// IANA name of the zone whose midnights bound the period.
    pub time_zone: String,
    /// RFC 3339, UTC.
    pub start: String,
    pub end: String,
}

impl Period {
    pub fn of(period: &calendar::Period, time_zone: &str) -> Self {
        Self {
            name: match period.key.kind {
                PeriodKind::Day => "day",
                PeriodKind::Week => "week",
                PeriodKind::Month => "month",
            }
            .into(),
            key: period.key.render(),
            time_zone: time_zone.into(),
            start: rfc3339(period.start),
            end: rfc3339(period.end),
        }
    }
}

pub fn rfc3339(unix_secs: u64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// One alert, as sent (the JSON body) and as kept in the outbox and the dead-letter log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Stable per (type, scope, period, threshold): deduplicate on it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: Scope,
    pub period: Period,
    pub threshold_percent: u8,
    /// Spend and budget when the crossing was seen, in micro-dollars and dollars.
    pub spent_micros: u64,
    pub spent_usd: f64,
    pub budget_micros: u64,
    pub budget_usd: f64,
    /// When the crossing was seen (RFC 3339).
    pub crossed_at: String,
}

impl AlertEvent {
    /// The alert for a threshold admission found reached, seen at `at` (Unix seconds).
    pub fn budget_threshold(crossing: &Crossing, at: u64) -> Self {
        Self {
            // The marker names the scope, the period and the threshold: one event per marker.
            id: event_id(&[BUDGET_THRESHOLD, &crossing.marker.id()]),
            kind: BUDGET_THRESHOLD.into(),
            scope: Scope::of(&crossing.scope),
            period: Period::of(&crossing.period, &crossing.time_zone),
            threshold_percent: crossing.threshold,
            spent_micros: crossing.spent_micros,
            spent_usd: budget::json_usd(crossing.spent_micros),
            budget_micros: crossing.budget_micros,
            budget_usd: budget::json_usd(crossing.budget_micros),
            crossed_at: rfc3339(at),
        }
    }
}

/// `evt_` and 32 hex digits of SHA-256 over the parts (length-prefixed, so no two part lists
/// collide).
fn event_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    format!("evt_{}", &hex::encode(hash.finalize())[..32])
}

/// A team's crossing of `threshold` in the UTC month around `at`, for tests.
#[cfg(test)]
pub fn team_crossing(team: &str, threshold: u8, spent: u64, budget: u64, at: u64) -> Crossing {
    use counters::{Counted, CounterKey};
    let scope = counters::Scope::Team(team.into());
    let period = calendar::PeriodRule::utc_month().containing(at);
    Crossing {
        marker: CounterKey::new(scope.clone(), Counted::Warned(period.key, threshold)),
        scope,
        period,
        time_zone: "UTC".into(),
        threshold,
        spent_micros: spent,
        budget_micros: budget,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-30T03:00:00Z
    const AT: u64 = 1_796_007_600;

    #[test]
    fn the_month_period_spans_the_utc_calendar_month() {
        let p = AlertEvent::budget_threshold(&team_crossing("t", 80, 1, 2, AT), AT).period;
        assert_eq!((p.name.as_str(), p.key.as_str()), ("month", "2026-11"));
        assert_eq!(p.start, "2026-11-01T00:00:00Z");
        assert_eq!(p.end, "2026-12-01T00:00:00Z");
        assert_eq!(p.time_zone, "UTC");
    }

    #[test]
    fn a_user_scope_names_its_team() {
        let s = Scope::of(&counters::Scope::User {
            team: "platform".into(),
            user: "alice".into(),
        });
        assert_eq!((s.kind.as_str(), s.id.as_str()), ("user", "alice"));
        assert_eq!(s.team.as_deref(), Some("platform"));
        assert_eq!(s.label, "user alice in team platform");
    }

    #[test]
    fn the_id_depends_on_scope_period_and_threshold_only() {
        let event = |threshold, spent, at| {
            AlertEvent::budget_threshold(
                &team_crossing("platform", threshold, spent, 1_000, at),
                at,
            )
        };
        let a = event(80, 800, AT);
        assert_eq!(a.id, event(80, 950, AT + 60).id);
        assert!(a.id.starts_with("evt_") && a.id.len() == 36, "{}", a.id);
        assert_ne!(a.id, event(100, 800, AT).id);
        assert_ne!(a.id, event(80, 800, AT + 31 * 86_400).id, "next month");
        assert_ne!(
            a.id,
            AlertEvent::budget_threshold(&team_crossing("other", 80, 800, 1_000, AT), AT).id
        );
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["type"], "budget.threshold_crossed");
        assert_eq!(json["scope"]["label"], "team platform");
        assert!(json["scope"].get("team").is_none());
        assert_eq!(json["crossed_at"], "2026-11-30T03:00:00Z");
    }
}
