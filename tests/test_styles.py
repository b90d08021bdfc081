"""The style catalog: every spelling a user may write resolves to the service's name."""

from __future__ import annotations

import pytest

import arta
from arta.styles import (
    STYLE_ALIASES,
    STYLES,
    aspect_ratio_size,
    resolve_aspect_ratio,
    resolve_style,
)


def test_every_style_resolves_to_itself_in_any_case() -> None:
    for style in STYLES:
        assert resolve_style(style) == style
        assert resolve_style(style.upper()) == style
        assert resolve_style(f"  {style.lower()} ") == style


def test_every_alias_resolves_to_its_style() -> None:
    assert len(STYLES) == 53
    for alias, style in STYLE_ALIASES.items():
        assert resolve_style(alias) == style, alias


@pytest.mark.parametrize(("alias", "style"), [
    ("flux", "Flux"), ("realistic_tattoo", "Realistic tattoo"), ("sdxl_1_0", "SDXL 1.0"),
    ("black_ink", "Black Ink"), ("flux_black_ink", "Black Ink"),
    ("realistic-tattoo", "Realistic tattoo"), ("flux-pro", "F Pro"), ("flux-dev", "F Dev"),
    ("vincent_van_gogh", "Vincent Van Gogh"), ("japanese_2", "Japanese_2"),
    ("revanimated", "RevAnimated"), ("gpt4o-ghibli", "GPT4o Ghibli"),
])
def test_the_seed_aliases(alias: str, style: str) -> None:
    assert resolve_style(alias) == style


def test_unknown_style_names_the_closest() -> None:
    with pytest.raises(arta.errors.InvalidStyleError, match="did you mean 'Watercolor'"):
        resolve_style("watercolour")
    with pytest.raises(ValueError, match="arta styles"):
        resolve_style("zzzzzz")


@pytest.mark.parametrize("ratio", ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "9:21", "21:9"])
def test_aspect_ratio_sizes_keep_the_ratio(ratio: str) -> None:
    width, height = aspect_ratio_size(ratio, 512)
    w, h = map(int, ratio.split(":"))
    assert max(width, height) == 512
    assert abs(width / height - w / h) < 0.01


def test_unknown_aspect_ratio_lists_the_valid_ones() -> None:
    with pytest.raises(arta.errors.InvalidAspectRatioError, match="1:1, 2:3, 3:2"):
        resolve_aspect_ratio("5:4")
    assert resolve_aspect_ratio(" 16:9 ") == "16:9"
