"""arta: a dependable client for the ARTA image-generation service.

::

    import arta
    result = arta.generate("a red dragon over a castle", style="Fantasy Art", n=2)
    result.save("images/")

``arta.generate`` uses a default :class:`Client`, made on first use in each
process (so it works as it is in a ``multiprocessing.Pool``, and every
process shares the one file-locked token). Build your own :class:`Client`
for another endpoint, transport, token store or poll policy. Every error is
in :mod:`arta.errors` (the ones most often caught are here too); transports
are in :mod:`arta.transport`, token stores in :mod:`arta.auth`, poll
policies in :mod:`arta.polling`.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from arta.api import default_client, generate, set_default_client
from arta.client import Client
from arta.engine.jobs import Outcome
from arta.engine.mapping import as_completed
from arta.errors import (
    ArtaError,
    ConfigurationError,
    GenerationCancelled,
    GenerationFailed,
    GenerationTimeout,
    InvalidInputError,
    SubmitOutcomeUnknown,
    TransportError,
)
from arta.generation import Generation, Status
from arta.images import Image
from arta.log import log_from_environment
from arta.params import GenerationParams
from arta.polling import PollPolicy
from arta.result import Result
from arta.retry import RetryPolicy
from arta.styles import ASPECT_RATIOS, STYLES

__version__ = "0.1.0"

log_from_environment()  # ARTA_LOG=info|debug: see arta.log for why on import

__all__ = [
    "ASPECT_RATIOS",
    "STYLES",
    "ArtaError",
    "Client",
    "ConfigurationError",
    "Generation",
    "GenerationCancelled",
    "GenerationFailed",
    "GenerationParams",
    "GenerationTimeout",
    "Image",
    "InvalidInputError",
    "Outcome",
    "PollPolicy",
    "Result",
    "RetryPolicy",
    "Status",
    "SubmitOutcomeUnknown",
    "TransportError",
    "as_completed",
    "default_client",
    "generate",
    "set_default_client",
]

#: Names that were at the top level before 0.2, and where they live now.
_MOVED = {
    **{name: "arta.errors" for name in (
        "AuthError", "ConnectError", "DownloadError", "GenerationInterrupted",
        "InvalidAspectRatioError", "InvalidParameterError", "InvalidPromptError",
        "InvalidStyleError", "JobNotFoundError", "MalformedResponse", "NoResponseError",
        "ProtocolError", "QuotaExceededError", "RateLimitedError", "RejectedError",
        "SaveError", "ServiceError", "SubmitInterrupted", "TokenStoreError")},
    **{name: "arta.transport" for name in (
        "HttpxTransport", "InProcessTransport", "LoggingTransport", "Request",
        "RequestsTransport", "Response", "Transport")},
    **{name: "arta.auth" for name in ("FileTokenStore", "MemoryTokenStore", "Token", "TokenStore")},
    **{name: "arta.polling" for name in ("LearnedPollPolicy", "PollPlanner", "default_poll_policy")},
    "Job": "arta.engine.jobs",
    "JobRun": "arta.engine.run",
    "GenerateOptions": "arta.api",
    "STYLE_ALIASES": "arta.styles",
}


def __getattr__(name: str) -> Any:
    """``arta.aio`` and ``arta.provider`` load on first use; names moved in 0.2 still resolve."""
    if name in ("aio", "provider"):
        return importlib.import_module(f"arta.{name}")
    home = _MOVED.get(name)
    if home is None:
        raise AttributeError(f"module 'arta' has no attribute {name!r}")
    warnings.warn(f"arta.{name} moved to {home}.{name} (the top level keeps the everyday names)",
                  DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(home), name)
