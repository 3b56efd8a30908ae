//! What tollgate tells a caller it refuses. Every adapter (ext_proc, webhook, Lambda) renders the
//! same [`Rejection`], so the contract in docs/design.md lives in one place.

/// Why a request was refused. Decides the HTTP status, the machine-readable code and whether
/// retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionKind {
    RpmExceeded,
    /// Tokens in the last 60 s.
    TpmExceeded,
    DailyTokensExceeded,
    /// A weekly or monthly token limit.
    TokensExceeded,
    MonthlyBudgetExceeded,
    /// A daily or weekly budget.
    BudgetExceeded,
    ModelBudgetExceeded,
    ModelNotAllowed,
    UnknownModel,
    /// A content guardrail blocked the prompt (enforce mode).
    GuardrailIntervened,
    /// The guardrail failed and its fail mode is closed.
    GuardrailUnavailable,
    Unauthenticated,
    Forbidden,
    UnknownTeam,
    InvalidBody,
    BodyTooLarge,
    /// The endpoint is not one tollgate meters or lets pass free (the endpoint catalogue).
    EndpointNotSupported,
    /// A dependency (the store) failed and the configured fail mode is closed.
    Unavailable,
}

impl RejectionKind {
    pub fn status(self) -> u16 {
        match self {
            Self::RpmExceeded
            | Self::TpmExceeded
            | Self::DailyTokensExceeded
            | Self::TokensExceeded
            | Self::MonthlyBudgetExceeded
            | Self::BudgetExceeded
            | Self::ModelBudgetExceeded => 429,
            Self::Unauthenticated => 401,
            Self::Forbidden | Self::UnknownTeam | Self::ModelNotAllowed => 403,
            Self::InvalidBody | Self::UnknownModel | Self::GuardrailIntervened => 400,
            Self::BodyTooLarge => 413,
            Self::EndpointNotSupported => 404,
            Self::Unavailable | Self::GuardrailUnavailable => 503,
        }
    }

    /// Stable code for the error object and the metrics label.
    pub fn code(self) -> &'static str {
        match self {
            Self::RpmExceeded => "rpm_limit_exceeded",
            Self::TpmExceeded => "tpm_limit_exceeded",
            Self::DailyTokensExceeded => "daily_token_limit_exceeded",
            Self::TokensExceeded => "token_limit_exceeded",
            Self::MonthlyBudgetExceeded => "monthly_budget_exceeded",
            Self::BudgetExceeded => "budget_exceeded",
            Self::ModelBudgetExceeded => "model_budget_exceeded",
            Self::ModelNotAllowed => "model_not_allowed",
            Self::UnknownModel => "unknown_model",
            Self::GuardrailIntervened => "guardrail_intervened",
            Self::GuardrailUnavailable => "guardrail_unavailable",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::UnknownTeam => "unknown_team",
            Self::InvalidBody => "invalid_request_body",
            Self::BodyTooLarge => "request_too_large",
            Self::EndpointNotSupported => "endpoint_not_supported",
            Self::Unavailable => "policy_unavailable",
        }
    }

    /// Whether retrying the same request soon can succeed. SDKs are told not to retry otherwise.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::RpmExceeded | Self::TpmExceeded | Self::Unavailable | Self::GuardrailUnavailable
        )
    }
}

/// Rate-limit figures reported on every response, allowed or refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub rpm_limit: u64,
    pub rpm_remaining: u64,
    /// Seconds until the current minute bucket ends.
    pub rpm_reset_secs: u64,
    /// Daily token limit and what is left of it; `None` when the team's tokens are unlimited.
    pub tokens_limit: Option<u64>,
    pub tokens_remaining: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: RejectionKind,
    /// Human-readable; also the message SDKs show.
    pub reason: String,
    pub retry_after_secs: Option<u64>,
    pub rate: Option<RateHeaders>,
    /// Guardrail policies that fired (names only, never the matched text).
    pub policies: Vec<String>,
    /// The scope whose limit refused (`user alice in team platform`), for
    /// `x-tollgate-limit-scope`.
    pub scope: Option<String>,
}

impl Rejection {
    pub fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            retry_after_secs: None,
            rate: None,
            policies: Vec::new(),
            scope: None,
        }
    }

    /// `in_window`: the requests the sliding window holds, not counting the refused one.
    pub fn rpm_exceeded(in_window: u64, rate: RateHeaders, retry_after_secs: u64) -> Self {
        let requests = if in_window == 1 {
            "request"
        } else {
            "requests"
        };
        Self {
            kind: RejectionKind::RpmExceeded,
            reason: format!(
                "RPM limit exceeded: {in_window} {requests} in the last 60 s, limit {}",
                rate.rpm_limit
            ),
            retry_after_secs: Some(retry_after_secs),
            rate: Some(rate),
            policies: Vec::new(),
            scope: None,
        }
    }

    /// A monthly budget (team or model) is spent; `retry_after_secs` runs to the next month.
    pub fn budget_exceeded(
        kind: RejectionKind,
        reason: String,
        rate: RateHeaders,
        retry_after_secs: u64,
    ) -> Self {
        Self {
            kind,
            reason,
            retry_after_secs: Some(retry_after_secs),
            rate: Some(rate),
            policies: Vec::new(),
            scope: None,
        }
    }

    pub fn daily_tokens_exceeded(
        used: u64,
        limit: u64,
        rate: RateHeaders,
        retry_after_secs: u64,
    ) -> Self {
        Self {
            rate: Some(rate),
            ..Self::tokens_exceeded(
                true,
                format!("Daily token limit exceeded ({used}/{limit} tokens today)"),
                retry_after_secs,
            )
        }
    }

    /// A token limit per period is used up (`daily`: the period is a day, whose code clients
    /// have always seen); `retry_after_secs` runs to the period's end.
    pub fn tokens_exceeded(daily: bool, reason: String, retry_after_secs: u64) -> Self {
        let kind = if daily {
            RejectionKind::DailyTokensExceeded
        } else {
            RejectionKind::TokensExceeded
        };
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(kind, reason)
        }
    }

    /// The tokens of the last 60 s are at the limit.
    pub fn tpm_exceeded(reason: String, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(RejectionKind::TpmExceeded, reason)
        }
    }
}

/// The refusal to give when several limits refuse one request: the one that lasts longest. A
/// caller told "daily tokens, retry in an hour" retries in an hour and is refused again, for a
/// month, by the budget it was not told about; told about the budget, it waits once, or asks
/// for more. Its `retry_after_seconds` (and whether to retry) then follow the limit named.
/// On a tie (the last day of a month, when the day and the month end together) the broader
/// limit is named: a budget, then a model's cap, then tokens per period, then RPM or TPM.
pub fn lasting_longest(refusals: Vec<Rejection>) -> Option<Rejection> {
    refusals.into_iter().max_by_key(|r| {
        let lasts = r.retry_after_secs.unwrap_or(u64::MAX);
        let breadth = match r.kind {
            RejectionKind::MonthlyBudgetExceeded | RejectionKind::BudgetExceeded => 3,
            RejectionKind::ModelBudgetExceeded => 2,
            RejectionKind::DailyTokensExceeded | RejectionKind::TokensExceeded => 1,
            _ => 0,
        };
        (lasts, breadth)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_follow_the_contract_wording() {
        let rate = RateHeaders {
            rpm_limit: 100,
            ..Default::default()
        };
        let r = Rejection::rpm_exceeded(100, rate, 42);
        assert_eq!(
            r.reason,
            "RPM limit exceeded: 100 requests in the last 60 s, limit 100"
        );
        let one = RateHeaders {
            rpm_limit: 1,
            ..Default::default()
        };
        assert_eq!(
            Rejection::rpm_exceeded(1, one, 42).reason,
            "RPM limit exceeded: 1 request in the last 60 s, limit 1"
        );
        assert_eq!(r.kind.status(), 429);
        assert!(r.kind.retryable());
        let d = Rejection::daily_tokens_exceeded(1030, 1000, rate, 5);
        assert_eq!(
            d.reason,
            "Daily token limit exceeded (1030/1000 tokens today)"
        );
        assert!(!d.kind.retryable());
    }

    #[test]
    fn the_longest_lasting_refusal_is_named() {
        let rate = RateHeaders::default();
        let day = Rejection::daily_tokens_exceeded(1030, 1000, rate, 3_600);
        let month = Rejection::budget_exceeded(
            RejectionKind::MonthlyBudgetExceeded,
            "Monthly budget exceeded ($1.02/$1.00)".into(),
            rate,
            9 * 86_400,
        );
        let minute = Rejection::rpm_exceeded(6, rate, 40);
        let chosen = lasting_longest(vec![day.clone(), month.clone(), minute.clone()]).unwrap();
        assert_eq!(chosen, month);
        assert_eq!(
            lasting_longest(vec![minute.clone(), day.clone()]),
            Some(day.clone())
        );
        // A minute before midnight the RPM window outlasts the day.
        let late_day = Rejection::daily_tokens_exceeded(1030, 1000, rate, 20);
        assert_eq!(
            lasting_longest(vec![late_day, minute.clone()]),
            Some(minute)
        );
        assert_eq!(lasting_longest(Vec::new()), None);
    }

    #[test]
    fn on_a_tie_the_broader_limit_is_named() {
        let rate = RateHeaders::default();
        let last_day = 5_000;
        let day = Rejection::daily_tokens_exceeded(1030, 1000, rate, last_day);
        let cap = Rejection::budget_exceeded(
            RejectionKind::ModelBudgetExceeded,
            "cap".into(),
            rate,
            last_day,
        );
        let month = Rejection::budget_exceeded(
            RejectionKind::MonthlyBudgetExceeded,
            "month".into(),
            rate,
            last_day,
        );
        for order in [
            vec![day.clone(), cap.clone(), month.clone()],
            vec![month.clone(), cap.clone(), day.clone()],
        ] {
            assert_eq!(lasting_longest(order), Some(month.clone()));
        }
        assert_eq!(lasting_longest(vec![day, cap.clone()]), Some(cap));
    }
}
