"""A client used on both sides of a ``fork`` keeps each process's requests its own (issue 18, item 3).

The parent makes a few submits (its pool now holds an open connection),
forks three children, and all four submit at once through the same
client object. Each process writes down what it asked for and the record
id it was given; the emulator says which prompt each record id really
carries. Before, a child sent on its parent's pooled socket, and about a
third of the ids belonged to another process's job.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import arta
from arta.emulator import Emulator

JOBS = 20


def _submit_all(client: arta.Client, name: str, log: Path) -> None:
    with log.open("w") as out:
        for index in range(JOBS):
            prompt = f"{name}-{index}"
            try:
                record_id = client.submit(prompt).record_id
            except arta.ArtaError as error:
                record_id = f"error: {type(error).__name__}"
            out.write(json.dumps([prompt, record_id]) + "\n")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_never_shares_its_parents_connections(
    emulator: Emulator, client: arta.Client, tmp_path: Path,
) -> None:
    for index in range(3):
        client.submit(f"before-{index}")
    children = []
    for child in range(3):
        pid = os.fork()
        if pid == 0:  # the child: submit, write down, leave without pytest's teardown
            code = 0
            try:
                _submit_all(client, f"child{child}", tmp_path / f"child{child}.jsonl")
            except BaseException:  # noqa: BLE001 - reported through the exit code
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        children.append(pid)
    _submit_all(client, "parent", tmp_path / "parent.jsonl")
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    pairs = [json.loads(line) for log in sorted(tmp_path.glob("*.jsonl"))
             for line in log.read_text().splitlines()]
    assert len(pairs) == 4 * JOBS
    wrong = [(prompt, record_id) for prompt, record_id in pairs
             if record_id.startswith("error")
             or emulator.app.job_timeline(record_id)["params"]["prompt"] != prompt]  # type: ignore[index]
    assert wrong == []
