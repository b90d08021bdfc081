"""arta: a dependable client for the ARTA image-generation service.

::

    import arta
    result = arta.generate("a red dragon over a castle", style="Fantasy Art", n=2)
    result.save("images/")

``arta.generate`` uses a default :class:`Client`, made on first use in each
process (so it works as it is in a ``multiprocessing.Pool``, and every
process shares the one file-locked token). Build your own :class:`Client`
for another endpoint, transport, token store or poll policy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from arta.auth import FileTokenStore, MemoryTokenStore, Token, TokenStore
from arta.client import Client, ConnectionOptions, split_options
from arta.defaults import default_client, set_default_client
from arta.errors import (
    ArtaError,
    AuthError,
    ConfigurationError,
    ConnectError,
    DownloadError,
    GenerationCancelled,
    GenerationFailed,
    GenerationInterrupted,
    GenerationTimeout,
    InvalidAspectRatioError,
    InvalidInputError,
    InvalidParameterError,
    InvalidPromptError,
    InvalidStyleError,
    JobNotFoundError,
    MalformedResponse,
    NoResponseError,
    ProtocolError,
    QuotaExceededError,
    RateLimitedError,
    RejectedError,
    SaveError,
    ServiceError,
    SubmitInterrupted,
    SubmitOutcomeUnknown,
    TokenStoreError,
    TransportError,
)
from arta.generation import Generation, OnChange, PollPlanner, PollPolicy, Status
from arta.learned import LearnedPollPolicy, default_poll_policy
from arta.params import (
    GenerationOptions,
    GenerationParams,
    shows_generation_options,
)
from arta.result import Image, Result
from arta.retry import RetryPolicy
from arta.runner import Job, JobRun, Outcome, as_completed
from arta.styles import ASPECT_RATIOS, STYLE_ALIASES, STYLES
from arta.transport import (
    HttpxTransport,
    InProcessTransport,
    LoggingTransport,
    Request,
    RequestsTransport,
    Response,
    Transport,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__version__ = "0.1.0"

__all__ = [
    "ASPECT_RATIOS",
    "STYLES",
    "STYLE_ALIASES",
    "ArtaError",
    "AuthError",
    "Client",
    "ConfigurationError",
    "ConnectError",
    "DownloadError",
    "FileTokenStore",
    "GenerateOptions",
    "Generation",
    "GenerationCancelled",
    "GenerationFailed",
    "GenerationInterrupted",
    "GenerationParams",
    "GenerationTimeout",
    "HttpxTransport",
    "Image",
    "InProcessTransport",
    "InvalidAspectRatioError",
    "InvalidInputError",
    "InvalidParameterError",
    "InvalidPromptError",
    "InvalidStyleError",
    "Job",
    "JobNotFoundError",
    "JobRun",
    "LearnedPollPolicy",
    "LoggingTransport",
    "MalformedResponse",
    "MemoryTokenStore",
    "NoResponseError",
    "Outcome",
    "PollPlanner",
    "PollPolicy",
    "ProtocolError",
    "QuotaExceededError",
    "RateLimitedError",
    "RejectedError",
    "Request",
    "RequestsTransport",
    "Response",
    "Result",
    "RetryPolicy",
    "SaveError",
    "ServiceError",
    "Status",
    "SubmitInterrupted",
    "SubmitOutcomeUnknown",
    "Token",
    "TokenStore",
    "TokenStoreError",
    "Transport",
    "TransportError",
    "as_completed",
    "default_client",
    "default_poll_policy",
    "generate",
    "set_default_client",
]

class GenerateOptions(GenerationOptions, ConnectionOptions, total=False):
    """:func:`generate`'s keywords: a generation's, and a client's for a client of its own."""


@shows_generation_options
def generate(prompt: str, *, timeout: float | None = None, on_change: OnChange | None = None,
             poll_policy: PollPlanner | None = None,
             **options: Unpack[GenerateOptions]) -> Result:
    """Generate images for ``prompt`` and return the :class:`Result` once the job is DONE.

    ``style`` is a display name or an alias (see ``arta styles``); ``n`` is
    1 to 4 images; ``seed`` makes a job repeatable (random when None).
    ``timeout`` bounds the wait in seconds; ``poll_policy`` says how often
    to ask (see :class:`PollPolicy`). Any other keyword is a
    :class:`Client` option (``endpoint=``, ``home=``, ``transport=``, ...):
    with them, a client is made for this call alone.

    Raises an :class:`InvalidInputError` (also a ``ValueError``) before any
    request for bad input, :class:`GenerationFailed` if the service failed
    the job, :class:`GenerationTimeout` past ``timeout``; every error raised
    after the submit carries the job's ``record_id``.
    """
    params, client_options = split_options(options)
    client = Client(**client_options) if client_options else default_client()
    try:
        return client.generate(prompt, timeout=timeout, on_change=on_change,
                               poll_policy=poll_policy, **params)
    finally:
        if client_options:
            client.close()


def __getattr__(name: str) -> Any:
    """``arta.aio`` and ``arta.provider`` load on first use: sync code never pays for asyncio."""
    if name in ("aio", "provider"):
        return importlib.import_module(f"arta.{name}")
    raise AttributeError(f"module 'arta' has no attribute {name!r}")
