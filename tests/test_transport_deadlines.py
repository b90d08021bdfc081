"""A request's deadline reaches the socket, on every transport, whatever the server does.

Each socket transport (requests, urllib3, httpx) meets each misbehaviour of
:mod:`hostile_server`'s status call: a status line and headers dripping a
byte every 2 s (each byte restarts a socket's read timeout), a body
dripping a byte a second (read whole, and streamed), a server that reads
the request and never answers, and one that never accepts the connection.
A request with a deadline 2 s away must end by that deadline and a second
of margin, in the right error; one without a deadline keeps its timeouts
(and a whole answer must still come within 4 read timeouts).

All cases run at once, each in its own thread (they wait on the network,
not the CPU), so the table costs about as long as its slowest row; each
test then checks its row.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hostile_server import HostileServer
from transport_cases import AppServer, CaseApp, unanswered_connect

import arta
from arta.transport import (
    HttpxTransport,
    InProcessTransport,
    Request,
    RequestsTransport,
    Transport,
    Urllib3Transport,
)
from arta.transport.watchdog import Watchdog, watchdog

SOCKET_KINDS = ["requests", "urllib3", "httpx"]
#: How far away the deadline of a case is, and the margin it may end past it.
DEADLINE = 2.0
MARGIN = 1.0
TOKEN = "TOKEN-SECRET-IN-A-HEADER"
KEY = "KEY-SECRET-IN-THE-QUERY"


def make_transport(kind: str) -> Transport:
    """A fresh socket transport of ``kind``."""
    if kind == "requests":
        return RequestsTransport()
    if kind == "urllib3":
        return Urllib3Transport()
    if kind == "httpx":
        return HttpxTransport()
    raise AssertionError(kind)


@dataclass(frozen=True)
class Case:
    """One request against one misbehaviour, and what must come of it."""

    kind: str
    mode: str  # a hostile_server mode, or "never-accepts"
    deadline: float | None = DEADLINE  # seconds from the start, or None
    timeout: tuple[float, float] = (5.0, 30.0)
    stream: bool = False
    error: type[Exception] | None = arta.errors.NoResponseError  # None: an answer is expected
    says: str = "before the deadline"  # in the error's message
    bound: float = DEADLINE  # the call ends by start + bound + MARGIN

    @property
    def id(self) -> str:
        deadline = "no-deadline" if self.deadline is None else f"deadline-{self.deadline:g}s"
        return (f"{self.kind}-{self.mode}{'-streamed' if self.stream else ''}-{deadline}"
                f"-read-{self.timeout[1]:g}s")


CASES = [
    *(Case(kind, mode) for kind in SOCKET_KINDS
      for mode in ("drip-status-headers", "drip-status-body", "silent-status")),
    *(Case(kind, "drip-status-body", stream=True) for kind in SOCKET_KINDS),
    *(Case(kind, "never-accepts", error=arta.errors.ConnectError, says="no connection before the deadline")
      for kind in SOCKET_KINDS),
    # The deadline bounds the wait; an answer that comes is an answer.
    *(Case(kind, "status-retry-after-huge", error=None) for kind in SOCKET_KINDS),
    # Without a deadline: today's timeouts, and the whole answer within 4 read timeouts.
    *(Case(kind, "silent-status", deadline=None, timeout=(5, 1.0), says="1s read timeout",
           bound=1.0) for kind in SOCKET_KINDS),
    # (Each byte comes within the 2.5 s read timeout: only the whole-answer bound ends it.)
    *(Case(kind, "drip-status-headers", deadline=None, timeout=(5, 2.5),
           says="within 10s (4 x the read timeout)", bound=10.0) for kind in SOCKET_KINDS),
    *(Case(kind, "drip-status-body", deadline=None, timeout=(5, 1.5),
           says="within 6s (4 x the read timeout)", bound=6.0) for kind in SOCKET_KINDS),
    *(Case(kind, "never-accepts", deadline=None, timeout=(0.5, 30), error=arta.errors.ConnectError,
           says="connect timed out after 0.5s", bound=0.5) for kind in SOCKET_KINDS),
    # A deadline further away than the request's own timeout: the timeout ends it.
    *(Case(kind, "silent-status", deadline=30.0, timeout=(5, 1.0), says="1s read timeout",
           bound=1.0) for kind in SOCKET_KINDS),
]


@dataclass
class Outcome:
    """What one case came to."""

    started: float
    ended: float = 0.0
    error: BaseException | None = None
    status: int | None = None
    retry_after: str | None = None
    text: str = ""  # the error with its whole chain, as a traceback prints it


def _run(case: Case, url: str, outcome: Outcome) -> None:
    transport = make_transport(case.kind)
    # The clock starts with the request, not with the making of the transport
    # (its TLS context, in 50 threads at once, can take a second on 2 cores).
    outcome.started = time.monotonic()
    deadline = None if case.deadline is None else outcome.started + case.deadline
    request = Request("GET", url, headers={"Authorization": TOKEN}, timeout=case.timeout,
                      stream=case.stream, deadline=deadline)
    try:
        with transport.handle_request(request) as response:
            outcome.status = response.status
            outcome.retry_after = response.headers.get("Retry-After")
            response.read()
    except Exception as error:  # noqa: BLE001 - recorded, for the test to judge
        outcome.error = error
        outcome.text = "".join(traceback.format_exception(error))
    finally:
        outcome.ended = time.monotonic()
        transport.close()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


@pytest.fixture(scope="module")
def outcomes(hostile: HostileServer) -> Iterator[dict[str, Outcome]]:
    """Every case's outcome: all run at once, each in its own thread."""
    with unanswered_connect() as black_hole:
        results: dict[str, Outcome] = {}
        threads = []
        for case in CASES:
            if case.mode == "never-accepts":
                if black_hole is None:
                    continue  # this OS completes connections beyond a full backlog
                url = f"{black_hole}?key={KEY}"
            else:
                url = f"{hostile.url}/{case.mode}/api/v1/text2image/job-1/status?key={KEY}"
            outcome = results[case.id] = Outcome(time.monotonic())
            thread = threading.Thread(target=_run, args=(case, url, outcome), daemon=True)
            thread.start()
            threads.append(thread)
        guard = time.monotonic() + 30  # a guard only: each case asserts its own bound
        for thread in threads:
            thread.join(max(0.0, guard - time.monotonic()))
        yield results


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_request_ends_by_its_deadline_or_timeouts(outcomes: dict[str, Outcome], case: Case) -> None:
    if case.id not in outcomes:
        pytest.skip("this OS completes connections beyond a full backlog")
    outcome = outcomes[case.id]
    assert outcome.ended, "still running 30 s on"
    took = outcome.ended - outcome.started
    assert took <= case.bound + MARGIN, f"took {took:.2f}s, bound {case.bound:g}s: {outcome.error!r}"
    if case.error is None:
        assert outcome.error is None, outcome.text
        assert outcome.status == 503 and outcome.retry_after == "1000000000"
        return
    assert isinstance(outcome.error, case.error), outcome.text
    if case.error is arta.errors.ConnectError:
        assert not isinstance(outcome.error, arta.errors.NoResponseError)
    assert case.says in str(outcome.error)
    assert "/api/v1/text2image/job-1/status" in str(outcome.error) or case.mode == "never-accepts"
    if case.deadline is None or case.deadline > case.bound:
        # Nothing ended it early: it lasted as long as the timeout it names.
        assert took >= case.bound - 0.1, f"took {took:.2f}s, expected {case.bound:g}s"
    for secret in (TOKEN, KEY):
        assert secret not in outcome.text, outcome.text


@pytest.mark.parametrize("kind", SOCKET_KINDS)
def test_a_cut_connection_is_not_reused(hostile: HostileServer, kind: str) -> None:
    transport = make_transport(kind)
    base = f"{hostile.url}/drip-status-headers"
    try:
        for _ in range(2):
            with transport.handle_request(Request("POST", f"{base}/signupNewUser",
                                                  json={})) as response:
                assert response.status == 200  # a connection now waits in the pool
            with pytest.raises(arta.errors.NoResponseError, match="deadline"):
                transport.handle_request(Request(
                    "GET", f"{base}/api/v1/text2image/job-1/status",
                    deadline=time.monotonic() + 0.5))
        for _ in range(3):  # the pool hands out no cut connection
            with transport.handle_request(Request("GET", f"{base}/img/0.png",
                                                  timeout=(2, 2))) as image:
                assert image.status == 200 and image.read().startswith(b"\x89PNG")
    finally:
        transport.close()
    assert watchdog.pending() == 0  # every slot armed for these requests was disarmed


@pytest.mark.parametrize("kind", [*SOCKET_KINDS, "inprocess"])
def test_a_deadline_already_past_sends_nothing(hostile: HostileServer, kind: str) -> None:
    app = CaseApp()
    transport = InProcessTransport(app, base_url=hostile.url) if kind == "inprocess" \
        else make_transport(kind)
    try:
        with pytest.raises(arta.errors.ConnectError, match="no connection before the deadline"):
            transport.handle_request(Request(
                "POST", f"{hostile.url}/past-deadline/api/v1/text2image", multipart={"a": "b"},
                deadline=time.monotonic() - 0.001))
    finally:
        transport.close()
    assert hostile.counts["past-deadline"]["submit"] == 0 and app.seen == []


@pytest.mark.parametrize("kind", [*SOCKET_KINDS, "inprocess"])
def test_a_far_deadline_cuts_nothing(kind: str) -> None:
    app = CaseApp()
    with AppServer(app) as server:
        base = "http://cases.test" if kind == "inprocess" else server.url
        transport = InProcessTransport(app, base_url=base) if kind == "inprocess" \
            else make_transport(kind)
        try:
            far = time.monotonic() + 30
            with transport.handle_request(Request("GET", f"{base}/late/0.5", timeout=(5, 5),
                                                  deadline=far)) as late:
                assert late.status == 200
            with transport.handle_request(Request("GET", f"{base}/drip/2", stream=True,
                                                  timeout=(5, 5), deadline=far)) as dripped:
                assert dripped.read() == b"  "
        finally:
            transport.close()


def test_in_process_a_delay_and_a_streamed_body_end_by_the_deadline() -> None:
    app = CaseApp()
    transport = InProcessTransport(app, base_url="http://cases.test")
    started = time.monotonic()
    with pytest.raises(arta.errors.NoResponseError, match="before the deadline"):
        transport.handle_request(Request("GET", "http://cases.test/late/10", timeout=(5, 30),
                                         deadline=started + DEADLINE))
    assert time.monotonic() <= started + DEADLINE + MARGIN
    started = time.monotonic()
    with transport.handle_request(Request("GET", "http://cases.test/drip/30", stream=True,
                                          deadline=started + DEADLINE)) as response, \
            pytest.raises(arta.errors.NoResponseError, match="before the deadline"):
        response.read()
    assert time.monotonic() <= started + DEADLINE + MARGIN


def test_a_users_session_has_its_timeouts_capped_by_the_deadline(hostile: HostileServer) -> None:
    import requests

    transport = RequestsTransport(session=requests.Session())
    url = f"{hostile.url}/silent-status/api/v1/text2image/job-1/status"
    started = time.monotonic()
    try:
        with pytest.raises(arta.errors.NoResponseError, match="before the deadline"):
            transport.handle_request(Request("GET", url, timeout=(5, 30),
                                             deadline=started + DEADLINE))
    finally:
        transport.close()
    assert time.monotonic() <= started + DEADLINE + MARGIN


# -- the watchdog itself ------------------------------------------------------------------


def test_the_watchdog_cuts_a_blocked_read_at_its_time_and_spares_a_disarmed_one() -> None:
    dog = Watchdog()
    cut_end, cut_peer = socket.socketpair()
    spared_end, spared_peer = socket.socketpair()
    try:
        slot = dog.arm(time.monotonic() + 0.3)
        slot.attach(cut_end)
        spared = dog.arm(time.monotonic() + 0.2)
        spared.attach(spared_end)
        assert dog.disarm(spared) is False
        started = time.monotonic()
        assert cut_end.recv(1) == b""  # blocked until the watchdog shut it down
        assert 0.25 <= time.monotonic() - started <= 0.3 + MARGIN
        assert slot.fired and dog.disarm(slot) is True
        spared_peer.sendall(b"x")
        assert spared_end.recv(1) == b"x"  # the disarmed one was left alone
    finally:
        for sock in (cut_end, cut_peer, spared_end, spared_peer):
            sock.close()


def test_disarmed_slots_do_not_pile_up() -> None:
    dog = Watchdog()
    far = time.monotonic() + 3600
    for index in range(20_000):
        dog.disarm(dog.arm(far + index))
    assert dog.pending() == 0
    assert len(dog._heap) <= 2 * Watchdog.COMPACT_AT + 2  # rebuilt, not 20 000 long


def test_a_slot_cut_before_its_socket_came_cuts_the_socket_when_it_comes() -> None:
    dog = Watchdog()
    slot = dog.arm(time.monotonic())
    deadline = time.monotonic() + 5
    while not slot.fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert slot.fired
    mine, peer = socket.socketpair()
    try:
        slot.attach(mine)
        assert select.select([mine], [], [], 0)[0]  # shut down: readable, at its end
        assert mine.recv(1) == b""
    finally:
        mine.close()
        peer.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_has_a_watchdog_of_its_own() -> None:
    watchdog.disarm(watchdog.arm(time.monotonic() + 60))  # the parent's thread is running
    mine, peer = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: its watchdog must cut its own read, without the parent's thread
        code = 1
        try:
            slot = watchdog.arm(time.monotonic() + 0.2)
            slot.attach(mine)
            mine.settimeout(10)
            code = 0 if mine.recv(1) == b"" and slot.fired else 2
        except BaseException:  # noqa: BLE001 - the child reports by its exit code
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 20:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child's read was never cut")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        mine.close()
        peer.close()

