"""The wire protocol (docs/protocol.rst): requests built as data, answers parsed into types.

No I/O policy lives here: no retries, no sleeping, no token caching. The
callers above send what this module builds through a transport and hand the
response back to be parsed; every HTTP error body is mapped to a typed
exception from :mod:`arta.errors`.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from arta.config import Settings
from arta.errors import (
    AuthError,
    JobNotFoundError,
    MalformedResponse,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    RejectedError,
    ServiceError,
)
from arta.images import Image
from arta.params import GenerationParams
from arta.redact import printable, redact, remove_secrets, spellings
from arta.retry import retry_after
from arta.transport import DEFAULT_TIMEOUT, Request, Response, Timeout

__all__ = [
    "FATAL_REFRESH_ERRORS",
    "MAX_IMAGES",
    "RANK",
    "JobState",
    "RefreshRejected",
    "Status",
    "TokenGrant",
    "TokenRejected",
    "parse_job",
    "parse_refresh",
    "parse_signup",
    "refresh_request",
    "request_secrets",
    "signup_request",
    "status_request",
    "submit_request",
]

#: Refresh answers after which only a new sign-up helps (docs/protocol.rst section 2).
FATAL_REFRESH_ERRORS = frozenset(
    {"INVALID_REFRESH_TOKEN", "TOKEN_EXPIRED", "USER_DISABLED", "USER_NOT_FOUND",
     "INVALID_GRANT_TYPE", "MISSING_REFRESH_TOKEN"}
)


#: Most images one status answer may list when the job's ``n`` is not known
#: (a resumed job); the app asks for at most 4. More is a hostile answer,
#: refused before a single download starts.
MAX_IMAGES = 64

#: The longest server-supplied text kept in an error message.
_MAX_TEXT = 2000


class TokenRejected(AuthError):
    """The image service answered 401/403 to our ID token."""


class RefreshRejected(AuthError):
    """Firebase refused the refresh token; only a new sign-up helps."""


@dataclass(frozen=True)
class TokenGrant:
    """An ID token and its refresh token, as Firebase granted them."""

    id_token: str
    refresh_token: str
    expires_in: float
    user_id: str

    def __repr__(self) -> str:
        return f"TokenGrant(user_id={self.user_id!r}, expires_in={self.expires_in:g})"


class Status(str, enum.Enum):
    """Where a job stands."""

    SUBMITTED = "SUBMITTED"
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        """True once the job can change no more."""
        return self in (Status.DONE, Status.FAILED)

    def __str__(self) -> str:
        return self.value


#: The statuses the service sends, as sent.
_WIRE_STATUSES = frozenset(status.value for status in Status)

#: How far along each status is: a job only ever moves to a higher rank.
RANK = {Status.SUBMITTED: 0, Status.IN_QUEUE: 1, Status.IN_PROGRESS: 2,
         Status.DONE: 3, Status.FAILED: 3}


@dataclass(frozen=True)
class JobState:
    """One answer of submit or status (docs/protocol.rst sections 4 and 5)."""

    record_id: str
    status: str
    images: tuple[Image, ...] = ()
    error_code: str | None = None
    error_details: str | None = None
    seed: int | None = None


# -- building requests ------------------------------------------------------

_JSON = {"Accept": "application/json"}


def signup_request(settings: Settings) -> Request:
    """docs/protocol.rst section 1: make a new anonymous Firebase account."""
    return Request("POST", settings.signup_url, headers=_JSON,
                   json={"clientType": "CLIENT_TYPE_ANDROID"})


def refresh_request(settings: Settings, refresh_token: str) -> Request:
    """docs/protocol.rst section 2: trade a refresh token for a new ID token."""
    return Request("POST", settings.refresh_url, headers=_JSON,
                   form={"grant_type": "refresh_token", "refresh_token": refresh_token})


def submit_request(settings: Settings, id_token: str, params: GenerationParams,
                   timeout: Timeout = DEFAULT_TIMEOUT) -> Request:
    """docs/protocol.rst section 4: start a job (multipart, as the Android app sends it)."""
    return Request("POST", settings.submit_url,
                   headers={**_JSON, "Authorization": id_token},
                   multipart=params.form(), timeout=timeout)


def status_request(settings: Settings, id_token: str, record_id: str,
                   deadline: float | None = None, timeout: Timeout = DEFAULT_TIMEOUT) -> Request:
    """docs/protocol.rst section 5: ask how a job is doing (the answer due by ``deadline``)."""
    return Request("GET", settings.status_url(record_id),
                   headers={**_JSON, "Authorization": id_token}, timeout=timeout,
                   deadline=deadline)


def request_secrets(request: Request) -> tuple[str, ...]:
    """The secrets ``request`` carries (its token, refresh token, API key): a server may echo them."""
    key = dict(parse_qsl(urlsplit(request.url).query)).get("key") if "?" in request.url else None
    found = (request.headers.get("Authorization"), (request.form or {}).get("refresh_token"), key)
    return tuple(secret for secret in found if secret)


# -- parsing answers --------------------------------------------------------


def _read(response: Response, secrets: Collection[str]) -> bytes:
    """The body, with the request's own secrets taken out (a server may quote the request back)."""
    body = response.read()
    # Searched as bytes first: every answer is read here, and almost none quotes a secret.
    if not any(spelling.encode("utf-8", "surrogateescape") in body
               for spelling in spellings(tuple(secrets))):
        return body
    return remove_secrets(body.decode("utf-8", "surrogateescape"), secrets).encode(
        "utf-8", "surrogateescape")


def _loads(body: bytes) -> Any:
    """``json.loads``, with nesting too deep for the parser reported as what it is."""
    try:
        return json.loads(body)
    except RecursionError:
        raise MalformedResponse(f"the answer is JSON nested too deep to read ({len(body)} bytes)") \
            from None


def _json_body(response: Response, what: str, secrets: Collection[str] = ()) -> Any:
    body = _read(response, secrets)
    try:
        return _loads(body)
    except MalformedResponse as error:
        raise MalformedResponse(f"{what}: {error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ProtocolError(
            f"{what}: expected JSON, got {len(body)} bytes that are not (HTTP {response.status})"
        ) from error


def _text(value: Any) -> str:
    """A server-supplied value as one printable line (no terminal escapes), bounded."""
    if not isinstance(value, (str, int, float)):
        value = "(a nested value)" if isinstance(value, (list, dict)) else str(value)
    return redact(printable(str(value)))[:_MAX_TEXT]


def _firebase_error(response: Response, what: str, secrets: Collection[str]) -> Exception:
    try:
        code = _text(_loads(_read(response, secrets))["error"]["message"]).split(":", 1)[0].strip()
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, MalformedResponse):
        code = ""
    if not code or (response.status >= 429 and code != "TOO_MANY_ATTEMPTS_TRY_LATER"):
        # A 429/5xx or an answer that is no Firebase error at all: the
        # service is struggling, not refusing us.
        return _service_error(response, what, None, secrets)
    if code == "TOO_MANY_ATTEMPTS_TRY_LATER":
        wait = retry_after(response.headers) or 3600.0
        return QuotaExceededError(
            "Firebase refused a new anonymous account (TOO_MANY_ATTEMPTS_TRY_LATER): "
            "its quota of 100 sign-ups per hour per IP address is spent. "
            f"Wait about {wait / 60:.0f} minutes, and share one token store between "
            "processes (the default FileTokenStore does) so that one sign-up serves all",
            retry_after=wait,
        )
    if code in FATAL_REFRESH_ERRORS:
        return RefreshRejected(f"{what}: Firebase refused the refresh token ({code})")
    return AuthError(f"{what}: Firebase answered HTTP {response.status} {code}")


def _grant(body: Any, what: str, keys: tuple[str, str, str, str]) -> TokenGrant:
    id_key, refresh_key, expires_key, user_key = keys
    try:
        id_token, refresh_token = body[id_key], body[refresh_key]
        expires_in = float(body[expires_key])
        user_id = str(body.get(user_key, ""))
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise ProtocolError(f"{what}: the answer lacks {id_key}/{refresh_key}/{expires_key}") from error
    if not isinstance(id_token, str) or not isinstance(refresh_token, str) or not id_token:
        raise ProtocolError(f"{what}: the tokens in the answer are not strings")
    if not math.isfinite(expires_in) or expires_in < 0:
        # Asking again would only spend another anonymous account on the same answer.
        raise MalformedResponse(f"{what}: {expires_key} is {_text(body[expires_key])[:40]!r}, "
                                "not a finite, non-negative number of seconds")
    return TokenGrant(id_token, refresh_token, expires_in, user_id)


def parse_signup(response: Response, secrets: Collection[str] = ()) -> TokenGrant:
    """Parse a sign-up answer (camelCase, ``expiresIn`` a string of seconds).

    ``secrets`` (the request's, :func:`request_secrets`) never appear in an error's text.
    """
    if response.status != 200:
        raise _firebase_error(response, "sign-up", secrets)
    return _grant(_json_body(response, "sign-up"), "sign-up",
                  ("idToken", "refreshToken", "expiresIn", "localId"))


def parse_refresh(response: Response, secrets: Collection[str] = ()) -> TokenGrant:
    """Parse a refresh answer (snake_case, unlike sign-up); ``secrets`` as for :func:`parse_signup`."""
    if response.status != 200:
        raise _firebase_error(response, "token refresh", secrets)
    return _grant(_json_body(response, "token refresh"), "token refresh",
                  ("id_token", "refresh_token", "expires_in", "user_id"))


def _detail(body: Any) -> str:
    """Say what a FastAPI-style ``detail`` says, in one line."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc", [])
                loc = ".".join(_text(p) for p in loc if p != "body") if isinstance(loc, list) else ""
                parts.append(f"{loc}: {_text(item.get('msg', ''))}".strip(": "))
            if len(parts) >= 10:
                break
        return _text("; ".join(parts) or "invalid request")
    return _text(detail) if detail else ""


def _service_error(response: Response, what: str, record_id: str | None,
                   secrets: Collection[str]) -> Exception:
    try:
        detail = _detail(_loads(_read(response, secrets)))
    except (ValueError, UnicodeDecodeError, MalformedResponse):
        detail = ""
    said = f"HTTP {response.status}" + (f": {detail}" if detail else "")
    status = response.status
    if status in (401, 403):
        return TokenRejected(f"{what}: the image service rejected the token ({said})")
    wait = retry_after(response.headers)
    if status == 429:
        return RateLimitedError(f"{what}: rate limited ({said})", status=status,
                                record_id=record_id, retry_after=wait)
    if 400 <= status < 500:
        return RejectedError(f"{what}: the service refused the request ({said})",
                             status=status, record_id=record_id)
    return ServiceError(f"{what}: the service failed ({said})", status=status,
                        record_id=record_id, retry_after=wait)


def _images(value: Any) -> tuple[Image, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProtocolError("status: 'response' is not a list of images")
    if len(value) > MAX_IMAGES:
        raise MalformedResponse(f"status: the answer lists {len(value)} images; a job has at "
                                f"most {MAX_IMAGES} (the app asks for 4)")
    images = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ProtocolError("status: an image entry has no url")
        images.append(Image(
            url=item["url"],
            name=_text(item.get("name") or ""),
            mime=_text(item.get("MIME") or item.get("mime") or "image/png"),
            blurred=bool(item.get("isBlur", False)),
        ))
    return tuple(images)


def parse_job(response: Response, what: str = "status", record_id: str | None = None,
              secrets: Collection[str] = ()) -> JobState:
    """Parse a submit or status answer into a :class:`JobState`.

    ``secrets`` (the request's, :func:`request_secrets`) are taken out of
    the body first: no error text or ``error_details`` can quote them.

    A 404 to a status question means the service knows no such job:
    :class:`~arta.errors.JobNotFoundError`, which is not worth a retry.
    """
    if response.status == 404 and what == "status":
        raise JobNotFoundError(f"status: the service knows no job {record_id!r} (HTTP 404)",
                               status=404, record_id=record_id)
    if response.status != 200:
        raise _service_error(response, what, record_id, secrets)
    try:
        return _job(_json_body(response, what, secrets), what, record_id)
    except ProtocolError as error:
        raise error.with_record_id(record_id) if record_id else error


def _job(body: Any, what: str, record_id: str | None) -> JobState:
    if not isinstance(body, dict) or not isinstance(body.get("record_id"), (str, int)) \
            or isinstance(body["record_id"], bool):
        raise ProtocolError(f"{what}: the answer has no record_id", record_id=record_id)
    new_id = str(body["record_id"])
    if printable(new_id) != new_id or not new_id.strip() or len(new_id) > _MAX_TEXT:
        raise ProtocolError(f"{what}: the answer's record_id is not a plain line of text",
                            record_id=record_id)
    seed, status = body.get("seed"), body.get("status")
    return JobState(
        record_id=new_id,
        # A status the wire protocol names is plain text: no need to clean it (every poll).
        status=status if isinstance(status, str) and status in _WIRE_STATUSES
        else _text(status or ""),
        images=_images(body.get("response")),
        error_code=None if body.get("error_code") is None else _text(body["error_code"]),
        error_details=None if body.get("error_details") is None else _text(body["error_details"]),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )

