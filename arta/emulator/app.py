"""The emulated service as one value: routes every request to the part that answers it.

:class:`EmulatorApp` is a pure request -> response function over some
in-memory state; it opens no socket. :mod:`arta.emulator.server` puts it
behind HTTP, and a test transport may call :meth:`EmulatorApp.handle`
directly. It is a facade over small parts, one job each:

- :mod:`~arta.emulator.firebase`: sign-up, refresh, the sign-up quota, ID tokens;
- :mod:`~arta.emulator.jobs`: submit and status, each job's timeline, with
  :mod:`~arta.emulator.schedule` (capacity, FIFO slots, the per-account
  cap, busy time) and :mod:`~arta.emulator.timing` (how long a job computes);
- :mod:`~arta.emulator.images`: the PNGs of finished jobs;
- :mod:`~arta.emulator.admin`: ``/emulator/*``;
- :mod:`~arta.emulator.injection`: the fault plan, drawn once per request.

Every route answers exactly the paths a client reaches when it puts the
emulator's URL in front of the original host and path (docs/protocol.rst
sections 1-6): ``/www.googleapis.com/identitytoolkit/...``,
``/securetoken.googleapis.com/...``, ``/api/v1/text2image...``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from re import Pattern
from urllib.parse import unquote

from arta.emulator.admin import AdminRoutes
from arta.emulator.counters import Counters
from arta.emulator.faults import FaultPlan
from arta.emulator.firebase import FirebaseService
from arta.emulator.images import ImageService
from arta.emulator.injection import FaultInjector, Handler, as_plan, faulty_answer
from arta.emulator.jobs import Job, JobService
from arta.emulator.messages import Request, Response, detail_response
from arta.emulator.schedule import Schedule
from arta.emulator.timing import TimingModel
from arta.emulator.tokens import TokenAuthority

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
    "rejected_429",
    "max_in_flight_per_user",
    "busy_slot_seconds",
)

_IMAGE_HOST_PREFIX = "/img-gen-prod.ai-arta.com"
_FLAT_DEFAULT = 2.0


def _progress_and_timing(
    progress_seconds: float | tuple[float, float] | None, timing: TimingModel | None
) -> tuple[float | tuple[float, float] | None, TimingModel]:
    """Which model decides a job's time IN_PROGRESS: ``timing`` given, or None, is the model."""
    if timing is None:
        return progress_seconds, TimingModel()
    flat_default = progress_seconds in (_FLAT_DEFAULT, (_FLAT_DEFAULT, _FLAT_DEFAULT))
    if progress_seconds is not None and not flat_default:
        raise ValueError(
            "give progress_seconds (the flat model) or timing (the service-like model), not both"
        )
    return None, timing


class EmulatorApp:
    """The whole ARTA service and its Firebase sign-up, in memory.

    Options (all keyword-only):

    - ``queue_seconds``: a fixed delay before a job may take a slot; a float,
      or a ``(min, max)`` range that each job draws from ``random.Random(seed)``.
    - ``progress_seconds``: how long a job is ``IN_PROGRESS`` (flat model):
      a float or a range as above. None: the service-like ``timing`` model.
    - ``timing``: a :class:`~arta.emulator.timing.TimingModel`; giving one
      selects the model (then leave ``progress_seconds`` out).
    - ``capacity``: at most this many jobs ``IN_PROGRESS`` at once, the
      others wait ``IN_QUEUE`` in submit order; None: unlimited.
    - ``max_jobs_per_user``: a submit from an account with this many
      unfinished jobs gets 429 with ``Retry-After``; None: unlimited.
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

    Thread-safe: each part guards its own state; images render outside any lock.
    """

    def __init__(
        self,
        *,
        queue_seconds: float | tuple[float, float] = 1.0,
        progress_seconds: float | tuple[float, float] | None = _FLAT_DEFAULT,
        timing: TimingModel | None = None,
        capacity: int | None = None,
        max_jobs_per_user: int | None = None,
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
        # "not 0 <= x" also refuses NaN.
        if not 0 <= slow_seconds < float("inf"):
            raise ValueError(f"slow_seconds must be a finite number >= 0, not {slow_seconds!r}")
        progress, model = _progress_and_timing(progress_seconds, timing)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.project_id = project_id
        #: Seconds a ``slow`` fault holds its answer back; may be changed at run time.
        self.slow_seconds = float(slow_seconds)
        self._clock = clock
        self._counters = Counters(name for name in STAT_NAMES if name != "busy_slot_seconds")
        self._tokens = TokenAuthority(project_id, token_lifetime, accept_unsigned_tokens)
        self._firebase = FirebaseService(self._tokens, self._counters, clock, signup_quota)
        self._jobs_service = JobService(
            authenticate=self._firebase.authenticate, counters=self._counters, clock=clock,
            image_base=self._image_base, queue_seconds=queue_seconds, progress_seconds=progress,
            timing=model, schedule=Schedule(capacity, max_jobs_per_user), seed=seed,
            blur_words=blur_words,
        )
        self._images = ImageService(self._jobs_service, self._counters, clock, long_side)
        self._injector = FaultInjector(as_plan(faults), fault_seed, self._counters)
        self._routes = self._build_routes()

    def _build_routes(self) -> list[tuple[str, Pattern[str], Handler, str | None]]:
        """(method, path, handler, the endpoint that faults target or None), polls first."""
        jobs, firebase, admin = self._jobs_service, self._firebase, AdminRoutes(self)
        return [
            ("GET", re.compile(r"/api/v1/text2image/(?P<record_id>[^/]+)/status"),
             jobs.status, "status"),
            ("POST", re.compile(r"/api/v1/text2image/?"), jobs.submit, "submit"),
            ("POST", re.compile(r"/www\.googleapis\.com/identitytoolkit/v3/relyingparty/signupNewUser"),
             firebase.signup, "signup"),
            ("POST", re.compile(r"/identitytoolkit\.googleapis\.com/v1/accounts:signUp"),
             firebase.signup, "signup"),
            ("POST", re.compile(r"/securetoken\.googleapis\.com/v1/token"),
             firebase.refresh, "refresh"),
            ("GET", re.compile(r"/images/(?P<record_id>[^/]+)/(?P<index>[0-9]{1,6})\.png"),
             self._images.image, "image"),
            # The emulator's own controls are never faulted: a test must trust them.
            ("GET", re.compile(r"/emulator/stats"), admin.stats, None),
            ("POST", re.compile(r"/emulator/reset"), admin.reset, None),
            ("GET", re.compile(r"/emulator/faults"), admin.faults, None),
            ("POST", re.compile(r"/emulator/faults"), admin.set_faults, None),
            ("GET", re.compile(r"/emulator/jobs/(?P<record_id>[^/]+)"), admin.job, None),
            ("POST", re.compile(r"/emulator/speed"), admin.speed, None),
        ]

    # -- configuration read by tests and the server -----------------------

    @property
    def queue_seconds(self) -> float | tuple[float, float]:
        """The fixed queue delay of new jobs (seconds or a range)."""
        return self._jobs_service.queue_seconds

    @property
    def progress_seconds(self) -> float | tuple[float, float] | None:
        """The flat time IN_PROGRESS of new jobs; None when :attr:`timing` decides it."""
        return self._jobs_service.progress_seconds

    @property
    def timing(self) -> TimingModel:
        """The timing model in force (its ``scale`` applies to the flat model too)."""
        return self._jobs_service.timing

    @property
    def capacity(self) -> int | None:
        """How many jobs may be IN_PROGRESS at once; None: unlimited."""
        return self._jobs_service.schedule.capacity

    @property
    def max_jobs_per_user(self) -> int | None:
        """How many unfinished jobs one account may have; None: unlimited."""
        return self._jobs_service.schedule.max_jobs_per_user

    @property
    def long_side(self) -> int:
        """Pixels of an image's longer side."""
        return self._images.long_side

    @property
    def signup_quota(self) -> int | None:
        """Sign-ups allowed per rolling hour; None: no limit."""
        return self._firebase.signup_quota

    @property
    def seed(self) -> int | None:
        """What the job-duration and missing-seed draws restart from on :meth:`reset`."""
        return self._jobs_service.seed

    @property
    def fault_seed(self) -> int | None:
        """What the fault draws restart from on :meth:`reset`."""
        return self._injector.seed

    @property
    def faults(self) -> FaultPlan:
        """The fault plan in force (empty when there is none)."""
        return self._injector.plan

    @property
    def _jobs(self) -> dict[str, Job]:
        """Every job by record id, oldest first (for white-box tests)."""
        return self._jobs_service.jobs

    # -- test hooks -------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """A copy of the counters, as ``GET /emulator/stats`` answers them.

        All are whole numbers but ``busy_slot_seconds``, computed when asked.
        """
        stats: dict[str, float] = dict(self._counters.snapshot())
        stats["busy_slot_seconds"] = round(self._jobs_service.busy_slot_seconds(), 6)
        return {name: stats[name] for name in STAT_NAMES}

    def reset(self) -> None:
        """Zero the counters and forget accounts, refresh tokens, jobs and queued faults.

        ID tokens issued before stay valid (they are not tied to an account),
        so a client's cached token keeps working across tests. The fault
        plan stays in force (it is configuration); its draws restart from
        ``fault_seed``. Every slot is free again.
        """
        self._firebase.reset()
        self._jobs_service.reset()
        self._injector.reset()
        self._counters.reset()

    def revoke_tokens(self) -> None:
        """Make every ID token issued so far answer 401; refresh tokens stay valid."""
        self._tokens.revoke_all()

    def set_token_lifetime(self, seconds: int) -> None:
        """Set how long ID tokens issued from now on live; 0 or less issues expired ones."""
        self._tokens.lifetime = int(seconds)

    def set_speed(self, scale: float) -> None:
        """Make every job submitted from now on take ``scale`` times as long IN_PROGRESS.

        ``set_speed(2.0)`` halves the service's speed, ``set_speed(1.0)``
        restores it; it replaces :attr:`timing`'s ``scale``, and applies to
        the flat model too. Jobs already submitted keep their timeline.
        From another process: ``POST /emulator/speed`` with ``{"scale": 2.0}``.
        Raises :class:`ValueError` for a negative or non-finite scale.
        """
        self._jobs_service.set_speed(scale)

    def set_faults(
        self, faults: FaultPlan | str | None, *, fault_seed: int | None = None
    ) -> None:
        """Put a new fault plan (a :class:`FaultPlan`, its spec, or None for none) in force.

        The draws go on from where they were, unless ``fault_seed`` is given:
        then they restart from it (and :meth:`reset` restarts from it too).
        Raises :class:`ValueError` for a bad spec, leaving the plan as it was.
        """
        self._injector.set_plan(as_plan(faults), fault_seed)

    def inject(self, endpoint: str, fault: str, times: int = 1) -> None:
        """Make the next ``times`` requests to ``endpoint`` suffer ``fault``, whatever they ask.

        Queued faults come before the plan's random ones, and take no draw
        from the seeded sequence. ``endpoint`` and ``fault`` are spelled as
        in a spec (``inject("submit", "drop")``); :meth:`reset` forgets them.
        """
        self._injector.inject(endpoint, fault, times)

    def fault_counts(self) -> dict[str, int]:
        """Faults injected so far, by ``"endpoint:fault"`` (only those that happened)."""
        return self._injector.counts()

    def jobs(self) -> list[str]:
        """The record id of every job, oldest first, including those whose answer was lost."""
        return self._jobs_service.record_ids()

    def job_timeline(self, record_id: str) -> dict[str, object]:
        """Job ``record_id``'s status and planned timeline, as ``GET /emulator/jobs/{id}``.

        ``{"record_id", "status", "submitted_at", "started_at", "finished_at",
        "params"}``: Unix times, which lie in the future for a job not yet
        started or finished (they are its plan); ``finished_at`` is None for
        a job that never ends (the ``stuck`` fault). ``params`` holds the
        form's fields as the service read them, the seed it used included.
        Raises :class:`KeyError` for an unknown record id.
        """
        job = self._jobs_service.jobs.get(record_id)
        if job is None:
            raise KeyError(f"no job with record id {record_id!r}")
        return job.timeline(self._clock())

    def job_finished_at(self, record_id: str) -> float | None:
        """When job ``record_id`` reaches the end of its timeline (Unix time), or None if never.

        A stuck or force-set job has no end. Benchmarks use it to measure how
        long a client takes to notice a finished job.
        """
        job = self._jobs_service.jobs[record_id]
        if job.forced_status is not None or job.final_status == "IN_PROGRESS":
            return None
        return job.finished_at

    def last_record_id(self) -> str | None:
        """The record id of the newest job, or None: how a test finds a dropped submit's job."""
        return self._jobs_service.last_record_id()

    def set_job_status(
        self,
        record_id: str,
        raw_status: str,
        error_code: str | None = None,
        error_details: str | None = None,
    ) -> None:
        """Make a job answer ``raw_status`` (any string) from now on, whatever the clock says.

        For a status the protocol does not know (``"CANCELLED_BY_ADMIN"``),
        or a failure with chosen ``error_code``/``error_details``. The job
        keeps its slot until its planned end. Raises :class:`KeyError` for
        an unknown record id.
        """
        self._jobs_service.force_status(record_id, raw_status, error_code, error_details)

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
            try:
                fault = None if endpoint is None else self._injector.pick(endpoint)
                if endpoint is None or fault is None:
                    return handler(request, params)
                return faulty_answer(endpoint, fault, handler, request, params,
                                     self._jobs_service.submit, self.slow_seconds)
            except Exception:  # noqa: BLE001 - a server answers 500, it does not die
                return detail_response(500, "Internal Server Error")
        if allowed:
            return detail_response(405, "Method Not Allowed", {"Allow": ", ".join(allowed)})
        return detail_response(404, "Not Found")

    def _image_base(self, request: Request) -> str:
        """What image URLs start with: ``base_url``, else the request's Host."""
        if self.base_url:
            return self.base_url
        host = request.header("Host")
        return f"http://{host}" if host else "http://127.0.0.1"
