"""A Firebase ID token with its refresh token and lifetime: plain data, with no secret in its repr."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from arta import protocol

__all__ = ["Token"]


def _jwt_claims(jwt: str) -> dict[str, Any]:
    """The payload of a JWT, read without verifying its signature.

    We only want ``exp`` and ``iat``: the service verifies the signature, and
    an unreadable token simply has no claims.
    """
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, RecursionError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


@dataclass(frozen=True)
class Token:
    """An ID token with its refresh token and lifetime. Its repr shows no secret."""

    id_token: str
    refresh_token: str
    obtained_at: float
    expires_at: float
    user_id: str = ""

    @classmethod
    def from_grant(cls, grant: protocol.TokenGrant, now: float) -> Token:
        """Date a fresh grant by this machine's clock: received ``now``, good for ``expiresIn``.

        The JWT's ``exp``/``iat`` are the server's clock: a local clock an
        hour ahead would see every token as expired on arrival. They only
        give the lifetime when ``expiresIn`` is 0.
        """
        life = grant.expires_in
        if life <= 0:
            claims = _jwt_claims(grant.id_token)
            exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
            life = max(0.0, exp - iat) if exp is not None and iat is not None else 0.0
        return cls(grant.id_token, grant.refresh_token, now, now + life, grant.user_id)

    def renew_at(self) -> float:
        """When to refresh: at half of the token's life, the old provider's rule."""
        return self.obtained_at + (self.expires_at - self.obtained_at) / 2

    def fresh(self, now: float) -> bool:
        """True while the token is in the first half of its life."""
        return now < self.renew_at()

    def expired(self, now: float) -> bool:
        """True once the service will no longer take the token."""
        return now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The file format: a superset of the old provider's ``auth_ARTA.json``."""
        return {
            "idToken": self.id_token,
            "refreshToken": self.refresh_token,
            "expiresIn": str(round(self.expires_at - self.obtained_at)),
            "localId": self.user_id,
            "obtainedAt": self.obtained_at,
            "expiresAt": self.expires_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Token:
        """Read the file format, or a file written by the old provider (dated by its JWT)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - a bad file, not a bad call
        id_token, refresh_token = data.get("idToken"), data.get("refreshToken")
        if not isinstance(id_token, str) or not id_token or not isinstance(refresh_token, str):
            raise ValueError("no idToken/refreshToken")
        claims = _jwt_claims(id_token)
        expires_at = _number(data.get("expiresAt")) or _number(claims.get("exp"))
        obtained_at = _number(data.get("obtainedAt")) or _number(claims.get("iat"))
        if expires_at is None or obtained_at is None:
            raise ValueError("no expiry: neither expiresAt nor a JWT exp")
        return cls(id_token, refresh_token, obtained_at, expires_at, str(data.get("localId", "")))

    def __repr__(self) -> str:
        return (
            f"Token(user_id={self.user_id!r}, obtained_at={self.obtained_at:.0f}, "
            f"expires_at={self.expires_at:.0f})"
        )
