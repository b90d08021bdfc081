"""An offline emulator of the whole ARTA service, for tests and demos.

It speaks the service's wire protocol on one local port: Firebase anonymous
sign-up and token refresh, text2image submit and status polling with jobs
that move ``IN_QUEUE`` -> ``IN_PROGRESS`` -> ``DONE`` on a timer, and real
PNG images (small generated landscapes, the same bytes for the same prompt,
style, seed and aspect ratio). It needs nothing but the standard library.

Use it in your own tests with a context manager and point the client at it
with ``ARTA_ENDPOINT``::

    import arta
    from arta.emulator import Emulator

    def test_my_pipeline(monkeypatch, tmp_path):
        with Emulator(queue_seconds=0.05, progress_seconds=0.1) as emu:
            monkeypatch.setenv("ARTA_ENDPOINT", emu.url)
            result = arta.generate("a red dragon", style="Fantasy Art")
            result.save(tmp_path)
            assert emu.stats()["signups"] == 1

or, as a pytest fixture shared by a whole session::

    @pytest.fixture(scope="session")
    def arta_emulator():
        with Emulator(queue_seconds=0, progress_seconds=0) as emu:
            yield emu

    @pytest.fixture
    def emu(arta_emulator):
        arta_emulator.app.reset()        # zero counters, forget jobs
        return arta_emulator

From a shell, ``arta emulator --port 8765`` serves it until Ctrl-C
(``--queue-seconds``, ``--progress-seconds``, ``--capacity``,
``--max-jobs-per-user``, ``--faults``, ``--fault-seed``; ``--port 0`` picks a
free port, and the first line printed is the URL).

What a test can check or provoke:

- ``emu.stats()`` (also ``GET {url}/emulator/stats``): ``signups``,
  ``refreshes``, ``submits``, ``duplicate_submits`` (a submit whose fields,
  seed included, repeat an earlier one), ``polls``, ``downloads``,
  ``faults``, ``rejected_tokens`` (401s answered), ``rejected_429``
  (submits refused by ``max_jobs_per_user``), ``max_in_flight_per_user``
  (the most unfinished jobs one account ever had at once) and
  ``busy_slot_seconds`` (the time the slots were busy so far, summed; with
  ``capacity=K`` utilisation is ``busy_slot_seconds / (K * wall time)``).
  All are whole numbers but ``busy_slot_seconds``. ``POST
  {url}/emulator/reset`` or ``emu.app.reset()`` zeroes them and forgets
  accounts and jobs.
- ``GET {url}/emulator/jobs/{record_id}`` (or ``emu.app.job_timeline(id)``):
  a job's ``{"record_id", "status", "submitted_at", "started_at",
  "finished_at", "params"}``, Unix times, planned (so possibly in the
  future); ``finished_at`` is null for a job that never ends; 404 for an
  unknown id. A benchmark in another process measures with it how late a
  client noticed a job's end.
- ``emu.app.revoke_tokens()``: every ID token issued so far now gets 401
  (refresh tokens still work), to test a client's 401 recovery.
- ``emu.app.set_token_lifetime(seconds)``: tokens issued from then on
  expire after ``seconds`` (0 issues already-expired ones).
- ``Emulator(signup_quota=N)``: the N+1th sign-up within an hour gets
  Firebase's ``TOO_MANY_ATTEMPTS_TRY_LATER``.
- A prompt containing a ``blur_words`` word (``"nsfw"``) gets images
  flagged ``isBlur: true``.
- Tokens from Google's Firebase Auth Emulator (unsigned, ``alg: none``)
  are accepted unless ``accept_unsigned_tokens=False``.
- Slow or random timelines: ``queue_seconds`` and ``progress_seconds`` take
  seconds or a ``(min, max)`` range; :func:`parse_seconds` reads ``"2"`` or
  ``"0-3"`` into one, as the ``--queue-seconds``/``--progress-seconds``
  flags do. ``queue_seconds`` is a fixed delay before a job may take a slot.
- ``Emulator(clock=...)``: a fake time source, moved by the test instead of
  sleeping; every timeline is computed from it.

A service with a capacity, and jobs that take as long as their work:

- ``capacity=K`` (``--capacity K``): at most K jobs ``IN_PROGRESS`` at once;
  the others wait ``IN_QUEUE`` and take a slot in submit order (FIFO), so
  queue time comes from the load. A job gets its slot when it is submitted
  (start = the later of its queue delay and the earliest free slot), so its
  whole timeline is known at once; a ``stuck`` job holds its slot forever.
- ``max_jobs_per_user=M`` (``--max-jobs-per-user M``): a submit from an
  account that has M unfinished jobs gets 429 ``{"detail": ...}`` with
  ``Retry-After``: the whole seconds until that account's earliest
  unfinished job ends (at least 1).
- ``progress_seconds=None`` (or ``timing=TimingModel(...)``; the default of
  ``arta emulator`` without ``--progress-seconds``): a job computes for a
  per-style base plus a cost per step x image x megapixel of its aspect
  ratio (at 1024 pixels on the long side), times ±10% noise: 8-20 s for 30
  steps, one or two images, any ratio. :class:`TimingModel` documents the
  constants; they are a plausible model, not measurements of the real
  service. ``emu.app.set_speed(2.0)`` makes every job submitted from then
  on twice as slow (flat or modelled), ``set_speed(1.0)`` restores it;
  from another process, ``POST {url}/emulator/speed`` with ``{"scale": 2.0}``.

Both capacity options default to unlimited; ``Emulator()`` in Python keeps
``queue_seconds=1.0, progress_seconds=2.0``, fast enough for tests.

Faults, to prove that a client survives a flaky service. A plan is a spec
of ``ENDPOINT:FAULT=PROBABILITY`` parts::

    with Emulator(faults="submit:drop=0.05,status:503=0.1,submit:fail=0.02",
                  fault_seed=7) as emu:
        ...

ENDPOINT is ``signup``, ``refresh``, ``submit``, ``status`` or ``image``;
each request to one draws at most one fault (an endpoint's probabilities
add up to at most 1), and the same ``fault_seed`` with the same requests in
the same order gives the same faults. FAULT is one of:

- ``429``: Too Many Requests, ``Retry-After: 1`` (Google's error envelope,
  ``RESOURCE_EXHAUSTED``, for signup/refresh); nothing is done.
- ``500``, ``502``, ``503``: that error, 500 as JSON, 502/503 as a proxy's
  HTML page (503 with ``Retry-After: 1``); nothing is done.
- ``drop``: the connection closes without an answer. A submit creates its
  job first (counted in ``submits``): the case where a blind retry makes a
  duplicate. Other requests are not performed.
- ``slow``: the right answer, held back ``slow_seconds`` (default 35, past
  a client's read timeout; set e.g. ``slow_seconds=1.0`` in tests). A
  submit's job exists from the start.
- ``badjson``: the right status and headers, but the body cut in half:
  undecodable JSON, or a truncated PNG for ``image``. A submit's job exists.
- ``fail`` (submit only): the job ends ``FAILED`` with ``error_code``
  ``GENERATION_FAILED`` and a sentence in ``error_details``.
- ``stuck`` (submit only): the job stays ``IN_PROGRESS`` forever.

Faults never touch ``/emulator/*``. Hooks on ``emu.app``:
``set_faults(plan_or_spec, fault_seed=None)`` changes the plan at run time
(also ``POST {url}/emulator/faults`` with the spec as body; ``GET`` shows
it); ``inject("submit", "drop", times=1)`` forces a fault on the next
request(s), before any random one; ``fault_counts()`` counts them by
``"endpoint:fault"`` (their total is ``stats()["faults"]``);
``last_record_id()``/``jobs()`` find the job of a submit whose answer was
lost; ``set_job_status(record_id, "CANCELLED_BY_ADMIN", error_code=None,
error_details=None)`` makes a job answer any status from then on.

It serves thousands of requests a second over keep-alive connections and
logs nothing: a status poll costs it about 0.1 ms of CPU, so one process
answered 5,000-9,000 polls a second (8 to 128 connections) on a 2-core
machine; ``benchmarks/emulator_load.py`` measures it.

The service logic, :class:`EmulatorApp`, opens no socket: its
``handle(Request) -> Response`` can be called in-process. It marks the
answers of ``drop`` and ``slow`` (``Response.drop``, ``Response.delay``)
for the server to carry out.
"""

from arta.emulator.app import STAT_NAMES, EmulatorApp
from arta.emulator.faults import (
    ENDPOINTS,
    FAULT_KINDS,
    FaultPlan,
    FaultRule,
    parse_faults,
    parse_seconds,
)
from arta.emulator.messages import Request, Response
from arta.emulator.service import Emulator
from arta.emulator.timing import TimingModel

__all__ = [
    "ENDPOINTS",
    "FAULT_KINDS",
    "STAT_NAMES",
    "Emulator",
    "EmulatorApp",
    "FaultPlan",
    "FaultRule",
    "Request",
    "Response",
    "TimingModel",
    "parse_faults",
    "parse_seconds",
]
