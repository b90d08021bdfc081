"""The parameters of one generation, validated before anything is sent.

The service's own bounds are unknown (docs/protocol.rst section 8), so the limits
here are documented choices: wide enough for everything the Android app
offers, narrow enough to catch mistakes before they cost a request.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import asdict, dataclass
from typing import Any, Callable, TypedDict, TypeVar

from arta.errors import InvalidParameterError, InvalidPromptError
from arta.styles import DEFAULT_STYLE, resolve_aspect_ratio, resolve_style

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "GUIDANCE_RANGE",
    "MAX_PROMPT_LENGTH",
    "N_RANGE",
    "SEED_RANGE",
    "STEPS_RANGE",
    "GenerationOptions",
    "GenerationParams",
    "shows_generation_options",
]

#: Longest prompt accepted, in characters.
MAX_PROMPT_LENGTH = 2000
#: Images per job: the Android app offers 1 to 4.
N_RANGE = (1, 4)
#: Inference steps.
STEPS_RANGE = (1, 150)
#: Guidance (``cfg_scale``).
GUIDANCE_RANGE = (1.0, 20.0)
#: Seeds: the service answers seeds up to 2**32 - 1.
SEED_RANGE = (0, 2**32 - 1)
#: Where a random seed is drawn from when none is given (the old provider's range).
RANDOM_SEED_RANGE = (9999, 99999999)

DEFAULT_NEGATIVE_PROMPT = "blurry, deformed hands, ugly"


def _check_int(name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass, but n=True is a mistake, never a count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(
            f"{name} must be an int from {low} to {high}, not {type(value).__name__} {value!r}"
        )
    if not low <= value <= high:
        raise InvalidParameterError(f"{name} must be from {low} to {high}, got {value}")
    return value


def _check_prompt(name: str, value: object, *, required: bool) -> str:
    if not isinstance(value, str):
        raise InvalidPromptError(f"{name} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        # A lone surrogate ("\ud800", from a bad decode) cannot be sent as UTF-8.
        raise InvalidPromptError(
            f"{name} holds a character that is not valid Unicode text ({value[error.start]!r} "
            f"at position {error.start}, a lone surrogate)") from None
    if required and not value.strip():
        raise InvalidPromptError(f"{name} must not be empty or only whitespace")
    if len(value) > MAX_PROMPT_LENGTH:
        raise InvalidPromptError(
            f"{name} is {len(value)} characters long; the maximum is {MAX_PROMPT_LENGTH}"
        )
    return value.strip()


@dataclass(frozen=True)
class GenerationParams:
    """What to draw: the form fields of one submit (docs/protocol.rst section 4).

    Build with :meth:`create`, which validates every field and fills in a
    random seed, so that a job is fully described (and repeatable) before it
    is sent.
    """

    prompt: str
    style: str = DEFAULT_STYLE
    n: int = 1
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    guidance_scale: float = 7
    steps: int = 30
    aspect_ratio: str = "1:1"
    seed: int = 0

    @classmethod
    def create(
        cls,
        prompt: str,
        *,
        # The fields' own defaults (these names are the class body's, above):
        # each default is written once.
        style: str = style,
        n: int = n,
        negative_prompt: str = negative_prompt,
        guidance_scale: float = guidance_scale,
        steps: int = steps,
        aspect_ratio: str = aspect_ratio,
        seed: int | None = None,
    ) -> GenerationParams:
        """Validate every field, or raise an :class:`~arta.errors.InvalidInputError` saying what is allowed."""
        prompt = _check_prompt("prompt", prompt, required=True)
        negative_prompt = _check_prompt("negative_prompt", negative_prompt, required=False)
        style = resolve_style(style)
        n = _check_int("n", n, *N_RANGE)
        steps = _check_int("steps", steps, *STEPS_RANGE)
        low, high = GUIDANCE_RANGE
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise InvalidParameterError(
                f"guidance_scale must be a number from {low:g} to {high:g}, "
                f"not {type(guidance_scale).__name__} {guidance_scale!r}"
            )
        if not low <= guidance_scale <= high:  # also rejects nan
            raise InvalidParameterError(
                f"guidance_scale must be from {low:g} to {high:g}, got {guidance_scale!r}"
            )
        aspect_ratio = resolve_aspect_ratio(aspect_ratio)
        if seed is None:
            seed = random.randint(*RANDOM_SEED_RANGE)
        seed = _check_int("seed", seed, *SEED_RANGE)
        return cls(prompt, style, n, negative_prompt, guidance_scale, steps, aspect_ratio, seed)

    def form(self) -> dict[str, str]:
        """The submit's form fields, every value a string as the service expects."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "style": self.style,
            "images_num": str(self.n),
            "cfg_scale": f"{self.guidance_scale:g}",
            "steps": str(self.steps),
            "aspect_ratio": self.aspect_ratio,
            "seed": str(self.seed),
        }

    def as_dict(self) -> dict[str, Any]:
        """The parameters as a plain dict (for manifests and JSON output)."""
        return asdict(self)


class GenerationOptions(TypedDict, total=False):
    """The keywords of a generation besides its prompt, for ``**options: Unpack[...]``.

    Their defaults live in one place, :meth:`GenerationParams.create`; every
    entry point (``arta.generate``, ``Client.submit``, ``arta.aio``, ...)
    forwards its keywords there. A test checks that these names match.
    """

    style: str
    n: int
    negative_prompt: str
    guidance_scale: float
    steps: int
    aspect_ratio: str
    seed: int | None


F = TypeVar("F", bound=Callable[..., Any])


def shows_generation_options(function: F) -> F:
    """Give ``function`` a signature that lists the generation keywords and their defaults.

    ``function`` takes them as ``**options``; without this, ``help()`` and
    ``inspect.signature`` would show only ``**options``. The keywords, with
    the defaults of :meth:`GenerationParams.create`, are put in its place
    (a ``**`` parameter of another name, e.g. ``**client_options``, stays).
    """
    signature = inspect.signature(function)
    create = inspect.signature(GenerationParams.create)
    own = [p for p in signature.parameters.values() if p.name != "options"]
    taken = {p.name for p in own}
    options = [p for p in create.parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in taken]
    rest = [p for p in own if p.kind is inspect.Parameter.VAR_KEYWORD]
    head = [p for p in own if p.kind is not inspect.Parameter.VAR_KEYWORD]
    split = next((i for i, p in enumerate(head) if p.kind is inspect.Parameter.KEYWORD_ONLY),
                 len(head))
    parameters = [*head[:split], *options, *head[split:], *rest]
    function.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return function
