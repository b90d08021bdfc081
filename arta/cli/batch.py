"""The ``arta batch`` command: its flags, its progress and JSON output, its summary.

:mod:`arta.cli` parses the command line and opens the client; this module
does the rest, on :func:`arta.batch.run_batch`. It lives apart so that the
command's pieces (flags, output, summary) read together.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from arta.batch import (
    POSSIBLY_RESUBMITTED_NOTE,
    BatchReport,
    JobReport,
    Task,
    check_folder,
    read_jobs,
    run_batch,
    running,
)
from arta.batch.manifest import MANIFEST_NAME, Manifest, RunLock
from arta.client import Client
from arta.errors import InvalidInputError
from arta.progress import BatchProgress
from arta.styles import DEFAULT_STYLE, resolve_style

__all__ = ["BatchCommand"]


def _check_engine(args: argparse.Namespace) -> None:
    """The Dask flags make sense together, and Dask is installed: said before any request."""
    if args.engine == "local":
        given = [flag for flag, value in (("--scheduler", args.scheduler),
                                          ("--output-on-workers", args.output_on_workers))
                 if value is not None]
        if given:
            raise InvalidInputError(f"{' and '.join(given)} need --engine dask")
        return
    if not args.scheduler:
        raise InvalidInputError("--engine dask needs --scheduler tcp://HOST:8786 or local:N")
    if args.workers != 1:
        raise InvalidInputError("--workers is for --engine local; a Dask cluster has its own")
    if importlib.util.find_spec("distributed") is None:
        raise InvalidInputError("--engine dask needs Dask: pip install 'arta-client[dask]'")


def _print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class BatchCommand:
    """One ``arta batch`` run: check, lock, run with progress, summarise."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        _check_engine(args)
        self.jobs = read_jobs(args.file)  # every line checked before anything is sent
        self.output = args.output or "."
        check_folder(self.output)
        self.manifest = Manifest(args.manifest or os.path.join(self.output, MANIFEST_NAME))
        self.report = BatchReport([])
        #: Every outcome so far, for a gallery of what a run stopped by Ctrl-C has.
        self.outcomes: list[JobReport] = []
        self._lock = RunLock(self.manifest.path)

    def lock(self) -> None:
        """Hold the manifest for the run, or raise :class:`~arta.batch.manifest.ManifestBusy`."""
        self._lock.acquire()

    def unlock(self) -> None:
        """Let the next run in."""
        self._lock.release()

    def run(self, client: Client, client_options: dict[str, Any]) -> None:
        """Run the jobs with a progress display (workers make clients from ``client_options``)."""
        args = self.args
        # Shown by the run (run_batch or the Dask driver), as it goes.
        progress = BatchProgress(sys.stderr, len(self.jobs), enabled=not args.quiet)

        def report(outcome: JobReport) -> None:
            self.outcomes.append(outcome)
            if args.json:
                _print_json(outcome.as_json())
            elif outcome.event == "failed":
                progress.message(f"arta: line {outcome.line}: {outcome.error}")

        def planned(done: list[JobReport], tasks: list[Task]) -> None:
            for outcome in done:
                report(outcome)
            again = sum(task.possibly_resubmitted for task in tasks)
            if again:  # said before the submits, so that even a killed run has said it
                progress.message(
                    f"arta: batch: warning: {again} job(s) may have been submitted by an "
                    f"earlier run that was stopped before the answer"
                    f"{POSSIBLY_RESUBMITTED_NOTE}")

        if args.engine == "dask":
            from arta.dask.batch import run_batch_on_dask  # imports Dask: only when asked

            self.report = run_batch_on_dask(
                self.jobs, self.manifest, self.output, scheduler=args.scheduler,
                client_options=client_options, concurrency=args.concurrency,
                on_outcome=report, on_plan=planned, progress=progress,
                output_on_workers=args.output_on_workers, token=args.token,
                timeout=client_options.get("timeout"))
            return
        self.report = run_batch(
            self.jobs, self.manifest, self.output, client=client,
            client_options=client_options, concurrency=args.concurrency,
            workers=args.workers, on_outcome=report, on_plan=planned, progress=progress)

    def interrupted(self) -> str:
        """What to tell the user after Ctrl-C: the jobs still running, and how to resume.

        With ``--gallery``, the gallery of the jobs ended so far is written first.
        """
        if self.args.gallery:
            self._write_gallery(self.outcomes)
        pending = "".join(f"\n  line {number}: {record_id}"
                          for number, record_id in running(self.manifest, self.jobs))
        return (f"interrupted; these jobs go on at the service:{pending or ' none'}\n"
                f"Resume the batch with: {shlex.join(['arta', *sys.argv[1:]])}")

    def finish(self) -> bool:
        """Write the gallery if asked, print the summary; True if every job is done."""
        if self.args.gallery:
            self._write_gallery(self.report.outcomes)
        return self._summary()

    def _write_gallery(self, outcomes: list[JobReport]) -> None:
        """The ``--gallery`` contact sheet (:mod:`arta.batch.gallery`) of these outcomes."""
        gallery = importlib.import_module("arta.batch.gallery")
        by_line = {job.line: job for job in self.jobs}
        entries = [gallery.GalleryEntry(
            prompt=by_line[o.line].prompt,
            style=resolve_style(by_line[o.line].params.get("style", DEFAULT_STYLE)),
            seed=o.seed, files=[Path(f).resolve() for f in o.files], error=o.error,
            record_id=o.record_id) for o in outcomes]
        path = gallery.write_gallery(Path(self.output), entries)
        print(f"arta: gallery: {path}", file=sys.stderr)

    def _summary(self) -> bool:
        """The last word, on stderr (and as a JSON record under ``--json``)."""
        report, total = self.report, len(self.jobs)
        failed = report.count("failed")
        done = report.count("done") + report.count("skipped")
        summary = {"event": "summary", "total": total, "done": done,
                   "skipped": report.count("skipped"), "failed": failed,
                   "not_started": total - done - failed,
                   "possibly_resubmitted": report.possibly_resubmitted,
                   "manifest": str(self.manifest.path)}
        if self.args.json:
            _print_json(summary)
        if report.manifest_error is not None:
            self._manifest_failed(report)
        if not self.args.quiet:
            again = report.possibly_resubmitted
            not_started = f", {total - done - failed} not started" if total - done - failed else ""
            print(f"arta: batch: {done} of {total} done ({summary['skipped']} from an earlier "
                  f"run), {failed} failed{not_started}, {again} possibly resubmitted"
                  f"{POSSIBLY_RESUBMITTED_NOTE if again else ''}; manifest {self.manifest.path}",
                  file=sys.stderr)
        return done == total

    def _manifest_failed(self, report: BatchReport) -> None:
        unrecorded = "".join(f"\n  line {o.line}: {o.record_id}" for o in report.outcomes
                             if o.manifest_error and o.record_id)
        recorded = "".join(f"\n  line {line}: {record_id}"
                           for line, record_id in running(self.manifest, self.jobs))
        print(f"arta: error: {report.manifest_error}\nThe run stopped submitting; no job was "
              f"submitted without its record. Jobs submitted and not recorded (resume each with "
              f"`arta status ID --wait -o {shlex.quote(self.output)}`):{unrecorded or ' none'}"
              f"\nJobs still running at the service (the next run picks them up):"
              f"{recorded or ' none'}", file=sys.stderr)
