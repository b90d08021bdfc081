"""Settings: where the five calls of the protocol go, and where state is kept.

Every setting comes from an argument first, then from the environment, then
from a default:

================================  =========================================
``endpoint`` / ``ARTA_ENDPOINT``  a base URL put in front of the original
                                  host and path of every call (the
                                  emulator's ``.url``, a recording proxy)
``home`` / ``ARTA_HOME``          the folder for the token file and other
                                  state; default ``$XDG_CACHE_HOME/arta``,
                                  else ``~/.cache/arta``
``auth_endpoint`` /               where sign-up and refresh go instead;
``FIREBASE_AUTH_EMULATOR_HOST``   ``host:port`` of Google's Firebase Auth
                                  Emulator, as Firebase's own SDKs read it
``api_key``                       Firebase Web API key of the Android app
``ARTA_POLL``                     ``learned`` (the default) or ``fixed``:
                                  the default poll policy
``ARTA_LOG``                      ``info`` (the story of each job) or
                                  ``debug`` (details, HTTP requests): log
                                  to stderr, as the command's ``-v``/``-vv``
================================  =========================================
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from arta.errors import ConfigurationError
from arta.redact import redact

__all__ = ["API_KEY", "Settings", "log_verbosity"]

#: The Firebase Web API key the Android app ships with (public, not a secret).
API_KEY = "AIzaSyB3-71wG0fIt0shj0ee4fvx1shcjJHGrrQ"

_SIGNUP = "www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser"
_REFRESH = "securetoken.googleapis.com/v1/token"
_IMAGE_SERVICE = "https://img-gen-prod.ai-arta.com"
_SUBMIT_PATH = "/api/v1/text2image"


#: ``ARTA_LOG``'s values, as the command line's ``-v`` counts.
_LOG_LEVELS = {"": 0, "info": 1, "debug": 2}


def log_verbosity(env: Mapping[str, str] | None = None) -> int:
    """``ARTA_LOG`` as a count of ``-v``: 0 (unset), 1 (``info``) or 2 (``debug``)."""
    value = (os.environ if env is None else env).get("ARTA_LOG", "").strip().lower()
    if value not in _LOG_LEVELS:
        raise ConfigurationError(f"ARTA_LOG must be 'info' or 'debug' (or unset), not {value!r}")
    return _LOG_LEVELS[value]


def _default_home(env: Mapping[str, str]) -> Path:
    cache = env.get("XDG_CACHE_HOME")
    base = Path(cache) if cache else Path.home() / ".cache"
    return base / "arta"


_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def _check_base_url(url: str, what: str) -> str:
    """``url`` without its trailing slash, or a ConfigurationError that names ``what``."""
    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(
            f"{what} must be an http(s) base URL like http://127.0.0.1:8765, got "
            f"{redact(url)!r}: {why}")

    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port out of 0-65535 or not a number
    except ValueError as error:
        raise bad(str(error)) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise bad("no http:// or https:// and host")
    host = parts.netloc.rsplit("@", 1)[-1]
    host = host.rsplit(":", 1)[0] if port is not None or host.endswith(":") else host
    if not _HOST.fullmatch(host):
        raise bad(f"{redact(host)!r} is not a host name or address")
    if port == 0:
        raise bad("port 0 is not a port one can connect to")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise bad("a base URL has no ?query or #fragment (every call adds its own path)")
    return url.rstrip("/")


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one client; build with :meth:`Settings.resolve`."""

    endpoint: str | None = None
    auth_endpoint: str | None = None
    home: Path = field(default_factory=lambda: _default_home(os.environ))
    api_key: str = API_KEY
    #: Whole URLs that win over the endpoints, by call: ``"signup"``,
    #: ``"refresh"``, ``"submit"``, and ``"status"`` (with ``{record_id}``).
    #: The old provider's class attributes land here.
    urls: Mapping[str, str] = field(default_factory=dict)
    #: The default poll policy: ``"learned"``, or ``"fixed"`` (``ARTA_POLL``).
    poll: str = "learned"
    #: ``ARTA_LOG`` as a count of ``-v`` (0, 1 or 2); acted on once, on ``import arta``.
    log: int = 0

    @classmethod
    def resolve(
        cls,
        endpoint: str | None = None,
        home: os.PathLike[str] | str | None = None,
        api_key: str | None = None,
        auth_endpoint: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        """Take each setting from its argument, else the environment, else the default."""
        env = os.environ if env is None else env
        endpoint = endpoint or env.get("ARTA_ENDPOINT") or None
        if not auth_endpoint and env.get("FIREBASE_AUTH_EMULATOR_HOST"):
            # The Firebase SDKs' convention: a bare host:port, spoken over plain http.
            auth_endpoint = "http://" + env["FIREBASE_AUTH_EMULATOR_HOST"].strip()
        home_value = home if home is not None else (env.get("ARTA_HOME") or None)
        poll = env.get("ARTA_POLL", "").strip().lower() or "learned"
        if poll not in ("learned", "fixed"):
            raise ConfigurationError(
                f"ARTA_POLL must be 'learned' (the default) or 'fixed', not {poll!r}")
        return cls(
            endpoint=_check_base_url(endpoint, "endpoint (ARTA_ENDPOINT)") if endpoint else None,
            auth_endpoint=(
                _check_base_url(auth_endpoint, "auth endpoint (FIREBASE_AUTH_EMULATOR_HOST)")
                if auth_endpoint
                else None
            ),
            home=Path(home_value).expanduser() if home_value else _default_home(env),
            api_key=api_key or API_KEY,
            poll=poll,
            log=log_verbosity(env),
        )

    @property
    def where(self) -> str:
        """Which setting chose where the calls go, for an error that could not get there."""
        auth = (f"; sign-up and refresh go to {redact(self.auth_endpoint)!r} "
                "(FIREBASE_AUTH_EMULATOR_HOST)" if self.auth_endpoint else "")
        if self.endpoint:
            return (f"the endpoint is {redact(self.endpoint)!r}, from ARTA_ENDPOINT or the "
                    f"client's endpoint{auth}: is the service or `arta emulator` running there?")
        return ("ARTA_ENDPOINT is not set, so this is the real service; to work offline, "
                f"point ARTA_ENDPOINT at an emulator (`arta emulator`){auth}")

    def _google(self, host_and_path: str) -> str:
        base = self.auth_endpoint or self.endpoint or "https:/"
        return f"{base}/{host_and_path}?key={quote(self.api_key, safe='')}"

    @property
    def signup_url(self) -> str:
        """docs/protocol.rst section 1: anonymous sign-up."""
        return self.urls.get("signup") or self._google(_SIGNUP)

    @property
    def refresh_url(self) -> str:
        """docs/protocol.rst section 2: token refresh."""
        return self.urls.get("refresh") or self._google(_REFRESH)

    @property
    def submit_url(self) -> str:
        """docs/protocol.rst section 4: submit a generation."""
        return self.urls.get("submit") or (self.endpoint or _IMAGE_SERVICE) + _SUBMIT_PATH

    def status_url(self, record_id: str) -> str:
        """docs/protocol.rst section 5: the status of one job."""
        template = self.urls.get("status") or self.submit_url + "/{record_id}/status"
        return template.format(record_id=quote(record_id, safe=""))

    @property
    def auth_realm(self) -> str:
        """Where this client's tokens come from: the sign-up URL without its key."""
        return self.signup_url.split("?", 1)[0]

    @property
    def token_file(self) -> Path:
        """The shared token file: ``auth_ARTA.json`` (the old provider's name) for Firebase.

        A token from another sign-up endpoint (an emulator, a proxy) goes to
        ``auth_ARTA.<digest>.json``, the digest of that endpoint: switching
        ``ARTA_ENDPOINT`` in one ``ARTA_HOME`` never clobbers the real token,
        and a token from elsewhere is never sent to the wrong service.
        """
        if self.auth_realm == Settings().auth_realm:
            return self.home / "auth_ARTA.json"
        digest = hashlib.sha256(self.auth_realm.encode("utf-8")).hexdigest()[:12]
        return self.home / f"auth_ARTA.{digest}.json"
