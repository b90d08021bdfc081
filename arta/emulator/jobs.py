"""text2image jobs: submit, status, and each job's timeline.

A job's whole timeline is fixed when it is submitted: when it may leave
the queue (the fixed ``queue_seconds`` delay), when a slot is free for it
(:class:`~arta.emulator.schedule.Schedule`, the capacity and the per-account
cap), and how long it computes (flat ``progress_seconds``, or the
service-like :class:`~arta.emulator.timing.TimingModel`). Its status is then
read from the clock, so no thread runs in the background and a test may
fake the clock.
"""

from __future__ import annotations

import math
import random
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace

from arta.emulator.counters import Counters
from arta.emulator.forms import FormError, parse_form
from arta.emulator.messages import Request, Response, detail_response, json_response
from arta.emulator.schedule import Schedule
from arta.emulator.timing import TimingModel, draw_seconds
from arta.emulator.validation import GenerationRequest, ValidationFailed, validate_text2image

__all__ = ["Job", "JobService", "check_duration"]

# A submit whose fields, seed included, repeat an earlier one is a duplicate.
_KEY_FIELDS = tuple(field.name for field in fields(GenerationRequest))


def check_duration(
    name: str, value: float | tuple[float, float]
) -> float | tuple[float, float]:
    """Reject negative durations and inverted ranges early, at construction."""
    low, high = value if isinstance(value, tuple) else (value, value)
    if not 0 <= low <= high:
        raise ValueError(f"{name} must be >= 0 seconds or a (min, max) range, not {value!r}")
    return value


@dataclass(frozen=True)
class Job:
    """One job and its planned timeline (Unix times; ``finished_at`` inf: never)."""

    record_id: str
    request: GenerationRequest
    seed: int
    user_id: str
    submitted_at: float
    #: The fixed delay drawn from ``queue_seconds``; waiting for a slot comes on top.
    queue_seconds: float
    progress_seconds: float
    started_at: float
    finished_at: float
    blur: bool
    #: Where the timeline ends: DONE, FAILED (fault "fail") or IN_PROGRESS ("stuck").
    final_status: str = "DONE"
    #: Set by set_job_status(): answered from then on, whatever the clock says.
    forced_status: str | None = None
    error_code: str | None = None
    error_details: str | None = None

    def state(self, now: float) -> str:
        """The status the service answers for this job at ``now``."""
        if self.forced_status is not None:
            return self.forced_status
        if now < self.started_at:
            return "IN_QUEUE"
        if now < self.finished_at:
            return "IN_PROGRESS"
        return self.final_status

    def timeline(self, now: float) -> dict[str, object]:
        """What ``GET /emulator/jobs/{record_id}`` answers (times may lie in the future)."""
        params = asdict(self.request)
        params["seed"] = self.seed
        return {
            "record_id": self.record_id,
            "status": self.state(now),
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": None if math.isinf(self.finished_at) else self.finished_at,
            "params": params,
        }


def _outcome(outcome: str | None) -> tuple[str, str | None, str | None]:
    """The final status, error code and details a job's injected ``outcome`` gives it."""
    if outcome == "fail":
        details = "The image generation failed on the server. Please try again."
        return "FAILED", "GENERATION_FAILED", details
    if outcome == "stuck":
        return "IN_PROGRESS", None, None
    return "DONE", None, None


class JobService:
    """Every job of one emulator, with the capacity schedule and the timing of new jobs.

    ``progress_seconds`` None means the service-like ``timing`` model; a
    float or range is the flat model (scaled by ``timing.scale`` too).
    Thread-safe; a status request costs O(1).
    """

    def __init__(
        self,
        *,
        authenticate: Callable[[Request], str | Response],
        counters: Counters,
        clock: Callable[[], float],
        image_base: Callable[[Request], str],
        queue_seconds: float | tuple[float, float],
        progress_seconds: float | tuple[float, float] | None,
        timing: TimingModel,
        schedule: Schedule,
        seed: int | None,
        blur_words: Sequence[str],
    ) -> None:
        self.queue_seconds = check_duration("queue_seconds", queue_seconds)
        self.progress_seconds = (
            None if progress_seconds is None
            else check_duration("progress_seconds", progress_seconds)
        )
        self.timing = timing
        self.seed = seed
        self.blur_words = tuple(word.lower() for word in blur_words if word)
        self.schedule = schedule
        self._authenticate = authenticate
        self._counters = counters
        self._clock = clock
        self._image_base = image_base
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every job and free every slot; restart the random draws."""
        with self._lock:
            self._random = random.Random(self.seed)
            self.jobs: dict[str, Job] = {}
            self._submitted: set[tuple[object, ...]] = set()
            self.schedule.reset()

    def _progress(self, generation: GenerationRequest) -> float:
        """A new job's time IN_PROGRESS; the caller holds the lock (the Random is shared)."""
        if self.progress_seconds is not None:
            return draw_seconds(self.progress_seconds, self._random) * self.timing.scale
        return self.timing.draw(
            generation.style, generation.steps, generation.images_num,
            generation.aspect_ratio, self._random,
        )

    def submit(
        self, request: Request, params: Mapping[str, str], outcome: str | None = None
    ) -> Response:
        """Create a job; ``outcome`` "fail" or "stuck" (injected faults) sets how it ends."""
        user = self._authenticate(request)
        if isinstance(user, Response):
            return user
        try:
            generation = validate_text2image(parse_form(request.header("Content-Type"),
                                                        request.body))
        except FormError as exc:
            errors = [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]
            return json_response(422, {"detail": errors})
        except ValidationFailed as exc:
            return json_response(422, {"detail": exc.errors})
        blur = any(word in generation.prompt.lower() for word in self.blur_words)
        final_status, error_code, error_details = _outcome(outcome)
        now = self._clock()
        with self._lock:
            retry_after = self.schedule.retry_after(user, now)
            if retry_after is None:
                job = self._create(generation, user, now, blur, final_status)
                if error_code is not None:
                    job = replace(job, error_code=error_code, error_details=error_details)
                self.jobs[job.record_id] = job
                # Counted as the job appears, as before the split: a test that
                # compares the count with what a client saw must not see a gap.
                self._counters.add("submits")
        if retry_after is not None:
            self._counters.add("rejected_429")
            limit = self.schedule.max_jobs_per_user
            return detail_response(
                429, f"Too many unfinished jobs for this account (at most {limit}); "
                f"retry in {retry_after} s", {"Retry-After": str(retry_after)})
        # The service always answers a submit IN_QUEUE, however short the queue.
        return json_response(200, self._view(job, now, request, "IN_QUEUE"))

    def _create(
        self, generation: GenerationRequest, user: str, now: float, blur: bool, final: str
    ) -> Job:
        """Draw a new job's seed and durations and give it its slot; under the lock."""
        # Same fields, seed included, as sent: a client that re-sent a POST.
        key = tuple(getattr(generation, name) for name in _KEY_FIELDS)
        if key in self._submitted:
            self._counters.add("duplicate_submits")
        self._submitted.add(key)
        seed = generation.seed if generation.seed is not None else self._random.randrange(2**32)
        queue = draw_seconds(self.queue_seconds, self._random)
        progress = self._progress(generation)
        planned = math.inf if final == "IN_PROGRESS" else progress
        started, finished = self.schedule.place(user, now + queue, planned, now)
        self._counters.raise_to("max_in_flight_per_user", self.schedule.max_in_flight_per_user)
        return Job(
            record_id=str(uuid.uuid4()), request=generation, seed=seed, user_id=user,
            submitted_at=now, queue_seconds=queue, progress_seconds=progress,
            started_at=started, finished_at=finished, blur=blur, final_status=final,
        )

    def status(self, request: Request, params: Mapping[str, str]) -> Response:
        """``GET /api/v1/text2image/{record_id}/status``."""
        user = self._authenticate(request)
        if isinstance(user, Response):
            return user
        self._counters.add("polls")
        job = self.jobs.get(params["record_id"])
        if job is None:
            return detail_response(404, "Record not found")
        return json_response(200, self._view(job, self._clock(), request))

    def _view(
        self, job: Job, now: float, request: Request, status: str | None = None
    ) -> dict[str, object]:
        """The submit/status answer body for ``job`` at ``now`` (or in ``status``)."""
        status = status or job.state(now)
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

    def force_status(
        self, record_id: str, raw_status: str, error_code: str | None, error_details: str | None
    ) -> None:
        """See :meth:`EmulatorApp.set_job_status`; the job keeps its slot."""
        with self._lock:
            job = self.jobs.get(record_id)
            if job is None:
                raise KeyError(f"no job with record id {record_id!r}")
            self.jobs[record_id] = replace(
                job, forced_status=raw_status, error_code=error_code, error_details=error_details
            )

    def record_ids(self) -> list[str]:
        """Every job's record id, oldest first (under the lock: no insert meanwhile)."""
        with self._lock:
            return list(self.jobs)

    def last_record_id(self) -> str | None:
        """The newest job's record id, or None."""
        with self._lock:
            return next(reversed(self.jobs), None)

    def busy_slot_seconds(self) -> float:
        """The slots' busy time so far, summed (see :meth:`Schedule.busy_seconds`)."""
        now = self._clock()
        with self._lock:
            return self.schedule.busy_seconds(now)

    def set_speed(self, scale: float) -> None:
        """Make jobs submitted from now on take ``scale`` times their unscaled time."""
        timing = replace(self.timing, scale=scale)  # validates
        with self._lock:
            self.timing = timing
