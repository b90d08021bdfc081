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
import dataclasses
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
from typing import TYPE_CHECKING, Any

from arta import __version__
from arta.auth import FileTokenStore
from arta.cli_batch import BatchCommand, add_batch_arguments
from arta.client import Client
from arta.config import Settings
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
from arta.manifest import ManifestError
from arta.params import MAX_PROMPT_LENGTH, GenerationParams
from arta.progress import StatusLine
from arta.redact import install_log_redaction
from arta.styles import ASPECT_RATIOS, STYLE_ALIASES, STYLES

if TYPE_CHECKING:
    from arta.emulator import FaultPlan

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_TIMEOUT, EXIT_SERVICE = 0, 1, 2, 3, 4, 5
EXIT_NOT_FOUND, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 6, 130, 141
EXIT_CODES_HELP = ("Exit codes: 0 done, 1 a generation failed (or its images could not be "
                   "saved), 2 usage or bad input, 3 auth or quota, 4 timeout, 5 service or "
                   "network error, 6 no such job, 130 interrupted.")


def _global_flags(*, on_command: bool) -> argparse.ArgumentParser:
    """``-v``/``-q``, for the top parser and, defaulting to nothing, for each command.

    A command's copy must not set a default: argparse would overwrite what
    ``arta -v generate`` set before the command with it.
    """
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-v", "--verbose", action="count",
                       default=argparse.SUPPRESS if on_command else 0,
                       help="log what the client does (-vv: debug)")
    flags.add_argument("-q", "--quiet", action="store_true",
                       default=argparse.SUPPRESS if on_command else False,
                       help="no progress on stderr")
    return flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arta", parents=[_global_flags(on_command=False)],
                                     epilog=EXIT_CODES_HELP,
                                     description="Generate images with the ARTA service.")
    common = _global_flags(on_command=True)
    parser.add_argument("--version", action="version", version=f"arta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", parents=[common], epilog=EXIT_CODES_HELP,
                              help="generate images for a prompt and save them")
    gen.add_argument("prompt", help=f"what to draw (at most {MAX_PROMPT_LENGTH} characters)")
    # The defaults are GenerationParams' own: written once, shown in --help.
    default = {field.name: field.default for field in dataclasses.fields(GenerationParams)}
    gen.add_argument("--style", "-s", default=default["style"],
                     help=f"style name or alias (default {default['style']}; see `arta styles`)")
    gen.add_argument("-n", type=int, default=default["n"],
                     help=f"number of images, 1 to 4 (default {default['n']})")
    gen.add_argument("--aspect-ratio", "-a", default=default["aspect_ratio"],
                     help=f"{', '.join(ASPECT_RATIOS)} (default {default['aspect_ratio']})")
    gen.add_argument("--seed", type=int, default=None, help="seed for a repeatable image")
    gen.add_argument("--negative-prompt", default=default["negative_prompt"],
                     help=f"what to avoid (default {default['negative_prompt']!r})")
    gen.add_argument("--steps", type=int, default=default["steps"],
                     help=f"inference steps (default {default['steps']})")
    gen.add_argument("--guidance", type=float, default=default["guidance_scale"],
                     help=f"guidance scale (default {default['guidance_scale']:g})")
    _add_job_options(gen)
    gen.add_argument("--emulator", action="store_true",
                     help="run against an emulator of the service started in this process "
                          "(offline; a throw-away token store)")

    status = commands.add_parser("status", parents=[common], epilog=EXIT_CODES_HELP,
                                 help="show, wait for and save a job submitted earlier")
    status.add_argument("record_id")
    status.add_argument("--wait", action="store_true", help="wait until the job ends")
    _add_job_options(status)

    batch = commands.add_parser(
        "batch", parents=[common], epilog=EXIT_CODES_HELP,
        help="generate for every line of a file, in parallel; run again to resume")
    batch.add_argument("file", help="one prompt per line, or JSONL: one object of "
                                    "generate's parameters per line")
    add_batch_arguments(batch)
    batch.add_argument("--emulator", action="store_true",
                       help="run against an emulator of the service started in this process "
                            "(offline; a throw-away token store)")
    _add_job_options(batch)

    styles = commands.add_parser("styles", parents=[common],
                                 help="list the styles and their aliases")
    styles.add_argument("--json", action="store_true",
                        help="one JSON object per style, sorted by name")

    token = commands.add_parser("token", parents=[common],
                                help="show or clear the shared token (never printed unless asked)")
    action = token.add_mutually_exclusive_group()
    action.add_argument("--info", action="store_true", help="describe the token (the default)")
    action.add_argument("--clear", action="store_true", help="delete the stored token")
    token.add_argument("--show-token", action="store_true",
                       help="also print the ID token itself (a secret: handle with care)")

    commands.add_parser("stats", parents=[common],
                        help="show what the learned poll policy knows of job durations")

    emulator = commands.add_parser("emulator", parents=[common],
                                   help="run the offline emulator of the service")
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    emulator.add_argument("--queue-seconds", type=_seconds, default=(1.0, 1.0), metavar="S",
                          help="fixed time a job waits in queue, before waiting for a free "
                               "slot (see --capacity): seconds or MIN-MAX (default 1)")
    emulator.add_argument("--progress-seconds", type=_seconds, default=None, metavar="S",
                          help="time a job takes: seconds or MIN-MAX (default: a service-like "
                               "model, base + cost x steps x images x megapixels, 8-20 s)")
    emulator.add_argument("--capacity", type=_positive, default=None, metavar="K",
                          help="at most K jobs in progress at once, the others queue in "
                               "submit order (default: unlimited)")
    emulator.add_argument("--max-jobs-per-user", type=_positive, default=None, metavar="M",
                          help="answer 429 with Retry-After to a submit from an account with "
                               "M unfinished jobs (default: unlimited)")
    emulator.add_argument("--faults", type=_faults, default=None, metavar="SPEC",
                          help="inject faults: comma-separated ENDPOINT:FAULT=PROBABILITY, "
                               "ENDPOINT one of signup, refresh, submit, status, image; FAULT "
                               "one of 429, 500, 502, 503, drop, slow, badjson, fail, stuck "
                               "(e.g. submit:drop=0.05,status:503=0.1)")
    emulator.add_argument("--fault-seed", type=int, default=None, metavar="N",
                          help="seed the faults, for a repeatable sequence")
    return parser


def _add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default=None, metavar="DIR",
                        help="folder to save the images in (generate and batch: default .)")
    parser.add_argument("--timeout", type=_positive_seconds, default=None,
                        help="give up waiting for a job after this many seconds")
    parser.add_argument("--poll-interval", type=_positive_seconds, default=None, metavar="S",
                        help="ask about a job every S seconds (default: 2 s, then every "
                             "1.5 s growing to 3 s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per job on stdout, for scripts")
    parser.add_argument("--endpoint", default=None,
                        help="base URL of the service (default: ARTA_ENDPOINT, else the real one)")


def _positive_seconds(text: str) -> float:
    """A finite number of seconds above 0 (``nan``, ``inf``, ``-5`` and ``0`` are usage errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0, "
                                         f"not {text!r}")
    return value


def _seconds(text: str) -> tuple[float, float]:
    """Parse ``2`` or ``0-3`` into a (min, max) range of seconds."""
    from arta.emulator import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> int:
    """Parse a whole number >= 1, reporting anything else as a usage error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _faults(text: str) -> FaultPlan:
    """Parse a fault spec, reporting a bad one as a usage error."""
    from arta.emulator import parse_faults

    try:
        return parse_faults(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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
            generation.wait(client.timeout, on_change=show)
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
    from arta.learned import describe_stats

    print(describe_stats(Settings.resolve().home))
    return EXIT_OK


def _emulator(args: argparse.Namespace) -> int:
    from arta.emulator import Emulator

    emulator = Emulator(host=args.host, port=args.port, queue_seconds=args.queue_seconds,
                        progress_seconds=args.progress_seconds, capacity=args.capacity,
                        max_jobs_per_user=args.max_jobs_per_user, faults=args.faults,
                        fault_seed=args.fault_seed)
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
        return ("cannot reach the service. To try arta offline, add --emulator; to use "
                "another service (or a running `arta emulator`), set ARTA_ENDPOINT")
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
    args = _parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="arta: %(levelname)s: %(message)s")
    install_log_redaction()  # urllib3's DEBUG lines carry the sign-up URL and its key
    try:
        return _COMMANDS[args.command](args)
    except BrokenPipeError:
        raise
    except ArtaError as error:
        print(f"arta: error: {error}", file=sys.stderr)
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
        print(f"arta: {interrupted or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
