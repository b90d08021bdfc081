"""What a run of many jobs is given and hands back: :class:`Job` and :class:`Outcome`, plain values."""

from __future__ import annotations

import dataclasses
from typing import Any

from arta.errors import ArtaError, InvalidInputError
from arta.generation import Generation
from arta.params import GenerationParams
from arta.result import Result

__all__ = ["Job", "Outcome"]


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work: submit ``params`` (seed fixed), or resume ``record_id`` instead.

    ``tag`` is the caller's, handed back in the :class:`Outcome`. A job with
    ``error`` set failed before anything could be sent (a bad item of
    :meth:`arta.Client.map`): its outcome is that error, and no request is made.
    """

    params: GenerationParams | None = None
    record_id: str | None = None
    tag: Any = None
    error: ArtaError | None = None

    def __post_init__(self) -> None:
        if self.params is None and not self.record_id and self.error is None:
            raise InvalidInputError("a Job needs params to submit or a record_id to resume")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one job ended: a :class:`~arta.result.Result`, or the error that ended it."""

    job: Job
    generation: Generation | None = None
    result: Result | None = None
    error: ArtaError | None = None
    value: Any = None  #: what a hand-off's future gave, in place of ``result``

    @property
    def ok(self) -> bool:
        """True if the job is DONE and its result (or its hand-off's value) is here."""
        return self.result is not None or self.value is not None

    @property
    def record_id(self) -> str | None:
        """The job's id at the service (None if it was never submitted, or its fate is unknown)."""
        if self.generation is not None:
            return self.generation.record_id
        return getattr(self.error, "record_id", None) or self.job.record_id

    @property
    def params(self) -> GenerationParams | None:
        """What was (or was to be) submitted."""
        if self.job.params is not None:
            return self.job.params
        return self.generation.params if self.generation is not None else None

    @property
    def index(self) -> Any:
        """The item's position, for outcomes of :meth:`arta.Client.map` (the job's tag)."""
        return self.job.tag

    def unwrap(self) -> Result:
        """The result, or raise the error."""
        if self.result is None:
            raise self.error or ArtaError("the job has no result", record_id=self.record_id)
        return self.result
