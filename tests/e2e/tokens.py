"""Tokens as the Cognito client-credentials flow issues them, signed with the dev key whose public
half is dev/keys/jwks.json (what every test configuration trusts), plus deliberately bad ones."""

from __future__ import annotations

import time
import uuid
from typing import Iterable

import jwt

from processes import REPO

DEV_KEYS = REPO / "dev" / "keys"
PRIVATE_KEY = DEV_KEYS / "dev-private.pem"
JWKS_FILE = DEV_KEYS / "jwks.json"
KID = "dev-1"
ISSUER = "https://tollgate.local/dev"
INVOKE_SCOPE = "https://gateway.internal/invoke"
ADMIN_SCOPE = "https://gateway.internal/admin"


def _private_key() -> bytes:
    return PRIVATE_KEY.read_bytes()


_other_key_pem: bytes | None = None


def other_private_key() -> bytes:
    """An RSA key that is not in the JWKS (for wrong-key tests)."""
    global _other_key_pem
    if _other_key_pem is None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _other_key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return _other_key_pem


def mint_token(
    client_id: str,
    *,
    scope: str | None = INVOKE_SCOPE,
    team: str | None = None,
    issuer: str = ISSUER,
    expires_in: int = 3600,
    key: bytes | None = None,
    kid: str = KID,
    extra: dict | None = None,
    drop: Iterable[str] = (),
) -> str:
    """A Cognito-style access token (client-credentials flow) signed with the dev key."""
    now = int(time.time())
    claims = {
        "sub": client_id,
        "token_use": "access",
        "scope": scope,
        "auth_time": now,
        "iss": issuer,
        "exp": now + expires_in,
        "iat": now,
        "version": 2,
        "jti": str(uuid.uuid4()),
        "client_id": client_id,
    }
    if scope is None:
        del claims["scope"]
    if team is not None:
        claims["custom:team"] = team
    claims.update(extra or {})
    for name in drop:
        claims.pop(name, None)
    return jwt.encode(claims, key or _private_key(), algorithm="RS256", headers={"kid": kid})


def unsigned_token(client_id: str, **kw) -> str:
    """An `alg: none` token with otherwise valid claims."""
    now = int(time.time())
    claims = {
        "sub": client_id,
        "token_use": "access",
        "scope": INVOKE_SCOPE,
        "iss": ISSUER,
        "exp": now + 3600,
        "iat": now,
        "client_id": client_id,
    }
    claims.update(kw)
    return jwt.encode(claims, None, algorithm="none", headers={"kid": KID})



def admin_token(client_id: str = "tollgate-admin", **kw) -> str:
    """An access token with the admin scope (and no team: the admin API needs none)."""
    kw.setdefault("scope", ADMIN_SCOPE)
    return mint_token(client_id, **kw)

