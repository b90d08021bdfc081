"""Issue 11, the local side: token store, settings, file names, downloads, logs.

The attacks a server can make are in ``test_hostile.py``; here are the
faults of the machine itself (permissions, leftovers, a folder in the way, a
corrupt token file, an endpoint switched in one home) and what the client
must do about each.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAST_POLL
from hostile_server import HostileServer

import arta
from arta import protocol
from arta.auth import Authenticator, FileTokenStore, MemoryTokenStore, Token
from arta.cli import main as cli_main
from arta.config import API_KEY, Settings
from arta.emulator import Emulator
from arta.images import blocked_host as _blocked_host
from arta.redact import install_log_redaction, redact
from arta.result import MAX_DOWNLOAD_THREADS
from arta.transport import RequestsTransport, Response

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def _images(server: HostileServer, mode: str, count: int) -> tuple[arta.Image, ...]:
    return tuple(arta.Image(f"{server.url}/{mode}/img/{i}.png", "", "image/png", False)
                 for i in range(count))


# -- the token file (items 7, 8, 14, 15, and one file per auth endpoint) --------------


@pytest.mark.parametrize("content", [b"\xff\xfe{not utf-8", b"[" * 100_000 + b"]" * 100_000,
                                     b'{"idToken": "a", "refreshToken": "b", "expiresAt": 1e999}'])
def test_a_corrupt_token_file_counts_as_no_token(emulator: Emulator, tmp_path: Path,
                                                 content: bytes) -> None:
    with arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL) as client:
        client.settings.token_file.write_bytes(content)
        client.token_store.lock  # noqa: B018 - the store exists; the file is the fault
        assert client.token_store.load() is None
        client.generate("a fox")
    assert emulator.stats()["signups"] == 1
    assert Token.from_json(json.loads(client.settings.token_file.read_text()))


def test_a_world_readable_token_file_is_made_0600_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FileTokenStore(tmp_path / "auth_ARTA.json")
    store.save(Token("id-token-value", "refresh", 1.0, 1e12))
    os.chmod(store.path, 0o644)
    with caplog.at_level(logging.WARNING, logger="arta.auth"):
        assert store.load() is not None
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "made it 0600" in caplog.text


def test_folders_arta_makes_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = FileTokenStore(tmp_path / "a" / "b" / "c" / "auth_ARTA.json")
        store.save(Token("id-token-value", "refresh", 1.0, 1e12))
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_stale_temp_copies_go_at_the_next_save_and_all_go_with_token_clear(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ARTA_HOME", str(tmp_path))
    store = FileTokenStore(Settings.resolve().token_file)
    store.save(Token("id-token-value", "refresh", 1.0, 1e12))
    stale, fresh = tmp_path / ".auth_ARTA.old.tmp", tmp_path / ".auth_ARTA.new.tmp"
    for temp in (stale, fresh):
        temp.write_text('{"idToken": "a copy"}')
    os.utime(stale, (time.time() - 120, time.time() - 120))
    store.save(Token("id-token-value", "refresh", 1.0, 1e12))
    assert not stale.exists() and fresh.exists()  # a fresh one may be another save's
    assert cli_main(["token", "--clear"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auth_ARTA.json.lock"]


def test_switching_the_endpoint_never_clobbers_the_real_token(emulator: Emulator,
                                                               tmp_path: Path) -> None:
    real = Settings.resolve(home=tmp_path, env={}).token_file
    assert real.name == "auth_ARTA.json"  # the old provider's name, for the real service
    FileTokenStore(real).save(Token("the-real-id-token", "real-refresh", time.time(), 1e12))
    before = real.read_bytes()
    with arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL) as client:
        client.generate("a fox")
        assert client.settings.token_file != real
        assert client.token_store.load().id_token != "the-real-id-token"  # type: ignore[union-attr]
    assert real.read_bytes() == before and emulator.stats()["signups"] == 1


# -- renewals (items 12, 19) -----------------------------------------------------------


def _jwt(exp: float, iat: float) -> str:
    import base64

    def part(data: dict[str, float]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{part({'alg': 1})}.{part({'exp': exp, 'iat': iat})}.sig"


def test_a_clock_ahead_of_the_server_still_sees_a_new_token_as_fresh() -> None:
    now = time.time() + 7200  # this machine's clock, two hours ahead
    server_now = now - 7200
    grant = protocol.TokenGrant(_jwt(server_now + 3600, server_now), "refresh", 3600.0, "u")
    token = Token.from_grant(grant, now)
    assert token.fresh(now) and token.expires_at == pytest.approx(now + 3600)


def test_futile_renewals_are_throttled_to_one_a_minute(hostile: HostileServer,
                                                       tmp_path: Path) -> None:
    # Sign-up and refresh both give tokens with a lifetime of 0: every poll would renew.
    settings = Settings.resolve(f"{hostile.url}/expires-zero", tmp_path, env={})
    now = [1000.0]
    auth = Authenticator(settings, RequestsTransport(), MemoryTokenStore(), clock=lambda: now[0])
    for _ in range(10):
        auth.token()
        now[0] += 1
    counts = hostile.counts["expires-zero"]
    assert counts["signup"] + counts["refresh"] == 1
    now[0] += 61
    auth.token()
    assert counts["signup"] + counts["refresh"] == 2  # a minute later: one more try


def test_a_folder_at_the_token_path_fails_before_any_sign_up(emulator: Emulator,
                                                             tmp_path: Path) -> None:
    with arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL) as client:
        client.settings.token_file.mkdir(parents=True)
        with pytest.raises(arta.ConfigurationError, match="a folder sits at the token file"):
            client.generate("a fox")
    assert emulator.stats()["signups"] == 0 and emulator.stats()["submits"] == 0


def test_a_token_that_cannot_be_stored_is_kept_for_the_process(emulator: Emulator,
                                                               tmp_path: Path) -> None:
    class ReadOnlyStore(FileTokenStore):
        def save(self, token: Token) -> None:
            raise OSError(30, "Read-only file system")

    store = ReadOnlyStore(tmp_path / "auth_ARTA.json")
    with arta.Client(emulator.url, token_store=store, poll_policy=FAST_POLL) as client:
        for _ in range(3):
            client.generate("a fox")
    assert emulator.stats()["signups"] == 1


# -- ARTA_HOME (items 17, 20) ----------------------------------------------------------


def test_arta_home_being_a_file_says_so(emulator: Emulator, tmp_path: Path) -> None:
    (tmp_path / "home").write_text("not a folder")
    with arta.Client(emulator.url, home=tmp_path / "home") as client, \
            pytest.raises(arta.ConfigurationError, match=r"is not a folder"):
        client.submit("a fox")
    assert emulator.stats()["signups"] == 0


def test_a_folder_at_the_lock_path_says_so(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "auth_ARTA.json")
    store.lock_path.mkdir()
    with pytest.raises(arta.ConfigurationError, match="lock file path"), store.lock():
        pass


def test_a_loose_home_warns_and_one_writable_by_others_and_not_ours_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    home = tmp_path / "loose"
    home.mkdir()
    os.chmod(home, 0o755)
    with caplog.at_level(logging.WARNING, logger="arta.auth"):
        FileTokenStore(home / "auth_ARTA.json").save(Token("id-token-value", "r", 1.0, 1e12))
    assert "chmod 700" in caplog.text
    if os.getuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 12345, 12345)
    os.chmod(shared, 0o777)
    with pytest.raises(arta.ConfigurationError, match="writable by other users"):
        FileTokenStore(shared / "auth_ARTA.json").save(Token("id-token-value", "r", 1.0, 1e12))


def test_a_world_writable_sticky_home_like_tmp_is_refused_saying_why(tmp_path: Path) -> None:
    shared = tmp_path / "like-tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # ours, sticky: others still create files in it before we do
    with pytest.raises(arta.ConfigurationError, match="writable by other users .every user: mode 1777"):
        FileTokenStore(shared / "auth_ARTA.json").save(Token("id-token-value", "r", 1.0, 1e12))
    assert not (shared / "auth_ARTA.json").exists()


@pytest.mark.parametrize(("variable", "value"), [
    ("ARTA_ENDPOINT", "garbage"), ("ARTA_ENDPOINT", "http://[::1"),
    ("ARTA_ENDPOINT", "http://127.0.0.1:99999"), ("ARTA_ENDPOINT", "http://127.0.0.1:1/?x=1"),
    ("ARTA_ENDPOINT", "http://127.0.0.1:1/#frag"),
    ("FIREBASE_AUTH_EMULATOR_HOST", "bad host"),
])
def test_a_bad_setting_is_a_configuration_error_naming_the_variable(
        variable: str, value: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(arta.ConfigurationError, match=variable):
        Settings.resolve()
    assert cli_main(["generate", "a fox"]) == 2  # usage, not a service failure
    assert variable in capsys.readouterr().err


def test_a_prompt_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(arta.errors.InvalidPromptError, match="surrogate"):
        arta.GenerationParams.create("a fox \ud800")


# -- secrets and escapes (items 16, 22, 23) -------------------------------------------


def test_the_api_key_is_redacted_in_urllib3_debug_lines(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "arta.cli", "generate", "a fox", "-vv", "--emulator",
         "--poll-interval", "0.05", "-o", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "signupNewUser?key=REDACTED" in done.stderr  # urllib3's own DEBUG line
    assert API_KEY not in done.stderr


def test_the_library_helper_redacts_every_handler(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("urllib3.connectionpool").debug(
            '"POST /signupNewUser?key=%s HTTP/1.1" 200', API_KEY)
    assert "key=REDACTED" in caplog.text and API_KEY not in caplog.text


def test_redact_covers_urls_tokens_and_given_secrets() -> None:
    text = redact("http://u:pw-1234@h/x?key=abc&b=1 eyJhbGciOi.eyJleHAiOjF9.sig 'a\\nsecret'",
                  secrets=["a\nsecret"])
    assert "pw-1234" not in text and "abc" not in text and "eyJ" not in text
    assert "secret" not in text and "b=1" in text


def test_fastapi_detail_with_terminal_escapes_is_printed_plain() -> None:
    body = json.dumps({"detail": [{"loc": ["body", "prompt\x1b]0;x\x07"],
                                   "msg": "\x1b[2Jbad\r"}]}).encode()
    with pytest.raises(arta.errors.RejectedError) as caught:
        protocol.parse_job(Response(422, {}, content=body), "submit")
    assert "prompt" in str(caught.value) and "bad" in str(caught.value)
    assert not any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in str(caught.value))


# -- downloads (items 6, 11, 13, 18, 21, 28) ------------------------------------------


def test_downloads_run_on_a_bounded_pool(hostile: HostileServer, tmp_path: Path) -> None:
    result = arta.Result("job-pool", _images(hostile, "fast-image", 40), seed=1)
    assert len(result.save(tmp_path)) == 40
    assert hostile.most_active["image"] <= MAX_DOWNLOAD_THREADS


def test_a_declared_size_over_the_cap_is_refused_before_reading(hostile: HostileServer,
                                                                tmp_path: Path) -> None:
    result = arta.Result("job-big", _images(hostile, "announced-huge", 1), seed=1)
    with pytest.raises(arta.errors.DownloadError, match="announced as 1000000000000 bytes"):
        result.save(tmp_path)
    assert hostile.counts["announced-huge"]["image"] == 1  # not retried


def test_stale_part_files_are_cleaned_at_the_next_save(hostile: HostileServer,
                                                       tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".arta-dead.part", tmp_path / ".arta-live.part"
    for part in (stale, fresh):
        part.write_bytes(b"half an image")
    os.utime(stale, (time.time() - 120, time.time() - 120))
    arta.Result("job-parts", _images(hostile, "fast-image", 1), seed=1).save(tmp_path)
    assert not stale.exists() and fresh.exists()


@pytest.mark.skipif(os.name == "nt", reason="Windows has no flock: the sweep goes by age there")
def test_a_sweep_takes_a_killed_writers_temp_file_and_never_a_live_ones(tmp_path: Path) -> None:
    from arta.atomic import remove_stale, replacing

    killed = tmp_path / ".x-killed.tmp"
    killed.write_bytes(b"half")  # nobody holds it: its writer is gone
    target = tmp_path / "x.json"
    with replacing(target, prefix=".x-", suffix=".tmp") as file:
        file.write(b"{}")
        remove_stale(tmp_path, ".x-*.tmp", older_than=0.0)
        living = [p.name for p in tmp_path.glob(".x-*.tmp")]
    assert living and killed.name not in living  # the live writer's survived, the other went
    assert target.read_bytes() == b"{}" and not list(tmp_path.glob(".x-*.tmp"))


def test_a_done_job_without_images_is_a_protocol_error(tmp_path: Path) -> None:
    with pytest.raises(arta.errors.ProtocolError, match="listed no images") as caught:
        arta.Result("job-empty", ()).save(tmp_path)
    assert caught.value.record_id == "job-empty"


def test_metadata_addresses_are_allowed_only_for_an_endpoint_on_one() -> None:
    url = "http://169.254.169.254/latest/x.png"
    assert _blocked_host(url, None) and _blocked_host(url, "http://127.0.0.1:8765")
    assert _blocked_host(url, "http://169.254.10.10:8765") is None
    assert _blocked_host("http://[::ffff:169.254.169.254]/x", None)
    assert _blocked_host("https://cdn.example/x.png", None) is None


@pytest.mark.parametrize("host", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376",
                                  "169.254.43518", "[::ffff:a9fe:a9fe]"])
def test_every_spelling_of_the_metadata_address_is_blocked(host: str) -> None:
    assert _blocked_host(f"http://{host}/latest/x.png", None)  # resolved numerically: no DNS


@pytest.mark.parametrize("host", ["169.254.169.254", "0xa9fea9fe", "metadata.google.internal"])
def test_reading_or_previewing_an_image_refuses_a_metadata_address_as_saving_does(
        host: str) -> None:
    image = arta.Image(f"http://{host}/latest/meta-data.png", "x.png", "image/png", False)
    with pytest.raises(arta.errors.DownloadError, match="not fetched"):
        image.read()
    with pytest.raises(arta.errors.DownloadError, match="not fetched"):
        arta.Result("job-meta", (image,), seed=1).read()
    assert "not fetched" in arta.Result("job-meta", (image,), seed=1)._repr_html_()


def test_file_names_stay_unique_for_long_ids_and_templates_without_index() -> None:
    common = "r" * 130
    one = arta.Result(common + "-one", (arta.Image("http://h/1", "", "image/png", False),), 7)
    two = arta.Result(common + "-two", (arta.Image("http://h/1", "", "image/png", False),), 7)
    assert one.filename(0) != two.filename(0)
    assert one.filename(0).endswith("-0-s7.png") and len(one.filename(0)) < 200
    pair = arta.Result("job", (arta.Image("http://h/1", "", "image/png", False),) * 2, 7)
    assert len({path.name for path in pair._paths(Path("."), "{record_id}")}) == 2
    with pytest.raises(arta.InvalidInputError, match="bad file name template"):
        pair.filename(0, "{nope}")


CTRL_C_CHILD = textwrap.dedent("""
    import json, sys, time, arta
    url, folder = sys.argv[1], sys.argv[2]
    result = arta.Result("job-ctrl-c", (arta.Image(url, "", "image/png", False),), seed=1)
    print("started", flush=True)
    try:
        result.save(folder)
    except KeyboardInterrupt:
        print(json.dumps({"interrupted_at": time.time()}), flush=True)
""")


def test_ctrl_c_during_a_download_returns_at_once_and_leaves_no_temp_file(
        hostile: HostileServer, tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_CHILD, f"{hostile.url}/slow-image/img/0.png",
         str(tmp_path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".arta-*.part")) and time.monotonic() < deadline:
        time.sleep(0.02)  # the download is under way once its temp file exists
    assert list(tmp_path.glob(".arta-*.part")), "the download never started"
    sent = time.time()
    child.send_signal(signal.SIGINT)
    line = child.stdout.readline()
    child.wait(timeout=60)
    assert json.loads(line)["interrupted_at"] - sent < 5  # not the 60 s the image takes
    assert list(tmp_path.iterdir()) == []  # no temp file, no half image
