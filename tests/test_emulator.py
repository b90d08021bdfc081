"""The offline emulator, spoken to the way real clients speak to the service: over loopback HTTP.

Each test is a request shaped like one that the Android app, the old async
provider or Google's Firebase tooling sends, then what it gets back.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from arta.emulator import Emulator, EmulatorApp, Request
from arta.emulator.forms import parse_form
from arta.emulator.scene import render_png
from arta.styles import ASPECT_RATIOS, aspect_ratio_size

KEY = "AIzaSyB3-71wG0fIt0shj0ee4fvx1shcjJHGrrQ"
SIGNUP = "/www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser"
REFRESH = "/securetoken.googleapis.com/v1/token"
TEXT2IMAGE = "/api/v1/text2image"

#: A submit exactly as the old async provider sent it: every value a str.
OLD_PROVIDER_FORM = {
    "prompt": "a red dragon over a castle",
    "negative_prompt": "blurry, deformed hands, ugly",
    "style": "Fantasy Art",
    "images_num": "2",
    "cfg_scale": "7",
    "steps": "30",
    "aspect_ratio": "1:1",
    "seed": "633479648",
}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """Jobs here take no time, so that images can be fetched at once."""
    with Emulator(queue_seconds=0, progress_seconds=0) as emulator:
        yield emulator


def signup(emu: Emulator, **kwargs: Any) -> requests.Response:
    kwargs.setdefault("json", {"clientType": "CLIENT_TYPE_ANDROID"})
    return requests.post(f"{emu.url}{SIGNUP}?key={KEY}", timeout=5, **kwargs)


def token(emu: Emulator) -> str:
    answer = signup(emu)
    assert answer.status_code == 200
    return str(answer.json()["idToken"])


def submit(emu: Emulator, id_token: str, **fields: str) -> requests.Response:
    form = {**OLD_PROVIDER_FORM, **fields}
    return requests.post(f"{emu.url}{TEXT2IMAGE}", data=form,
                         headers={"Authorization": id_token}, timeout=5)


def poll(emu: Emulator, id_token: str, record_id: str) -> requests.Response:
    return requests.get(f"{emu.url}{TEXT2IMAGE}/{record_id}/status",
                        headers={"Authorization": id_token}, timeout=5)


def done(emu: Emulator, id_token: str, **fields: str) -> dict[str, Any]:
    """Submit and poll until DONE (instant with this file's emulator)."""
    answer = submit(emu, id_token, **fields)
    assert answer.status_code == 200, answer.text
    record_id = answer.json()["record_id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = poll(emu, id_token, record_id).json()
        if status["status"] == "DONE":
            return dict(status)
        time.sleep(0.01)
    raise AssertionError("the job never finished")


def jwt_part(jwt: str, index: int) -> dict[str, Any]:
    segment = jwt.split(".")[index]
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


def unsigned_jwt(**claims: Any) -> str:
    """A token like Google's Firebase Auth Emulator mints: alg none, empty signature."""

    def encode(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()

    payload = {"iss": "https://securetoken.google.com/demo-arta", "aud": "demo-arta",
               "user_id": "u1", "sub": "u1", "iat": int(time.time()),
               "exp": int(time.time()) + 3600,
               "firebase": {"identities": {}, "sign_in_provider": "anonymous"}, **claims}
    return f"{encode({'alg': 'none', 'typ': 'JWT'})}.{encode(payload)}."


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking the signature and every CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


# -- sign-up and refresh -------------------------------------------------------


def test_signup_answers_firebase_shape_with_a_jwt_that_expires_in_an_hour(emu: Emulator) -> None:
    answer = signup(emu)

    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"kind", "idToken", "refreshToken", "expiresIn", "localId"}
    assert body["kind"] == "identitytoolkit#SignupNewUserResponse"
    assert body["expiresIn"] == "3600"
    assert jwt_part(body["idToken"], 0) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt_part(body["idToken"], 1)
    assert claims["user_id"] == claims["sub"] == body["localId"]
    assert claims["iss"] == "https://securetoken.google.com/" + claims["aud"]
    assert claims["firebase"]["sign_in_provider"] == "anonymous"
    assert claims["exp"] - claims["iat"] == 3600
    assert abs(claims["exp"] - (time.time() + 3600)) < 5


@pytest.mark.parametrize("body", [{}, {"data": b""}, {"data": b"{}"}], ids=["none", "empty", "{}"])
def test_signup_accepts_a_missing_or_empty_body(emu: Emulator, body: dict[str, Any]) -> None:
    answer = requests.post(f"{emu.url}{SIGNUP}?key={KEY}", timeout=5, **body)
    assert answer.status_code == 200
    assert answer.json()["idToken"].count(".") == 2


def test_token_lifetime_sets_expires_in_and_exp() -> None:
    with Emulator(token_lifetime=120) as emu:
        body = signup(emu).json()
    assert body["expiresIn"] == "120"
    claims = jwt_part(body["idToken"], 1)
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("query", ["", "?key=", "?other=1"])
def test_signup_without_api_key_is_api_key_invalid(emu: Emulator, query: str) -> None:
    answer = requests.post(f"{emu.url}{SIGNUP}{query}", json={}, timeout=5)

    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == 400
    assert error["message"] == "API_KEY_INVALID"
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["errors"][0]["domain"] == "global"
    assert set(error["errors"][0]) == {"message", "reason", "domain"}


def test_signup_quota_answers_too_many_attempts() -> None:
    with Emulator(signup_quota=2) as emu:
        assert [signup(emu).status_code for _ in range(2)] == [200, 200]
        refused = signup(emu)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "TOO_MANY_ATTEMPTS_TRY_LATER"
        assert emu.stats()["signups"] == 2


def test_refresh_gives_a_new_working_token_for_the_same_user(emu: Emulator) -> None:
    account = signup(emu).json()

    answer = requests.post(
        f"{emu.url}{REFRESH}?key={KEY}",
        data={"grant_type": "refresh_token", "refresh_token": account["refreshToken"]},
        timeout=5,
    )

    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "refresh_token",
                         "id_token", "user_id", "project_id"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == "3600"
    assert body["user_id"] == account["localId"]
    assert body["refresh_token"] == account["refreshToken"]
    assert body["id_token"] != account["idToken"]
    assert body["project_id"].isdigit()
    assert jwt_part(body["id_token"], 1)["user_id"] == account["localId"]
    assert submit(emu, body["id_token"]).status_code == 200
    assert emu.stats()["refreshes"] == 1


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"grant_type": "password", "refresh_token": "x"}, "INVALID_GRANT_TYPE"),
        ({"grant_type": "refresh_token"}, "MISSING_REFRESH_TOKEN"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, "INVALID_REFRESH_TOKEN"),
    ],
)
def test_refresh_errors(emu: Emulator, form: dict[str, str], message: str) -> None:
    answer = requests.post(f"{emu.url}{REFRESH}?key={KEY}", data=form, timeout=5)

    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == message
    assert emu.stats()["refreshes"] == 0


# -- submit ----------------------------------------------------------------------


def test_submit_like_the_old_provider_url_encoded(emu: Emulator) -> None:
    id_token = token(emu)

    answer = requests.post(f"{emu.url}{TEXT2IMAGE}", data=OLD_PROVIDER_FORM,
                           headers={"Authorization": id_token}, timeout=5)

    assert answer.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert answer.status_code == 200
    body = answer.json()
    assert body == {"record_id": body["record_id"], "status": "IN_QUEUE", "response": None,
                    "error_code": None, "error_details": None, "seed": 633479648}
    assert isinstance(body["record_id"], str) and body["record_id"]


def test_submit_like_the_android_app_multipart(emu: Emulator) -> None:
    id_token = token(emu)
    form = {**OLD_PROVIDER_FORM, "prompt": "un dragón rojo 🐉\nsobre un castillo"}

    answer = requests.post(f"{emu.url}{TEXT2IMAGE}",
                           files={k: (None, v) for k, v in form.items()},
                           headers={"Authorization": id_token}, timeout=5)

    assert answer.request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert answer.status_code == 200
    assert answer.json()["status"] == "IN_QUEUE"
    assert answer.json()["seed"] == 633479648


def test_submit_accepts_a_bearer_token_and_picks_a_seed_when_none_is_sent(emu: Emulator) -> None:
    answer = requests.post(f"{emu.url}{TEXT2IMAGE}", data={"prompt": "a fox"},
                           headers={"Authorization": f"Bearer {token(emu)}"}, timeout=5)

    assert answer.status_code == 200
    assert isinstance(answer.json()["seed"], int) and answer.json()["seed"] >= 0


def test_multipart_fields_keep_unicode_and_newlines() -> None:
    prepared = requests.Request("POST", "http://x/", files={
        "prompt": (None, "un dragón 🐉\r\nline 2"), "negative_prompt": (None, "")}).prepare()
    assert isinstance(prepared.body, bytes)

    fields = parse_form(prepared.headers["Content-Type"], prepared.body)

    assert fields == {"prompt": "un dragón 🐉\r\nline 2", "negative_prompt": ""}


# -- 401 -------------------------------------------------------------------------


def _expired_token(emu: Emulator) -> str:
    emu.app.set_token_lifetime(0)
    try:
        return token(emu)
    finally:
        emu.app.set_token_lifetime(3600)


def _revoked_token(emu: Emulator) -> str:
    stale = token(emu)
    emu.app.revoke_tokens()
    return stale


@pytest.mark.parametrize(
    ("make_header", "detail"),
    [
        (lambda emu: {}, "Not authenticated"),
        (lambda emu: {"Authorization": ""}, "Not authenticated"),
        (lambda emu: {"Authorization": "garbage"}, "Invalid token"),
        (lambda emu: {"Authorization": "a.b.c"}, "Invalid token"),
        (lambda emu: {"Authorization": token(emu)[:-4] + "AAAA"}, "Invalid token signature"),
        (lambda emu: {"Authorization": _expired_token(emu)}, "Token expired"),
        (lambda emu: {"Authorization": _revoked_token(emu)}, "Token has been revoked"),
        (lambda emu: {"Authorization": unsigned_jwt(exp=int(time.time()) - 10)}, "Token expired"),
        (lambda emu: {"Authorization": unsigned_jwt(iss="https://evil.example/")},
         "Invalid token issuer"),
    ],
    ids=["missing", "empty", "garbage", "not-json", "bad-signature", "expired", "revoked",
         "unsigned-expired", "unsigned-foreign"],
)
def test_bad_tokens_get_401(emu: Emulator, make_header: Any, detail: str) -> None:
    headers = make_header(emu)

    answers = [
        requests.post(f"{emu.url}{TEXT2IMAGE}", data=OLD_PROVIDER_FORM, headers=headers, timeout=5),
        requests.get(f"{emu.url}{TEXT2IMAGE}/whatever/status", headers=headers, timeout=5),
    ]

    for answer in answers:
        assert answer.status_code == 401
        assert answer.json() == {"detail": detail}
    assert emu.stats()["rejected_tokens"] == 2
    assert emu.stats()["submits"] == 0


def test_after_revocation_refresh_and_new_tokens_work(emu: Emulator) -> None:
    account = signup(emu).json()
    emu.app.revoke_tokens()
    assert submit(emu, account["idToken"]).status_code == 401

    refreshed = requests.post(
        f"{emu.url}{REFRESH}?key={KEY}",
        data={"grant_type": "refresh_token", "refresh_token": account["refreshToken"]},
        timeout=5,
    ).json()["id_token"]

    assert submit(emu, refreshed).status_code == 200
    assert submit(emu, token(emu)).status_code == 200


def test_unsigned_tokens_of_the_firebase_auth_emulator_are_accepted(emu: Emulator) -> None:
    assert submit(emu, unsigned_jwt()).status_code == 200


def test_unsigned_tokens_can_be_refused() -> None:
    with Emulator(accept_unsigned_tokens=False) as emu:
        assert submit(emu, unsigned_jwt()).status_code == 401


# -- 422 -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prompt", ""),
        ("prompt", "   "),
        ("style", "fantasy art"),
        ("style", "Not A Style"),
        ("images_num", "0"),
        ("images_num", "5"),
        ("images_num", "two"),
        ("images_num", "1.5"),
        ("cfg_scale", "0.5"),
        ("cfg_scale", "21"),
        ("cfg_scale", "nan"),
        ("cfg_scale", "high"),
        ("steps", "0"),
        ("steps", "151"),
        ("steps", ""),
        ("aspect_ratio", "5:4"),
        ("aspect_ratio", "16/9"),
        ("seed", "-1"),
        ("seed", "lucky"),
    ],
)
def test_each_invalid_field_gets_422(emu: Emulator, field: str, value: str) -> None:
    answer = submit(emu, token(emu), **{field: value})

    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", field]
    assert error["type"] == "value_error"
    assert error["msg"]
    assert emu.stats()["submits"] == 0


def test_a_missing_prompt_and_every_other_invalid_field_are_listed_together(emu: Emulator) -> None:
    form = {"style": "Nope", "images_num": "9", "aspect_ratio": "1:2"}

    answer = requests.post(f"{emu.url}{TEXT2IMAGE}", data=form,
                           headers={"Authorization": token(emu)}, timeout=5)

    assert answer.status_code == 422
    assert [e["loc"] for e in answer.json()["detail"]] == [
        ["body", "prompt"], ["body", "style"], ["body", "images_num"], ["body", "aspect_ratio"]]


def test_a_json_body_is_not_a_form(emu: Emulator) -> None:
    answer = requests.post(f"{emu.url}{TEXT2IMAGE}", json=OLD_PROVIDER_FORM,
                           headers={"Authorization": token(emu)}, timeout=5)

    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body"]


def test_a_style_in_the_wrong_case_gets_a_suggestion(emu: Emulator) -> None:
    answer = submit(emu, token(emu), style="fantasy art")

    assert "did you mean 'Fantasy Art'?" in answer.json()["detail"][0]["msg"]


# -- the job's timeline ------------------------------------------------------------


def test_a_job_moves_in_queue_then_in_progress_then_done() -> None:
    with Emulator(queue_seconds=0.15, progress_seconds=0.15) as emu:
        id_token = token(emu)
        record_id = submit(emu, id_token).json()["record_id"]
        seen: list[str] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status = poll(emu, id_token, record_id).json()
            if not seen or seen[-1] != status["status"]:
                seen.append(status["status"])
            if status["status"] == "DONE":
                break
            time.sleep(0.02)

    assert seen == ["IN_QUEUE", "IN_PROGRESS", "DONE"]
    assert status["record_id"] == record_id
    assert status["seed"] == 633479648
    assert status["error_code"] is None and status["error_details"] is None
    assert status["response"] == [
        {"name": f"{record_id}_{i}.png", "url": f"{emu.url}/images/{record_id}/{i}.png",
         "isBlur": False, "MIME": "image/png"}
        for i in range(2)
    ]


def test_the_timeline_follows_the_clock_exactly() -> None:
    now = [1000.0]
    app = EmulatorApp(queue_seconds=1.0, progress_seconds=2.0, clock=lambda: now[0],
                      base_url="http://emu")
    id_token = json.loads(app.handle(Request("POST", f"{SIGNUP}?key=k")).body)["idToken"]
    headers = {"Authorization": id_token,
               "Content-Type": "application/x-www-form-urlencoded"}
    answer = app.handle(Request("POST", TEXT2IMAGE, headers, b"prompt=a+fox&images_num=1"))
    record_id = answer.json()["record_id"]

    def status_at(t: float) -> str:
        now[0] = 1000.0 + t
        return str(app.handle(Request("GET", f"{TEXT2IMAGE}/{record_id}/status", headers))
                   .json()["status"])

    assert [status_at(t) for t in (0, 0.99, 1.0, 2.99, 3.0, 100)] == [
        "IN_QUEUE", "IN_QUEUE", "IN_PROGRESS", "IN_PROGRESS", "DONE", "DONE"]


def test_duration_ranges_are_drawn_repeatably_from_the_seed() -> None:
    def durations(seed: int) -> list[tuple[float, float]]:
        now = [0.0]
        app = EmulatorApp(queue_seconds=(1, 5), progress_seconds=(1, 5), seed=seed,
                          clock=lambda: now[0])
        id_token = app.handle(Request("POST", f"{SIGNUP}?key=k")).json()["idToken"]
        headers = {"Authorization": id_token,
                   "Content-Type": "application/x-www-form-urlencoded"}
        out = []
        for _ in range(3):
            record_id = app.handle(Request("POST", TEXT2IMAGE, headers, b"prompt=x")).json()[
                "record_id"]
            job = app._jobs[record_id]
            out.append((job.queue_seconds, job.progress_seconds))
        return out

    assert durations(1) == durations(1)
    assert durations(1) != durations(2)
    assert all(1 <= q <= 5 and 1 <= p <= 5 for q, p in durations(1))


# -- images ----------------------------------------------------------------------


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_images_are_real_pngs_of_the_requested_ratio(emu: Emulator, ratio: str) -> None:
    status = done(emu, token(emu), aspect_ratio=ratio, images_num="1")

    answer = requests.get(status["response"][0]["url"], timeout=5)

    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/png"
    assert int(answer.headers["Content-Length"]) == len(answer.content)
    chunks = png_chunks(answer.content)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, color_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (width, height) == aspect_ratio_size(ratio, 512)
    assert (depth, color_type) == (8, 2)
    assert len(zlib.decompress(chunks[1][1])) == height * (1 + 3 * width)


def test_same_inputs_give_the_same_bytes_and_another_seed_other_bytes(emu: Emulator) -> None:
    id_token = token(emu)
    first = done(emu, id_token, images_num="1")["response"][0]["url"]
    again = done(emu, id_token, images_num="1")["response"][0]["url"]
    other = done(emu, id_token, images_num="1", seed="633479649")["response"][0]["url"]

    first_bytes, again_bytes, other_bytes = (
        requests.get(url, timeout=5).content for url in (first, again, other))

    assert first != again
    assert first_bytes == again_bytes
    assert first_bytes != other_bytes
    # Not just the cache: a fresh render gives the very same file.
    uncached = render_png.__wrapped__("a red dragon over a castle", "Fantasy Art", 633479648,
                                      "1:1", 512, False)
    assert uncached == first_bytes


def test_each_image_of_a_job_differs(emu: Emulator) -> None:
    urls = [item["url"] for item in done(emu, token(emu), images_num="3")["response"]]

    assert len({requests.get(url, timeout=5).content for url in urls}) == 3


def test_a_prompt_with_a_blur_word_gets_blurred_images(emu: Emulator) -> None:
    status = done(emu, token(emu), prompt="something NSFW", images_num="1")

    assert status["response"][0]["isBlur"] is True
    assert requests.get(status["response"][0]["url"], timeout=5).status_code == 200


def test_long_side_sets_the_image_size() -> None:
    with Emulator(queue_seconds=0, progress_seconds=0, long_side=64) as emu:
        url = done(emu, token(emu), aspect_ratio="16:9")["response"][0]["url"]
        data = requests.get(url, timeout=5).content
    assert struct.unpack(">II", data[16:24]) == (64, 36)


def test_stats_count_every_kind_of_call(emu: Emulator) -> None:
    account = signup(emu).json()
    id_token = account["idToken"]
    requests.post(f"{emu.url}{REFRESH}?key={KEY}", timeout=5,
                  data={"grant_type": "refresh_token", "refresh_token": account["refreshToken"]})
    status = done(emu, id_token, images_num="1")
    submit(emu, id_token, images_num="1")       # every field, seed included, repeated
    submit(emu, id_token, images_num="1", seed="1")  # another seed: not a duplicate
    requests.get(status["response"][0]["url"], timeout=5)
    requests.get(f"{emu.url}{TEXT2IMAGE}/x/status", timeout=5)   # no token

    stats = emu.stats()
    assert stats["signups"] == 1
    assert stats["refreshes"] == 1
    assert stats["submits"] == 3
    assert stats["duplicate_submits"] == 1
    assert stats["polls"] >= 1
    assert stats["downloads"] == 1
    assert stats["faults"] == 0
    assert stats["rejected_tokens"] == 1
    assert requests.get(f"{emu.url}/emulator/stats", timeout=5).json() == stats


def test_reset_zeroes_counters_and_forgets_jobs_and_accounts(emu: Emulator) -> None:
    account = signup(emu).json()
    record_id = submit(emu, account["idToken"]).json()["record_id"]

    answer = requests.post(f"{emu.url}/emulator/reset", timeout=5)

    assert answer.status_code == 200
    assert set(answer.json().values()) == {0}
    assert set(emu.stats().values()) == {0}
    assert poll(emu, account["idToken"], record_id).status_code == 404
    refresh = requests.post(f"{emu.url}{REFRESH}?key={KEY}", timeout=5, data={
        "grant_type": "refresh_token", "refresh_token": account["refreshToken"]})
    assert refresh.json()["error"]["message"] == "INVALID_REFRESH_TOKEN"


def test_jobs_are_visible_to_any_valid_token(emu: Emulator) -> None:
    record_id = submit(emu, token(emu)).json()["record_id"]

    assert poll(emu, token(emu), record_id).status_code == 200


def test_not_found(emu: Emulator) -> None:
    id_token = token(emu)
    url = done(emu, id_token, images_num="1")["response"][0]["url"]

    assert poll(emu, id_token, "no-such-record").status_code == 404
    assert poll(emu, id_token, "no-such-record").json() == {"detail": "Record not found"}
    for path in ("/images/no-such-record/0.png", "/nothing/here", "/api/v1/text2image/x"):
        answer = requests.get(f"{emu.url}{path}", timeout=5)
        assert answer.status_code == 404
        assert "detail" in answer.json()
    assert requests.get(url.replace("/0.png", "/1.png"), timeout=5).status_code == 404


def test_images_are_not_there_before_the_job_is_done() -> None:
    with Emulator(queue_seconds=60) as emu:
        record_id = submit(emu, token(emu)).json()["record_id"]
        answer = requests.get(f"{emu.url}/images/{record_id}/0.png", timeout=5)
    assert answer.status_code == 404


def test_a_wrong_method_gets_405(emu: Emulator) -> None:
    answer = requests.get(f"{emu.url}{SIGNUP}?key={KEY}", timeout=5)

    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"


# -- the server itself ---------------------------------------------------------------


def test_the_url_names_the_bound_port_and_stop_is_idempotent() -> None:
    emu = Emulator()
    with pytest.raises(RuntimeError):
        _ = emu.url
    assert emu.start() is emu
    try:
        host, port = emu.url.removeprefix("http://").split(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert not emu.url.endswith("/")
        assert requests.get(f"{emu.url}/emulator/stats", timeout=5).status_code == 200
    finally:
        emu.stop()
        emu.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{emu.url}/emulator/stats", timeout=5)


def test_one_keep_alive_connection_serves_many_requests(emu: Emulator) -> None:
    with requests.Session() as session:
        answers = [session.get(f"{emu.url}/emulator/stats", timeout=5) for _ in range(5)]
        connection_headers = [a.headers.get("Connection", "") for a in answers]

    assert all(a.status_code == 200 for a in answers)
    assert all("Content-Length" in a.headers for a in answers)
    assert "close" not in connection_headers


def test_a_chunked_body_is_read(emu: Emulator) -> None:
    body = "&".join(f"{k}={v}" for k, v in OLD_PROVIDER_FORM.items()).replace(" ", "+").encode()
    answer = requests.post(
        f"{emu.url}{TEXT2IMAGE}", data=iter([body[:10], body[10:]]),
        headers={"Authorization": token(emu),
                 "Content-Type": "application/x-www-form-urlencoded"},
        timeout=5,
    )

    assert answer.request.headers.get("Transfer-Encoding") == "chunked"
    assert answer.status_code == 200
