//! Monthly USD budgets and per-model caps, in micro-dollars. Spend is debited after each response
//! with its actual cost; admission compares the spend so far (plus, optionally, the cost already
//! reserved by requests in flight) with the budget.

use serde::{Deserialize, Serialize};

use super::calendar::PeriodRule;
use super::counters::PeriodKind;
use super::decision::RejectionKind;
use super::pricing::usd;

/// What happens when a team is over budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBreach {
    /// Refuse the team's requests (429) until the month rolls over or the budget is raised.
    #[default]
    Block,
    /// Let requests through, flagged with a warning header, log line and metric.
    Warn,
}

/// Decimals needed to write `micros` exactly in dollars: at least 2 (cents), at most 6.
fn decimals_of(micros: u64) -> u32 {
    (2..6)
        .find(|&d| micros.is_multiple_of(10u64.pow(6 - d)))
        .unwrap_or(6)
}

/// `$12.34` with `decimals` decimals (2 to 6), rounded up, so a spend just over a limit never
/// prints as equal to it.
fn dollars_at(micros: u64, decimals: u32) -> String {
    let unit = 10u64.pow(6 - decimals);
    let units = micros.div_ceil(unit);
    let per_dollar = 10u64.pow(decimals);
    format!(
        "${}.{:0width$}",
        units / per_dollar,
        units % per_dollar,
        width = decimals as usize
    )
}

/// `($spent/$limit)`, both at the precision the limit was configured with (cents at least): a
/// $0.001 cap reads `($0.001/$0.001)`, not `($0.01/$0.01)`. A spend below the limit that would
/// print as equal to it gets more decimals instead.
fn spent_of_limit(spent: u64, limit: u64) -> String {
    let mut decimals = decimals_of(limit);
    while decimals < 6
        && spent != limit
        && dollars_at(spent, decimals) == dollars_at(limit, decimals)
    {
        decimals += 1;
    }
    format!(
        "({}/{})",
        dollars_at(spent, decimals),
        dollars_at(limit, decimals)
    )
}

/// The highest warning threshold (a percentage of `budget`) that `spent` has reached.
pub fn crossed_threshold(spent: u64, budget: u64, thresholds: &[u8]) -> Option<u8> {
    thresholds
        .iter()
        .copied()
        .filter(|&t| u128::from(spent) * 100 >= u128::from(budget) * u128::from(t))
        .max()
}

/// Whether a request costing `incoming` (0 without reservations) fits: spend and reservations so
/// far must be below the budget, and with the incoming estimate must not pass it.
pub fn within_budget(spent: u64, reserved: u64, incoming: u64, budget: u64) -> bool {
    let committed = spent.saturating_add(reserved);
    committed < budget && (incoming == 0 || committed.saturating_add(incoming) <= budget)
}

/// A monthly budget keeps the code clients have always seen; a daily or weekly one has its own.
pub fn exceeded_kind(period: &PeriodRule) -> RejectionKind {
    match period.kind {
        PeriodKind::Month => RejectionKind::MonthlyBudgetExceeded,
        PeriodKind::Day | PeriodKind::Week => RejectionKind::BudgetExceeded,
    }
}

pub fn exceeded_reason(period: &PeriodRule, spent: u64, budget: u64) -> String {
    format!(
        "{} budget exceeded {}",
        period.names().0,
        spent_of_limit(spent, budget)
    )
}

pub fn model_exceeded_reason(period: &PeriodRule, model: &str, spent: u64, cap: u64) -> String {
    format!(
        "{} budget for model {model} exceeded {}",
        period.names().0,
        spent_of_limit(spent, cap)
    )
}

pub fn warning_text(period: &PeriodRule, threshold: u8, spent: u64, budget: u64) -> String {
    format!(
        "{threshold}% of the {} budget used {}",
        period.names().0.to_lowercase(),
        spent_of_limit(spent, budget)
    )
}

/// Dollars for JSON, to six decimals (exact micro-dollars).
pub fn json_usd(micros: u64) -> f64 {
    (usd(micros) * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_cent_limits_print_cents_rounded_up() {
        assert_eq!(
            spent_of_limit(100_000_000, 100_000_000),
            "($100.00/$100.00)"
        );
        assert_eq!(
            spent_of_limit(100_020_000, 100_000_000),
            "($100.02/$100.00)"
        );
        assert_eq!(
            spent_of_limit(100_010_001, 100_000_000),
            "($100.02/$100.00)"
        );
        assert_eq!(spent_of_limit(10_000, 10_000), "($0.01/$0.01)");
        assert_eq!(spent_of_limit(10_001, 10_000), "($0.02/$0.01)");
        assert_eq!(spent_of_limit(0, 0), "($0.00/$0.00)");
        assert_eq!(
            exceeded_reason(&PeriodRule::utc_month(), 100_020_000, 100_000_000),
            "Monthly budget exceeded ($100.02/$100.00)"
        );
    }

    #[test]
    fn amounts_keep_the_precision_the_limit_was_configured_with() {
        // A $0.001 cap (1,000 micro-dollars) is not shown as a cent.
        assert_eq!(
            model_exceeded_reason(&PeriodRule::utc_month(), "gpt-4o", 1_000, 1_000),
            "Monthly budget for model gpt-4o exceeded ($0.001/$0.001)"
        );
        // Spend is rounded up at that precision, so over the cap never reads as equal to it.
        assert_eq!(spent_of_limit(1_001, 1_000), "($0.002/$0.001)");
        assert_eq!(spent_of_limit(12_500, 10_000), "($0.02/$0.01)");
        assert_eq!(
            spent_of_limit(1_234_567, 1_234_567),
            "($1.234567/$1.234567)"
        );
        assert_eq!(spent_of_limit(50, 50), "($0.00005/$0.00005)");
        // Below the limit but equal at its precision: more decimals, never "$100.00/$100.00".
        assert_eq!(
            warning_text(&PeriodRule::utc_month(), 80, 850, 1_000),
            "80% of the monthly budget used ($0.0009/$0.0010)"
        );
        assert_eq!(
            spent_of_limit(99_999_000, 100_000_000),
            "($99.999/$100.000)"
        );
    }

    #[test]
    fn thresholds_are_percentages_of_the_budget() {
        let budget = 100_000_000;
        assert_eq!(crossed_threshold(79_999_999, budget, &[80]), None);
        assert_eq!(crossed_threshold(80_000_000, budget, &[80]), Some(80));
        assert_eq!(
            crossed_threshold(95_000_000, budget, &[50, 80, 90]),
            Some(90)
        );
        assert_eq!(crossed_threshold(10, budget, &[]), None);
        assert_eq!(
            warning_text(&PeriodRule::utc_month(), 80, 85_000_000, budget),
            "80% of the monthly budget used ($85.00/$100.00)"
        );
    }

    #[test]
    fn budget_admission_with_and_without_reservations() {
        assert!(within_budget(99, 0, 0, 100));
        assert!(!within_budget(100, 0, 0, 100));
        assert!(!within_budget(101, 0, 0, 100));
        // Reservations of requests in flight count against the budget.
        assert!(!within_budget(60, 40, 0, 100));
        // A request whose estimate would pass the budget is refused; one that fits exactly is not.
        assert!(within_budget(60, 20, 20, 100));
        assert!(!within_budget(60, 20, 21, 100));
    }
}
