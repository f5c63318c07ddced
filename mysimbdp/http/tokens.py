"""Bearer tokens: tenants' (checked against ``token_sha256``) and the operators' admin token."""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["hash_token", "new_token", "token_matches", "bearer_token"]


def hash_token(token: str) -> str:
    """The hex sha256 stored in a tenant profile as ``token_sha256``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def token_matches(token: str | None, expected_sha256: str | None) -> bool:
    """Constant-time check of ``token`` against a stored hash; False if either is missing."""
    if not token or not expected_sha256:
        return False
    return hmac.compare_digest(hash_token(token), expected_sha256)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
