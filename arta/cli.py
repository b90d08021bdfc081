"""The ``arta`` command: generate images, list styles, follow a job, run the emulator.

Exit codes: 0 done; 1 a generation failed (or an image could not be saved);
2 usage or bad input; 3 auth or quota; 4 timeout; 5 the service or network
failed; 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

from arta import __version__
from arta.client import Client
from arta.errors import (
    ArtaError,
    AuthError,
    DownloadError,
    GenerationFailed,
    GenerationTimeout,
    InvalidInputError,
)
from arta.generation import Generation
from arta.params import DEFAULT_NEGATIVE_PROMPT, MAX_PROMPT_LENGTH
from arta.styles import ASPECT_RATIOS, DEFAULT_STYLE, STYLE_ALIASES, STYLES

if TYPE_CHECKING:
    from arta.emulator import FaultPlan

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_TIMEOUT, EXIT_SERVICE = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arta", description="Generate images with the ARTA service.",
        epilog="Exit codes: 0 done, 1 generation failed, 2 usage or bad input, "
               "3 auth or quota, 4 timeout, 5 service or network error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"arta {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what the client does (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="generate images for a prompt and save them")
    gen.add_argument("prompt", help=f"what to draw (at most {MAX_PROMPT_LENGTH} characters)")
    gen.add_argument("--style", "-s", default=DEFAULT_STYLE,
                     help=f"style name or alias (default {DEFAULT_STYLE}; see `arta styles`)")
    gen.add_argument("-n", type=int, default=1, help="number of images, 1 to 4 (default 1)")
    gen.add_argument("--aspect-ratio", "-a", default="1:1", help=", ".join(ASPECT_RATIOS))
    gen.add_argument("--seed", type=int, default=None, help="seed for a repeatable image")
    gen.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT,
                     help=f"what to avoid (default {DEFAULT_NEGATIVE_PROMPT!r})")
    gen.add_argument("--steps", type=int, default=30, help="inference steps (default 30)")
    gen.add_argument("--guidance", type=float, default=7, help="guidance scale (default 7)")
    _add_job_options(gen)
    gen.add_argument("--emulator", action="store_true",
                     help="run against an emulator of the service started in this process "
                          "(offline; a throw-away token store)")

    status = commands.add_parser("status", help="show, wait for and save a submitted job")
    status.add_argument("record_id")
    status.add_argument("--wait", action="store_true", help="wait until the job ends")
    _add_job_options(status)

    commands.add_parser("styles", help="list the styles and their aliases")

    emulator = commands.add_parser("emulator", help="run the offline emulator of the service")
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    emulator.add_argument("--queue-seconds", type=_seconds, default=(1.0, 1.0), metavar="S",
                          help="time a job waits in queue: seconds or MIN-MAX (default 1)")
    emulator.add_argument("--progress-seconds", type=_seconds, default=(2.0, 2.0), metavar="S",
                          help="time a job takes: seconds or MIN-MAX (default 2)")
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
                        help="folder to save the images in (generate: default .)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="give up waiting after this many seconds")
    parser.add_argument("--endpoint", default=None,
                        help="base URL of the service (default: ARTA_ENDPOINT, else the real one)")


def _seconds(text: str) -> tuple[float, float]:
    """Parse ``2`` or ``0-3`` into a (min, max) range of seconds."""
    from arta.emulator import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _faults(text: str) -> FaultPlan:
    """Parse a fault spec, reporting a bad one as a usage error."""
    from arta.emulator import parse_faults

    try:
        return parse_faults(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _Progress:
    """One status line per change of state on stderr, when stderr is a terminal."""

    def __init__(self, stream: TextIO, quiet: bool) -> None:
        self.stream = stream
        self.enabled = not quiet and stream.isatty()
        self.started = time.monotonic()

    def __call__(self, generation: Generation) -> None:
        if self.enabled:
            elapsed = time.monotonic() - self.started
            self.stream.write(f"{generation.record_id}: {generation.status} ({elapsed:.1f}s)\n")
            self.stream.flush()


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Client]:
    if not getattr(args, "emulator", False):
        with Client(args.endpoint, timeout=args.timeout) as client:
            yield client
        return
    from arta.emulator import Emulator

    with Emulator(queue_seconds=0.3, progress_seconds=0.7) as emulator, \
            tempfile.TemporaryDirectory(prefix="arta-emulator-") as home, \
            Client(emulator.url, home=home, timeout=args.timeout) as client:
        yield client


def _save(generation: Generation, folder: str) -> list[str]:
    result = generation.result()
    paths = [str(path) for path in result.save(folder)]
    for index in result.blurred:
        print(f"arta: note: image {index} was blurred by the service's content filter",
              file=sys.stderr)
    return paths


def _generate(args: argparse.Namespace) -> int:
    progress = _Progress(sys.stderr, args.quiet)
    with _client(args) as client:
        generation = client.submit(
            args.prompt, style=args.style, n=args.n, negative_prompt=args.negative_prompt,
            guidance_scale=args.guidance, steps=args.steps, aspect_ratio=args.aspect_ratio,
            seed=args.seed,
        )
        progress(generation)
        try:
            generation.wait(client.timeout, on_change=progress)
        except KeyboardInterrupt:
            print(f"arta: interrupted; job {generation.record_id} goes on at the service. "
                  f"Resume it with: arta status {generation.record_id} --wait -o "
                  f"{args.output or '.'}", file=sys.stderr)
            return EXIT_INTERRUPTED
        for path in _save(generation, args.output or "."):
            print(path)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    progress = _Progress(sys.stderr, args.quiet)
    with _client(args) as client:
        generation = client.resume(args.record_id)
        if args.wait:
            progress(generation)
            generation.wait(client.timeout, on_change=progress)
        print(f"{generation.record_id} {generation.status}")
        if generation.done and args.output:
            for path in _save(generation, args.output):
                print(path)
        elif generation.status.value == "FAILED":
            generation.result()  # raises GenerationFailed with the reason
    return EXIT_OK


def _styles(args: argparse.Namespace) -> int:
    aliases: dict[str, list[str]] = {style: [] for style in STYLES}
    for alias, style in sorted(STYLE_ALIASES.items()):
        if alias != style:
            aliases[style].append(alias)
    for style in STYLES:
        print(f"{style:<22} {', '.join(aliases[style])}")
    return EXIT_OK


def _emulator(args: argparse.Namespace) -> int:
    from arta.emulator import Emulator

    emulator = Emulator(host=args.host, port=args.port, queue_seconds=args.queue_seconds,
                        progress_seconds=args.progress_seconds, faults=args.faults,
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


_COMMANDS = {"generate": _generate, "status": _status, "styles": _styles, "emulator": _emulator}


def _exit_code(error: ArtaError) -> int:
    if isinstance(error, InvalidInputError):
        return EXIT_USAGE
    if isinstance(error, AuthError):
        return EXIT_AUTH
    if isinstance(error, GenerationTimeout):
        return EXIT_TIMEOUT
    if isinstance(error, (GenerationFailed, DownloadError)):
        return EXIT_FAILED
    return EXIT_SERVICE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``arta`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="arta: %(levelname)s: %(message)s")
    try:
        return _COMMANDS[args.command](args)
    except ArtaError as error:
        print(f"arta: error: {error}", file=sys.stderr)
        return _exit_code(error)
    except ValueError as error:  # e.g. an empty record id
        print(f"arta: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("arta: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
