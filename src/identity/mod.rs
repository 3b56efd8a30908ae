//! Who is calling: a Cognito-style access token becomes a [`Principal`].
//!
//! Claims come from Envoy's `jwt_authn` metadata when Envoy already verified the token, else from
//! the `Authorization: Bearer` header, verified here against a JWKS (RS256, `iss`, `exp`) unless
//! the operator chose to trust an upstream verifier such as the ALB's `jwt-validation`.

mod jwks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation, decode, decode_header, jwk::JwkSet};
use serde_json::{Map, Value};

use crate::policy::{Rejection, RejectionKind};

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
    /// `username` for user tokens, else `sub`.
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
    #[error("token lacks the required scope {0}")]
    MissingScope(String),
}

impl IdentityError {
    /// The refusal every adapter answers with: 401 for no or a bad token, 403 for a missing scope.
    pub fn rejection(&self) -> Rejection {
        let kind = match self {
            Self::MissingScope(_) => RejectionKind::Forbidden,
            Self::Missing | Self::Invalid(_) => RejectionKind::Unauthenticated,
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
    validation: Validation,
    team_claim: Option<String>,
    /// Tokens whose signature was verified, so the same token (an agent sends the same one for an
    /// hour) costs one RSA verification, not one per request.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

struct Verified {
    claims: Arc<Map<String, Value>>,
    /// Unix seconds: the token's `exp`, capped at `VERIFIED_CACHE_TTL` after verification.
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
        validation.leeway = leeway.as_secs();
        // Cognito access tokens carry `client_id`, not `aud`.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
        }
        Self {
            verification,
            validation,
            team_claim,
            verified: Mutex::new(HashMap::new()),
        }
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
            Verification::TrustUpstream => Arc::new(
                jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
                    .map_err(|e| IdentityError::Invalid(e.to_string()))?,
            ),
        };
        self.principal(&claims, scope)
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
        let claims = Arc::new(self.verify(keys, token).await?);
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(now);
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
                valid_until: exp.min(now + VERIFIED_CACHE_TTL),
            },
        );
        Ok(claims)
    }

    /// The caller of a request that already happened, from the token an access-log record kept:
    /// the signature and issuer are checked as usual, but not expiry, because the token was valid
    /// when the request was admitted and the record may be processed hours later.
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
            Verification::Keys(keys) => {
                let mut validation = self.validation.clone();
                validation.validate_exp = false;
                self.verify_with(keys, token, &validation).await?
            }
            Verification::TrustUpstream => {
                jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
                    .map_err(|e| IdentityError::Invalid(e.to_string()))?
            }
        };
        self.principal(&claims, scope)
    }

    /// Claims that Envoy's `jwt_authn` already verified.
    pub fn authenticate_verified_claims(
        &self,
        claims: &Map<String, Value>,
        scope: &str,
    ) -> Result<Principal, IdentityError> {
        self.principal(claims, scope)
    }

    async fn verify(
        &self,
        keys: &KeySet,
        token: &str,
    ) -> Result<Map<String, Value>, IdentityError> {
        self.verify_with(keys, token, &self.validation).await
    }

    async fn verify_with(
        &self,
        keys: &KeySet,
        token: &str,
        validation: &Validation,
    ) -> Result<Map<String, Value>, IdentityError> {
        let header = decode_header(token).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        if header.alg != Algorithm::RS256 {
            return Err(IdentityError::Invalid(format!(
                "unsupported algorithm {:?}",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| IdentityError::Invalid("token header has no kid".into()))?;
        let key = keys
            .key(&kid)
            .await
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        decode::<Map<String, Value>>(token, &key, validation)
            .map(|data| data.claims)
            .map_err(|e| IdentityError::Invalid(e.to_string()))
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
            user: string("username").or_else(|| string("sub")),
            scopes,
        };
        if !principal.has_scope(scope) {
            return Err(IdentityError::MissingScope(scope.to_owned()));
        }
        Ok(principal)
    }
}

/// Parses a JWKS document.
pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, JwksError> {
    serde_json::from_slice(bytes).map_err(|e| JwksError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests;
