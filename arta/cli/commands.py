"""The ``arta`` command: generate images, follow jobs, run batches, manage the token.

Exit codes: 0 done; 1 a generation failed (or an image could not be saved);
2 usage or bad input (nothing was sent); 3 auth or quota; 4 timeout; 5 the
service or network failed; 6 no such job (``status`` of an unknown record
id); 130 interrupted; 141 stdout was closed early (``arta ... | head -1``).

Global flags (``-v``, ``-q``) work before or after the command. Every error
after a submit names the record id and, unless the job cannot give images
any more, the ``arta status ID --wait -o DIR`` command that saves them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from arta.auth import FileTokenStore
from arta.batch.manifest import ManifestError
from arta.cli.args import build_parser
from arta.cli.batch import BatchCommand
from arta.client import Client
from arta.config import Settings, log_verbosity
from arta.errors import (
    ArtaError,
    AuthError,
    ConfigurationError,
    ConnectError,
    DownloadError,
    GenerationFailed,
    GenerationTimeout,
    InvalidInputError,
    JobNotFoundError,
    SaveError,
)
from arta.generation import Generation, PollPolicy
from arta.log import configure_logging
from arta.polling.learned import STATS_FILE
from arta.polling.model import DurationModel, QueueModel
from arta.polling.stats import PollStats
from arta.progress import StatusLine
from arta.styles import STYLE_ALIASES, STYLES

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_TIMEOUT, EXIT_SERVICE = 0, 1, 2, 3, 4, 5
EXIT_NOT_FOUND, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 6, 130, 141
def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Client keywords the job options ask for (picklable: batch workers get them too)."""
    options: dict[str, Any] = {"endpoint": args.endpoint, "timeout": args.timeout}
    if args.poll_interval is not None:
        if args.poll_interval <= 0:
            raise InvalidInputError("--poll-interval must be more than 0 seconds")
        every = args.poll_interval
        options["poll_policy"] = PollPolicy(first_delay=every, interval=every, growth=1,
                                            max_delay=every, jitter=0)
    return options


def _check_writable(folder: str) -> None:
    """Fail before the submit if images could not be saved in ``folder``: a paid job must
    not be lost at the last step. Creates the folder, as saving would."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".arta-check-"):
            pass
    except OSError as error:
        raise InvalidInputError(
            f"cannot save images in {folder!r} ({error.strerror or error}); nothing was sent"
        ) from None


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Client]:
    options = _client_options(args)
    if not getattr(args, "emulator", False):
        with Client(**options) as client:
            yield client
        return
    from arta.emulator import Emulator

    with Emulator(queue_seconds=0.3, progress_seconds=0.7) as emulator, \
            tempfile.TemporaryDirectory(prefix="arta-emulator-") as home, \
            Client(**{**options, "endpoint": emulator.url, "home": home}) as client:
        yield client


def _print_json(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _job_json(generation: Generation, files: Sequence[str] = (),
              error: ArtaError | None = None) -> dict[str, Any]:
    blurred = [i for i, image in enumerate(generation.images) if image.blurred]
    params = generation.params  # None for a job picked up by record id
    return {"record_id": generation.record_id, "status": generation.status.value,
            "prompt": params.prompt if params else None,
            "style": params.style if params else None,
            "seed": generation.seed, "images": [image.url for image in generation.images],
            "files": list(files), "blurred": blurred,
            "error": None if error is None else f"{type(error).__name__}: {error}"}


class _Interrupted(Exception):
    """Ctrl-C, with what the user needs to know to pick the work up again."""


def _wait(generation: Generation, client: Client, args: argparse.Namespace) -> None:
    """Wait for the job, showing its state and the time on a status line."""
    short = generation.record_id[:8]
    with StatusLine(sys.stderr, enabled=not args.quiet) as line:
        def show(g: Generation) -> None:
            line.update(f"{short} {line.paint(g.status.value)}")

        show(generation)
        try:
            generation.wait(on_change=show)
        except KeyboardInterrupt:
            if getattr(args, "emulator", False):
                raise _Interrupted(
                    f"interrupted; job {generation.record_id} ran in this command's "
                    "emulator, which stops with it: there is nothing to resume") from None
            raise _Interrupted(
                f"interrupted; job {generation.record_id} goes on at the service. Resume it "
                f"with: {_status_command(generation.record_id, args)}") from None


def _status_command(record_id: str, args: argparse.Namespace) -> str:
    """The command that waits for a job and saves its images where this command would."""
    return f"arta status {record_id} --wait -o {shlex.quote(args.output or '.')}"


def _follow(generation: Generation, client: Client, args: argparse.Namespace, *,
            wait: bool, save_to: str | None) -> int:
    """Wait for a job if asked, save its images, report: the end of ``generate`` and ``status``."""
    files: list[str] = []
    try:
        if wait:
            _wait(generation, client, args)
        if generation.done:
            result = generation.result()  # GenerationFailed for a FAILED job
            if save_to is not None:
                files = [str(path) for path in result.save(save_to)]
    except KeyboardInterrupt:
        if not generation.done:
            raise
        raise _Interrupted(
            f"interrupted while saving the images; job {generation.record_id} is done (and "
            f"paid for). Save them with: {_status_command(generation.record_id, args)}") from None
    except ArtaError as error:
        if args.json:
            _print_json(_job_json(generation, error=error))
        raise
    if args.json:
        _print_json(_job_json(generation, files))
        return EXIT_OK
    if args.command == "status":
        print(f"{generation.record_id} {generation.status}")
        if generation.done and save_to is None and not args.quiet:
            print("arta: the images were not saved; add -o DIR to save them",
                  file=sys.stderr)
    for path in files:
        print(path)  # (Result.save has warned of blurred images on stderr)
    return EXIT_OK


def _generate(args: argparse.Namespace) -> int:
    _check_writable(args.output or ".")
    with _client(args) as client:
        generation = client.submit(
            args.prompt, style=args.style, n=args.n, negative_prompt=args.negative_prompt,
            guidance_scale=args.guidance, steps=args.steps, aspect_ratio=args.aspect_ratio,
            seed=args.seed,
        )
        return _follow(generation, client, args, wait=True, save_to=args.output or ".")


def _status(args: argparse.Namespace) -> int:
    if args.output is not None:
        _check_writable(args.output)
    with _client(args) as client:
        try:
            generation = client.resume(args.record_id)
        except ArtaError as error:
            if args.json:
                _print_json({"record_id": args.record_id, "status": None,
                             "error": f"{type(error).__name__}: {error}"})
            raise
        return _follow(generation, client, args, wait=args.wait, save_to=args.output)


def _batch(args: argparse.Namespace) -> int:
    command = BatchCommand(args)  # reads and checks every job, and the output folder
    try:
        command.lock()
    except ManifestError as error:  # another run holds the manifest: nothing was sent
        print(f"arta: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _client(args) as client:
            options = {**_client_options(args), "endpoint": client.settings.endpoint,
                       "home": str(client.settings.home)}
            command.run(client, options)
    except KeyboardInterrupt:
        raise _Interrupted(command.interrupted()) from None
    finally:
        command.unlock()
    return EXIT_OK if command.finish() else EXIT_FAILED


def _styles(args: argparse.Namespace) -> int:
    aliases: dict[str, list[str]] = {style: [] for style in STYLES}
    for alias, style in sorted(STYLE_ALIASES.items()):
        if alias != style:
            aliases[style].append(alias)
    if args.json:
        for style in sorted(STYLES):
            _print_json({"name": style, "aliases": aliases[style]})
        return EXIT_OK
    for style in STYLES:
        print(f"{style:<22} {', '.join(aliases[style])}")
    return EXIT_OK


def _token(args: argparse.Namespace) -> int:
    # The endpoint only names the token file here (one per sign-up service):
    # an unusable one, never called, must not make the command fail.
    try:
        settings = Settings.resolve()
    except ConfigurationError as error:
        print(f"arta: {error}; showing the token of the real service", file=sys.stderr)
        settings = Settings.resolve(env={**os.environ, "ARTA_ENDPOINT": "",
                                         "FIREBASE_AUTH_EMULATOR_HOST": ""})
    store = FileTokenStore(settings.token_file)
    if args.clear:
        with store.lock():
            store.clear()  # the token and any temporary copy of it
        print(f"cleared {store.path}")
        return EXIT_OK
    token = store.load()
    if token is None:
        print(f"no token in {store.path}")
        return EXIT_OK
    now = time.time()
    state = "fresh" if token.fresh(now) else "expired" if token.expired(now) else \
        "past half-life (refreshed on next use)"

    def when(stamp: float) -> str:
        return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")

    print(f"file:     {store.path}\nuser:     {token.user_id}\nobtained: {when(token.obtained_at)}"
          f"\nexpires:  {when(token.expires_at)}\nstate:    {state}")
    if args.show_token:
        print(f"id token: {token.id_token}")
    return EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    """What the learned poll policy knows: the fitted cost of the work, the classes, the queue."""
    stats = PollStats(Settings.resolve().home / STATS_FILE)
    state = stats.state()
    print(f"file:   {stats.path}")
    model = DurationModel.fit(state)
    if model is None:
        print("no finished job seen yet: polling as the fixed policy does")
    else:
        b_steps, b_images, b_pixels, curvature = model.slopes
        print(f"in progress: time ~ steps^{b_steps:.2f} x images^{b_images:.2f} x megapixels^"
              f"{b_pixels:.2f} x style (curvature {curvature:+.2f}); spread {100 * model.sigma:.0f}%"
              f" (one standard deviation); recent speed x{math.exp(model.level):.2f}")
        print("styles (time of 30 steps, one 1:1 image): " + ", ".join(
            f"{style} {math.exp(model.predict((style, 30, 1, '1:1'))[0]):.1f}s"
            for style in sorted(model.alpha)))
        print(f"{'style':<20} {'steps':>5} {'n':>2} {'ratio':>5} {'jobs':>5} {'predicted':>10}")
        for key, cls in sorted(state.classes.items(), key=lambda kv: -kv[1].count)[:12]:
            print(f"{key[0][:20]:<20} {key[1]:>5} {key[2]:>2} {key[3]:>5} {cls.count:>5} "
                  f"{math.exp(model.predict(key)[0]):>9.1f}s")
        print(f"({len(state.classes)} classes, {len(model.alpha)} styles seen)")
    queue = QueueModel.fit(state)
    if queue is not None:
        median, low, high = (queue.quantile(q) or 0.0 for q in (0.5, 0.1, 0.9))
        print(f"queue:  median {median:.1f}s, 10-90% {low:.1f}-{high:.1f}s "
              f"({state.queue.count} jobs)")
    return EXIT_OK


def _emulator(args: argparse.Namespace) -> int:
    from arta.emulator import Emulator

    emulator = Emulator(host=args.host, port=args.port, queue_seconds=args.queue_seconds,
                        progress_seconds=args.progress_seconds, capacity=args.capacity,
                        max_jobs_per_user=args.max_jobs_per_user, faults=args.faults,
                        fault_seed=args.fault_seed)
    if args.verbose:
        logging.getLogger("arta.emulator").setLevel(logging.DEBUG)  # a line per request
    emulator.start()
    print(emulator.url, flush=True)
    print(f"arta: emulator listening; use ARTA_ENDPOINT={emulator.url}. Ctrl-C stops it.",
          file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        emulator.stop()


_COMMANDS = {"generate": _generate, "status": _status, "batch": _batch, "styles": _styles,
             "token": _token, "stats": _stats, "emulator": _emulator}


def _exit_code(error: ArtaError) -> int:
    if isinstance(error, JobNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, (InvalidInputError, ConfigurationError)):
        return EXIT_USAGE
    if isinstance(error, AuthError):
        return EXIT_AUTH
    if isinstance(error, GenerationTimeout):
        return EXIT_TIMEOUT
    if isinstance(error, (GenerationFailed, DownloadError)):
        return EXIT_FAILED
    return EXIT_SERVICE


def _hint(error: ArtaError, args: argparse.Namespace) -> str | None:
    """What the user can do next, in this command's terms (library errors carry no CLI syntax)."""
    emulated = getattr(args, "emulator", False)
    if isinstance(error, ConnectError) and not emulated and error.record_id is None:
        return "to try arta offline, add --emulator (an emulator of the service, in this command)"
    if error.record_id is None or not error.resumable:
        return None
    if emulated:
        return (f"job {error.record_id} ran in this command's emulator, which stopped with "
                "it: there is nothing to resume")
    if isinstance(error, SaveError):
        return (f"the job is done and kept at the service; once {error.path} can be written, "
                f"save its images with: {_status_command(error.record_id, args)}")
    return f"resume with: {_status_command(error.record_id, args)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``arta`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`arta ... --json | head -1`): stop quietly. As
        # the Python docs advise, point stdout at devnull so that the flush at
        # exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(max(args.verbose, log_verbosity()), replace=True)  # ARTA_LOG too
        return _COMMANDS[args.command](args)
    except BrokenPipeError:
        raise
    except ArtaError as error:
        # The library's hint is Python (``Client().resume(...)``); ours follows.
        text = str(error).replace(f"; {error.hint})", ")") if error.hint else str(error)
        print(f"arta: error: {text}", file=sys.stderr)
        hint = _hint(error, args)
        if hint:
            print(f"arta: {hint}", file=sys.stderr)
        return _exit_code(error)
    except (ValueError, OSError) as error:  # e.g. an unreadable batch file
        print(f"arta: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except _Interrupted as interrupted:
        print(f"arta: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt as interrupted:  # a SubmitInterrupted says what may exist
        print(f"arta: {str(interrupted) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
