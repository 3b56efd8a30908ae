//! Tiers, their default limits, and per-team overrides.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Service tier of a team. `high` is accepted as an alias of `premium`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Sandbox,
    Standard,
    #[serde(alias = "high")]
    Premium,
    Unlimited,
}

impl Tier {
    pub const ALL: [Tier; 4] = [
        Tier::Sandbox,
        Tier::Standard,
        Tier::Premium,
        Tier::Unlimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Sandbox => "sandbox",
            Tier::Standard => "standard",
            Tier::Premium => "premium",
            Tier::Unlimited => "unlimited",
        }
    }

    /// The defaults from DESIGN.md.
    pub fn default_limits(self) -> Limits {
        let (rpm, daily_tokens, budget_usd) = match self {
            Tier::Sandbox => (20, Some(100_000), 25),
            Tier::Standard => (100, Some(500_000), 100),
            Tier::Premium => (500, Some(5_000_000), 1_000),
            Tier::Unlimited => (2_000, None, 10_000),
        };
        Limits {
            rpm,
            daily_tokens,
            monthly_budget_micros: budget_usd * MICROS_PER_USD,
        }
    }
}

pub const MICROS_PER_USD: u64 = 1_000_000;

/// The limits in force for one team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute (sliding window).
    pub rpm: u64,
    /// Tokens per UTC day; `None` is unlimited.
    pub daily_tokens: Option<u64>,
    /// USD budget per UTC month, in micro-dollars.
    pub monthly_budget_micros: u64,
}

/// Optional replacements for a tier's limits, for a tier as a whole or for one team.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
}

impl LimitOverrides {
    pub fn apply(&self, mut limits: Limits) -> Limits {
        if let Some(rpm) = self.rpm {
            limits.rpm = rpm;
        }
        if let Some(tokens) = self.daily_tokens {
            limits.daily_tokens = Some(tokens);
        }
        if let Some(usd) = self.monthly_budget_usd {
            limits.monthly_budget_micros = (usd * MICROS_PER_USD as f64).round() as u64;
        }
        limits
    }
}

/// A team: the unit that limits and budgets apply to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub tier: Tier,
    /// OAuth client ids (Cognito app clients) whose tokens act for this team.
    #[serde(default)]
    pub client_ids: Vec<String>,
    #[serde(flatten)]
    pub overrides: LimitOverrides,
}

/// Tier defaults with any operator overrides applied; resolves a team's effective limits.
#[derive(Clone, Debug, Default)]
pub struct TierTable {
    overrides: HashMap<Tier, LimitOverrides>,
}

impl TierTable {
    pub fn new(overrides: HashMap<Tier, LimitOverrides>) -> Self {
        Self { overrides }
    }

    pub fn tier_limits(&self, tier: Tier) -> Limits {
        let defaults = tier.default_limits();
        match self.overrides.get(&tier) {
            Some(o) => o.apply(defaults),
            None => defaults,
        }
    }

    pub fn limits_for(&self, team: &Team) -> Limits {
        team.overrides.apply(self.tier_limits(team.tier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(tier: Tier, overrides: LimitOverrides) -> Team {
        Team {
            id: "t".into(),
            tier,
            client_ids: vec![],
            overrides,
        }
    }

    #[test]
    fn tier_defaults_match_the_design() {
        let t = TierTable::default();
        assert_eq!(t.tier_limits(Tier::Sandbox).rpm, 20);
        assert_eq!(t.tier_limits(Tier::Standard).daily_tokens, Some(500_000));
        assert_eq!(
            t.tier_limits(Tier::Premium).monthly_budget_micros,
            1_000 * MICROS_PER_USD
        );
        assert_eq!(t.tier_limits(Tier::Unlimited).daily_tokens, None);
        assert_eq!(t.tier_limits(Tier::Unlimited).rpm, 2_000);
    }

    #[test]
    fn high_is_an_alias_of_premium() {
        let tier: Tier = serde_json::from_str("\"high\"").unwrap();
        assert_eq!(tier, Tier::Premium);
    }

    #[test]
    fn team_overrides_win_over_tier_overrides_which_win_over_defaults() {
        let table = TierTable::new(HashMap::from([(
            Tier::Standard,
            LimitOverrides {
                rpm: Some(150),
                daily_tokens: Some(700),
                monthly_budget_usd: None,
            },
        )]));
        let limits = table.limits_for(&team(
            Tier::Standard,
            LimitOverrides {
                rpm: Some(5),
                ..Default::default()
            },
        ));
        assert_eq!(limits.rpm, 5);
        assert_eq!(limits.daily_tokens, Some(700));
        assert_eq!(limits.monthly_budget_micros, 100 * MICROS_PER_USD);
    }

    #[test]
    fn team_overrides_read_flat_from_config() {
        let t: Team = serde_json::from_value(serde_json::json!({
            "id": "search", "tier": "sandbox", "client_ids": ["a"], "rpm": 7, "daily_tokens": 9
        }))
        .unwrap();
        assert_eq!(t.overrides.rpm, Some(7));
        assert_eq!(t.overrides.daily_tokens, Some(9));
    }
}
