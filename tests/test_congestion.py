"""A service that refuses every submit as congestion (429/503) gets a backoff, not a storm.

Issue 18, items 1 and 5: without ``Retry-After`` (the service's likely
case) the window used to resubmit at once, thousands of submits a second;
a ``Retry-After`` of 31 years paused it for 31 years. Now the window waits
by the retry policy's growing, jittered backoff (a ``Retry-After`` capped at
``max_retry_after``), and a job refused for longer than its timeout ends in
its typed error: no record id, since nothing was taken.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hostile_server import HostileServer

import arta
from arta.errors import ServiceError

TIMEOUT = 3.0
PROMPTS = [f"a fox {n}" for n in range(6)]


@pytest.mark.parametrize("mode", ["submit-429", "submit-503", "submit-429-zero",
                                  "submit-429-huge"])
def test_refused_submits_back_off_and_end_in_typed_errors(mode: str, tmp_path: Path) -> None:
    with HostileServer() as server, arta.Client(f"{server.url}/{mode}", home=tmp_path) as client:
        started = time.monotonic()
        outcomes = list(client.map(PROMPTS, concurrency=4, timeout=TIMEOUT))
        took = time.monotonic() - started
        submits = server.counts[mode]["submit"]
    assert len(outcomes) == len(PROMPTS)
    for outcome in outcomes:
        assert isinstance(outcome.error, ServiceError), outcome
        assert outcome.error.status in (429, 503) and outcome.record_id is None
    assert took <= TIMEOUT + 1.0, took
    # Backoff of 0.5, 1, 2 s (+ jitter) while the window halves: a few rounds of
    # at most four submits, where a tight loop sent thousands.
    assert submits <= 30, submits


def test_the_clients_timeout_bounds_refused_submits_too(tmp_path: Path) -> None:
    """``Client(timeout=T)`` with no ``timeout`` given to ``map``: the same end, not a retry forever."""
    with HostileServer() as server, \
            arta.Client(f"{server.url}/submit-429", home=tmp_path, timeout=TIMEOUT) as client:
        started = time.monotonic()
        outcomes = list(client.map(PROMPTS[:2], concurrency=2))
        took = time.monotonic() - started
    assert len(outcomes) == 2
    assert all(isinstance(outcome.error, ServiceError) for outcome in outcomes), outcomes
    assert took <= TIMEOUT + 1.0, took
