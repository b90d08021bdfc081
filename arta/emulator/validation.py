"""Check a text2image form the way the service does, and say what is wrong FastAPI-style.

Every field is checked, and every invalid one is reported in one 422
answer (``{"detail": [{"loc": ["body", field], "msg": ..., "type":
"value_error"}, ...]}``), so that a client's error mapping can be tested
against all of them. The bounds of ``images_num``, ``cfg_scale`` and
``steps`` are unknown for the real service (docs/protocol.rst section 8); the
ones here are what the Android app offers, exported so tests can use them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from arta.styles import ASPECT_RATIOS, STYLES, closest_styles

__all__ = [
    "CFG_SCALE_RANGE",
    "DEFAULTS",
    "IMAGES_NUM_RANGE",
    "STEPS_RANGE",
    "GenerationRequest",
    "ValidationFailed",
    "validate_text2image",
]

IMAGES_NUM_RANGE: tuple[int, int] = (1, 4)
CFG_SCALE_RANGE: tuple[float, float] = (1.0, 20.0)
STEPS_RANGE: tuple[int, int] = (1, 150)

#: What a field means when the form leaves it out (the seed provider's defaults).
DEFAULTS: dict[str, str] = {
    "negative_prompt": "",
    "style": "Flux",
    "images_num": "1",
    "cfg_scale": "7",
    "steps": "30",
    "aspect_ratio": "1:1",
}

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

ErrorItem = dict[str, Any]


@dataclass(frozen=True)
class GenerationRequest:
    """A valid text2image form, typed. ``seed`` is None when the form had none."""

    prompt: str
    negative_prompt: str
    style: str
    images_num: int
    cfg_scale: float
    steps: int
    aspect_ratio: str
    seed: int | None


class ValidationFailed(ValueError):
    """The form has invalid fields; ``errors`` is the 422 answer's ``detail`` list."""

    def __init__(self, errors: list[ErrorItem]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


def _error(field: str, msg: str) -> ErrorItem:
    return {"loc": ["body", field], "msg": msg, "type": "value_error"}


def _bounded(
    field: str,
    raw: str,
    pattern: re.Pattern[str],
    kind: str,
    low: float,
    high: float | None,
    errors: list[ErrorItem],
) -> float | None:
    """Parse ``raw`` with ``pattern`` and check ``low <= value <= high``."""
    text = raw.strip()
    if not pattern.fullmatch(text):
        errors.append(_error(field, f"value is not a valid {kind}"))
        return None
    value: float = float(text) if kind == "number" else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        errors.append(_error(field, f"value is not a valid {kind}"))
        return None
    if value < low:
        errors.append(_error(field, f"ensure this value is greater than or equal to {low:g}"))
        return None
    if high is not None and value > high:
        errors.append(_error(field, f"ensure this value is less than or equal to {high:g}"))
        return None
    return value


def _style_message(style: str) -> str:
    close = closest_styles(style, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of the {len(STYLES)} style names"
    return f"unknown style {style!r}: {hint}"


def validate_text2image(fields: Mapping[str, str]) -> GenerationRequest:
    """Return the typed request for a text2image form, defaults filled in.

    Raises :class:`ValidationFailed` listing every invalid field. Unknown
    fields are ignored, as FastAPI does.
    """
    errors: list[ErrorItem] = []
    values = {**DEFAULTS, **fields}

    prompt = fields.get("prompt")
    if prompt is None:
        errors.append(_error("prompt", "field required"))
    elif not prompt.strip():
        errors.append(_error("prompt", "ensure this value is not empty"))

    style = values["style"]
    if style not in STYLES:
        errors.append(_error("style", _style_message(style)))

    images_num = _bounded("images_num", values["images_num"], _INTEGER, "integer",
                          *IMAGES_NUM_RANGE, errors)
    cfg_scale = _bounded("cfg_scale", values["cfg_scale"], _DECIMAL, "number",
                         *CFG_SCALE_RANGE, errors)
    steps = _bounded("steps", values["steps"], _INTEGER, "integer", *STEPS_RANGE, errors)

    aspect_ratio = values["aspect_ratio"]
    if aspect_ratio not in ASPECT_RATIOS:
        errors.append(
            _error("aspect_ratio", f"unknown aspect ratio {aspect_ratio!r}: use one of "
                   + ", ".join(ASPECT_RATIOS))
        )

    seed: float | None = None
    if "seed" in fields:
        seed = _bounded("seed", fields["seed"], _INTEGER, "integer", 0, None, errors)

    if errors:
        raise ValidationFailed(errors)
    assert prompt is not None and images_num is not None
    assert cfg_scale is not None and steps is not None
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=values["negative_prompt"],
        style=style,
        images_num=int(images_num),
        cfg_scale=float(cfg_scale),
        steps=int(steps),
        aspect_ratio=aspect_ratio,
        seed=None if seed is None else int(seed),
    )
