"""arta.provider.ARTA: the old provider's API, as its users call it, on the sync core."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import FAST_POLL
from transport_cases import ForwardingProxy

import arta
import arta.provider
from arta.emulator import Emulator
from arta.provider import ARTA, ImageResponse, ModelNotFoundError, Reasoning, ResponseError

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [{"role": "user", "content": "Generate an image of dragon"}]
GENERATED = re.compile(r"1 image\(s\) in \d+\.\d\ds")


@pytest.fixture
def phased(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    """An emulator whose jobs queue 0.3 s and run 0.3 s, where ARTA goes (by ARTA_ENDPOINT)."""
    with Emulator(queue_seconds=0.3, progress_seconds=0.3) as emu:
        monkeypatch.setenv("ARTA_ENDPOINT", emu.url)
        monkeypatch.setattr(ARTA, "poll_policy", FAST_POLL)
        yield emu


@pytest.fixture
def service(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """The fast emulator, where ARTA goes (by ARTA_ENDPOINT), polled fast."""
    monkeypatch.setenv("ARTA_ENDPOINT", emulator.url)
    monkeypatch.setattr(ARTA, "poll_policy", FAST_POLL)
    return emulator


def collect(**arguments: Any) -> list[Reasoning | ImageResponse]:
    """Every item of one ``create_async_generator`` run."""

    async def main() -> list[Reasoning | ImageResponse]:
        return [item async for item in ARTA.create_async_generator(**arguments)]

    return asyncio.run(main())


def image(items: list[Reasoning | ImageResponse]) -> ImageResponse:
    """The last item of a run: its ImageResponse."""
    assert isinstance(items[-1], ImageResponse), items
    return items[-1]


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardingProxy]:
    """A forwarding proxy on loopback, with loopback no longer exempted from proxies."""
    monkeypatch.delenv("NO_PROXY")  # conftest exempts loopback; here it must go through
    with ForwardingProxy() as server:
        yield server


def submitted_form(proxy: ForwardingProxy) -> dict[str, str]:
    """The fields of the (one) submit that went through ``proxy``."""
    bodies = [body for _, url, body in proxy.exchanges
              if urlsplit(url).path == "/api/v1/text2image"]
    assert len(bodies) == 1
    # multipart/form-data, as the Android app sends it: each field a part.
    return dict(re.findall(r'name="([^"]+)"\r\n\r\n(.*?)\r\n--', bodies[0].decode()))


# -- the seed's own example --------------------------------------------------------


def _seed_example() -> Any:
    """``seed_example`` of examples/seed_example.py: the documentation's example, unchanged."""
    spec = importlib.util.spec_from_file_location("seed_example", ROOT / "examples" / "seed_example.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.seed_example


def test_the_seed_example_prints_the_reasoning_lines_and_the_urls(
        phased: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(_seed_example()())
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["Reasoning: None", "Reasoning: None"]  # Waiting, Generating
    assert GENERATED.fullmatch(lines[2].removeprefix("Reasoning: "))
    urls = re.fullmatch(r"Image URLs: \['(.+)'\]", lines[3])
    assert urls and urls.group(1).startswith(f"{phased.url}/images/") and len(lines) == 4


def test_the_updates_are_waiting_generating_generated_then_the_images(phased: Emulator) -> None:
    items = collect(model="Realistic tattoo", messages=MESSAGES, prompt="dragon", n=2)
    labels = [item.label for item in items if isinstance(item, Reasoning)]
    assert labels == ["Waiting", "Generating", "Generated"]
    assert [type(item) for item in items] == [Reasoning] * 3 + [ImageResponse]
    generated, images = items[2], items[3]
    assert isinstance(generated, Reasoning) and isinstance(images, ImageResponse)
    assert generated.status is not None
    assert re.fullmatch(r"2 image\(s\) in \d+\.\d\ds", generated.status)
    assert images.alt == "dragon" and len(images.images) == 2
    assert all(url.startswith(f"{phased.url}/images/") for url in images.images)
    assert images.get("record_id") == phased.app.last_record_id()


def test_the_seed_example_file_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "seed_example.py")], check=False,
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["Reasoning: None", "Reasoning: None"] and len(lines) == 4
    assert GENERATED.fullmatch(lines[2][len("Reasoning: "):])
    assert lines[3].startswith("Image URLs: ['http://127.0.0.1:")


# -- the class's surface -------------------------------------------------------------


def _shape(function: Any) -> list[tuple[str, str, Any]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(function).parameters.values()]


EMPTY = inspect.Parameter.empty


def test_the_classmethods_have_the_seeds_signatures() -> None:
    assert _shape(ARTA.get_auth_file) == []
    assert _shape(ARTA.create_token) == [
        ("path", "POSITIONAL_OR_KEYWORD", EMPTY), ("proxy", "POSITIONAL_OR_KEYWORD", None)]
    assert _shape(ARTA.refresh_token) == [
        ("refresh_token", "POSITIONAL_OR_KEYWORD", EMPTY),
        ("proxy", "POSITIONAL_OR_KEYWORD", None)]
    assert _shape(ARTA.read_and_refresh_token) == [("proxy", "POSITIONAL_OR_KEYWORD", None)]
    assert _shape(ARTA.create_async_generator) == [
        ("model", "POSITIONAL_OR_KEYWORD", EMPTY),
        ("messages", "POSITIONAL_OR_KEYWORD", EMPTY),
        ("proxy", "POSITIONAL_OR_KEYWORD", None),
        ("prompt", "POSITIONAL_OR_KEYWORD", None),
        ("negative_prompt", "POSITIONAL_OR_KEYWORD", "blurry, deformed hands, ugly"),
        ("n", "POSITIONAL_OR_KEYWORD", 1),
        ("guidance_scale", "POSITIONAL_OR_KEYWORD", 7),
        ("num_inference_steps", "POSITIONAL_OR_KEYWORD", 30),
        ("aspect_ratio", "POSITIONAL_OR_KEYWORD", "1:1"),
        ("seed", "POSITIONAL_OR_KEYWORD", None),
        ("kwargs", "VAR_KEYWORD", EMPTY),
    ]
    for name in ("get_auth_file", "create_token", "refresh_token", "read_and_refresh_token",
                 "create_async_generator"):
        assert isinstance(inspect.getattr_static(ARTA, name), classmethod), name
    assert inspect.iscoroutinefunction(ARTA.create_token)
    assert inspect.iscoroutinefunction(ARTA.refresh_token)
    assert inspect.iscoroutinefunction(ARTA.read_and_refresh_token)
    assert inspect.isasyncgenfunction(ARTA.create_async_generator)


def test_the_attributes_are_the_seeds() -> None:
    key = "AIzaSyB3-71wG0fIt0shj0ee4fvx1shcjJHGrrQ"
    assert ARTA.url == "https://ai-arta.com"
    assert ARTA.auth_url == ("https://www.googleapis.com/identitytoolkit/v3/relyingparty/"
                             f"signupNewUser?key={key}")
    assert ARTA.token_refresh_url == f"https://securetoken.googleapis.com/v1/token?key={key}"
    assert ARTA.image_generation_url == "https://img-gen-prod.ai-arta.com/api/v1/text2image"
    assert ARTA.status_check_url == \
        "https://img-gen-prod.ai-arta.com/api/v1/text2image/{record_id}/status"
    assert ARTA.working is True
    assert ARTA.default_model == ARTA.default_image_model == "Flux"


def test_the_aliases_are_the_seeds_snake_case_names() -> None:
    aliases = ARTA.model_aliases
    assert aliases["Flux"] == aliases["flux"] == "Flux"
    assert aliases["realistic_tattoo"] == "Realistic tattoo"
    assert aliases["sdxl_1_0"] == "SDXL 1.0"
    assert aliases["vincent_van_gogh"] == "Vincent Van Gogh"
    assert aliases["flux_black_ink"] == aliases["black_ink"] == "Black Ink"
    assert all("-" not in alias and " " not in alias for alias in aliases if alias != "Flux")
    assert set(aliases.values()) == set(arta.STYLES)
    # image_models (and models, the same list): every display name, then every alias.
    assert ARTA.models is ARTA.image_models
    assert ARTA.image_models[:len(arta.STYLES)] == list(arta.STYLES)
    assert set(ARTA.image_models) == set(arta.STYLES) | set(aliases)
    assert all(ARTA.get_model(name) in arta.STYLES for name in ARTA.models)


@pytest.mark.parametrize(("model", "style"), [
    ("Realistic tattoo", "Realistic tattoo"), ("realistic_tattoo", "Realistic tattoo"),
    ("REALISTIC TATTOO", "Realistic tattoo"), ("realistic-tattoo", "Realistic tattoo"),
    ("sdxl_1_0", "SDXL 1.0"), ("flux_black_ink", "Black Ink"), ("", "Flux"),
])
def test_a_model_is_a_display_name_or_an_alias_in_any_case(model: str, style: str) -> None:
    assert ARTA.get_model(model) == style


def test_an_alias_is_sent_as_the_display_name(service: Emulator,
                                              proxy: ForwardingProxy) -> None:
    collect(model="sdxl_1_0", messages=MESSAGES, proxy=proxy.url)
    assert submitted_form(proxy)["style"] == "SDXL 1.0"


def test_an_unknown_model_names_the_close_ones_before_any_request(service: Emulator) -> None:
    with pytest.raises(ModelNotFoundError, match="'Realistic tattoo'") as caught:
        collect(model="realistic tatoo", messages=MESSAGES)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, arta.ArtaError)
    with pytest.raises(ModelNotFoundError, match="not supported: 'dall-e-3'"):
        collect(model="dall-e-3", messages=MESSAGES)
    assert service.stats()["signups"] == service.stats()["submits"] == 0


def test_the_update_and_result_classes() -> None:
    waiting = Reasoning(label="Waiting")
    assert (waiting.token, waiting.label, waiting.status, waiting.is_thinking) == \
        (None, "Waiting", None, None)
    assert str(waiting) == "Waiting"
    assert str(Reasoning(label="Generated", status="1 image(s) in 2.00s")) == \
        "Generated: 1 image(s) in 2.00s"
    assert str(Reasoning("a token")) == "a token"
    assert waiting == Reasoning(label="Waiting") != Reasoning(label="Generating")
    assert repr(waiting) == "Reasoning(label='Waiting')"
    images = ImageResponse(images=["http://x/0.png", "http://x/1.png"], alt="a fox")
    assert images.images == images.get_list() == ["http://x/0.png", "http://x/1.png"]
    assert images.alt == "a fox" and images.options == {}
    assert str(images).splitlines()[0] == "[![a fox](http://x/0.png)](http://x/0.png)"
    assert ImageResponse("http://x/0.png", "one").images == ["http://x/0.png"]
    assert issubclass(ResponseError, arta.ArtaError)


# -- the prompt, the seed, the proxy --------------------------------------------------


def test_the_prompt_is_the_argument_else_the_last_user_message(service: Emulator) -> None:
    messages = [
        {"role": "system", "content": "You draw."},
        {"role": "user", "content": "a cat"},
        {"role": "assistant", "content": "here is a cat"},
        {"role": "user", "content": "a red dragon"},
        {"role": "assistant", "content": "drawing..."},
    ]
    assert image(collect(model="flux", messages=messages)).alt == "a red dragon"
    assert image(collect(model="flux", messages=messages, prompt="a fox")).alt == "a fox"
    parts = [{"role": "user", "content": [{"type": "text", "text": "a blue whale"}]}]
    assert image(collect(model="flux", messages=parts)).alt == "a blue whale"
    with pytest.raises(arta.errors.InvalidPromptError, match="role 'user'"):
        collect(model="flux", messages=[{"role": "system", "content": "You draw."}])


def test_a_seed_is_drawn_from_9999_to_99999999_when_none_is_given(
        service: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[tuple[int, int]] = []
    real = arta.provider.random.randint

    def randint(low: int, high: int) -> int:
        draws.append((low, high))
        return [low, high][len(draws) - 1]  # the ends of the range: the service takes both

    monkeypatch.setattr(arta.provider.random, "randint", randint)
    seeds = [image(collect(model="flux", messages=MESSAGES)).get("seed") for _ in range(2)]
    assert draws == [(9999, 99999999)] * 2 and seeds == [9999, 99999999]
    monkeypatch.setattr(arta.provider.random, "randint", real)
    assert image(collect(model="flux", messages=MESSAGES, seed=42)).get("seed") == 42


def test_the_proxy_carries_every_request(service: Emulator, tmp_path: Path,
                                         proxy: ForwardingProxy) -> None:
    items = collect(model="Realistic tattoo", messages=MESSAGES, prompt="dragon",
                    negative_prompt="fog", n=2, guidance_scale=9, num_inference_steps=20,
                    aspect_ratio="16:9", seed=123, proxy=proxy.url)
    generation_requests = len(proxy.forwarded)
    created = asyncio.run(ARTA.create_token(tmp_path / "t.json", proxy=proxy.url))
    asyncio.run(ARTA.refresh_token(created["refreshToken"], proxy=proxy.url))
    asyncio.run(ARTA.read_and_refresh_token(proxy=proxy.url))
    stats = service.stats()
    # Everything the emulator answered came through the proxy: the sign-up,
    # the submit, each poll; then the token calls (read_and_refresh_token
    # found the first sign-up's token fresh: no request).
    assert generation_requests == stats["signups"] - 1 + stats["submits"] + stats["polls"]
    assert len(proxy.forwarded) == sum(stats[k] for k in ("signups", "submits", "polls",
                                                          "refreshes"))
    assert proxy.paths()[:2] == ["/www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser",
                                 "/api/v1/text2image"]
    assert submitted_form(proxy) == {
        "prompt": "dragon", "negative_prompt": "fog", "style": "Realistic tattoo",
        "images_num": "2", "cfg_scale": "9", "steps": "20", "aspect_ratio": "16:9",
        "seed": "123"}
    assert len(image(items).images) == 2


# -- failures -------------------------------------------------------------------------


def test_a_failed_job_raises_response_error_with_its_record_id(service: Emulator) -> None:
    service.app.inject("submit", "fail")
    seen: list[str | None] = []

    async def main() -> None:
        async for item in ARTA.create_async_generator(model="flux", messages=MESSAGES):
            assert isinstance(item, Reasoning)
            seen.append(item.label)

    with pytest.raises(ResponseError, match="failed with status: FAILED") as caught:
        asyncio.run(main())
    record_id = service.app.last_record_id()
    assert record_id is not None and caught.value.record_id == record_id
    assert record_id in str(caught.value) and "GENERATION_FAILED" in str(caught.value)
    assert isinstance(caught.value, arta.ArtaError) and seen[0] == "Waiting"


def test_a_lost_status_check_raises_response_error_with_its_record_id(
        service: Emulator) -> None:
    async def main() -> None:
        async for item in ARTA.create_async_generator(model="flux", messages=MESSAGES):
            assert isinstance(item, Reasoning) and item.label == "Waiting"
            service.app.reset()  # the service forgets the job: polls answer 404

    with pytest.raises(ResponseError, match="Failed to check image generation status") as caught:
        asyncio.run(main())
    record_id = caught.value.record_id
    assert record_id is not None and record_id in str(caught.value)
    assert str(caught.value).count("(record_id ") == 1  # the resume hint, said once
    assert isinstance(caught.value.__cause__, arta.errors.ServiceError)


def test_a_submit_without_an_answer_raises_response_error(service: Emulator) -> None:
    service.app.inject("submit", "drop")  # the connection closes, no answer
    with pytest.raises(ResponseError, match="Failed to initiate image generation") as caught:
        collect(model="flux", messages=MESSAGES, seed=5)
    assert caught.value.record_id is None and "seed 5" in str(caught.value)
    assert isinstance(caught.value.__cause__, arta.SubmitOutcomeUnknown)


def test_leaving_early_stops_polling(service: Emulator) -> None:
    service.app.inject("submit", "stuck")

    async def main() -> bool:
        async for item in ARTA.create_async_generator(model="flux", messages=MESSAGES):
            if isinstance(item, Reasoning) and item.label == "Generating":
                break
        await asyncio.sleep(0.1)
        polls = service.stats()["polls"]
        await asyncio.sleep(0.4)
        return service.stats()["polls"] == polls

    assert asyncio.run(main())


# -- the token file ------------------------------------------------------------------


def test_get_auth_file_is_auth_arta_json_in_arta_home_made_if_missing(tmp_path: Path) -> None:
    path = ARTA.get_auth_file()
    assert path == tmp_path / "arta-home" / "auth_ARTA.json"  # conftest's ARTA_HOME
    assert path.parent.is_dir() and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not path.exists()


def test_create_token_signs_up_and_writes_the_file(service: Emulator, tmp_path: Path) -> None:
    path = tmp_path / "tokens" / "auth.json"
    data = asyncio.run(ARTA.create_token(path))
    assert {"idToken", "refreshToken", "expiresIn", "localId"} <= set(data)
    assert json.loads(path.read_text()) == data and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = asyncio.run(ARTA.create_token(path))  # "create": a new account each time
    assert again["localId"] != data["localId"] and service.stats()["signups"] == 2


def test_refresh_token_trades_a_refresh_token_for_a_new_pair(service: Emulator,
                                                             tmp_path: Path) -> None:
    data = asyncio.run(ARTA.create_token(tmp_path / "auth.json"))
    id_token, refresh_token = asyncio.run(ARTA.refresh_token(data["refreshToken"]))
    assert isinstance(id_token, str) and id_token != data["idToken"] and refresh_token
    assert service.stats()["refreshes"] == 1
    assert json.loads((tmp_path / "auth.json").read_text()) == data  # no file written
    with pytest.raises(ResponseError, match="refresh"):
        asyncio.run(ARTA.refresh_token("not-a-refresh-token"))


def test_read_and_refresh_token_shares_one_sign_up(service: Emulator) -> None:
    async def main() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(ARTA.read_and_refresh_token() for _ in range(8))))

    tokens = asyncio.run(main())
    assert service.stats()["signups"] == 1
    assert len({token["idToken"] for token in tokens}) == 1
    assert json.loads(ARTA.get_auth_file().read_text()) == tokens[0]
    with arta.Client(service.url) as client:  # the library shares the provider's token
        assert client.auth.token().id_token == tokens[0]["idToken"]


def test_read_and_refresh_token_refreshes_past_half_life(service: Emulator) -> None:
    service.app.set_token_lifetime(2)
    first = asyncio.run(ARTA.read_and_refresh_token())
    time.sleep(1.1)
    second = asyncio.run(ARTA.read_and_refresh_token())
    assert second["idToken"] != first["idToken"]
    assert service.stats()["signups"] == service.stats()["refreshes"] == 1


# -- where the calls go ------------------------------------------------------------------


def test_setting_the_url_attributes_redirects_the_calls(emulator: Emulator,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # No ARTA_ENDPOINT: only the class attributes say where the emulator is.
    key = "AIzaSyB3-71wG0fIt0shj0ee4fvx1shcjJHGrrQ"
    base = emulator.url
    monkeypatch.setattr(ARTA, "auth_url", f"{base}/www.googleapis.com/identitytoolkit/v3/"
                                          f"relyingparty/signupNewUser?key={key}")
    monkeypatch.setattr(ARTA, "token_refresh_url",
                        f"{base}/securetoken.googleapis.com/v1/token?key={key}")
    monkeypatch.setattr(ARTA, "image_generation_url", f"{base}/api/v1/text2image")
    monkeypatch.setattr(ARTA, "status_check_url", base + "/api/v1/text2image/{record_id}/status")
    monkeypatch.setattr(ARTA, "poll_policy", FAST_POLL)
    assert image(collect(model="flux", messages=MESSAGES)).images
    data = asyncio.run(ARTA.read_and_refresh_token())
    asyncio.run(ARTA.refresh_token(data["refreshToken"]))
    assert emulator.stats()["signups"] == emulator.stats()["refreshes"] == 1


def test_urls_left_at_their_defaults_follow_the_environment(
        emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # The image service by a changed attribute, sign-up by Firebase's variable.
    host = urlsplit(emulator.url).netloc
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", host)
    monkeypatch.setattr(ARTA, "image_generation_url", f"{emulator.url}/api/v1/text2image")
    monkeypatch.setattr(ARTA, "status_check_url",
                        emulator.url + "/api/v1/text2image/{record_id}/status")
    monkeypatch.setattr(ARTA, "poll_policy", FAST_POLL)
    assert image(collect(model="flux", messages=MESSAGES)).images
    assert emulator.stats()["signups"] == 1
