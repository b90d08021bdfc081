"""The style catalog and aspect ratios the ARTA service accepts.

A leaf module: both the client (to validate before sending) and the
emulator (to answer 422 like the service) import it, and it imports
nothing but ``arta.errors``.

Styles are sent by their display name (``"Fantasy Art"``). Users may also
write the snake_case aliases of the old provider (``fantasy_art``), the
kebab-case ones of its later version (``fantasy-art``, ``flux-pro``), or the
display name in any case: every spelling normalises to one lookup key.
"""

from __future__ import annotations

import difflib
import re

from arta.errors import InvalidAspectRatioError, InvalidStyleError

__all__ = [
    "ASPECT_RATIOS",
    "DEFAULT_STYLE",
    "STYLES",
    "STYLE_ALIASES",
    "aspect_ratio_size",
    "closest_styles",
    "resolve_aspect_ratio",
    "resolve_style",
]

#: Every style display name seen accepted by the service (docs/protocol.rst section 7).
STYLES: tuple[str, ...] = (
    "Flux", "Medieval", "Vincent Van Gogh", "F Dev", "Low Poly",
    "Dreamshaper-xl", "Anima-pencil-xl", "Biomech", "Trash Polka", "No Style",
    "Cheyenne-xl", "Chicano", "Embroidery tattoo", "Red and Black",
    "Fantasy Art", "Watercolor", "Dotwork", "Old school colored",
    "Realistic tattoo", "Japanese_2", "Realistic-stock-xl", "F Pro",
    "RevAnimated", "Katayama-mix-xl", "SDXL L", "Cor-epica-xl",
    "Anime tattoo", "New School", "Death metal", "Old School",
    "Juggernaut-xl", "Photographic", "SDXL 1.0", "Graffiti", "Mini tattoo",
    "Surrealism", "Neo-traditional", "On limbs black", "Yamers-realistic-xl",
    "Pony-xl", "Playground-xl", "Anything-xl", "Flame design", "Kawaii",
    "Cinematic Art", "Professional", "Black Ink", "Epicrealism-xl",
    "High GPT4o", "GPT4o", "GPT4o Ghibli", "On limbs color", "Anime",
)

DEFAULT_STYLE = "Flux"

#: Aspect ratios the service accepts, as sent in ``aspect_ratio``.
ASPECT_RATIOS: tuple[str, ...] = (
    "1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "9:21", "21:9",
)

# Names that the provider versions used which are not a spelling of the
# display name: the later kebab-case provider called the Flux variants
# "flux-pro"/"flux-dev", the snake_case one called Black Ink "flux_black_ink".
_EXTRA_ALIASES: dict[str, str] = {
    "flux-pro": "F Pro",
    "flux_pro": "F Pro",
    "flux-dev": "F Dev",
    "flux_dev": "F Dev",
    "flux_black_ink": "Black Ink",
    "flux-black-ink": "Black Ink",
}

_SEPARATORS = re.compile(r"[^0-9a-z]+")


def _key(name: str) -> str:
    """Fold any spelling of a style to one key: lower case, separators to '_'."""
    return _SEPARATORS.sub("_", name.strip().lower()).strip("_")


def _kebab(name: str) -> str:
    return _key(name).replace("_", "-")


#: Every alias (snake_case and kebab-case) to its display name.
STYLE_ALIASES: dict[str, str] = {
    **{_key(style): style for style in STYLES},  # the key is the snake_case alias
    **{_kebab(style): style for style in STYLES},
    **_EXTRA_ALIASES,
}

_BY_KEY: dict[str, str] = {
    **{_key(alias): style for alias, style in STYLE_ALIASES.items()},
    **{_key(style): style for style in STYLES},
}


def closest_styles(name: str, n: int = 3) -> list[str]:
    """The display names of up to ``n`` styles that ``name`` most likely meant, best first.

    One function for every "did you mean" (the client's validation, the old
    provider's facade, the emulator's 422 answers), so that they all suggest
    the same names. A spelling of a style (any case, snake_case or
    kebab-case alias) gives that style alone; else the closest keys by
    :func:`difflib.get_close_matches`, which may give none.
    """
    exact = _BY_KEY.get(_key(name))
    if exact is not None:
        return [exact]
    close = difflib.get_close_matches(_key(name), list(_BY_KEY), n=3 * n, cutoff=0.5)
    return list(dict.fromkeys(_BY_KEY[key] for key in close))[:n]


def resolve_style(name: str) -> str:
    """Return the display name the service expects for any spelling of a style.

    Raises :class:`~arta.errors.InvalidStyleError` naming the closest styles
    when ``name`` is not one of them.
    """
    if not isinstance(name, str):
        raise InvalidStyleError(
            f"style must be a str naming one of the {len(STYLES)} styles "
            f"(see `arta styles`), not {type(name).__name__}"
        )
    style = _BY_KEY.get(_key(name))
    if style is not None:
        return style
    suggestions = closest_styles(name)
    hint = (
        "did you mean " + " or ".join(repr(s) for s in suggestions) + "?"
        if suggestions
        else "run `arta styles` for the list"
    )
    raise InvalidStyleError(f"unknown style {name!r}: {hint}")


def resolve_aspect_ratio(ratio: str) -> str:
    """Return ``ratio`` normalised (``" 16:9 "`` -> ``"16:9"``) if the service accepts it.

    Raises :class:`~arta.errors.InvalidAspectRatioError` listing the valid ratios.
    """
    normal = ratio.replace(" ", "") if isinstance(ratio, str) else None
    if normal in ASPECT_RATIOS:
        return normal
    raise InvalidAspectRatioError(
        f"unknown aspect ratio {ratio!r}: use one of {', '.join(ASPECT_RATIOS)}"
    )


def aspect_ratio_size(ratio: str, long_side: int = 512) -> tuple[int, int]:
    """Return ``(width, height)`` for ``ratio`` with the longer side ``long_side``."""
    w, h = (int(part) for part in resolve_aspect_ratio(ratio).split(":"))
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side
