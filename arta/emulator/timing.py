"""How long a job computes: a flat draw, or a model shaped like a diffusion service.

A diffusion model's work grows with the denoising steps, the number of
images and their pixels, on top of a fixed cost per request (loading the
model's weights, encoding the prompt, decoding and uploading the images).
:class:`TimingModel` says exactly that::

    seconds = (base(style) + unit_seconds * steps * images * megapixels) * scale * noise

where ``megapixels`` is the size of the aspect ratio with ``long_side``
pixels on its longer side, and ``noise`` is drawn uniformly from
``[1 - noise, 1 + noise]``.

The defaults are a plausible model, NOT measurements of the real ARTA
service (whose sizes and speeds are unknown, docs/protocol.rst section 8):

- ``long_side`` 1024: the usual output of SDXL- and Flux-class models,
  so 1:1 is 1.05 megapixels, 16:9 0.59 and 9:21 0.45;
- ``base_seconds`` 5.0, a little more for the larger models
  (:data:`STYLE_BASE_SECONDS`: Flux and the GPT4o styles);
- ``unit_seconds`` 0.22 per step x image x megapixel, about what a
  datacenter GPU takes per SDXL step at 1024x1024;
- ``noise`` 0.1 (±10%).

So the common parameters (30 steps, one or two images, any ratio) take
about 8 to 20 seconds: 30 steps of one 9:21 image about 8 s, two 1:1 images
about 19 s. ``scale`` is a speed factor: 2.0 makes every job twice as slow,
for a benchmark that changes the service's speed in the middle of a run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from arta.styles import aspect_ratio_size

__all__ = ["STYLE_BASE_SECONDS", "TimingModel", "draw_seconds"]

#: The fixed cost of a job, by style, where it differs from ``base_seconds``.
STYLE_BASE_SECONDS: Mapping[str, float] = {
    "Flux": 6.0,
    "F Pro": 7.0,
    "F Dev": 6.0,
    "High GPT4o": 7.0,
    "GPT4o": 6.5,
    "GPT4o Ghibli": 6.5,
}


def _finite_at_least(name: str, value: float, low: float) -> None:
    # "not low <= x" refuses NaN too.
    if not (low <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= {low:g}, not {value!r}")


@dataclass(frozen=True)
class TimingModel:
    """The service-like model of a job's time IN_PROGRESS (see the module docstring).

    A value: change one with :func:`dataclasses.replace`, or at run time with
    ``EmulatorApp.set_speed`` (which replaces ``scale``).
    """

    base_seconds: float = 5.0
    style_base_seconds: Mapping[str, float] = field(
        default_factory=lambda: dict(STYLE_BASE_SECONDS)
    )
    unit_seconds: float = 0.22
    long_side: int = 1024
    noise: float = 0.1
    scale: float = 1.0

    def __post_init__(self) -> None:
        _finite_at_least("base_seconds", self.base_seconds, 0.0)
        _finite_at_least("unit_seconds", self.unit_seconds, 0.0)
        for style, seconds in self.style_base_seconds.items():
            _finite_at_least(f"style_base_seconds[{style!r}]", seconds, 0.0)
        if not isinstance(self.long_side, int) or self.long_side < 16:
            raise ValueError(f"long_side must be at least 16 pixels, not {self.long_side!r}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), not {self.noise!r}")
        _finite_at_least("scale", self.scale, 0.0)

    def megapixels(self, aspect_ratio: str) -> float:
        """Millions of pixels of one image of ``aspect_ratio`` at ``long_side``."""
        width, height = aspect_ratio_size(aspect_ratio, self.long_side)
        return width * height / 1e6

    def mean_seconds(self, style: str, steps: int, images: int, aspect_ratio: str) -> float:
        """The noiseless time of a job with these parameters, ``scale`` included."""
        base = self.style_base_seconds.get(style, self.base_seconds)
        work = self.unit_seconds * steps * images * self.megapixels(aspect_ratio)
        return (base + work) * self.scale

    def draw(
        self, style: str, steps: int, images: int, aspect_ratio: str, rng: random.Random
    ) -> float:
        """One job's time: the mean times a uniform draw from ``[1 - noise, 1 + noise]``."""
        mean = self.mean_seconds(style, steps, images, aspect_ratio)
        return mean * rng.uniform(1.0 - self.noise, 1.0 + self.noise)


def draw_seconds(duration: float | tuple[float, float], rng: random.Random) -> float:
    """A flat duration: the float itself, or a uniform draw from a ``(min, max)`` range."""
    if isinstance(duration, tuple):
        return rng.uniform(*duration)
    return float(duration)
