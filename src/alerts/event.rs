//! What an alert says. A budget threshold event names its scope, its period, the threshold and
//! the spend against the budget; its id is derived from (scope, period, threshold) alone, so every
//! instance that could send it, and every retry, carries the same id (the receiver's
//! deduplication key).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::policy::budget;

/// The `type` of a budget threshold event.
pub const BUDGET_THRESHOLD: &str = "budget.threshold_crossed";

/// Who a budget belongs to: `team` today; `org`, `user` and `project` as scopes arrive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub kind: String,
    pub id: String,
    /// For people: `team platform`, `user alice in team platform`.
    pub label: String,
}

impl Scope {
    pub fn team(id: &str) -> Self {
        Self {
            kind: "team".into(),
            id: id.into(),
            label: format!("team {id}"),
        }
    }
}

/// The budget period a threshold was crossed in: `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// `month` today; `week`, `day` as budget periods arrive.
    pub name: String,
    /// Identifies the period within its kind (`2026-11`); part of the event id.
    pub key: String,
    pub time_zone: String,
    /// RFC 3339.
    pub start: String,
    pub end: String,
}

impl Period {
    /// The UTC calendar month around `at` (Unix seconds), keyed `YYYY-MM` like the spend counter.
    pub fn utc_month(at: u64) -> Self {
        let start = month_start(at);
        let end = crate::policy::calendar::next_month_start(at);
        Self {
            name: "month".into(),
            key: crate::policy::calendar::month_key(at),
            time_zone: "UTC".into(),
            start: rfc3339(start),
            end: rfc3339(end),
        }
    }
}

/// The first second of the UTC month around `at`.
fn month_start(at: u64) -> u64 {
    let date = crate::policy::calendar::utc_date(at);
    at - at % 86_400 - (u64::from(date.day()) - 1) * 86_400
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
    pub fn budget_threshold(
        scope: Scope,
        period: Period,
        threshold_percent: u8,
        spent_micros: u64,
        budget_micros: u64,
        at: u64,
    ) -> Self {
        let id = event_id(&[
            BUDGET_THRESHOLD,
            &scope.kind,
            &scope.id,
            &period.name,
            &period.key,
            &threshold_percent.to_string(),
        ]);
        Self {
            id,
            kind: BUDGET_THRESHOLD.into(),
            scope,
            period,
            threshold_percent,
            spent_micros,
            spent_usd: budget::json_usd(spent_micros),
            budget_micros,
            budget_usd: budget::json_usd(budget_micros),
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

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-30T03:00:00Z
    const AT: u64 = 1_796_007_600;

    #[test]
    fn the_month_period_spans_the_utc_calendar_month() {
        let p = Period::utc_month(AT);
        assert_eq!(p.key, "2026-11");
        assert_eq!(p.start, "2026-11-01T00:00:00Z");
        assert_eq!(p.end, "2026-12-01T00:00:00Z");
        let first = Period::utc_month(1_793_491_200); // 2026-11-01T00:00:00Z
        assert_eq!(first, p);
    }

    #[test]
    fn the_id_depends_on_scope_period_and_threshold_only() {
        let at = |spent, at| {
            AlertEvent::budget_threshold(
                Scope::team("platform"),
                Period::utc_month(at),
                80,
                spent,
                1_000,
                at,
            )
        };
        let a = at(800, AT);
        assert_eq!(a.id, at(950, AT + 60).id);
        assert!(a.id.starts_with("evt_") && a.id.len() == 36, "{}", a.id);
        let other_threshold = AlertEvent::budget_threshold(
            Scope::team("platform"),
            Period::utc_month(AT),
            100,
            800,
            1_000,
            AT,
        );
        assert_ne!(a.id, other_threshold.id);
        assert_ne!(a.id, at(800, AT + 31 * 86_400).id, "next month");
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["type"], "budget.threshold_crossed");
        assert_eq!(json["scope"]["label"], "team platform");
        assert_eq!(json["crossed_at"], "2026-11-30T03:00:00Z");
    }
}
