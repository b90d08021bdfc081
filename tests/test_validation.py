"""Bad input fails before any request, with a message that says what is allowed."""

from __future__ import annotations

import math
from typing import Any

import pytest

import arta
from arta.emulator import Emulator
from arta.params import MAX_PROMPT_LENGTH

BAD_INPUT = [
    # (keyword arguments of generate, the error type, words the message must hold)
    ({"prompt": ""}, arta.errors.InvalidPromptError, "must not be empty"),
    ({"prompt": "   \n\t"}, arta.errors.InvalidPromptError, "must not be empty"),
    ({"prompt": "x" * (MAX_PROMPT_LENGTH + 1)}, arta.errors.InvalidPromptError, f"maximum is {MAX_PROMPT_LENGTH}"),
    ({"prompt": None}, arta.errors.InvalidPromptError, "must be a str"),
    ({"prompt": b"a fox"}, arta.errors.InvalidPromptError, "must be a str, not bytes"),
    ({"prompt": 42}, arta.errors.InvalidPromptError, "must be a str, not int"),
    ({"n": 0}, arta.errors.InvalidParameterError, "n must be from 1 to 4"),
    ({"n": 5}, arta.errors.InvalidParameterError, "n must be from 1 to 4"),
    ({"n": -1}, arta.errors.InvalidParameterError, "n must be from 1 to 4"),
    ({"n": 2.0}, arta.errors.InvalidParameterError, "n must be an int"),
    ({"n": "2"}, arta.errors.InvalidParameterError, "n must be an int"),
    ({"n": True}, arta.errors.InvalidParameterError, "not bool"),
    ({"style": "Fantasy Arts"}, arta.errors.InvalidStyleError, "did you mean 'Fantasy Art'"),
    ({"style": "no such style at all"}, arta.errors.InvalidStyleError, "unknown style"),
    ({"style": None}, arta.errors.InvalidStyleError, "style must be a str"),
    ({"aspect_ratio": "5:4"}, arta.errors.InvalidAspectRatioError, "1:1, 2:3, 3:2, 3:4, 4:3, 9:16, 16:9"),
    ({"aspect_ratio": "square"}, arta.errors.InvalidAspectRatioError, "use one of"),
    ({"steps": 0}, arta.errors.InvalidParameterError, "steps must be from 1 to 150"),
    ({"steps": 151}, arta.errors.InvalidParameterError, "steps must be from 1 to 150"),
    ({"steps": 30.5}, arta.errors.InvalidParameterError, "steps must be an int"),
    ({"guidance_scale": 0.5}, arta.errors.InvalidParameterError, "guidance_scale must be from 1 to 20"),
    ({"guidance_scale": 21}, arta.errors.InvalidParameterError, "guidance_scale must be from 1 to 20"),
    ({"guidance_scale": math.nan}, arta.errors.InvalidParameterError, "guidance_scale must be from 1 to 20"),
    ({"guidance_scale": "7"}, arta.errors.InvalidParameterError, "must be a number"),
    ({"seed": -1}, arta.errors.InvalidParameterError, "seed must be from 0 to 4294967295"),
    ({"seed": 2**32}, arta.errors.InvalidParameterError, "seed must be from 0 to 4294967295"),
    ({"seed": 1.5}, arta.errors.InvalidParameterError, "seed must be an int"),
    ({"seed": "42"}, arta.errors.InvalidParameterError, "seed must be an int"),
    ({"negative_prompt": None}, arta.errors.InvalidPromptError, "negative_prompt must be a str"),
]


@pytest.mark.parametrize(("kwargs", "error", "words"), BAD_INPUT,
                         ids=[f"{next(iter(k))}={next(iter(k.values()))!r:.20}" for k, _, _ in BAD_INPUT])
def test_bad_input_is_refused_before_any_request(
    emulator: Emulator, client: arta.Client, kwargs: dict[str, Any],
    error: type[arta.InvalidInputError], words: str,
) -> None:
    arguments = {"prompt": "a fox", **kwargs}
    prompt = arguments.pop("prompt")
    with pytest.raises(error) as caught:
        client.generate(prompt, **arguments)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, arta.ArtaError)
    assert words in str(caught.value)
    # Nothing reached the service: no sign-up, no submit, no token on disk.
    stats = emulator.stats()
    assert (stats["signups"], stats["submits"], stats["polls"]) == (0, 0, 0)
    assert not client.settings.token_file.exists()


def test_module_generate_validates_before_making_a_client(emulator: Emulator) -> None:
    with pytest.raises(arta.errors.InvalidParameterError):
        arta.generate("a fox", n=9, endpoint=emulator.url)
    assert emulator.stats()["signups"] == 0


def test_the_largest_allowed_values_are_accepted(client: arta.Client) -> None:
    result = client.generate("x" * MAX_PROMPT_LENGTH, n=4, steps=150, guidance_scale=20,
                             seed=2**32 - 1, style="dreamshaper_xl", aspect_ratio="9:21")
    assert len(result.images) == 4
    assert result.seed == 2**32 - 1


def test_the_parameters_are_written_once_and_every_entry_point_shows_them() -> None:
    import dataclasses
    import inspect

    import arta.aio
    from arta.params import GenerationOptions

    fields = [f.name for f in dataclasses.fields(arta.GenerationParams) if f.name != "prompt"]
    assert list(GenerationOptions.__annotations__) == fields
    defaults = inspect.signature(arta.GenerationParams.create).parameters
    for entry in (arta.generate, arta.Client.submit, arta.Client.generate, arta.aio.generate,
                  arta.aio.AsyncClient.submit, arta.aio.AsyncClient.generate):
        shown = inspect.signature(entry).parameters
        for name in fields:  # help() and IDEs see each keyword with its one default
            assert shown[name].default == defaults[name].default, (entry, name)
