"""The emulated service itself: Firebase sign-up and refresh, text2image jobs, images.

:class:`EmulatorApp` is a pure request -> response function over some
in-memory state; it opens no socket. :mod:`arta.emulator.server` puts it
behind HTTP, and a test transport may call :meth:`EmulatorApp.handle`
directly.

Every route answers exactly the paths a client reaches when it puts the
emulator's URL in front of the original host and path (docs/protocol.rst
sections 1-6): ``/www.googleapis.com/identitytoolkit/...``,
``/securetoken.googleapis.com/...``, ``/api/v1/text2image...``. A job's
status is computed from the clock, not by a background thread, so an idle
emulator costs nothing and time can be faked with ``clock``.

Injected faults (:mod:`arta.emulator.faults`) are decided here, once per
request; the two that need a socket, closing without an answer and
answering late, are marks on the :class:`Response` that the server honours.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from re import Pattern
from urllib.parse import parse_qsl, unquote

from arta.emulator.faults import FaultPlan, FaultRule, parse_faults
from arta.emulator.forms import FormError, parse_form
from arta.emulator.messages import Request, Response, json_response
from arta.emulator.scene import render_png
from arta.emulator.tokens import TokenAuthority, TokenRejected
from arta.emulator.validation import (
    GenerationRequest,
    ValidationFailed,
    validate_text2image,
)

__all__ = ["STAT_NAMES", "EmulatorApp"]

#: The counters of :meth:`EmulatorApp.stats`, in the order they are reported.
STAT_NAMES: tuple[str, ...] = (
    "signups",
    "refreshes",
    "submits",
    "duplicate_submits",
    "polls",
    "downloads",
    "faults",
    "rejected_tokens",
)

_SIGNUP_WINDOW = 3600.0  # Firebase's quota is per rolling hour
_FIREBASE_ENDPOINTS = ("signup", "refresh")  # they answer Google's error envelope
_IMAGE_HOST_PREFIX = "/img-gen-prod.ai-arta.com"
_UID_ALPHABET = string.ascii_letters + string.digits

Handler = Callable[[Request, Mapping[str, str]], Response]


@dataclass(frozen=True)
class _Job:
    record_id: str
    request: GenerationRequest
    seed: int
    submitted_at: float
    queue_seconds: float
    progress_seconds: float
    blur: bool
    #: Where the timeline ends: DONE, FAILED (fault "fail") or IN_PROGRESS ("stuck").
    final_status: str = "DONE"
    #: Set by set_job_status(): answered from then on, whatever the clock says.
    forced_status: str | None = None
    error_code: str | None = None
    error_details: str | None = None


def _as_plan(faults: FaultPlan | str | None) -> FaultPlan:
    """A plan from a plan, a spec string, or None (no faults)."""
    if faults is None:
        return FaultPlan()
    if isinstance(faults, FaultPlan):
        return faults
    return parse_faults(faults)


def _check_duration(name: str, value: float | tuple[float, float]) -> float | tuple[float, float]:
    """Reject negative durations and inverted ranges early, at construction."""
    low, high = value if isinstance(value, tuple) else (value, value)
    if not 0 <= low <= high:
        raise ValueError(f"{name} must be >= 0 seconds or a (min, max) range, not {value!r}")
    return value


def _firebase_error(
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


def _detail(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """A FastAPI-style ``{"detail": "..."}`` error."""
    return json_response(status, {"detail": detail}, headers)


_RETRY_AFTER = {"Retry-After": "1"}
_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def _server_error(endpoint: str, status: int) -> Response:
    """An injected 5xx: 500 from the application (JSON), 502/503 from a proxy in front (HTML).

    The HTML ones are there on purpose: a client must survive an error body
    that is not JSON.
    """
    headers = _RETRY_AFTER if status == 503 else {}
    reason = _REASONS[status]
    if status == 500:
        if endpoint in _FIREBASE_ENDPOINTS:
            return _firebase_error("Internal error encountered.", 500, "INTERNAL")
        return _detail(500, reason)
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
    ).encode("ascii")
    return Response(
        status,
        {"Content-Type": "text/html", "Content-Length": str(len(body)), **headers},
        body,
    )


def _too_many_requests(endpoint: str) -> Response:
    """An injected 429: Google's envelope for Firebase, FastAPI's detail for the rest.

    Firebase's message is RESOURCE_EXHAUSTED, not TOO_MANY_ATTEMPTS_TRY_LATER:
    the latter means the hourly sign-up quota is spent, which is no
    transient fault.
    """
    if endpoint in _FIREBASE_ENDPOINTS:
        return _firebase_error("RESOURCE_EXHAUSTED", 429, "RESOURCE_EXHAUSTED", _RETRY_AFTER)
    return _detail(429, "Too Many Requests", _RETRY_AFTER)


def _truncated(answer: Response) -> Response:
    """``answer`` with the first half of its body only: well-formed HTTP, undecodable body."""
    body = answer.body[: len(answer.body) // 2]
    return replace(answer, headers={**answer.headers, "Content-Length": str(len(body))}, body=body)


class EmulatorApp:
    """The whole ARTA service and its Firebase sign-up, in memory.

    Options (all keyword-only):

    - ``queue_seconds``, ``progress_seconds``: how long a job stays
      ``IN_QUEUE``, then ``IN_PROGRESS``, before it is ``DONE``. A float, or
      a ``(min, max)`` range that each job draws from ``random.Random(seed)``.
    - ``token_lifetime``: seconds an ID token lives (``expiresIn``).
    - ``signup_quota``: sign-ups allowed per rolling hour, None for no limit;
      past it sign-up answers Firebase's ``TOO_MANY_ATTEMPTS_TRY_LATER``.
    - ``accept_unsigned_tokens``: also accept the unsigned (``alg: none``)
      tokens of Google's Firebase Auth Emulator.
    - ``long_side``: pixels of an image's longer side.
    - ``seed``: seeds the job-duration and missing-seed draws.
    - ``blur_words``: a prompt containing one of these (any case) gets
      images flagged ``isBlur`` and drawn as a mosaic.
    - ``base_url``: what image URLs start with; None uses the request's Host.
    - ``clock``: the time source (Unix seconds), replaceable in tests.
    - ``project_id``: the Firebase project named in tokens.
    - ``faults``: a :class:`~arta.emulator.faults.FaultPlan` or its spec
      string (``"submit:drop=0.05,status:503=0.1"``), None for none.
    - ``fault_seed``: seeds the fault draws, so a run's faults repeat; None
      draws from the OS.
    - ``slow_seconds``: how late a ``slow`` fault answers (35 s: past any
      usual read timeout).

    Thread-safe: state is guarded by one lock; images render outside it.
    """

    def __init__(
        self,
        *,
        queue_seconds: float | tuple[float, float] = 1.0,
        progress_seconds: float | tuple[float, float] = 2.0,
        token_lifetime: int = 3600,
        signup_quota: int | None = None,
        accept_unsigned_tokens: bool = True,
        long_side: int = 512,
        seed: int | None = 0,
        blur_words: Sequence[str] = ("nsfw",),
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        project_id: str = "arta-emulator",
        faults: FaultPlan | str | None = None,
        fault_seed: int | None = None,
        slow_seconds: float = 35.0,
    ) -> None:
        if signup_quota is not None and signup_quota < 0:
            raise ValueError(f"signup_quota must be >= 0 or None, not {signup_quota!r}")
        # "not 0 <= x" also refuses NaN.
        if not 0 <= slow_seconds < float("inf"):
            raise ValueError(f"slow_seconds must be a finite number >= 0, not {slow_seconds!r}")
        if long_side < 16:
            raise ValueError(f"long_side must be at least 16 pixels, not {long_side!r}")
        self.queue_seconds = _check_duration("queue_seconds", queue_seconds)
        self.progress_seconds = _check_duration("progress_seconds", progress_seconds)
        self.signup_quota = signup_quota
        self.long_side = long_side
        self.seed = seed
        self.blur_words = tuple(word.lower() for word in blur_words if word)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.project_id = project_id
        self.fault_seed = fault_seed
        #: Seconds a ``slow`` fault holds its answer back; may be changed at run time.
        self.slow_seconds = float(slow_seconds)
        self._faults = _as_plan(faults)
        self._clock = clock
        self._tokens = TokenAuthority(project_id, token_lifetime, accept_unsigned_tokens)
        # Firebase answers a numeric project id on refresh; derive a stable one.
        digest = hashlib.sha256(project_id.encode("utf-8")).digest()
        self._project_number = str(int.from_bytes(digest[:5], "big"))
        self._lock = threading.RLock()
        # (method, path, handler, the endpoint that faults target or None).
        self._routes: list[tuple[str, Pattern[str], Handler, str | None]] = [
            ("POST", re.compile(r"/www\.googleapis\.com/identitytoolkit/v3/relyingparty/signupNewUser"),
             self._signup, "signup"),
            ("POST", re.compile(r"/identitytoolkit\.googleapis\.com/v1/accounts:signUp"),
             self._signup, "signup"),
            ("POST", re.compile(r"/securetoken\.googleapis\.com/v1/token"),
             self._refresh, "refresh"),
            ("POST", re.compile(r"/api/v1/text2image/?"), self._submit, "submit"),
            ("GET", re.compile(r"/api/v1/text2image/(?P<record_id>[^/]+)/status"),
             self._status, "status"),
            ("GET", re.compile(r"/images/(?P<record_id>[^/]+)/(?P<index>[0-9]{1,6})\.png"),
             self._image, "image"),
            # The emulator's own controls are never faulted: a test must trust them.
            ("GET", re.compile(r"/emulator/stats"), self._stats_route, None),
            ("POST", re.compile(r"/emulator/reset"), self._reset_route, None),
            ("GET", re.compile(r"/emulator/faults"), self._faults_route, None),
            ("POST", re.compile(r"/emulator/faults"), self._set_faults_route, None),
        ]
        self._init_state()

    def _init_state(self) -> None:
        """Forget everything: accounts, jobs, counters; restart the random draws."""
        with self._lock:
            self._random = random.Random(self.seed)
            self._counters: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
            self._accounts: dict[str, int] = {}  # user id -> creation time
            self._refresh_tokens: dict[str, str] = {}  # refresh token -> user id
            self._signup_times: collections.deque[float] = collections.deque()
            self._jobs: dict[str, _Job] = {}
            self._submitted: set[tuple[object, ...]] = set()
            # Faults have their own Random, so that turning them on does not
            # change job durations or seeds, and the reverse.
            self._fault_random = random.Random(self.fault_seed)
            self._queued_faults: dict[str, collections.deque[str]] = {}
            self._fault_counts: dict[str, int] = {}

    # -- test hooks -------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """A copy of the counters, as ``GET /emulator/stats`` answers them."""
        with self._lock:
            return dict(self._counters)

    def reset(self) -> None:
        """Zero the counters and forget accounts, refresh tokens, jobs and queued faults.

        ID tokens issued before stay valid (they are not tied to an account),
        so a client's cached token keeps working across tests. The fault
        plan stays in force (it is configuration); its draws restart from
        ``fault_seed``.
        """
        self._init_state()

    def revoke_tokens(self) -> None:
        """Make every ID token issued so far answer 401; refresh tokens stay valid."""
        self._tokens.revoke_all()

    def set_token_lifetime(self, seconds: int) -> None:
        """Set how long ID tokens issued from now on live; 0 or less issues expired ones."""
        self._tokens.lifetime = int(seconds)

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force (empty when there is none)."""
        return self._faults

    def set_faults(
        self, faults: FaultPlan | str | None, *, fault_seed: int | None = None
    ) -> None:
        """Put a new fault plan (a :class:`FaultPlan`, its spec, or None for none) in force.

        The draws go on from where they were, unless ``fault_seed`` is given:
        then they restart from it (and :meth:`reset` restarts from it too).
        Raises :class:`ValueError` for a bad spec, leaving the plan as it was.
        """
        plan = _as_plan(faults)
        with self._lock:
            self._faults = plan
            if fault_seed is not None:
                self.fault_seed = fault_seed
                self._fault_random = random.Random(fault_seed)

    def inject(self, endpoint: str, fault: str, times: int = 1) -> None:
        """Make the next ``times`` requests to ``endpoint`` suffer ``fault``, whatever they ask.

        Queued faults come before the plan's random ones, and take no draw
        from the seeded sequence. ``endpoint`` and ``fault`` are spelled as
        in a spec (``inject("submit", "drop")``); :meth:`reset` forgets them.
        """
        if not isinstance(times, int) or times < 1:
            raise ValueError(f"times must be a whole number >= 1, not {times!r}")
        FaultPlan((FaultRule(endpoint, fault, 1.0),))  # validates, with the spec's messages
        with self._lock:
            self._queued_faults.setdefault(endpoint, collections.deque()).extend([fault] * times)

    def fault_counts(self) -> dict[str, int]:
        """Faults injected so far, by ``"endpoint:fault"`` (only those that happened)."""
        with self._lock:
            return dict(self._fault_counts)

    def jobs(self) -> list[str]:
        """The record id of every job, oldest first, including those whose answer was lost."""
        with self._lock:
            return list(self._jobs)

    def job_finished_at(self, record_id: str) -> float | None:
        """When job ``record_id`` reaches the end of its timeline (Unix time), or None if never.

        A stuck or force-set job has no end. Benchmarks use it to measure how
        long a client takes to notice a finished job.
        """
        with self._lock:
            job = self._jobs[record_id]
        if job.forced_status is not None or job.final_status == "IN_PROGRESS":
            return None
        return job.submitted_at + job.queue_seconds + job.progress_seconds

    def last_record_id(self) -> str | None:
        """The record id of the newest job, or None: how a test finds a dropped submit's job."""
        with self._lock:
            return next(reversed(self._jobs), None)

    def set_job_status(
        self,
        record_id: str,
        raw_status: str,
        error_code: str | None = None,
        error_details: str | None = None,
    ) -> None:
        """Make a job answer ``raw_status`` (any string) from now on, whatever the clock says.

        For a status the protocol does not know (``"CANCELLED_BY_ADMIN"``),
        or a failure with chosen ``error_code``/``error_details``. Raises
        :class:`KeyError` for an unknown record id.
        """
        with self._lock:
            job = self._jobs.get(record_id)
            if job is None:
                raise KeyError(f"no job with record id {record_id!r}")
            self._jobs[record_id] = replace(
                job, forced_status=raw_status, error_code=error_code, error_details=error_details
            )

    # -- dispatch ---------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request. Never raises: a bug answers 500."""
        method = "GET" if request.method.upper() == "HEAD" else request.method.upper()
        path = request.path
        if path.startswith(_IMAGE_HOST_PREFIX + "/"):
            path = path[len(_IMAGE_HOST_PREFIX):]
        allowed: list[str] = []
        for route_method, pattern, handler, endpoint in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            params = {key: unquote(value) for key, value in match.groupdict().items()}
            fault = None if endpoint is None else self._pick_fault(endpoint)
            try:
                if endpoint is None or fault is None:
                    return handler(request, params)
                return self._faulty(endpoint, fault, handler, request, params)
            except Exception:  # noqa: BLE001 - a server answers 500, it does not die
                return _detail(500, "Internal Server Error")
        if allowed:
            return _detail(405, "Method Not Allowed", {"Allow": ", ".join(allowed)})
        return _detail(404, "Not Found")

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    # -- faults -----------------------------------------------------------

    def _pick_fault(self, endpoint: str) -> str | None:
        """The fault this request to ``endpoint`` suffers, if any; counts it.

        A queued fault first; else one draw, only when the plan targets this
        endpoint, so that a plan's sequence on one endpoint is not shifted by
        traffic to endpoints it leaves alone. Under the lock, so draws follow
        arrival order and a seed repeats them.
        """
        with self._lock:
            queue = self._queued_faults.get(endpoint)
            if queue:
                fault: str | None = queue.popleft()
            elif self._faults.targets(endpoint):
                fault = self._faults.choose(endpoint, self._fault_random.random())
            else:
                return None
            if fault is not None:
                self._counters["faults"] += 1
                key = f"{endpoint}:{fault}"
                self._fault_counts[key] = self._fault_counts.get(key, 0) + 1
            return fault

    def _faulty(
        self,
        endpoint: str,
        fault: str,
        handler: Handler,
        request: Request,
        params: Mapping[str, str],
    ) -> Response:
        """Answer a request that suffers ``fault``, as ``faults.FAULT_KINDS`` describes."""
        if fault == "429":
            return _too_many_requests(endpoint)
        if fault in ("500", "502", "503"):
            return _server_error(endpoint, int(fault))
        if fault == "drop":
            # The worst case for a client: the job exists, but the answer
            # naming it is lost, so a blind retry makes a second one.
            if endpoint == "submit":
                return replace(handler(request, params), drop=True)
            return Response(0, {}, b"", drop=True)
        if fault in ("fail", "stuck"):
            return self._submit(request, params, outcome=fault)
        # "slow" and "badjson": the work is done, only the answer suffers.
        answer = handler(request, params)
        if fault == "slow":
            return replace(answer, delay=self.slow_seconds)
        return _truncated(answer)

    # -- Firebase ---------------------------------------------------------

    def _signup(self, request: Request, params: Mapping[str, str]) -> Response:
        if not request.query_param("key"):
            return _firebase_error("API_KEY_INVALID")
        if request.body.strip():
            try:
                json.loads(request.body)
            except ValueError:
                return _firebase_error("INVALID_JSON_PAYLOAD")
        now = self._clock()
        with self._lock:
            window = self._signup_times
            while window and window[0] <= now - _SIGNUP_WINDOW:
                window.popleft()
            if self.signup_quota is not None and len(window) >= self.signup_quota:
                return _firebase_error("TOO_MANY_ATTEMPTS_TRY_LATER")
            window.append(now)
            user_id = "".join(secrets.choice(_UID_ALPHABET) for _ in range(28))
            refresh_token = "AMf-" + secrets.token_urlsafe(96)
            self._accounts[user_id] = int(now)
            self._refresh_tokens[refresh_token] = user_id
            self._counters["signups"] += 1
        return json_response(
            200,
            {
                "kind": "identitytoolkit#SignupNewUserResponse",
                "idToken": self._tokens.issue(user_id, int(now), now),
                "refreshToken": refresh_token,
                "expiresIn": str(self._tokens.lifetime),
                "localId": user_id,
            },
        )

    def _refresh(self, request: Request, params: Mapping[str, str]) -> Response:
        if not request.query_param("key"):
            return _firebase_error("API_KEY_INVALID")
        form = self._refresh_form(request)
        if form is None:
            return _firebase_error("INVALID_ARGUMENT")
        grant_type = form.get("grant_type")
        if not grant_type:
            return _firebase_error("MISSING_GRANT_TYPE")
        if grant_type != "refresh_token":
            return _firebase_error("INVALID_GRANT_TYPE")
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            return _firebase_error("MISSING_REFRESH_TOKEN")
        now = self._clock()
        with self._lock:
            user_id = self._refresh_tokens.get(refresh_token)
            if user_id is None:
                return _firebase_error("INVALID_REFRESH_TOKEN")
            auth_time = self._accounts.get(user_id, int(now))
            self._counters["refreshes"] += 1
        id_token = self._tokens.issue(user_id, auth_time, now)
        return json_response(
            200,
            {
                "access_token": id_token,
                "expires_in": str(self._tokens.lifetime),
                "token_type": "Bearer",
                "refresh_token": refresh_token,
                "id_token": id_token,
                "user_id": user_id,
                "project_id": self._project_number,
            },
        )

    @staticmethod
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

    # -- the image service ------------------------------------------------

    def _authenticate(self, request: Request) -> Response | None:
        """None if the request carries a valid ID token, else the 401 to answer."""
        raw = (request.header("Authorization") or "").strip()
        if raw[:7].lower() == "bearer ":
            raw = raw[7:].strip()
        reason = "Not authenticated"
        if raw:
            try:
                self._tokens.verify(raw, self._clock())
                return None
            except TokenRejected as exc:
                reason = str(exc)
        self._count("rejected_tokens")
        return _detail(401, reason, {"WWW-Authenticate": "Bearer"})

    def _draw(self, duration: float | tuple[float, float]) -> float:
        """One job's duration; the caller holds the lock (the Random is shared)."""
        if isinstance(duration, tuple):
            return self._random.uniform(*duration)
        return float(duration)

    def _submit(
        self, request: Request, params: Mapping[str, str], outcome: str | None = None
    ) -> Response:
        """Create a job; ``outcome`` "fail" or "stuck" (injected faults) sets how it ends."""
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        try:
            form = parse_form(request.header("Content-Type"), request.body)
            generation = validate_text2image(form)
        except FormError as exc:
            errors = [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]
            return json_response(422, {"detail": errors})
        except ValidationFailed as exc:
            return json_response(422, {"detail": exc.errors})
        # Same fields, seed included, as sent: a client that re-sent a POST.
        key = (
            generation.prompt, generation.negative_prompt, generation.style,
            generation.images_num, generation.cfg_scale, generation.steps,
            generation.aspect_ratio, generation.seed,
        )
        prompt = generation.prompt.lower()
        blur = any(word in prompt for word in self.blur_words)
        final_status, error_code, error_details = "DONE", None, None
        if outcome == "fail":
            final_status, error_code = "FAILED", "GENERATION_FAILED"
            error_details = "The image generation failed on the server. Please try again."
        elif outcome == "stuck":
            final_status = "IN_PROGRESS"
        now = self._clock()
        with self._lock:
            seed = generation.seed if generation.seed is not None else self._random.randrange(2**32)
            job = _Job(
                record_id=str(uuid.uuid4()),
                request=generation,
                seed=seed,
                submitted_at=now,
                queue_seconds=self._draw(self.queue_seconds),
                progress_seconds=self._draw(self.progress_seconds),
                blur=blur,
                final_status=final_status,
                error_code=error_code,
                error_details=error_details,
            )
            self._jobs[job.record_id] = job
            self._counters["submits"] += 1
            if key in self._submitted:
                self._counters["duplicate_submits"] += 1
            self._submitted.add(key)
        # The service always answers a submit IN_QUEUE, however short the queue.
        return json_response(200, self._job_view(job, now, request, "IN_QUEUE"))

    def _status(self, request: Request, params: Mapping[str, str]) -> Response:
        denied = self._authenticate(request)
        if denied is not None:
            return denied
        with self._lock:
            self._counters["polls"] += 1
            job = self._jobs.get(params["record_id"])
        if job is None:
            return _detail(404, "Record not found")
        return json_response(200, self._job_view(job, self._clock(), request))

    @staticmethod
    def _state(job: _Job, now: float) -> str:
        if job.forced_status is not None:
            return job.forced_status
        elapsed = now - job.submitted_at
        if elapsed < job.queue_seconds:
            return "IN_QUEUE"
        if elapsed < job.queue_seconds + job.progress_seconds:
            return "IN_PROGRESS"
        return job.final_status

    def _image_base(self, request: Request) -> str:
        if self.base_url:
            return self.base_url
        host = request.header("Host")
        return f"http://{host}" if host else "http://127.0.0.1"

    def _job_view(
        self, job: _Job, now: float, request: Request, status: str | None = None
    ) -> dict[str, object]:
        """The submit/status answer body for ``job`` at ``now`` (or in ``status``)."""
        status = status or self._state(job, now)
        response: list[dict[str, object]] | None = None
        if status == "DONE":
            base = self._image_base(request)
            response = [
                {
                    "name": f"{job.record_id}_{i}.png",
                    "url": f"{base}/images/{job.record_id}/{i}.png",
                    "isBlur": job.blur,
                    "MIME": "image/png",
                }
                for i in range(job.request.images_num)
            ]
        # A job's errors show once it has settled where they belong, not
        # while a job bound to fail is still queued.
        settled = job.forced_status is not None or status == job.final_status
        return {
            "record_id": job.record_id,
            "status": status,
            "response": response,
            "error_code": job.error_code if settled else None,
            "error_details": job.error_details if settled else None,
            "seed": job.seed,
        }

    def _image(self, request: Request, params: Mapping[str, str]) -> Response:
        index = int(params["index"])
        with self._lock:
            job = self._jobs.get(params["record_id"])
        if (
            job is None
            or self._state(job, self._clock()) != "DONE"
            or index >= job.request.images_num
        ):
            return _detail(404, "Not Found")
        generation = job.request
        # Image i of a job is what seed + i would give, as diffusion services do.
        body = render_png(
            generation.prompt, generation.style, job.seed + index,
            generation.aspect_ratio, self.long_side, job.blur,
        )
        self._count("downloads")
        return Response(
            200,
            {
                "Content-Type": "image/png",
                "Content-Length": str(len(body)),
                "Cache-Control": "public, max-age=31536000, immutable",
            },
            body,
        )

    # -- emulator control -------------------------------------------------

    def _stats_route(self, request: Request, params: Mapping[str, str]) -> Response:
        return json_response(200, self.stats())

    def _reset_route(self, request: Request, params: Mapping[str, str]) -> Response:
        self.reset()
        return json_response(200, self.stats())

    def _faults_route(self, request: Request, params: Mapping[str, str]) -> Response:
        with self._lock:
            return json_response(200, {
                "spec": str(self._faults),
                "fault_seed": self.fault_seed,
                "counts": dict(self._fault_counts),
            })

    def _set_faults_route(self, request: Request, params: Mapping[str, str]) -> Response:
        """Set the plan from another process: a JSON ``{"spec", "fault_seed"}`` or a bare spec."""
        try:
            text = request.body.decode("utf-8")
            if (request.header("Content-Type") or "").lower().startswith("application/json"):
                value = json.loads(text or "{}")
                if not isinstance(value, dict):
                    raise ValueError('expected a JSON object {"spec": ..., "fault_seed": ...}')
                spec, seed = value.get("spec") or "", value.get("fault_seed")
                if not isinstance(spec, str) or not (seed is None or isinstance(seed, int)):
                    raise ValueError("spec must be a string and fault_seed an integer or null")
            else:
                spec, seed = text, None
            self.set_faults(spec, fault_seed=seed)
        except ValueError as exc:  # UnicodeDecodeError and JSON errors are ValueErrors too
            return _detail(400, str(exc))
        return self._faults_route(request, params)
