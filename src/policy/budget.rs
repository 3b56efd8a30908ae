//! Monthly USD budgets and per-model caps, in micro-dollars. Spend is debited after each response
//! with its actual cost; admission compares the spend so far (plus, optionally, the cost already
//! reserved by requests in flight) with the budget.

use serde::{Deserialize, Serialize};

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

/// `$12.34`. Amounts are rounded up to the cent, so a spend just over a limit never prints as
/// equal to it... unless the budget itself has fractions of a cent.
pub fn dollars(micros: u64) -> String {
    let cents = micros.div_ceil(10_000);
    format!("${}.{:02}", cents / 100, cents % 100)
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

pub fn budget_exceeded_reason(spent: u64, budget: u64) -> String {
    format!(
        "Monthly budget exceeded ({}/{})",
        dollars(spent),
        dollars(budget)
    )
}

pub fn model_budget_exceeded_reason(model: &str, spent: u64, cap: u64) -> String {
    format!(
        "Monthly budget for model {model} exceeded ({}/{})",
        dollars(spent),
        dollars(cap)
    )
}

pub fn warning_text(threshold: u8, spent: u64, budget: u64) -> String {
    format!(
        "{threshold}% of the monthly budget used ({}/{})",
        dollars(spent),
        dollars(budget)
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
    fn dollars_round_up_to_the_cent() {
        assert_eq!(dollars(100_000_000), "$100.00");
        assert_eq!(dollars(100_020_000), "$100.02");
        assert_eq!(dollars(100_010_001), "$100.02");
        assert_eq!(dollars(1), "$0.01");
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(
            budget_exceeded_reason(100_020_000, 100_000_000),
            "Monthly budget exceeded ($100.02/$100.00)"
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
            warning_text(80, 85_000_000, budget),
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
