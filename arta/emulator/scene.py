"""Paint the emulator's placeholder pictures: a sky, a sun or moon, clouds, mountains.

Every picture is a pure function of ``(prompt, style, seed, aspect_ratio)``
(a SHA-256 seeds the drawing), so the same request gives byte-identical
files everywhere. Shapes are painted as horizontal spans by slice
assignment, never per pixel: a 512x512 picture takes a few milliseconds,
and :func:`render_png` caches the encoded files.
"""

from __future__ import annotations

import colorsys
import functools
import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from arta.emulator.png import encode_rgb
from arta.styles import aspect_ratio_size

__all__ = ["PALETTES", "Palette", "render_png"]

Color = tuple[int, int, int]
Point = tuple[float, float]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Palette:
    """The colours of one mood of landscape, from the top of the sky down."""

    name: str
    sky_top: Color
    sky_horizon: Color
    sun: Color
    cloud: Color
    mountain: Color
    mist: Color
    night: bool = False


#: The moods a picture is drawn in; a prompt word may pick one (see ``_HINTS``).
PALETTES: tuple[Palette, ...] = (
    Palette("dawn", (46, 58, 122), (250, 178, 128), (255, 238, 196), (255, 214, 200),
            (46, 34, 76), (236, 156, 146)),
    Palette("day", (58, 128, 214), (196, 226, 246), (255, 252, 226), (255, 255, 255),
            (28, 66, 82), (170, 206, 226)),
    Palette("dusk", (42, 22, 84), (255, 126, 86), (255, 214, 128), (255, 170, 150),
            (28, 16, 44), (196, 92, 112)),
    Palette("night", (8, 12, 36), (44, 66, 118), (238, 236, 214), (120, 130, 170),
            (6, 9, 22), (54, 74, 116), night=True),
    Palette("aurora", (10, 36, 58), (118, 214, 196), (238, 255, 232), (200, 240, 230),
            (10, 30, 42), (84, 164, 164)),
    Palette("desert", (106, 160, 208), (250, 212, 156), (255, 246, 214), (255, 240, 220),
            (118, 58, 40), (226, 166, 122)),
)

_BY_NAME = {palette.name: palette for palette in PALETTES}

# A prompt that names a time of day should get it: cheap, and it makes the
# placeholders feel related to what was asked for.
_HINTS = {
    "dawn": "dawn", "sunrise": "dawn", "morning": "dawn",
    "day": "day", "noon": "day", "sunny": "day", "summer": "day",
    "sunset": "dusk", "dusk": "dusk", "evening": "dusk", "fire": "dusk", "dragon": "dusk",
    "night": "night", "moon": "night", "star": "night", "stars": "night", "space": "night",
    "aurora": "aurora", "ice": "aurora", "winter": "aurora", "snow": "aurora", "sea": "aurora",
    "desert": "desert", "sand": "desert", "dune": "desert", "egypt": "desert",
}

# Style families, matched by a word in the lower-cased display name.
_MONO_WORDS = ("ink", "dotwork", "pencil", "black")
_PASTEL_WORDS = ("watercolor", "kawaii", "ghibli", "embroidery")
_FIERY_WORDS = ("metal", "flame", "biomech")
_VIVID_WORDS = ("anime", "pony", "anything", "graffiti", "school", "polka", "neo")

_LAYERS = 4
_RIDGE_LEVELS = 5  # 2**5 segments per ridge line


def _stable_int(*parts: object) -> int:
    """Hash ``parts`` to a 64-bit int that is the same in every process."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _mix(a: Color, b: Color, t: float) -> Color:
    """Blend ``a`` towards ``b`` by ``t`` (0 gives ``a``, 1 gives ``b``)."""
    t = min(1.0, max(0.0, t))
    return (
        int(a[0] + (b[0] - a[0]) * t + 0.5),
        int(a[1] + (b[1] - a[1]) * t + 0.5),
        int(a[2] + (b[2] - a[2]) * t + 0.5),
    )


def _adjust(color: Color, hue: float = 0.0, sat: float = 1.0, val: float = 1.0) -> Color:
    """Rotate the hue and scale saturation and value of ``color``."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in color))
    r, g, b = colorsys.hsv_to_rgb((h + hue) % 1.0, min(1.0, s * sat), min(1.0, v * val))
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def _recolor(palette: Palette, fn: Callable[[Color], Color]) -> Palette:
    """Apply ``fn`` to every colour of ``palette``."""
    return replace(
        palette,
        sky_top=fn(palette.sky_top),
        sky_horizon=fn(palette.sky_horizon),
        sun=fn(palette.sun),
        cloud=fn(palette.cloud),
        mountain=fn(palette.mountain),
        mist=fn(palette.mist),
    )


def _grey(color: Color) -> Color:
    """Luminance grey with a faint warm tint, like ink on paper."""
    y = int(0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2])
    return min(255, y + 6), min(255, y + 3), y


def _style_palette(palette: Palette, style: str, jitter: float) -> Palette:
    """Shift ``palette`` so that styles read differently at a glance."""
    name = style.lower()
    if name == "red and black":
        return replace(_recolor(palette, _grey), sun=(228, 36, 40), cloud=(200, 60, 60))
    if any(word in name for word in _MONO_WORDS):
        return _recolor(palette, _grey)
    if any(word in name for word in _PASTEL_WORDS):
        return _recolor(palette, lambda c: _mix(_adjust(c, jitter, 0.75), (255, 250, 244), 0.3))
    if any(word in name for word in _FIERY_WORDS):
        return _recolor(palette, lambda c: _adjust(_mix(c, (150, 20, 10), 0.35), 0, 1.2, 0.85))
    if any(word in name for word in _VIVID_WORDS):
        return _recolor(palette, lambda c: _adjust(c, jitter, 1.35))
    shift = (_stable_int("style", style) % 1000) / 1000.0 * 0.12 - 0.06
    return _recolor(palette, lambda c: _adjust(c, shift + jitter))


def _pick_palette(rng: random.Random, prompt: str) -> Palette:
    """The palette a prompt word asks for, else one drawn by ``rng``."""
    words = "".join(ch if ch.isalnum() else " " for ch in prompt.lower()).split()
    for word in words:
        if word in _HINTS:
            return _BY_NAME[_HINTS[word]]
    return rng.choice(PALETTES)


def _pairs(items: Sequence[_T]) -> list[tuple[_T, _T]]:
    """Successive pairs (``itertools.pairwise`` is Python 3.10+)."""
    return [(items[i], items[i + 1]) for i in range(len(items) - 1)]


def _ridge(rng: random.Random, base: float, amplitude: float, roughness: float) -> list[Point]:
    """A mountain ridge in unit coordinates, by midpoint displacement."""
    heights = [base + rng.uniform(-amplitude, amplitude) for _ in range(2)]
    spread = amplitude
    for _ in range(_RIDGE_LEVELS):
        refined: list[float] = []
        for left, right in _pairs(heights):
            refined.append(left)
            refined.append((left + right) / 2 + rng.uniform(-spread, spread))
        refined.append(heights[-1])
        heights = refined
        spread *= roughness
    last = len(heights) - 1
    return [(i / last, h) for i, h in enumerate(heights)]


@dataclass(frozen=True)
class _Cloud:
    base: float  # unit y of the flat bottom
    puffs: tuple[tuple[float, float, float], ...]  # (cx, rx, ry) in unit coordinates
    alpha: float


@dataclass(frozen=True)
class _Layer:
    ridge: tuple[Point, ...]
    color: Color
    mist: Color
    mist_strength: float


@dataclass(frozen=True)
class _Scene:
    """A picture described in unit coordinates, paintable at any size."""

    palette: Palette
    sun: tuple[float, float, float]  # cx, cy (unit), radius (unit of the short side)
    stars: tuple[Point, ...]
    clouds: tuple[_Cloud, ...]
    layers: tuple[_Layer, ...]


def _compose(prompt: str, style: str, seed: int, aspect_ratio: str) -> _Scene:
    """Draw a scene for these inputs; the same inputs always give the same scene."""
    rng = random.Random(_stable_int(prompt, style, seed, aspect_ratio))
    palette = _style_palette(_pick_palette(rng, prompt), style, rng.uniform(-0.03, 0.03))
    sun = (rng.uniform(0.18, 0.82), rng.uniform(0.16, 0.42), rng.uniform(0.06, 0.11))
    stars: tuple[Point, ...] = ()
    if palette.night:
        stars = tuple((rng.random(), rng.uniform(0.0, 0.6) ** 1.4) for _ in range(90))
    clouds = []
    for _ in range(rng.randint(0 if palette.night else 1, 3)):
        cx, base, width = rng.random(), rng.uniform(0.12, 0.42), rng.uniform(0.12, 0.3)
        puffs = tuple(
            (cx + rng.uniform(-width, width) / 2, rng.uniform(0.06, 0.12), rng.uniform(0.03, 0.07))
            for _ in range(rng.randint(3, 5))
        )
        clouds.append(_Cloud(base, puffs, rng.uniform(0.35, 0.6)))
    haze = _mix(palette.sky_horizon, palette.mist, 0.5)
    layers = []
    for k in range(_LAYERS):
        near = (k + 1) / _LAYERS
        ridge = _ridge(
            rng,
            base=0.5 + 0.11 * k + rng.uniform(-0.03, 0.03),
            amplitude=0.13 - 0.025 * k,
            roughness=0.58 - 0.06 * k,
        )
        color = _mix(haze, palette.mountain, near**1.3)
        layers.append(_Layer(tuple(ridge), color, _mix(color, palette.mist, 0.9), 0.65 - 0.4 * near))
    return _Scene(palette, sun, stars, tuple(clouds), tuple(layers))


class _Canvas:
    """Rows of packed RGB bytes that shapes are painted onto as spans."""

    def __init__(self, width: int, height: int, sky: Sequence[Color]) -> None:
        self.width = width
        self.height = height
        self.sky = list(sky)
        self.rows = [bytearray(bytes(color) * width) for color in self.sky]

    def span(self, y: int, x0: float, x1: float, color: Color) -> None:
        """Fill row ``y`` from ``x0`` to ``x1`` (pixel coordinates, clipped)."""
        a = max(0, int(x0 + 0.5))
        b = min(self.width, int(x1 + 0.5))
        if b > a and 0 <= y < self.height:
            self.rows[y][3 * a : 3 * b] = bytes(color) * (b - a)

    def ellipse(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        color: Callable[[int], Color],
        top_half: bool = False,
    ) -> None:
        """Fill an ellipse; ``color(y)`` lets a shape blend with the sky of its row."""
        if rx <= 0 or ry <= 0:
            return
        last = int(cy + 0.5) if top_half else int(cy + ry) + 1
        for y in range(max(0, int(cy - ry)), min(self.height, last)):
            dy = (y + 0.5 - cy) / ry
            if dy * dy < 1.0:
                half = rx * math.sqrt(1.0 - dy * dy)
                self.span(y, cx - half, cx + half, color(y))

    def below(self, ridge: Sequence[Point], color: Callable[[int], Color]) -> None:
        """Fill everything below a polyline ridge (pixel coordinates)."""
        top = max(0, int(min(y for _, y in ridge)))
        bottom = int(max(y for _, y in ridge)) + 1
        segments = _pairs(ridge)
        for y in range(top, self.height):
            fill = color(y)
            if y >= bottom:
                self.span(y, 0, self.width, fill)
                continue
            row_y = y + 0.5
            for (x0, y0), (x1, y1) in segments:
                if row_y < y0 and row_y < y1:
                    continue
                if row_y >= y0 and row_y >= y1:
                    self.span(y, x0, x1, fill)
                    continue
                cross = x0 + (row_y - y0) * (x1 - x0) / (y1 - y0)
                if y0 < y1:
                    self.span(y, x0, cross, fill)
                else:
                    self.span(y, cross, x1, fill)


def _over_sky(
    sky: Sequence[Color], color: Color, alpha0: float, alpha1: float, y0: float, y1: float
) -> Callable[[int], Color]:
    """Row colour of a shape blended over the sky, its alpha going from ``alpha0``
    at row ``y0`` to ``alpha1`` at row ``y1``."""
    span = (y1 - y0) or 1.0

    def at(y: int) -> Color:
        t = min(1.0, max(0.0, (y - y0) / span))
        return _mix(sky[y], color, alpha0 + (alpha1 - alpha0) * t)

    return at


def _misted(layer: _Layer, top: float, depth: float) -> Callable[[int], Color]:
    """Row colour of a mountain layer: darkest at the ridge, fading into mist below."""

    def at(y: int) -> Color:
        return _mix(layer.color, layer.mist, layer.mist_strength * (max(0.0, y - top) / depth) ** 0.8)

    return at


def _paint(scene: _Scene, width: int, height: int) -> list[bytearray]:
    """Paint ``scene`` at ``width`` x ``height`` and return its rows."""
    palette = scene.palette
    horizon = 0.72 * height
    sky = [
        _mix(palette.sky_top, palette.sky_horizon, (min(1.0, y / horizon)) ** 1.25)
        for y in range(height)
    ]
    canvas = _Canvas(width, height, sky)
    short = min(width, height)

    dot = max(1, short // 200)
    for sx, sy in scene.stars:
        x, y = sx * width, int(sy * height)
        for dy in range(dot):
            canvas.span(y + dy, x, x + dot, _mix(sky[min(height - 1, y)], (255, 255, 240), 0.8))

    cx, cy, r = scene.sun[0] * width, scene.sun[1] * height, scene.sun[2] * short
    # Concentric disks of fading alpha fake a soft glow without per-pixel blending.
    rings = 14
    for ring in range(rings, 0, -1):
        alpha = 0.45 * (1.0 - ring / (rings + 1)) ** 2
        radius = r * (1.0 + 1.8 * ring / rings)
        canvas.ellipse(cx, cy, radius, radius, _over_sky(sky, palette.sun, alpha, alpha, 0, 1))
    canvas.ellipse(cx, cy, r, r, _over_sky(sky, palette.sun, 1.0, 1.0, 0, 1))

    for cloud in scene.clouds:
        base = cloud.base * height
        for pcx, prx, pry in cloud.puffs:
            ry = pry * short
            canvas.ellipse(
                pcx * width,
                base,
                prx * short,
                ry,
                # Brighter towards the top of each puff, like sunlit cumulus.
                _over_sky(sky, palette.cloud, 0.75 * cloud.alpha, cloud.alpha, base, base - ry),
                top_half=True,
            )

    for layer in scene.layers:
        ridge = [(x * width, y * height) for x, y in layer.ridge]
        top = min(y for _, y in ridge)
        depth = max(1.0, height - top)
        canvas.below(
            ridge,
            _misted(layer, top, depth),
        )
    return canvas.rows


def _upscale(rows: Sequence[bytearray], factor: int, width: int, height: int) -> list[bytes]:
    """Nearest-neighbour upscale by ``factor``, cropped to ``width`` x ``height``."""
    out: list[bytes] = []
    for row in rows:
        wide = bytearray(len(row) * factor)
        step = 3 * factor
        for k in range(factor):
            for channel in range(3):
                wide[3 * k + channel :: step] = row[channel::3]
        line = bytes(wide[: 3 * width])
        out.extend([line] * factor)
    return out[:height]


@functools.lru_cache(maxsize=128)
def render_png(
    prompt: str,
    style: str,
    seed: int,
    aspect_ratio: str,
    long_side: int = 512,
    blur: bool = False,
) -> bytes:
    """Return the PNG file the emulator serves for these generation inputs.

    The size is :func:`arta.styles.aspect_ratio_size` of ``aspect_ratio`` and
    ``long_side``. ``blur=True`` gives the same scene as a coarse mosaic, the
    way the service marks an image its content filter caught (``isBlur``).
    """
    width, height = aspect_ratio_size(aspect_ratio, long_side)
    scene = _compose(prompt, style, seed, aspect_ratio)
    # Painted at half size and doubled: a quarter of the painting, which was
    # most of an image's cost, for a placeholder whose detail nobody needs.
    factor = max(2, long_side // 24) if blur else 2
    small_w, small_h = -(-width // factor), -(-height // factor)
    return encode_rgb(width, height, _upscale(_paint(scene, small_w, small_h), factor, width, height))
