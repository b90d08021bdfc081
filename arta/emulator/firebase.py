"""Firebase's part of the service: anonymous sign-up, token refresh, and checking ID tokens.

Sign-up and refresh answer Google's error envelope (docs/protocol.rst section 1);
the image service's requests carry the ID tokens issued here, so checking
them (:meth:`FirebaseService.authenticate`) lives here too.
"""

from __future__ import annotations

import collections
import hashlib
import json
import secrets
import string
import threading
from collections.abc import Callable, Mapping
from urllib.parse import parse_qsl

from arta.emulator.counters import Counters
from arta.emulator.messages import Request, Response, detail_response, json_response
from arta.emulator.tokens import TokenAuthority, TokenRejected

__all__ = ["FIREBASE_ENDPOINTS", "FirebaseService", "firebase_error"]

#: The endpoints that answer Google's error envelope rather than FastAPI's.
FIREBASE_ENDPOINTS = ("signup", "refresh")

_SIGNUP_WINDOW = 3600.0  # Firebase's quota is per rolling hour
_UID_ALPHABET = string.ascii_letters + string.digits


def firebase_error(
    message: str,
    code: int = 400,
    status: str = "INVALID_ARGUMENT",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The error envelope every Google API answers with (docs/protocol.rst section 1)."""
    return json_response(
        code,
        {
            "error": {
                "code": code,
                "message": message,
                "errors": [{"message": message, "reason": "invalid", "domain": "global"}],
                "status": status,
            }
        },
        headers,
    )


def _refresh_form(request: Request) -> dict[str, str] | None:
    """The refresh body: url-encoded like the protocol, or JSON as Google also takes."""
    content_type = (request.header("Content-Type") or "").lower()
    try:
        if content_type.startswith("application/json"):
            value = json.loads(request.body or b"{}")
            if not isinstance(value, dict):
                return None
            return {str(k): str(v) for k, v in value.items()}
        return dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
    except (ValueError, UnicodeDecodeError):
        return None


class FirebaseService:
    """Accounts, refresh tokens and the sign-up quota; issues and checks ID tokens.

    ``signup_quota`` is the sign-ups allowed per rolling hour (None: no
    limit). Thread-safe.
    """

    def __init__(
        self,
        tokens: TokenAuthority,
        counters: Counters,
        clock: Callable[[], float],
        signup_quota: int | None = None,
    ) -> None:
        if signup_quota is not None and signup_quota < 0:
            raise ValueError(f"signup_quota must be >= 0 or None, not {signup_quota!r}")
        self.tokens = tokens
        self.signup_quota = signup_quota
        self._counters = counters
        self._clock = clock
        # Firebase answers a numeric project id on refresh; derive a stable one.
        digest = hashlib.sha256(tokens.project_id.encode("utf-8")).digest()
        self._project_number = str(int.from_bytes(digest[:5], "big"))
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every account, refresh token and sign-up time."""
        with self._lock:
            self._accounts: dict[str, int] = {}  # user id -> creation time
            self._refresh_tokens: dict[str, str] = {}  # refresh token -> user id
            self._signup_times: collections.deque[float] = collections.deque()

    def signup(self, request: Request, params: Mapping[str, str]) -> Response:
        """``signupNewUser`` / ``accounts:signUp``: a new anonymous account and its tokens."""
        if not request.query_param("key"):
            return firebase_error("API_KEY_INVALID")
        if request.body.strip():
            try:
                json.loads(request.body)
            except ValueError:
                return firebase_error("INVALID_JSON_PAYLOAD")
        now = self._clock()
        with self._lock:
            window = self._signup_times
            while window and window[0] <= now - _SIGNUP_WINDOW:
                window.popleft()
            if self.signup_quota is not None and len(window) >= self.signup_quota:
                return firebase_error("TOO_MANY_ATTEMPTS_TRY_LATER")
            window.append(now)
            user_id = "".join(secrets.choice(_UID_ALPHABET) for _ in range(28))
            refresh_token = "AMf-" + secrets.token_urlsafe(96)
            self._accounts[user_id] = int(now)
            self._refresh_tokens[refresh_token] = user_id
            self._counters.add("signups")  # as the account appears
        return json_response(
            200,
            {
                "kind": "identitytoolkit#SignupNewUserResponse",
                "idToken": self.tokens.issue(user_id, int(now), now),
                "refreshToken": refresh_token,
                "expiresIn": str(self.tokens.lifetime),
                "localId": user_id,
            },
        )

    def refresh(self, request: Request, params: Mapping[str, str]) -> Response:
        """``securetoken.googleapis.com/v1/token``: a new ID token for a refresh token."""
        if not request.query_param("key"):
            return firebase_error("API_KEY_INVALID")
        form = _refresh_form(request)
        if form is None:
            return firebase_error("INVALID_ARGUMENT")
        grant_type = form.get("grant_type")
        if not grant_type:
            return firebase_error("MISSING_GRANT_TYPE")
        if grant_type != "refresh_token":
            return firebase_error("INVALID_GRANT_TYPE")
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            return firebase_error("MISSING_REFRESH_TOKEN")
        now = self._clock()
        with self._lock:
            user_id = self._refresh_tokens.get(refresh_token)
            if user_id is None:
                return firebase_error("INVALID_REFRESH_TOKEN")
            auth_time = self._accounts.get(user_id, int(now))
            self._counters.add("refreshes")
        id_token = self.tokens.issue(user_id, auth_time, now)
        return json_response(
            200,
            {
                "access_token": id_token,
                "expires_in": str(self.tokens.lifetime),
                "token_type": "Bearer",
                "refresh_token": refresh_token,
                "id_token": id_token,
                "user_id": user_id,
                "project_id": self._project_number,
            },
        )

    def authenticate(self, request: Request) -> str | Response:
        """The account id of the request's valid ID token, or the 401 to answer.

        A 401 is counted in ``rejected_tokens``. A token without a user id
        (possible from Google's emulator) counts as one shared account.
        """
        raw = (request.header("Authorization") or "").strip()
        if raw[:7].lower() == "bearer ":
            raw = raw[7:].strip()
        reason = "Not authenticated"
        if raw:
            try:
                claims = self.tokens.verify(raw, self._clock())
                return str(claims.get("user_id") or claims.get("sub") or "anonymous")
            except TokenRejected as exc:
                reason = str(exc)
        self._counters.add("rejected_tokens")
        return detail_response(401, reason, {"WWW-Authenticate": "Bearer"})
