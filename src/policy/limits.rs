//! Tiers, their default limits, and per-team overrides.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use jiff::tz::TimeZone;

use super::admission::ScopeRules;
use super::budget::OnBreach;
use super::calendar::PeriodRule;
use super::counters::{PeriodKind, Scope};
use super::pricing::{micros, normalise_model};

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

    /// The tier defaults (docs/limits-and-budgets.md).
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
            limits.monthly_budget_micros = micros(usd);
        }
        limits
    }
}

/// A team: the unit that limits and budgets apply to. Limits left out come from the tier. The
/// limit fields repeat [`LimitOverrides`] rather than flattening it, so that unknown fields
/// (typos in config or admin requests) stay errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    pub id: String,
    pub tier: Tier,
    /// OAuth client ids (Cognito app clients) whose tokens act for this team.
    #[serde(default)]
    pub client_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute (sliding window); absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens per `tokens_period` (a UTC day unless set); `tokens` is the same field.
    #[serde(default, alias = "tokens", skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_period: Option<PeriodSpec>,
    /// USD per `budget_period` (a UTC month unless set); `budget_usd` is the same field.
    #[serde(default, alias = "budget_usd", skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<PeriodSpec>,
    #[serde(default)]
    pub on_breach: OnBreach,
    /// USD per month for individual models (canonical names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_caps: BTreeMap<String, f64>,
    /// Models the team may call (canonical names); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
    /// The team's own guardrail mode and Bedrock guardrail; absent: the global `[guardrail]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<crate::guardrail::policy::TeamGuardrail>,
    /// Limits of each user of the team unless `users` says otherwise (over the global
    /// `[user_defaults]`, field by field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_defaults: Option<ScopeLimits>,
    /// Limits of single users (by the configured user claim), over the defaults field by field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, ScopeLimits>,
    /// Projects the team's callers may name in the project header, each with its limits. A
    /// project not listed is refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub projects: BTreeMap<String, ScopeLimits>,
}

/// How a budget or token limit's periods run: `{ every = "week", time_zone = "Europe/Berlin" }`,
/// `{ every = "month", anchor_day = 15 }`. The time zone defaults to `policy.time_zone`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodSpec {
    pub every: PeriodKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_day: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl PeriodSpec {
    fn validated(&self, field: &str) -> Result<(), FieldError> {
        if let Some(day) = self.anchor_day {
            if self.every != PeriodKind::Month {
                return Err(FieldError::new(
                    format!("{field}.anchor_day"),
                    "anchor_day is for monthly periods (every = \"month\")",
                ));
            }
            if !(1..=31).contains(&day) {
                return Err(FieldError::new(
                    format!("{field}.anchor_day"),
                    "anchor_day must be a day of the month, 1 to 31",
                ));
            }
        }
        if let Some(zone) = &self.time_zone {
            PeriodRule::zone(zone).map_err(|e| FieldError::new(format!("{field}.time_zone"), e))?;
        }
        Ok(())
    }

    /// The rule, in `default_zone` unless the spec names its own.
    pub fn rule(&self, default_zone: &TimeZone) -> PeriodRule {
        PeriodRule {
            kind: self.every,
            anchor_day: self.anchor_day.unwrap_or(1),
            time_zone: self
                .time_zone
                .as_deref()
                .and_then(|name| PeriodRule::zone(name).ok())
                .unwrap_or_else(|| default_zone.clone()),
        }
    }
}

/// The limits of an org, a user or a project: any of them, none required. Unknown keys are
/// errors naming the key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens per `tokens_period` (a day unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_period: Option<PeriodSpec>,
    /// USD per `budget_period` (a month unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<PeriodSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_breach: Option<OnBreach>,
    /// USD per budget period for single models (canonical names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_caps: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_models: Option<Vec<String>>,
}

impl ScopeLimits {
    /// Field by field: this scope's own setting, else the one it inherits from `defaults`.
    pub fn over(&self, defaults: &ScopeLimits) -> ScopeLimits {
        let mut model_caps = defaults.model_caps.clone();
        model_caps.extend(self.model_caps.clone());
        ScopeLimits {
            rpm: self.rpm.or(defaults.rpm),
            tpm: self.tpm.or(defaults.tpm),
            tokens: self.tokens.or(defaults.tokens),
            tokens_period: self
                .tokens_period
                .clone()
                .or_else(|| defaults.tokens_period.clone()),
            budget_usd: self.budget_usd.or(defaults.budget_usd),
            budget_period: self
                .budget_period
                .clone()
                .or_else(|| defaults.budget_period.clone()),
            on_breach: self.on_breach.or(defaults.on_breach),
            model_caps,
            allowed_models: self
                .allowed_models
                .clone()
                .or_else(|| defaults.allowed_models.clone()),
        }
    }

    /// Checks the limits (`field`: where they are, for the message) and puts model names into
    /// canonical form.
    pub fn validated(mut self, field: &str) -> Result<Self, FieldError> {
        if self.budget_usd.is_some_and(|v| !usd_ok(v)) {
            return Err(FieldError::new(
                format!("{field}.budget_usd"),
                "budget_usd must be a non-negative number",
            ));
        }
        for (name, period) in [
            ("tokens_period", &self.tokens_period),
            ("budget_period", &self.budget_period),
        ] {
            if let Some(period) = period {
                period.validated(&format!("{field}.{name}"))?;
            }
        }
        self.model_caps = validated_caps(std::mem::take(&mut self.model_caps), field)?;
        if let Some(models) = self.allowed_models.take() {
            self.allowed_models = Some(validated_models(models, field)?);
        }
        Ok(self)
    }

    /// The rules admission checks for `scope`, with periods in `zone` unless they name one.
    pub fn rules(&self, scope: Scope, zone: &TimeZone) -> ScopeRules {
        let period = |spec: &Option<PeriodSpec>, kind| {
            spec.as_ref().map_or_else(
                || PeriodRule {
                    time_zone: zone.clone(),
                    ..PeriodRule::utc(kind)
                },
                |s| s.rule(zone),
            )
        };
        ScopeRules {
            rpm: self.rpm,
            tpm: self.tpm,
            tokens: self.tokens,
            tokens_period: period(&self.tokens_period, PeriodKind::Day),
            budget_micros: self.budget_usd.map(micros),
            budget_period: period(&self.budget_period, PeriodKind::Month),
            model_caps: caps_micros(&self.model_caps),
            allowed_models: self.allowed_models.clone(),
            on_breach: self.on_breach.unwrap_or_default(),
            scope,
        }
    }
}

fn usd_ok(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

fn caps_micros(caps: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    caps.iter()
        .map(|(model, &usd)| (model.clone(), micros(usd)))
        .collect()
}

/// Model caps with canonical names; `field` says where they are (`model_caps.gpt-4o`).
fn validated_caps(
    caps: BTreeMap<String, f64>,
    field: &str,
) -> Result<BTreeMap<String, f64>, FieldError> {
    let mut canonical = BTreeMap::new();
    for (model, cap) in caps {
        if !usd_ok(cap) {
            return Err(FieldError::new(
                format!("{}model_caps.{model}", prefix(field)),
                "a model cap must be a non-negative number",
            ));
        }
        canonical.insert(normalise_model(&model), cap);
    }
    Ok(canonical)
}

fn validated_models(mut models: Vec<String>, field: &str) -> Result<Vec<String>, FieldError> {
    if models.iter().any(|m| m.trim().is_empty()) {
        return Err(FieldError::new(
            format!("{}allowed_models", prefix(field)),
            "allowed_models must not contain empty strings",
        ));
    }
    for m in models.iter_mut() {
        *m = normalise_model(m);
    }
    models.sort();
    models.dedup();
    Ok(models)
}

fn prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}.")
    }
}

/// User and project ids name counters and appear in refusals: printable, bounded.
fn scope_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)
}

/// A validation failure naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Team {
    /// A team of `tier` with every limit from the tier.
    pub fn new(id: impl Into<String>, tier: Tier) -> Self {
        Self {
            id: id.into(),
            tier,
            client_ids: Vec::new(),
            rpm: None,
            tpm: None,
            daily_tokens: None,
            tokens_period: None,
            monthly_budget_usd: None,
            budget_period: None,
            on_breach: OnBreach::Block,
            model_caps: BTreeMap::new(),
            allowed_models: None,
            guardrail: None,
            user_defaults: None,
            users: BTreeMap::new(),
            projects: BTreeMap::new(),
        }
    }

    pub fn overrides(&self) -> LimitOverrides {
        LimitOverrides {
            rpm: self.rpm,
            daily_tokens: self.daily_tokens,
            monthly_budget_usd: self.monthly_budget_usd,
        }
    }

    /// Checks the team and puts model names into canonical form.
    pub fn validated(mut self) -> Result<Self, FieldError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 128
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !id_ok {
            return Err(FieldError::new(
                "id",
                "id must be 1-128 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if self.client_ids.iter().any(|c| c.trim().is_empty()) {
            return Err(FieldError::new(
                "client_ids",
                "client_ids must not contain empty strings",
            ));
        }
        if self.monthly_budget_usd.is_some_and(|v| !usd_ok(v)) {
            return Err(FieldError::new(
                "monthly_budget_usd",
                "monthly_budget_usd must be a non-negative number",
            ));
        }
        for (name, period) in [
            ("tokens_period", &self.tokens_period),
            ("budget_period", &self.budget_period),
        ] {
            if let Some(period) = period {
                period.validated(name)?;
            }
        }
        self.model_caps = validated_caps(std::mem::take(&mut self.model_caps), "")?;
        if let Some(models) = self.allowed_models.take() {
            self.allowed_models = Some(validated_models(models, "")?);
        }
        if let Some(defaults) = self.user_defaults.take() {
            self.user_defaults = Some(defaults.validated("user_defaults")?);
        }
        for (what, map) in [("users", &mut self.users), ("projects", &mut self.projects)] {
            let mut checked = BTreeMap::new();
            for (id, limits) in std::mem::take(map) {
                if !scope_id_ok(&id) {
                    return Err(FieldError::new(
                        format!("{what}.{id}"),
                        "an id must be 1-256 printable characters",
                    ));
                }
                let limits = limits.validated(&format!("{what}.{id}"))?;
                checked.insert(id, limits);
            }
            *map = checked;
        }
        if let Some(problem) = self.guardrail.as_ref().and_then(|g| g.problem()) {
            return Err(FieldError::new("guardrail", problem));
        }
        Ok(self)
    }

    /// Whether the team may call `model` (canonical name).
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m == model))
    }

    /// The monthly cap on `model` (canonical name), in micro-dollars.
    pub fn model_cap_micros(&self, model: &str) -> Option<u64> {
        self.model_caps.get(model).map(|&usd| micros(usd))
    }
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
        team.overrides().apply(self.tier_limits(team.tier))
    }

    /// What admission checks for `team`'s own scope: its tier's limits with its overrides, over
    /// its periods (a day for tokens, a month for the budget unless it says otherwise) in `zone`
    /// unless they name their own.
    pub fn rules_for(&self, team: &Team, zone: &TimeZone) -> ScopeRules {
        let limits = self.limits_for(team);
        let own = ScopeLimits {
            rpm: Some(limits.rpm),
            tpm: team.tpm,
            tokens: limits.daily_tokens,
            tokens_period: team.tokens_period.clone(),
            budget_usd: None,
            budget_period: team.budget_period.clone(),
            on_breach: Some(team.on_breach),
            model_caps: team.model_caps.clone(),
            allowed_models: team.allowed_models.clone(),
        };
        ScopeRules {
            budget_micros: Some(limits.monthly_budget_micros),
            ..own.rules(Scope::Team(team.id.clone()), zone)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(tier: Tier, overrides: LimitOverrides) -> Team {
        Team {
            rpm: overrides.rpm,
            daily_tokens: overrides.daily_tokens,
            monthly_budget_usd: overrides.monthly_budget_usd,
            ..Team::new("t", tier)
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
        assert_eq!(t.rpm, Some(7));
        assert_eq!(t.daily_tokens, Some(9));
    }

    #[test]
    fn validation_names_the_field_and_normalises_models() {
        let mut t = Team::new("search", Tier::Standard);
        t.model_caps.insert("gpt-4o-2024-08-06".into(), 5.0);
        t.allowed_models = Some(vec![
            "GPT-4o".into(),
            "us.anthropic.claude-haiku-4-5-20251001-v1:0".into(),
        ]);
        let t = t.validated().unwrap();
        assert_eq!(t.model_caps.keys().collect::<Vec<_>>(), vec!["gpt-4o"]);
        assert!(t.allows("gpt-4o") && t.allows("claude-haiku-4-5") && !t.allows("gpt-4o-mini"));
        assert_eq!(t.model_cap_micros("gpt-4o"), Some(5_000_000));

        let bad_id = Team::new("has space", Tier::Sandbox)
            .validated()
            .unwrap_err();
        assert_eq!(bad_id.field, "id");
        let mut negative = Team::new("x", Tier::Sandbox);
        negative.monthly_budget_usd = Some(-1.0);
        assert_eq!(
            negative.validated().unwrap_err().field,
            "monthly_budget_usd"
        );
        let mut cap = Team::new("x", Tier::Sandbox);
        cap.model_caps.insert("gpt-4o".into(), f64::INFINITY);
        assert_eq!(cap.validated().unwrap_err().field, "model_caps.gpt-4o");
    }

    #[test]
    fn unknown_team_fields_are_refused() {
        let r: Result<Team, _> =
            serde_json::from_value(serde_json::json!({"id": "a", "tier": "sandbox", "rmp": 5}));
        assert!(r.is_err());
    }
}
