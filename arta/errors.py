"""The exception tree of ``arta``: every error the library raises is an :class:`ArtaError`.

::

    ArtaError
    ├── InvalidInputError (also ValueError)   bad argument, caught before any request
    │   ├── InvalidPromptError
    │   ├── InvalidStyleError
    │   ├── InvalidAspectRatioError
    │   └── InvalidParameterError             n, steps, guidance_scale, seed
    ├── ConfigurationError                    bad endpoint, home folder, ...
    ├── TokenStoreError                       the token store's lock stayed taken
    ├── AuthError                             the service refused our credentials
    │   └── QuotaExceededError                Firebase's sign-up quota is spent
    ├── ServiceError                          the service answered an HTTP error
    │   ├── RateLimitedError                  429
    │   └── RejectedError                     4xx that retrying will not fix (e.g. 422)
    │       └── JobNotFoundError              404 on status: no job has that record id
    ├── TransportError                        no usable answer from the network
    │   ├── ConnectError                      never connected: nothing was sent
    │   └── NoResponseError                   sent, but no answer came
    ├── ProtocolError                         an answer of an unexpected shape
    │   └── MalformedResponse                 one no retry can mend (too big, too deep, ...)
    ├── SubmitOutcomeUnknown                  a submit was sent, its fate unknown
    ├── GenerationFailed                      the service says the job FAILED
    ├── GenerationTimeout                     the wait outlived its timeout
    ├── GenerationCancelled                   the caller stopped the wait
    └── DownloadError                         an image could not be fetched or saved
        └── SaveError                         ...because the disk refused it (OSError)

    KeyboardInterrupt
    ├── GenerationInterrupted                 Ctrl-C during a wait or a save; carries the record_id
    ├── SubmitInterrupted                     Ctrl-C during a submit; carries the params
    └── RunInterrupted                        Ctrl-C during a map; carries the record_ids

Errors raised after a job was submitted carry its ``record_id`` and say how
to resume it, so nothing already paid for is ever lost (except for a job the
service failed, or a record id it does not know: nothing is left to resume).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from arta.interrupt import exit_as_interrupted_if_uncaught

__all__ = [
    "ArtaError",
    "AuthError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "DownloadError",
    "GenerationCancelled",
    "GenerationFailed",
    "GenerationInterrupted",
    "GenerationTimeout",
    "InvalidAspectRatioError",
    "InvalidInputError",
    "InvalidParameterError",
    "InvalidPromptError",
    "InvalidStyleError",
    "JobNotFoundError",
    "MalformedResponse",
    "NoResponseError",
    "ProtocolError",
    "QuotaExceededError",
    "RateLimitedError",
    "RejectedError",
    "RunInterrupted",
    "SaveError",
    "ServiceError",
    "SubmitInterrupted",
    "SubmitOutcomeUnknown",
    "TokenStoreError",
    "TransportError",
]


def resume_hint(record_id: str) -> str:
    """How to pick a submitted job up again, in words (the CLI adds its own command)."""
    return f"resume with Client().resume({record_id!r})"


class ArtaError(Exception):
    """Base of every error raised by ``arta``.

    ``record_id`` is set on every error raised after a submit: the job exists
    on the service and can be picked up again with ``Client.resume(record_id)``,
    unless ``resumable`` is False (the job failed, or never existed).
    """

    #: Whether the job named by ``record_id`` can still give images.
    resumable = True

    def __init__(self, message: str, *, record_id: str | None = None) -> None:
        self.record_id = record_id
        super().__init__(self._with_id(message))

    @property
    def hint(self) -> str | None:
        """What a Python caller can do about the job next, in Python (None if nothing).

        It ends the message; the command line, which has its own commands,
        leaves it out.
        """
        return resume_hint(self.record_id) if self.record_id and self.resumable else None

    def _with_id(self, message: str) -> str:
        if self.record_id is None:
            return message
        hint = self.hint
        return f"{message} (record_id {self.record_id}{f'; {hint}' if hint else ''})"

    def with_record_id(self, record_id: str) -> ArtaError:
        """This error, re-issued to carry ``record_id`` (itself if it already does)."""
        if self.record_id is not None:
            return self
        error = copy.copy(self)
        error.record_id = record_id
        error.args = (error._with_id(str(self)),)
        error.__cause__ = self
        return error

    def __reduce__(self) -> tuple[Any, ...]:
        # multiprocessing pickles exceptions: rebuild without calling __init__,
        # so keyword-only fields survive and the message is not re-suffixed.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[ArtaError], args: tuple[Any, ...], state: dict[str, Any]) -> ArtaError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidInputError(ArtaError, ValueError):
    """An argument the service would reject; raised before any request is sent."""


class InvalidPromptError(InvalidInputError):
    """The prompt is not a non-empty str within the length limit."""


class InvalidStyleError(InvalidInputError):
    """The style is not one of the catalog's (the message names the closest)."""


class InvalidAspectRatioError(InvalidInputError):
    """The aspect ratio is not one the service accepts (the message lists them)."""


class InvalidParameterError(InvalidInputError):
    """A numeric parameter (``n``, ``steps``, ``guidance_scale``, ``seed``) is out of range."""


class ConfigurationError(ArtaError, ValueError):
    """A setting (endpoint, home folder, option) is unusable."""


class TokenStoreError(ArtaError):
    """The token store could not be used (its lock stayed taken past the timeout)."""


class AuthError(ArtaError):
    """The service refused the credentials, even after a fresh token."""


class QuotaExceededError(AuthError):
    """Firebase refused a new anonymous account: 100 sign-ups per hour per IP are spent.

    Retrying soon cannot help; ``retry_after`` says how many seconds to wait.
    """

    def __init__(
        self, message: str, *, retry_after: float = 3600.0, record_id: str | None = None
    ) -> None:
        super().__init__(message, record_id=record_id)
        self.retry_after = retry_after


class ServiceError(ArtaError):
    """The service answered with an HTTP error status."""

    def __init__(
        self, message: str, *, status: int, record_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, record_id=record_id)
        self.status = status
        self.retry_after = retry_after


class RateLimitedError(ServiceError):
    """The service answered 429 until the retries ran out."""


class RejectedError(ServiceError):
    """The service refused the request itself (a 4xx that retrying will not fix)."""


class JobNotFoundError(RejectedError):
    """The service knows no job of that record id (HTTP 404 on status): nothing to resume."""

    resumable = False


class TransportError(ArtaError):
    """The network gave no usable answer."""


class ConnectError(TransportError):
    """The connection was never made, so the request surely did not arrive."""

    def naming(self, setting: str) -> ConnectError:
        """A copy that says which ``setting`` chose the address (``ARTA_ENDPOINT`` and its value)."""
        error = copy.copy(self)
        error.args = (f"{self} ({setting})",)
        error.__cause__ = self
        return error


class NoResponseError(TransportError):
    """The request was (or may have been) sent, but no answer came back."""


class ProtocolError(ArtaError):
    """The service answered, but not in the shape docs/protocol.rst describes."""


class MalformedResponse(ProtocolError):
    """An answer that asking again will not mend, so it is never retried.

    A body over the size cap (a gzip bomb, an endless stream), JSON nested
    past any sane depth, a non-finite token lifetime, more images than the
    job asked for: a server that sends these once will send them again, and
    each retry would cost the same memory and time.
    """


class SubmitOutcomeUnknown(ArtaError):
    """A submit was sent and no usable answer came: the job may or may not exist.

    ``arta`` does not re-send it blindly (that could pay for the job twice).
    ``params`` holds what was sent, seed included, to recognise the job by.
    """

    def __init__(self, message: str, *, params: Any = None) -> None:
        super().__init__(message)
        self.params = params


class GenerationFailed(ArtaError):
    """The service ended the job FAILED; ``error_code``/``error_details`` say why.

    Not resumable: asking again gives the same failure. Submit it anew.
    """

    resumable = False

    def __init__(
        self,
        message: str,
        *,
        record_id: str | None = None,
        error_code: str | None = None,
        error_details: str | None = None,
    ) -> None:
        super().__init__(message, record_id=record_id)
        self.error_code = error_code
        self.error_details = error_details


class ClientClosedError(ArtaError):
    """The client was closed: it sends nothing more (make a new :class:`arta.Client`)."""


class GenerationTimeout(ArtaError):
    """The job did not finish within the timeout; it may still finish on the service."""


class GenerationCancelled(ArtaError):
    """The caller stopped waiting (``stop`` was set, or an asyncio task was cancelled).

    Only the wait ended: the job goes on at the service and can be resumed.
    """


class DownloadError(ArtaError):
    """An image of a finished job could not be fetched or saved."""


class SaveError(DownloadError):
    """The images could not be written (the folder is read-only, a file, full...).

    The job is DONE and paid for: ``record_id`` picks it up again to save
    it elsewhere; ``path`` is where the save failed.
    """

    def __init__(self, message: str, *, record_id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__(message, record_id=record_id)
        self.path = path

    @property
    def hint(self) -> str | None:
        """Save again elsewhere: the images are still at the service."""
        if not self.record_id:
            return None
        return ("the job is done and its images are still at the service: call save() again "
                f"with a folder that can be written, or {resume_hint(self.record_id)}")


class GenerationInterrupted(KeyboardInterrupt):
    """Ctrl-C while waiting for a job (or saving its images): a ``KeyboardInterrupt`` with ``record_id``.

    The job goes on at the service (or is DONE); ``Client().resume(record_id)`` picks it up.
    ``doing`` says what was interrupted, as in "interrupted while saving the images of job ...".
    Uncaught, it ends the script as a plain Ctrl-C does (status 130), record id
    on stderr (:mod:`arta.interrupt`).
    """

    def __init__(self, record_id: str, doing: str = "waiting for") -> None:
        exit_as_interrupted_if_uncaught()
        super().__init__(f"interrupted while {doing} job {record_id}; "
                         f"{resume_hint(record_id)}")
        self.record_id = record_id
        self.doing = doing

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.record_id, self.doing)


class SubmitInterrupted(KeyboardInterrupt):
    """Ctrl-C while a submit was on its way: the job may or may not exist.

    Still a ``KeyboardInterrupt``. As with :class:`SubmitOutcomeUnknown`,
    ``params`` (seed included) is what was sent, to recognise the job by.
    """

    def __init__(self, params: Any) -> None:
        exit_as_interrupted_if_uncaught()
        seed = getattr(params, "seed", None)
        super().__init__("interrupted while the submit was on its way: the job may or may not "
                         f"exist (seed {seed}); it was not sent again")
        self.params = params

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.params,)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`arta.Client.map` (or a run): still a ``KeyboardInterrupt``.

    ``outcomes`` are the jobs that had ended or were in flight and not yet
    handed out (each with its record id once submitted); ``record_ids``
    are those ids: the jobs go on at the service and can be resumed.
    """

    def __init__(self, outcomes: Sequence[Any]) -> None:
        exit_as_interrupted_if_uncaught()
        self.outcomes = list(outcomes)
        self.record_ids = [o.record_id for o in self.outcomes if o.record_id]
        shown = ", ".join(self.record_ids[:20]) + (" ..." if len(self.record_ids) > 20 else "")
        super().__init__(f"interrupted with {len(self.record_ids)} submitted job(s) not handed "
                         f"out" + (f": {shown}; resume each with Client().resume(record_id)"
                                   if self.record_ids else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.outcomes,)
