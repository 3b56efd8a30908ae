//! The registered claims every token must satisfy, whoever checked its signature: tollgate
//! (JWKS), Envoy's `jwt_authn` (claims arrive as metadata) or a verifier in front that tollgate
//! trusts (the ALB's `jwt-validation`). One home, so that the three ways in cannot drift apart.
//!
//! - `exp` is required: a token that never expires is refused. Envoy's `jwt_authn` accepts one
//!   unless its provider sets `require_expiration: true`, so this is checked again here.
//! - `nbf`, when present, must have passed.
//! - `iss`, when `identity.issuer` is set, must be present and equal to it.
//!
//! Both times allow the configured leeway for clock skew. Refusals say what is wrong in words
//! ("token expired at 2026-11-30T10:00:00Z (3 minutes ago)"), for the person reading the 401.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What a token's claims must satisfy.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClaimRules {
    /// Required `iss`; any (or none) when unset.
    pub issuer: Option<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("token has no exp claim; tollgate accepts only tokens that expire")]
    NoExpiry,
    #[error("token's {0} claim is not a number of seconds since 1970")]
    NotATime(&'static str),
    #[error("token expired at {} ({} ago)", when(*exp), span(now.saturating_sub(*exp)))]
    Expired { exp: u64, now: u64 },
    #[error("token not valid before {} (in {})", when(*nbf), span(nbf.saturating_sub(*now)))]
    NotYetValid { nbf: u64, now: u64 },
    #[error("token has no iss claim; expected {expected}")]
    NoIssuer { expected: String },
    #[error("token was issued by {found}, expected {expected}")]
    WrongIssuer { found: String, expected: String },
}

impl ClaimRules {
    /// Every rule, at `now` (Unix seconds): for a token presented with a request.
    pub fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), ClaimError> {
        let exp = time_claim(claims, "exp")?.ok_or(ClaimError::NoExpiry)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(ClaimError::Expired { exp, now });
        }
        if let Some(nbf) = time_claim(claims, "nbf")?
            && now.saturating_add(self.leeway) < nbf
        {
            return Err(ClaimError::NotYetValid { nbf, now });
        }
        self.check_issuer(claims)
    }

    /// The issuer only: for a token recorded with a request that was admitted earlier (it may
    /// have expired since).
    pub fn check_issuer(&self, claims: &Map<String, Value>) -> Result<(), ClaimError> {
        let Some(expected) = &self.issuer else {
            return Ok(());
        };
        match claims.get("iss") {
            None | Some(Value::Null) => Err(ClaimError::NoIssuer {
                expected: expected.clone(),
            }),
            Some(Value::String(found)) if found == expected => Ok(()),
            Some(Value::String(found)) => Err(ClaimError::WrongIssuer {
                found: found.clone(),
                expected: expected.clone(),
            }),
            Some(other) => Err(ClaimError::WrongIssuer {
                found: other.to_string(),
                expected: expected.clone(),
            }),
        }
    }

    /// Until when a verification may be reused: never past the token's expiry.
    pub fn valid_until(&self, claims: &Map<String, Value>) -> Option<u64> {
        time_claim(claims, "exp")
            .ok()
            .flatten()
            .map(|exp| exp.saturating_add(self.leeway))
    }
}

/// A NumericDate claim: seconds since 1970, possibly fractional (Envoy's metadata turns every
/// number into a double). Absent (or null) is `None`; anything but a number is an error.
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, ClaimError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs)),
            // Before 1970 is as expired (or as valid) as 1970.
            (None, Some(secs)) if secs.is_finite() => Ok(Some(secs.max(0.0) as u64)),
            _ => Err(ClaimError::NotATime(name)),
        },
        Some(_) => Err(ClaimError::NotATime(name)),
    }
}

/// `2026-11-30T10:00:00Z`, or the raw number for a time `time` cannot represent.
fn when(unix_secs: u64) -> String {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_secs} seconds after 1970"))
}

/// A duration as a person would say it, to the unit that matters: `45 seconds`, `3 minutes`,
/// `5 hours`, `12 days`.
fn span(secs: u64) -> String {
    let (n, unit) = match secs {
        0..120 => (secs, "second"),
        120..7_200 => (secs / 60, "minute"),
        7_200..172_800 => (secs / 3_600, "hour"),
        _ => (secs / 86_400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    // 2026-11-30T10:03:00Z
    const NOW: u64 = 1_796_032_980;
    const ISSUER: &str = "https://issuer.example/pool";

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: Some(ISSUER.into()),
            leeway: 30,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn message(v: Value) -> String {
        rules().check(&claims(v), NOW).unwrap_err().to_string()
    }

    #[test]
    fn a_current_token_from_the_issuer_passes() {
        let c = claims(json!({"iss": ISSUER, "exp": NOW + 600, "nbf": NOW - 5}));
        assert_eq!(rules().check(&c, NOW), Ok(()));
    }

    #[test]
    fn expiry_is_required_and_said_in_words() {
        assert_eq!(
            message(json!({"iss": ISSUER, "exp": NOW - 180})),
            "token expired at 2026-11-30T10:00:00Z (3 minutes ago)"
        );
        assert_eq!(
            message(json!({"iss": ISSUER})),
            "token has no exp claim; tollgate accepts only tokens that expire"
        );
        assert_eq!(
            message(json!({"iss": ISSUER, "exp": "tomorrow"})),
            "token's exp claim is not a number of seconds since 1970"
        );
        // `null` is as absent.
        assert_eq!(
            rules().check(&claims(json!({"iss": ISSUER, "exp": null})), NOW),
            Err(ClaimError::NoExpiry)
        );
    }

    #[test]
    fn leeway_applies_to_both_ends() {
        let r = rules();
        let at = |exp: u64, nbf: u64| {
            r.check(&claims(json!({"iss": ISSUER, "exp": exp, "nbf": nbf})), NOW)
        };
        assert!(at(NOW - 29, NOW).is_ok(), "expired within the leeway");
        assert!(matches!(at(NOW - 30, NOW), Err(ClaimError::Expired { .. })));
        assert!(
            at(NOW + 600, NOW + 30).is_ok(),
            "not yet valid within the leeway"
        );
        assert_eq!(
            at(NOW + 600, NOW + 31),
            Err(ClaimError::NotYetValid {
                nbf: NOW + 31,
                now: NOW
            })
        );
    }

    #[test]
    fn a_token_from_the_future_is_refused_in_words() {
        assert_eq!(
            message(json!({"iss": ISSUER, "exp": NOW + 7200, "nbf": NOW + 300})),
            "token not valid before 2026-11-30T10:08:00Z (in 5 minutes)"
        );
    }

    #[test]
    fn envoy_doubles_are_times_too() {
        let c = claims(json!({"iss": ISSUER, "exp": (NOW + 60) as f64 + 0.5}));
        assert_eq!(rules().check(&c, NOW), Ok(()));
        assert_eq!(rules().valid_until(&c), Some(NOW + 60 + 30));
        let old = claims(json!({"iss": ISSUER, "exp": -5}));
        assert_eq!(
            rules().check(&old, NOW),
            Err(ClaimError::Expired { exp: 0, now: NOW })
        );
    }

    #[test]
    fn the_issuer_must_be_present_and_equal_when_configured() {
        assert_eq!(
            message(json!({"exp": NOW + 60})),
            format!("token has no iss claim; expected {ISSUER}")
        );
        assert_eq!(
            message(json!({"iss": "https://evil.example", "exp": NOW + 60})),
            format!("token was issued by https://evil.example, expected {ISSUER}")
        );
        assert!(matches!(
            rules().check(&claims(json!({"iss": [ISSUER], "exp": NOW + 60})), NOW),
            Err(ClaimError::WrongIssuer { .. })
        ));
        let any_issuer = ClaimRules::default();
        assert_eq!(
            any_issuer.check(&claims(json!({"exp": NOW + 60})), NOW),
            Ok(())
        );
    }

    #[test]
    fn recorded_tokens_are_held_to_their_issuer_only() {
        let c = claims(json!({"iss": ISSUER, "exp": NOW - 86_400}));
        assert_eq!(rules().check_issuer(&c), Ok(()));
        assert!(rules().check_issuer(&claims(json!({}))).is_err());
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(1), "1 second");
        assert_eq!(span(119), "119 seconds");
        assert_eq!(span(180), "3 minutes");
        assert_eq!(span(7_199), "119 minutes");
        assert_eq!(span(7_200), "2 hours");
        assert_eq!(span(86_400 * 12), "12 days");
        assert_eq!(when(u64::MAX), format!("{} seconds after 1970", u64::MAX));
    }
}
