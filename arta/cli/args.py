"""The ``arta`` command line's flags: every command's arguments and their types.

Kept apart from :mod:`arta.cli` (what each command does) so that both read
in one sitting. Every value is checked here, by argparse, before anything
is sent: a bad flag is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING

from arta import __version__
from arta.params import MAX_PROMPT_LENGTH, GenerationParams
from arta.styles import ASPECT_RATIOS

if TYPE_CHECKING:
    from arta.emulator import FaultPlan

__all__ = ["EXIT_CODES_HELP", "build_parser"]

EXIT_CODES_HELP = ("Exit codes: 0 done, 1 a generation failed (or its images could not be "
                   "saved), 2 usage or bad input, 3 auth or quota, 4 timeout, 5 service or "
                   "network error, 6 no such job, 130 interrupted.")


_VERBOSE_HELP = ("tell the story of each job (-vv: times, details, HTTP requests; "
                 "-vvv: file locks too)")


def _global_flags(*, on_command: bool, verbose_help: str = _VERBOSE_HELP) -> argparse.ArgumentParser:
    """``-v``/``-q``, for the top parser and, defaulting to nothing, for each command.

    A command's copy must not set a default: argparse would overwrite what
    ``arta -v generate`` set before the command with it.
    """
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-v", "--verbose", action="count",
                       default=argparse.SUPPRESS if on_command else 0, help=verbose_help)
    flags.add_argument("-q", "--quiet", action="store_true",
                       default=argparse.SUPPRESS if on_command else False,
                       help="no progress on stderr")
    return flags


def build_parser() -> argparse.ArgumentParser:
    """The ``arta`` command line: global flags, then one sub-parser per command."""
    parser = argparse.ArgumentParser(prog="arta", parents=[_global_flags(on_command=False)],
                                     epilog=EXIT_CODES_HELP,
                                     description="Generate images with the ARTA service.")
    common = _global_flags(on_command=True)
    parser.add_argument("--version", action="version", version=f"arta {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(commands.add_parser("generate", parents=[common], epilog=EXIT_CODES_HELP,
                                      help="generate images for a prompt and save them"))
    status = commands.add_parser("status", parents=[common], epilog=EXIT_CODES_HELP,
                                 help="show, wait for and save a job submitted earlier")
    status.add_argument("record_id")
    status.add_argument("--wait", action="store_true", help="wait until the job ends")
    _add_job_options(status)
    _add_batch(commands.add_parser(
        "batch", parents=[common], epilog=EXIT_CODES_HELP,
        help="generate for every line of a file, in parallel; run again to resume"))
    styles = commands.add_parser("styles", parents=[common],
                                 help="list the styles and their aliases")
    styles.add_argument("--json", action="store_true",
                        help="one JSON object per style, sorted by name")
    _add_token(commands.add_parser(
        "token", parents=[common],
        help="show or clear the shared token (never printed unless asked)"))
    commands.add_parser("stats", parents=[common],
                        help="show what the learned poll policy knows of job durations")
    serving = _global_flags(on_command=True, verbose_help=(
        "log each request the emulator answers: method, path (no query), status"))
    _add_emulator(commands.add_parser("emulator", parents=[serving],
                                      help="run the offline emulator of the service"))
    return parser


def _add_generate(gen: argparse.ArgumentParser) -> None:
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
    _add_emulator_flag(gen)


def _add_emulator_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--emulator", action="store_true",
                        help="run against an emulator of the service started in this process "
                             "(offline; a throw-away token store)")


def _add_batch(batch: argparse.ArgumentParser) -> None:
    batch.add_argument("file", help="one prompt per line, or JSONL: one object of "
                                    "generate's parameters per line")
    add_batch_arguments(batch)
    _add_emulator_flag(batch)
    _add_job_options(batch)


def _add_token(token: argparse.ArgumentParser) -> None:
    action = token.add_mutually_exclusive_group()
    action.add_argument("--info", action="store_true", help="describe the token (the default)")
    action.add_argument("--clear", action="store_true", help="delete the stored token")
    token.add_argument("--show-token", action="store_true",
                       help="also print the ID token itself (a secret: handle with care)")


def _add_emulator(emulator: argparse.ArgumentParser) -> None:
    emulator.add_argument("--host", default="127.0.0.1",
                          help="address to listen on (default: %(default)s)")
    emulator.add_argument("--port", type=int, default=8765,
                          help="port (default: %(default)s; 0: any free port)")
    emulator.add_argument("--queue-seconds", type=_seconds, default=(1.0, 1.0), metavar="S",
                          help="fixed time a job waits in queue, before waiting for a free "
                               "slot (see --capacity): seconds or MIN-MAX (default 1)")
    emulator.add_argument("--progress-seconds", type=_seconds, default=None, metavar="S",
                          help="time a job takes: seconds or MIN-MAX (default: a service-like "
                               "model, base + cost x steps x images x megapixels, 8-20 s)")
    emulator.add_argument("--capacity", type=positive_int, default=None, metavar="K",
                          help="at most K jobs in progress at once, the others queue in "
                               "submit order (default: unlimited)")
    emulator.add_argument("--max-jobs-per-user", type=positive_int, default=None, metavar="M",
                          help="answer 429 with Retry-After to a submit from an account with "
                               "M unfinished jobs (default: unlimited)")
    emulator.add_argument("--faults", type=_faults, default=None, metavar="SPEC",
                          help="inject faults: comma-separated ENDPOINT:FAULT=PROBABILITY, "
                               "ENDPOINT one of signup, refresh, submit, status, image; FAULT "
                               "one of 429, 500, 502, 503, drop, slow, badjson, fail, stuck "
                               "(e.g. submit:drop=0.05,status:503=0.1)")
    emulator.add_argument("--fault-seed", type=int, default=None, metavar="N",
                          help="seed the faults, for a repeatable sequence")


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


def _faults(text: str) -> FaultPlan:
    """Parse a fault spec, reporting a bad one as a usage error."""
    from arta.emulator import parse_faults

    try:
        return parse_faults(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    """A whole number of at least 1 (for ``--concurrency`` and ``--workers``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags only ``arta batch`` has."""
    parser.add_argument("--concurrency", "-c", type=positive_int, default=64, metavar="N",
                        help="jobs in flight at once, at most (default 64; fewer while the "
                             "service says it is busy)")
    parser.add_argument("--workers", "-w", type=positive_int, default=1,
                        help="processes sharing the jobs and the concurrency (default 1)")
    parser.add_argument("--manifest", "-m", default=None, metavar="PATH",
                        help="the JSONL record that makes the batch resumable "
                             "(default: DIR/arta-manifest.jsonl)")
    parser.add_argument("--gallery", action="store_true",
                        help="after the run, write DIR/index.html: a contact sheet of the images")
    dask = parser.add_argument_group("on a Dask cluster (pip install 'arta-client[dask]')")
    dask.add_argument("--engine", choices=("local", "dask"), default="local",
                      help="where the jobs wait: this process (default) or a Dask cluster; "
                           "only this process submits either way")
    dask.add_argument("--scheduler", metavar="ADDRESS",
                      help="with --engine dask: tcp://host:8786, or local:N for a cluster "
                           "of N processes on this machine")
    dask.add_argument("--output-on-workers", metavar="PATH",
                      help="with --engine dask: the workers write the images to PATH (a "
                           "shared filesystem) instead of sending them back")
    dask.add_argument("--token", choices=("cluster", "host"), default="cluster",
                      help="with --engine dask on a remote cluster: one token kept in the "
                           "scheduler, seeded from this host's (default), or each host's own "
                           "token file; local:N always uses this host's")
