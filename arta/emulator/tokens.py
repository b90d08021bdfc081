"""Firebase-shaped ID tokens: issue HS256 JWTs, verify them, revoke them.

Real Firebase ID tokens are RS256 JWTs signed by Google; a client never
checks the signature (docs/protocol.rst section 3), it only reads ``exp``. So the
emulator signs with HMAC-SHA256 and a secret of its own, which is enough to
tell its tokens from forged or stale ones, with the standard library alone.

Tokens minted by Google's Firebase Auth Emulator are unsigned (``alg:
none``); a :class:`TokenAuthority` may accept those too, so that a client can
sign up against Google's emulator and generate against this one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "FIREBASE_ISSUER_PREFIX",
    "TokenAuthority",
    "TokenRejected",
    "b64url_decode",
    "b64url_encode",
    "decode_unverified",
]

#: Every Firebase ID token's ``iss`` starts with this, followed by the project id.
FIREBASE_ISSUER_PREFIX = "https://securetoken.google.com/"

_HEADER = {"alg": "HS256", "typ": "JWT"}
_CACHE_SIZE = 4096  # tokens whose signature was checked; a client holds one at a time


class TokenRejected(Exception):
    """An ID token that must be answered with 401; the message is safe to send.

    The message never contains the token itself.
    """


def b64url_encode(data: bytes) -> str:
    """Base64url without padding, as JWTs use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises :class:`ValueError`."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("not base64url") from exc


def _json_segment(segment: str) -> dict[str, Any]:
    """Decode one JWT segment holding a JSON object; raises :class:`ValueError`."""
    try:
        value = json.loads(b64url_decode(segment))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("segment is not base64url JSON") from exc
    if isinstance(value, dict):
        return value
    raise ValueError("segment is not a JSON object")


def decode_unverified(token: str) -> dict[str, Any]:
    """Return a JWT's payload without checking anything, as a client reads ``exp``.

    Raises :class:`ValueError` when ``token`` is not shaped like a JWT.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("a JWT has three dot-separated segments")
    return _json_segment(parts[1])


class TokenAuthority:
    """Issues and verifies the emulator's ID tokens.

    ``lifetime`` is how many seconds a new token lives (its ``exp`` minus its
    ``iat``); it may be changed later and then applies to tokens issued from
    then on. :meth:`revoke_all` invalidates every token issued so far by
    replacing the signing secret, while remembering the old ones, so that a
    revoked token can be told from a forged one. Thread-safe.

    Every status poll carries a token, and checking one (two JSON decodes
    and an HMAC) was most of a poll's cost; so the claims of tokens found
    valid are remembered (a bounded cache, emptied by :meth:`revoke_all`),
    and only their expiry is checked again.
    """

    def __init__(
        self,
        project_id: str = "arta-emulator",
        lifetime: int = 3600,
        accept_unsigned: bool = True,
    ) -> None:
        self.project_id = project_id
        self.lifetime = int(lifetime)
        self.accept_unsigned = accept_unsigned
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)
        self._retired: list[bytes] = []
        self._verified: dict[str, Mapping[str, Any]] = {}

    @property
    def issuer(self) -> str:
        """The ``iss`` claim of this authority's tokens."""
        return FIREBASE_ISSUER_PREFIX + self.project_id

    def issue(self, user_id: str, auth_time: int, now: float) -> str:
        """Return a new signed ID token for ``user_id``, issued at ``now``."""
        iat = int(now)
        payload = {
            "iss": self.issuer,
            "aud": self.project_id,
            "auth_time": int(auth_time),
            "user_id": user_id,
            "sub": user_id,
            "iat": iat,
            "exp": iat + self.lifetime,
            "firebase": {"identities": {}, "sign_in_provider": "anonymous"},
            # Not in Firebase's tokens, but standard (RFC 7519): without it two
            # tokens issued in the same second would be identical, and a client
            # could not tell that a refresh gave it a new token.
            "jti": secrets.token_urlsafe(12),
        }
        signing_input = ".".join(
            b64url_encode(json.dumps(part, separators=(",", ":")).encode("utf-8"))
            for part in (_HEADER, payload)
        )
        with self._lock:
            secret = self._secret
        return signing_input + "." + b64url_encode(_sign(secret, signing_input))

    def revoke_all(self) -> None:
        """Make every token issued so far fail verification; new ones are fine."""
        with self._lock:
            self._retired.append(self._secret)
            self._secret = secrets.token_bytes(32)
            self._verified = {}

    def verify(self, token: str, now: float) -> Mapping[str, Any]:
        """Return the claims of a token that is valid at ``now``.

        Raises :class:`TokenRejected` with a reason that is safe to send back.
        """
        claims = self._verified.get(token)
        if claims is None:
            with self._lock:
                secret = self._secret
            claims = self._check(token)
            with self._lock:
                # Not if revoke_all() ran meanwhile: the check may predate it.
                if self._secret is secret:
                    if len(self._verified) >= _CACHE_SIZE:
                        self._verified = {}
                    self._verified[token] = claims
        if claims["exp"] <= now:
            raise TokenRejected("Token expired")
        return claims

    def _check(self, token: str) -> Mapping[str, Any]:
        """The claims of a well-formed token signed by the current secret (or unsigned, if
        accepted), whatever its expiry; raises :class:`TokenRejected`."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected("Invalid token")
        try:
            header = _json_segment(parts[0])
            claims = _json_segment(parts[1])
        except ValueError:
            raise TokenRejected("Invalid token") from None
        alg = header.get("alg")
        if alg == "HS256":
            self._check_signature(parts)
        elif alg == "none" and self.accept_unsigned:
            issuer = claims.get("iss")
            if not isinstance(issuer, str) or not issuer.startswith(FIREBASE_ISSUER_PREFIX):
                raise TokenRejected("Invalid token issuer")
        else:
            raise TokenRejected("Invalid token")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise TokenRejected("Invalid token")
        return claims

    def _check_signature(self, parts: list[str]) -> None:
        """Raise :class:`TokenRejected` unless the current secret signed ``parts``."""
        try:
            signature = b64url_decode(parts[2])
        except ValueError:
            raise TokenRejected("Invalid token") from None
        signing_input = parts[0] + "." + parts[1]
        with self._lock:
            current, retired = self._secret, list(self._retired)
        if hmac.compare_digest(signature, _sign(current, signing_input)):
            return
        if any(hmac.compare_digest(signature, _sign(old, signing_input)) for old in retired):
            raise TokenRejected("Token has been revoked")
        raise TokenRejected("Invalid token signature")


def _sign(secret: bytes, signing_input: str) -> bytes:
    """HMAC-SHA256 of a JWT's ``header.payload``."""
    return hmac.new(secret, signing_input.encode("utf-8"), hashlib.sha256).digest()
