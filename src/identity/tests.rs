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
    for (t, said) in [
        (token(expired, "dev-1"), "token expired at "),
        (
            token(foreign, "dev-1"),
            "token was issued by https://evil.example, expected https://tollgate.local/dev",
        ),
        (
            token(claims(), "other-kid"),
            "invalid token: no signing key with kid \"other-kid\"",
        ),
    ] {
        let err = auth
            .authenticate_header(Some(&bearer(&t)), INVOKE_SCOPE)
            .await
            .unwrap_err();
        assert_eq!(err.rejection().kind, RejectionKind::Unauthenticated);
        assert!(err.to_string().starts_with(said), "{err}");
    }
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_not_unauthenticated() {
    // Nothing listens on port 9 of loopback: the fetch fails at once, and nothing is cached.
    let keys = KeySet::new(
        JwksSource::Url("http://127.0.0.1:9/.well-known/jwks.json".into()),
        Duration::from_secs(30),
        Duration::from_secs(3600),
    );
    assert!(keys.load().await.is_err());
    let auth = Authenticator::new(
        Verification::Keys(keys),
        Some(ISSUER),
        Some("custom:team".into()),
        Duration::from_secs(5),
    );
    let err = auth
        .authenticate_header(Some(&bearer(&token(claims(), "dev-1"))), INVOKE_SCOPE)
        .await
        .unwrap_err();
    assert!(matches!(err, IdentityError::KeysUnavailable(_)), "{err:?}");
    let rejection = err.rejection();
    assert_eq!(rejection.kind, RejectionKind::Unavailable);
    assert_eq!(rejection.kind.status(), 503);
    assert!(
        rejection
            .reason
            .starts_with("tokens cannot be verified right now: JWKS unavailable"),
        "{}",
        rejection.reason
    );
}

/// Every way a token reaches tollgate: verified here, verified by a trusted proxy in front
/// (`trust_upstream`), or verified by Envoy and handed over as claims.
async fn every_path(auth: &Authenticator, claims: Value) -> Vec<Result<Principal, IdentityError>> {
    let header = bearer(&token(claims.clone(), "dev-1"));
    vec![
        auth.authenticate_header(Some(&header), INVOKE_SCOPE).await,
        trusting()
            .authenticate_header(Some(&header), INVOKE_SCOPE)
            .await,
        auth.authenticate_verified_claims(claims.as_object().unwrap(), INVOKE_SCOPE),
    ]
}

fn trusting() -> Authenticator {
    Authenticator::new(
        Verification::TrustUpstream,
        Some(ISSUER),
        Some("custom:team".into()),
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused_on_every_path() {
    let auth = verifying().await;
    let mut early = claims();
    early["nbf"] = json!(get_current_timestamp() + 600);
    for outcome in every_path(&auth, early).await {
        let err = outcome.unwrap_err();
        assert!(
            matches!(err, IdentityError::Claims(ClaimError::NotYetValid { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("token not valid before "),
            "{err}"
        );
    }
    // Within the leeway (5 s) it passes: clocks differ a little.
    let mut almost = claims();
    almost["nbf"] = json!(get_current_timestamp() + 2);
    for outcome in every_path(&auth, almost).await {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}

#[tokio::test]
async fn a_token_without_iss_is_refused_when_an_issuer_is_configured() {
    let auth = verifying().await;
    let mut anonymous = claims();
    anonymous.as_object_mut().unwrap().remove("iss");
    for outcome in every_path(&auth, anonymous.clone()).await {
        assert_eq!(
            outcome.unwrap_err().to_string(),
            format!("token has no iss claim; expected {ISSUER}")
        );
    }
    // Without a configured issuer any issuer (or none) is accepted.
    let open = Authenticator::new(Verification::TrustUpstream, None, None, Duration::ZERO);
    assert!(
        open.authenticate_header(Some(&bearer(&token(anonymous, "x"))), INVOKE_SCOPE)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_token_that_never_expires_is_refused_on_every_path() {
    let auth = verifying().await;
    let mut forever = claims();
    forever.as_object_mut().unwrap().remove("exp");
    for outcome in every_path(&auth, forever).await {
        assert_eq!(
            outcome.unwrap_err(),
            IdentityError::Claims(ClaimError::NoExpiry)
        );
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_on_every_path_and_says_when() {
    let auth = verifying().await;
    let mut expired = claims();
    expired["exp"] = json!(get_current_timestamp() - 3 * 3600);
    for outcome in every_path(&auth, expired).await {
        let said = outcome.unwrap_err().to_string();
        assert!(said.starts_with("token expired at 20"), "{said}");
        assert!(said.ends_with("(3 hours ago)"), "{said}");
    }
}

#[tokio::test]
async fn a_garbled_token_is_described_not_named_by_an_enum() {
    let auth = verifying().await;
    let err = auth
        .authenticate_header(Some("Bearer not-a-jwt"), INVOKE_SCOPE)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid token: not a JWT (expected three dot-separated base64url parts)"
    );
}

#[tokio::test]
async fn a_tampered_signature_is_refused() {
    let auth = verifying().await;
    let t = token(claims(), "dev-1");
    let (rest, sig) = t.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    let forged = format!("{rest}.{flipped}{}", &sig[1..]);
    assert_eq!(
        auth.authenticate_header(Some(&bearer(&forged)), INVOKE_SCOPE)
            .await,
        Err(IdentityError::Invalid("signature does not verify".into()))
    );
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
    // Valid for at least a whole second (a token is expired from its `exp` second on).
    c["exp"] = json!(get_current_timestamp() + 2);
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
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(matches!(
        auth.authenticate_header(Some(&t), INVOKE_SCOPE).await,
        Err(IdentityError::Claims(ClaimError::Expired { .. }))
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
        Err(IdentityError::Claims(ClaimError::Expired { .. }))
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
    let mut no_issuer = claims();
    no_issuer.as_object_mut().unwrap().remove("iss");
    assert!(matches!(
        auth.authenticate_recorded(&token(no_issuer, "dev-1"), INVOKE_SCOPE)
            .await,
        Err(IdentityError::Claims(ClaimError::NoIssuer { .. }))
    ));
    assert_eq!(
        auth.authenticate_recorded("", INVOKE_SCOPE).await,
        Err(IdentityError::Missing)
    );
}

#[tokio::test]
async fn the_user_is_named_by_the_configured_claim() {
    let mut with_user = claims();
    with_user["username"] = json!("alice");
    with_user["custom:person"] = json!("alice@example.com");
    let t = bearer(&token(with_user, "x"));
    let user_by = |claim: Option<&str>| {
        Authenticator::new(Verification::TrustUpstream, None, None, Duration::ZERO)
            .with_user_claim(claim.map(str::to_owned))
    };
    for (claim, expected) in [
        (None, Some("alice")),
        (Some("sub"), Some("abc")),
        (Some("client_id"), Some("search-agent")),
        (Some("custom:person"), Some("alice@example.com")),
        (Some("custom:absent"), None),
    ] {
        let p = user_by(claim)
            .authenticate_header(Some(&t), INVOKE_SCOPE)
            .await
            .unwrap();
        assert_eq!(p.user.as_deref(), expected, "{claim:?}");
    }
}
