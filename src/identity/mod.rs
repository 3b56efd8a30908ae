//! Who is calling: a Cognito-style access token becomes a [`Principal`].
//!
//! Claims come from Envoy's `jwt_authn` metadata when Envoy already verified the token, else from
//! the `Authorization: Bearer` header, verified here against a JWKS (RS256) unless the operator
//! chose to trust an upstream verifier such as the ALB's `jwt-validation`. Whichever way a token
//! came in, its `exp`, `nbf` and `iss` are then held to the same rules ([`claims`]): a verifier in
//! front checks them too, but a misconfigured one (Envoy without `require_expiration`) must not
//! let a token that never expires through, and checking costs nothing.

mod claims;
mod jwks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header, jwk::JwkSet};
use serde_json::{Map, Value};

use crate::policy::{Rejection, RejectionKind};

pub use claims::ClaimError;
use claims::ClaimRules;
pub use jwks::{JwksError, JwksSource, KeySet};

/// Scope a token needs to send LLM traffic.
pub const INVOKE_SCOPE: &str = "https://gateway.internal/invoke";
/// Scope a token needs for the admin API.
pub const ADMIN_SCOPE: &str = "https://gateway.internal/admin";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Team named by the configured team claim, if the token carries one.
    pub team: Option<String>,
    pub client_id: Option<String>,
    /// The user, by the configured claim (`identity.user_claim`); by default `username` for user
    /// tokens, else `sub`. Names the user scope inside the team.
    pub user: Option<String>,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A well-formed (and, where tollgate checks it, well-signed) token whose claims refuse it.
    #[error("{0}")]
    Claims(ClaimError),
    #[error("token lacks the required scope {0}")]
    MissingScope(String),
    /// The token may be good, but no key to check it is at hand: the JWKS could not be fetched
    /// and nothing is cached. Not the caller's fault, so not a 401 (which clients take as "get a
    /// new token" and do not retry): a retryable 503, like any other dependency that is down.
    #[error("tokens cannot be verified right now: {0}")]
    KeysUnavailable(String),
}

impl IdentityError {
    /// The refusal every adapter answers with: 401 for no or a bad token, 403 for a missing scope.
    pub fn rejection(&self) -> Rejection {
        let kind = match self {
            Self::MissingScope(_) => RejectionKind::Forbidden,
            Self::Missing | Self::Invalid(_) | Self::Claims(_) => RejectionKind::Unauthenticated,
            Self::KeysUnavailable(_) => RejectionKind::Unavailable,
        };
        Rejection::new(kind, self.to_string())
    }
}

/// How bearer tokens are checked.
pub enum Verification {
    /// Verify the signature against these keys.
    Keys(KeySet),
    /// Decode claims only: a trusted proxy (ALB `jwt-validation`, Envoy `jwt_authn`) verified the
    /// token before it reached tollgate.
    TrustUpstream,
}

pub struct Authenticator {
    verification: Verification,
    /// Signature and algorithm only: the claims are [`ClaimRules`]' to judge, in words.
    validation: Validation,
    rules: ClaimRules,
    team_claim: Option<String>,
    /// Claim naming the user (`sub`, `username`, `client_id` or a custom one); `None`: `username`,
    /// else `sub`.
    user_claim: Option<String>,
    /// Tokens whose signature was verified, so the same token (an agent sends the same one for an
    /// hour) costs one RSA verification, not one per request.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

struct Verified {
    claims: Arc<Map<String, Value>>,
    /// Unix seconds: the token's `exp` (with leeway), capped at `VERIFIED_CACHE_TTL` after
    /// verification. Claims are checked again on every use all the same.
    valid_until: u64,
}

const VERIFIED_CACHE_TTL: u64 = 300;
const VERIFIED_CACHE_ENTRIES: usize = 10_000;

impl Authenticator {
    pub fn new(
        verification: Verification,
        issuer: Option<&str>,
        team_claim: Option<String>,
        leeway: Duration,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        // Cognito access tokens carry `client_id`, not `aud`.
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        Self {
            verification,
            validation,
            rules: ClaimRules {
                issuer: issuer.map(str::to_owned),
                leeway: leeway.as_secs(),
            },
            team_claim,
            user_claim: None,
            verified: Mutex::new(HashMap::new()),
        }
    }

    /// Names users by `claim` (`sub`, `username`, `client_id` or a custom claim).
    pub fn with_user_claim(mut self, claim: Option<String>) -> Self {
        self.user_claim = claim;
        self
    }

    /// Claims of a bearer token from an `Authorization` header value.
    pub async fn authenticate_header(
        &self,
        authorization: Option<&str>,
        scope: &str,
    ) -> Result<Principal, IdentityError> {
        let token = authorization
            .and_then(|h| {
                let (scheme, token) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(IdentityError::Missing)?;
        let claims = match &self.verification {
            Verification::Keys(keys) => self.verified_claims(keys, token).await?,
            // The ALB checked exp, nbf and iss as well; they are checked again below all the same.
            Verification::TrustUpstream => Arc::new(decode_unverified(token)?),
        };
        self.current_principal(&claims, scope)
    }

    async fn verified_claims(
        &self,
        keys: &KeySet,
        token: &str,
    ) -> Result<Arc<Map<String, Value>>, IdentityError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(hit) = self
            .verified
            .lock()
            .unwrap()
            .get(token)
            .filter(|v| now < v.valid_until)
        {
            return Ok(hit.claims.clone());
        }
        let claims = Arc::new(self.verify_with(keys, token).await?);
        let valid_until = self
            .rules
            .valid_until(&claims)
            .unwrap_or(now)
            .min(now + VERIFIED_CACHE_TTL);
        if valid_until <= now {
            // Expired (or never expiring): refused by the claim check, not worth remembering.
            return Ok(claims);
        }
        let mut cache = self.verified.lock().unwrap();
        if cache.len() >= VERIFIED_CACHE_ENTRIES {
            cache.retain(|_, v| now < v.valid_until);
            if cache.len() >= VERIFIED_CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            token.into(),
            Verified {
                claims: claims.clone(),
                valid_until,
            },
        );
        Ok(claims)
    }

    /// The caller of a request that already happened, from the token an access-log record kept:
    /// the signature and issuer are checked as usual, but not `exp` or `nbf`, because the token was
    /// valid when the request was admitted and the record may be processed hours later.
    pub async fn authenticate_recorded(
        &self,
        token: &str,
        scope: &str,
    ) -> Result<Principal, IdentityError> {
        let token = token
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or(token, |(_, t)| t)
            .trim();
        if token.is_empty() {
            return Err(IdentityError::Missing);
        }
        let claims = match &self.verification {
            Verification::Keys(keys) => self.verify_with(keys, token).await?,
            Verification::TrustUpstream => decode_unverified(token)?,
        };
        self.rules
            .check_issuer(&claims)
            .map_err(IdentityError::Claims)?;
        self.principal(&claims, scope)
    }

    /// Claims that Envoy's `jwt_authn` already verified. Its provider should set
    /// `require_expiration: true`; `exp`, `nbf` and `iss` are checked here either way.
    pub fn authenticate_verified_claims(
        &self,
        claims: &Map<String, Value>,
        scope: &str,
    ) -> Result<Principal, IdentityError> {
        self.current_principal(claims, scope)
    }

    /// The principal of a token presented now: its claims must hold at this moment.
    fn current_principal(
        &self,
        claims: &Map<String, Value>,
        scope: &str,
    ) -> Result<Principal, IdentityError> {
        self.rules
            .check(claims, jsonwebtoken::get_current_timestamp())
            .map_err(IdentityError::Claims)?;
        self.principal(claims, scope)
    }

    /// The token's claims, once its signature verifies against `keys`.
    async fn verify_with(
        &self,
        keys: &KeySet,
        token: &str,
    ) -> Result<Map<String, Value>, IdentityError> {
        let header = decode_header(token).map_err(invalid)?;
        if header.alg != Algorithm::RS256 {
            return Err(IdentityError::Invalid(format!(
                "unsupported algorithm {:?}",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| IdentityError::Invalid("token header has no kid".into()))?;
        let key = keys.key(&kid).await.map_err(|e| match e {
            JwksError::Unavailable(_) => {
                metrics::counter!("tollgate_jwks_unavailable_refusals_total").increment(1);
                tracing::error!(error = %e, "refusing a token that cannot be verified: no signing keys");
                IdentityError::KeysUnavailable(e.to_string())
            }
            JwksError::Malformed(_) | JwksError::UnknownKid(_) => IdentityError::Invalid(e.to_string()),
        })?;
        decode::<Map<String, Value>>(token, &key, &self.validation)
            .map(|data| data.claims)
            .map_err(invalid)
    }

    fn principal(
        &self,
        claims: &Map<String, Value>,
        scope: &str,
    ) -> Result<Principal, IdentityError> {
        let string = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let scopes: Vec<String> = match claims.get("scope") {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let principal = Principal {
            team: self
                .team_claim
                .as_deref()
                .and_then(string)
                .filter(|t| !t.is_empty()),
            client_id: string("client_id"),
            user: match &self.user_claim {
                Some(claim) => string(claim),
                None => string("username").or_else(|| string("sub")),
            }
            .filter(|u| !u.is_empty()),
            scopes,
        };
        if !principal.has_scope(scope) {
            return Err(IdentityError::MissingScope(scope.to_owned()));
        }
        Ok(principal)
    }
}

/// Claims of a token whose signature someone else verified.
fn decode_unverified(token: &str) -> Result<Map<String, Value>, IdentityError> {
    jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token).map_err(invalid)
}

/// A token that could not be read or verified, said in words rather than as the library's enum.
fn invalid(error: jsonwebtoken::errors::Error) -> IdentityError {
    use jsonwebtoken::errors::ErrorKind;
    IdentityError::Invalid(match error.kind() {
        ErrorKind::InvalidToken => {
            "not a JWT (expected three dot-separated base64url parts)".into()
        }
        ErrorKind::InvalidSignature => "signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "token algorithm does not match its key".into(),
        ErrorKind::Base64(e) => format!("token is not base64url-encoded ({e})"),
        ErrorKind::Json(e) => format!("token header or claims are not a JSON object ({e})"),
        ErrorKind::Utf8(_) => "token header or claims are not UTF-8".into(),
        _ => error.to_string(),
    })
}

/// Parses a JWKS document.
pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, JwksError> {
    serde_json::from_slice(bytes).map_err(|e| JwksError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests;
