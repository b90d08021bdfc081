"""Keep secrets and terminal escapes out of text that people read: logs, errors, tracebacks.

Three things must never be printed as they are:

- secrets: an ID token (a JWT), a refresh token, the API key in ``?key=``,
  a password in a URL (``http://user:pw@host``);
- values a caller knows to be secret but no pattern recognises (an ID
  token holding a newline, quoted back by requests' ``InvalidHeader``);
- terminal control characters sent by a server (a title or clear-screen
  escape in an ``error_details``), which :func:`printable` strips as git does.

:func:`redact` does the first two for any text, :func:`scrub_chain` for an
exception and all its causes, and :class:`RedactingFilter` for every log
record reaching a handler (urllib3's DEBUG lines included).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from urllib.parse import quote_plus

__all__ = ["REDACTED", "RedactingFilter", "install_log_redaction", "printable", "redact",
           "redact_logger", "remove_secrets", "scrub_chain", "spellings"]

#: What a secret is replaced with.
REDACTED = "REDACTED"

_PATTERNS = (
    # A password in a URL: scheme://user:password@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@/\s]+@"), rf"\g<1>{REDACTED}@"),
    # A query parameter named like a secret: ?key=..., &id_token=..., &password=...
    (re.compile(r"([?&](?:[\w.-]*(?:key|token|secret|passw|pwd|sig|auth)[\w.-]*)=)[^&\s#'\"]+",
                re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # A JWT (an ID token), a Google API key, a Firebase refresh token.
    (re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*"), REDACTED),
    (re.compile(r"AIza[\w-]{20,}|AMf-[\w-]{20,}"), REDACTED),
)

# C0 and C1 controls and DEL, but not tab or newline (kept as plain text).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret shape, and each of ``secrets``, replaced by ``REDACTED``."""
    text = remove_secrets(text, secrets)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def remove_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (at least 4 characters), as is or quoted, replaced."""
    for spelling in spellings(tuple(secrets)):
        text = text.replace(spelling, REDACTED)
    return text


@functools.lru_cache(maxsize=32)
def spellings(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """Each of ``secrets`` (at least 4 characters) as is, and as a server may quote it back.

    requests quotes a header value with ``repr()``, a server echoes a form
    url-encoded: those spellings too. Kept for the few secrets in use, since
    every answer of the service is searched for them.
    """
    found: list[str] = []
    for secret in secrets:
        if secret and len(secret) >= 4:
            found += dict.fromkeys((secret, repr(secret)[1:-1], quote_plus(secret)))
    return tuple(found)


def printable(text: str) -> str:
    """``text`` without terminal control characters: what a server says, safe to print.

    Escape sequences (``ESC ] 0 ; title BEL``, ``ESC [ 2 J``) lose their
    control bytes and so print as harmless text; tabs and newlines become
    spaces, so that one server string stays one line.
    """
    return _CONTROL.sub("", text.replace("\t", " ").replace("\n", " ").replace("\r", " "))


def _scrub_value(value: object, secrets: tuple[str, ...]) -> object:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"), secrets)
    if isinstance(value, BaseException):
        return value  # walked separately, as a link of the chain
    return redact(str(value), secrets) if value is not None else None


def scrub_chain(error: BaseException, secrets: Iterable[str] = ()) -> BaseException:
    """Redact the message of ``error`` and of every exception it was raised from, in place.

    Third-party errors quote what they were given (a header value, a URL
    with its query), and a printed traceback shows each cause: so every
    link of ``__cause__``/``__context__`` is rewritten. Returns ``error``.
    """
    known = tuple(secrets)
    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen or len(seen) > 50:  # a bound, in case a chain loops
            continue
        seen.add(id(current))
        try:
            current.args = tuple(_scrub_value(arg, known) for arg in current.args)
        except (AttributeError, TypeError):  # an exception whose args cannot be set
            pass
        for attribute in ("msg", "message", "reason"):  # where some libraries keep it
            value = getattr(current, attribute, None)
            if isinstance(value, str):
                try:
                    setattr(current, attribute, redact(value, known))
                except (AttributeError, TypeError):
                    pass
            elif isinstance(value, BaseException):
                stack.append(value)
        stack.extend(link for link in (current.__cause__, current.__context__)
                     if link is not None)
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return error


class RedactingFilter(logging.Filter):
    """A logging filter that redacts secrets in each record's final message.

    Put it on a *handler* (:func:`install_log_redaction` does), not a
    logger: a logger's filters never see the records its children
    propagate, such as urllib3's ``"GET /...?key=... HTTP/1.1" 200`` lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with its secrets redacted; never drop it."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format is logging's to report, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> RedactingFilter:
    """Add a :class:`RedactingFilter` to every handler of ``logger`` (default: the root logger).

    Call it after configuring logging (``logging.basicConfig``), so that no
    record reaching those handlers, from arta or its HTTP stack, shows a
    token or the API key. Safe to call twice.
    """
    target = logger or logging.getLogger()
    installed = RedactingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(installed)
    return installed


def redact_logger(name: str) -> None:
    """Put a :class:`RedactingFilter` on the logger ``name`` itself, once.

    For an HTTP library's own logger (urllib3's, httpx's), whose request
    lines hold whole URLs: a filter there applies to what that logger logs,
    however the application has configured its handlers.
    """
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
