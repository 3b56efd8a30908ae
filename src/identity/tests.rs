use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};

use super::*;

const PRIVATE_KEY: &[u8] = include_bytes!("../../dev/keys/dev-private.pem");
const ISSUER: &str = "https://tollgate.local/dev";

fn jwks_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dev/keys/jwks.json")
}

fn token(claims: Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(PRIVATE_KEY).unwrap(),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({
        "iss": ISSUER, "exp": get_current_timestamp() + 600, "iat": get_current_timestamp(),
        "client_id": "search-agent", "scope": format!("openid {INVOKE_SCOPE}"), "token_use": "access",
        "sub": "abc", "custom:team": "search",
    })
}

async fn verifying() -> Authenticator {
    let keys = KeySet::new(
        JwksSource::File(jwks_path()),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    keys.load().await.unwrap();
    Authenticator::new(
        Verification::Keys(keys),
        Some(ISSUER),
        Some("custom:team".into()),
        Duration::from_secs(5),
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn a_valid_token_yields_its_principal() {
    let auth = verifying().await;
    let p = auth
        .authenticate_header(Some(&bearer(&token(claims(), "dev-1"))), INVOKE_SCOPE)
        .await
        .unwrap();
    assert_eq!(p.team.as_deref(), Some("search"));
    assert_eq!(p.client_id.as_deref(), Some("search-agent"));
    assert_eq!(p.user.as_deref(), Some("abc"));
    assert!(p.has_scope("openid"));
}

#[tokio::test]
async fn missing_and_malformed_headers_are_unauthenticated() {
    let auth = verifying().await;
    for header in [None, Some(""), Some("Bearer "), Some("Basic dXNlcjpwYXNz")] {
        assert_eq!(
            auth.authenticate_header(header, INVOKE_SCOPE).await,
            Err(IdentityError::Missing),
            "{header:?}"
        );
    }
    assert!(matches!(
        auth.authenticate_header(Some("Bearer not.a.jwt"), INVOKE_SCOPE)
            .await,
        Err(IdentityError::Invalid(_))
    ));
}

#[tokio::test]
async fn expired_wrong_issuer_and_unknown_kid_are_refused() {
    let auth = verifying().await;
    let mut expired = claims();
    expired["exp"] = json!(get_current_timestamp() - 120);
    let mut foreign = claims();
    foreign["iss"] = json!("https://evil.example");
    for t in [
        token(expired, "dev-1"),
        token(foreign, "dev-1"),
        token(claims(), "other-kid"),
    ] {
        let err = auth
            .authenticate_header(Some(&bearer(&t)), INVOKE_SCOPE)
            .await
            .unwrap_err();
        assert!(matches!(err, IdentityError::Invalid(_)), "{err:?}");
    }
}

#[tokio::test]
async fn a_tampered_signature_is_refused() {
    let auth = verifying().await;
    let t = token(claims(), "dev-1");
    let (rest, sig) = t.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let forged = format!("{rest}.{flipped}{}", &sig[1..]);
    assert!(matches!(
        auth.authenticate_header(Some(&bearer(&forged)), INVOKE_SCOPE)
            .await,
        Err(IdentityError::Invalid(_))
    ));
}

#[tokio::test]
async fn the_scope_must_be_granted() {
    let auth = verifying().await;
    let mut c = claims();
    c["scope"] = json!("openid https://gateway.internal/invokeX");
    assert_eq!(
        auth.authenticate_header(Some(&bearer(&token(c, "dev-1"))), INVOKE_SCOPE)
            .await,
        Err(IdentityError::MissingScope(INVOKE_SCOPE.into()))
    );
    assert_eq!(
        auth.authenticate_header(Some(&bearer(&token(claims(), "dev-1"))), ADMIN_SCOPE)
            .await,
        Err(IdentityError::MissingScope(ADMIN_SCOPE.into()))
    );
}

#[tokio::test]
async fn trusting_upstream_decodes_without_verifying() {
    let auth = Authenticator::new(Verification::TrustUpstream, None, None, Duration::ZERO);
    let p = auth
        .authenticate_header(Some(&bearer(&token(claims(), "unknown"))), INVOKE_SCOPE)
        .await
        .unwrap();
    assert_eq!(p.client_id.as_deref(), Some("search-agent"));
    assert_eq!(p.team, None, "no team claim configured");
}

#[tokio::test]
async fn verified_claims_from_envoy_metadata_still_need_the_scope() {
    let auth = verifying().await;
    let claims = claims().as_object().unwrap().clone();
    assert!(
        auth.authenticate_verified_claims(&claims, INVOKE_SCOPE)
            .is_ok()
    );
    assert!(
        auth.authenticate_verified_claims(&claims, ADMIN_SCOPE)
            .is_err()
    );
}

#[tokio::test]
async fn a_cached_verification_ends_when_the_token_expires() {
    let keys = KeySet::new(
        JwksSource::File(jwks_path()),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    keys.load().await.unwrap();
    let auth = Authenticator::new(Verification::Keys(keys), Some(ISSUER), None, Duration::ZERO);
    let mut c = claims();
    c["exp"] = json!(get_current_timestamp() + 1);
    let t = bearer(&token(c, "dev-1"));
    assert!(
        auth.authenticate_header(Some(&t), INVOKE_SCOPE)
            .await
            .is_ok()
    );
    assert!(
        auth.authenticate_header(Some(&t), INVOKE_SCOPE)
            .await
            .is_ok(),
        "served from the cache"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(matches!(
        auth.authenticate_header(Some(&t), INVOKE_SCOPE).await,
        Err(IdentityError::Invalid(_))
    ));
}

#[tokio::test]
async fn recorded_tokens_are_verified_but_may_have_expired_since() {
    let auth = verifying().await;
    let mut expired = claims();
    expired["exp"] = json!(get_current_timestamp() - 7200);
    let expired = token(expired, "dev-1");
    assert!(matches!(
        auth.authenticate_header(Some(&bearer(&expired)), INVOKE_SCOPE)
            .await,
        Err(IdentityError::Invalid(_))
    ));
    for recorded in [expired.clone(), bearer(&expired)] {
        let p = auth
            .authenticate_recorded(&recorded, INVOKE_SCOPE)
            .await
            .unwrap();
        assert_eq!(p.team.as_deref(), Some("search"));
    }
    // The signature still counts: a record cannot name a team with a forged token.
    let mut forged = expired.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    assert!(matches!(
        auth.authenticate_recorded(&forged, INVOKE_SCOPE).await,
        Err(IdentityError::Invalid(_))
    ));
    let mut other_issuer = claims();
    other_issuer["iss"] = json!("https://elsewhere");
    assert!(
        auth.authenticate_recorded(&token(other_issuer, "dev-1"), INVOKE_SCOPE)
            .await
            .is_err()
    );
    assert_eq!(
        auth.authenticate_recorded("", INVOKE_SCOPE).await,
        Err(IdentityError::Missing)
    );
}
