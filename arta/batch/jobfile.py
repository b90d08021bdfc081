"""The input of ``arta batch``: a file of prompts, or of JSON lines of generate's parameters.

Every line is read and checked before anything is sent, so a typo on line
900 costs nothing. The file is split on ``\\n`` only: form feed, U+0085 and
U+2028 are characters of a prompt, not line ends (splitting on them would
turn one prompt into two paid jobs). A UTF-8 byte order mark is dropped
(``utf-8-sig``), so that it cannot hide the ``{`` that marks a file of JSON
lines. Whatever the bytes, the answer is a list of jobs or an
:class:`~arta.errors.InvalidInputError` naming the file and the line.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from arta.errors import ArtaError, InvalidInputError
from arta.params import GenerationParams

__all__ = ["FIELDS", "BatchJob", "read_jobs"]

#: The keys a JSON line may hold: the fields of :class:`~arta.params.GenerationParams`.
FIELDS = tuple(field.name for field in dataclasses.fields(GenerationParams))

# The JSON types each field accepts (checked before GenerationParams.create,
# so that a wrong type is a message about the line, never a TypeError).
_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float)}


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """One line of the input: where it came from and what to generate."""

    line: int
    params: dict[str, Any]

    @property
    def key(self) -> str:
        """The job's identity in the manifest: its line and a digest of its parameters.

        An edited line is a new job, not a stale match for an old record.
        """
        text = json.dumps(self.params, sort_keys=True, ensure_ascii=True)
        return f"{self.line}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    @property
    def prompt(self) -> str:
        """The job's prompt, as written in the file."""
        return str(self.params["prompt"])


def read_jobs(path: str | os.PathLike[str]) -> list[BatchJob]:
    """Read and validate every job of a batch file, before anything is sent.

    A ``.jsonl``/``.ndjson`` file, or one whose first line starts with ``{``,
    holds one JSON object of generate's parameters per line; any other file
    holds one prompt per line. Blank lines and lines starting with ``#`` are
    skipped. A bad line raises :class:`~arta.errors.InvalidInputError`
    naming the file and the line.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read the batch file {path}: "
                                f"{error.strerror or error}") from None
    text = _decode(data, path)
    entries = [(number, line.strip()) for number, line in enumerate(text.split("\n"), 1)
               if line.strip() and not line.lstrip().startswith("#")]
    is_jsonl = Path(path).suffix.lower() in (".jsonl", ".ndjson") or (
        bool(entries) and entries[0][1].startswith("{"))
    jobs = []
    for number, line in entries:
        try:
            params = _parse_line(line) if is_jsonl else {"prompt": line}
            _check(params)
        except ArtaError as error:
            raise InvalidInputError(f"{path}, line {number}: {error}") from None
        jobs.append(BatchJob(number, params))
    if not jobs:
        raise InvalidInputError(f"{path} holds no prompts")
    return jobs


def _decode(data: bytes, path: str | os.PathLike[str]) -> str:
    """The file's text (UTF-8, a leading BOM dropped), or an error naming the bad line."""
    body = data.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        line = body.count(b"\n", 0, error.start) + 1
        column = error.start - (body.rfind(b"\n", 0, error.start) + 1) + 1
        raise InvalidInputError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{body[error.start]:02x} at column "
            f"{column}); save the file as UTF-8") from None


def _parse_line(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidInputError("the JSON is nested too deeply") from None
    except ValueError as error:
        raise InvalidInputError(f"not valid JSON ({error})") from None
    if not isinstance(value, dict) or "prompt" not in value:
        raise InvalidInputError('expected a JSON object with a "prompt"')
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise InvalidInputError(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}")
    return value


def _check(params: dict[str, Any]) -> None:
    """Raise InvalidInputError unless ``params`` would make a valid submit."""
    for field in dataclasses.fields(GenerationParams):
        if field.name not in params or (field.name == "seed" and params["seed"] is None):
            continue
        value = params[field.name]
        allowed = _TYPES.get(str(field.type), (object,))
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise InvalidInputError(
                f"{field.name} must be {' or '.join(t.__name__ for t in allowed)}, "
                f"not {type(value).__name__}")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError(
                    f"{field.name} holds a lone surrogate, which is not text") from None
    GenerationParams.create(**{"seed": 0, **params})
