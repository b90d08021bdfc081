"""``arta batch``: many prompts, several worker processes, one token, nothing lost.

The manifest is the batch's memory: a JSONL file, append-only, each line
flushed and fsynced before the work goes on. A job's record id is written
the moment its submit is answered, so a batch killed at any point and run
again resumes: finished jobs are skipped, submitted ones are picked up by
record id (never submitted twice), the rest are submitted.

Manifest lines (the last line of a job wins)::

    {"job": "12:3f2a9c...", "line": 12, "event": "submitted", "record_id": "...", "seed": 42}
    {"job": "12:3f2a9c...", "line": 12, "event": "done", "record_id": "...", "files": [...]}
    {"job": "12:3f2a9c...", "line": 12, "event": "failed", "record_id": "...", "error": "..."}

A job's key is its line number and a digest of its parameters, so an edited
input line is a new job, not a stale match.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import filelock

from arta.client import Client
from arta.errors import (
    ArtaError,
    InvalidInputError,
    SubmitOutcomeUnknown,
)
from arta.params import GenerationParams

__all__ = ["BatchJob", "Manifest", "Outcome", "read_jobs", "run_batch", "running"]

log = logging.getLogger(__name__)

#: The keys a JSONL line may hold: the parameters of ``arta.generate``.
FIELDS = ("prompt", "style", "n", "negative_prompt", "guidance_scale", "steps",
          "aspect_ratio", "seed")


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """One line of the input: where it came from and what to generate."""

    line: int
    params: dict[str, Any]

    @property
    def key(self) -> str:
        """The job's identity in the manifest: its line and a digest of its parameters."""
        digest = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()
        return f"{self.line}:{digest[:12]}"


def read_jobs(path: str | os.PathLike[str]) -> list[BatchJob]:
    """Read and validate every job of a batch file, before anything is sent.

    A ``.jsonl``/``.ndjson`` file, or one whose first line starts with ``{``,
    holds one JSON object of generate's parameters per line; any other file
    holds one prompt per line. Blank lines and lines starting with ``#`` are
    skipped. A bad line raises :class:`~arta.errors.InvalidInputError`
    naming it.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    entries = [(number, text.strip()) for number, text in enumerate(lines, 1)
               if text.strip() and not text.lstrip().startswith("#")]
    is_jsonl = Path(path).suffix in (".jsonl", ".ndjson") or (
        bool(entries) and entries[0][1].startswith("{"))
    jobs = []
    for number, text in entries:
        try:
            params = _parse_line(text) if is_jsonl else {"prompt": text}
            GenerationParams.create(**{"seed": 0, **params})  # validate, before any request
        except (InvalidInputError, ValueError, TypeError) as error:
            raise InvalidInputError(f"{path}, line {number}: {error}") from None
        jobs.append(BatchJob(number, params))
    if not jobs:
        raise InvalidInputError(f"{path} holds no prompts")
    return jobs


def _parse_line(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict) or "prompt" not in value:
        raise ValueError('expected a JSON object with a "prompt"')
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}")
    return value


class Manifest:
    """The append-only JSONL record of a batch, safe to share between processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = filelock.FileLock(str(self.path) + ".lock")

    def append(self, record: dict[str, Any]) -> None:
        """Add one line, durably: flushed and fsynced before returning."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with self._lock, open(self.path, "ab") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of every job, by key (a line torn by a kill is skipped)."""
        latest: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(FileNotFoundError), open(self.path, encoding="utf-8") as file:
            for number, text in enumerate(file, 1):
                try:
                    record = json.loads(text)
                    latest[record["job"]] = record
                except (ValueError, KeyError, TypeError):
                    log.warning("%s, line %d: not a whole record (cut short by a kill?); skipped",
                                self.path, number)
        return latest


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one job of this run ended (also the ``--json`` output of a job)."""

    line: int
    event: str  # "done", "failed" or "skipped"
    record_id: str | None = None
    files: tuple[str, ...] = ()
    blurred: tuple[int, ...] = ()
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """A plain dict for ``--json``."""
        return dataclasses.asdict(self)


def _resumable(record: dict[str, Any] | None) -> str | None:
    """The record id to pick a job up by, or None to submit it (again)."""
    if record is None or not record.get("record_id"):
        return None
    # A job the service FAILED is submitted anew; anything else that has a
    # record id (submitted, timed out, interrupted) is still on the service.
    return None if record.get("error_type") == "GenerationFailed" else str(record["record_id"])


# -- the worker processes ----------------------------------------------------

_worker: dict[str, Any] = {}


def _start_worker(client_options: dict[str, Any], manifest: str, output: str) -> None:
    """Pool initializer: one client per worker process; the token file is shared."""
    _worker.update(client=Client(**client_options), manifest=Manifest(manifest), output=output)


def _run_job(task: tuple[BatchJob, str | None]) -> Outcome:
    job, record_id = task
    client: Client = _worker["client"]
    manifest: Manifest = _worker["manifest"]
    base = {"job": job.key, "line": job.line}
    try:
        if record_id is None:
            generation = client.submit(**job.params)
            record_id = generation.record_id
            manifest.append({**base, "event": "submitted", "record_id": record_id,
                             "seed": generation.seed})
        else:
            generation = client.resume(record_id)
        generation.wait(client.timeout)
        result = generation.result()
        files = tuple(str(p) for p in result.save(
            _worker["output"], name=f"{job.line:04d}-{{record_id}}-{{index}}"))
        manifest.append({**base, "event": "done", "record_id": record_id, "files": list(files),
                         "blurred": result.blurred})
        return Outcome(job.line, "done", record_id, files, tuple(result.blurred))
    except ArtaError as error:
        record_id = error.record_id or record_id
        if isinstance(error, SubmitOutcomeUnknown):
            record_id = None
        manifest.append({**base, "event": "failed", "record_id": record_id,
                         "error_type": type(error).__name__, "error": str(error)})
        return Outcome(job.line, "failed", record_id, error=f"{type(error).__name__}: {error}")


def run_batch(
    jobs: list[BatchJob],
    manifest: Manifest,
    output: str | os.PathLike[str],
    *,
    workers: int = 4,
    client_options: dict[str, Any] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every job not yet done, in ``workers`` processes; return every job's outcome.

    Each worker makes a :class:`~arta.client.Client` from ``client_options``
    (its ``timeout`` bounds each job's wait).
    Jobs the manifest records as done are skipped (their outcome is
    ``"skipped"``); submitted ones are resumed by record id. ``on_outcome``
    is called in this process as each job ends.
    """
    latest = manifest.latest()
    outcomes: list[Outcome] = []
    tasks = []
    for job in jobs:
        record = latest.get(job.key)
        if record is not None and record.get("event") == "done":
            outcomes.append(Outcome(job.line, "skipped", record.get("record_id"),
                                    tuple(record.get("files", ()))))
        else:
            tasks.append((job, _resumable(record)))
    if not tasks:
        return outcomes
    # spawn, not fork: a forked child would inherit this process's threads and sockets.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(tasks)), initializer=_start_worker,
                      initargs=(client_options or {}, str(manifest.path), str(output))) as pool:
        for outcome in pool.imap_unordered(_run_job, tasks):
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return sorted(outcomes, key=lambda o: o.line)


def running(manifest: Manifest, jobs: list[BatchJob]) -> Iterator[tuple[int, str]]:
    """(line, record id) of every job submitted and not finished: what a resume picks up."""
    latest = manifest.latest()
    for job in jobs:
        record = latest.get(job.key)
        if record is not None and record.get("event") == "submitted":
            yield job.line, str(record["record_id"])
