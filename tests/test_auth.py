"""The token: one sign-up shared through an atomic file, renewed at half-life, never leaked."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
from conftest import FAST_POLL

import arta
from arta.auth import Authenticator, FileTokenStore, Token
from arta.emulator import Emulator


def test_one_sign_up_is_reused_from_the_file(emulator: Emulator, tmp_path: Path) -> None:
    for _ in range(3):
        with arta.Client(emulator.url, home=tmp_path, poll_policy=FAST_POLL) as client:
            client.generate("a fox")
    assert emulator.stats()["signups"] == 1
    token = FileTokenStore(client.settings.token_file).load()
    assert token is not None and token.expires_at - token.obtained_at == pytest.approx(3600, abs=2)


def test_file_and_folder_modes(client: arta.Client) -> None:
    client.generate("a fox")
    path = client.settings.token_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


def test_past_half_life_the_token_is_refreshed_not_signed_up_again(emulator: Emulator,
                                                                     tmp_path: Path) -> None:
    now = [1_000_000_000.0]
    with arta.Client(emulator.url, home=tmp_path) as client:
        auth = Authenticator(client.settings, client.transport, client.token_store,
                             clock=lambda: now[0])
        first = auth.token()
        now[0] = first.obtained_at + 1000  # still in the first half: reused
        assert auth.token() == first
        now[0] = first.renew_at() + 1
        second = auth.token()
    assert second.id_token != first.id_token
    assert (emulator.stats()["signups"], emulator.stats()["refreshes"]) == (1, 1)


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"idToken": 5}', "\x00\x01garbage"])
def test_a_corrupt_or_foreign_file_is_replaced_with_a_warning(
    client: arta.Client, content: str, caplog: pytest.LogCaptureFixture,
) -> None:
    path = client.settings.token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="arta"):
        client.generate("a fox")
    assert "unusable" in caplog.text
    assert Token.from_json(json.loads(path.read_text())).id_token


def test_a_file_written_by_the_old_provider_is_read(emulator: Emulator, tmp_path: Path) -> None:
    with arta.Client(emulator.url, home=tmp_path / "a", poll_policy=FAST_POLL) as client:
        client.generate("a fox")
        fresh = json.loads(client.settings.token_file.read_text())
    old = {k: fresh[k] for k in ("idToken", "refreshToken", "expiresIn", "localId")}
    (tmp_path / "b").mkdir(mode=0o700)
    (tmp_path / "b" / client.settings.token_file.name).write_text(json.dumps(old))
    with arta.Client(emulator.url, home=tmp_path / "b", poll_policy=FAST_POLL) as client:
        client.generate("a fox")
    assert emulator.stats()["signups"] == 1  # dated by the JWT's exp, not by mtime


def test_a_rejected_token_is_replaced_once_transparently(emulator: Emulator,
                                                          client: arta.Client) -> None:
    client.generate("a fox")
    emulator.app.revoke_tokens()
    result = client.generate("a fox again")
    assert result.images
    stats = emulator.stats()
    assert stats["rejected_tokens"] == 1 and stats["refreshes"] == 1 and stats["signups"] == 1


def test_a_persistent_rejection_raises_auth_error(emulator: Emulator, tmp_path: Path) -> None:
    class RevokingStore(arta.auth.MemoryTokenStore):
        """Revokes every token as it is saved: the service never takes one."""

        def save(self, token: Token) -> None:
            super().save(token)
            emulator.app.revoke_tokens()

    with arta.Client(emulator.url, token_store=RevokingStore()) as client, \
            pytest.raises(arta.errors.AuthError, match="even with a fresh token"):
        client.generate("a fox")
    assert emulator.stats()["submits"] == 0


def test_secrets_never_reach_logs_reprs_or_errors(emulator: Emulator, client: arta.Client,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        generation = client.submit("a fox")
        generation.wait()
        emulator.app.revoke_tokens()
        client.generate("a second fox")
        with pytest.raises(arta.GenerationTimeout) as caught:
            client.submit("a third fox").wait(timeout=0.001)
    token = client.token_store.load()
    assert token is not None
    texts = [caplog.text, repr(token), repr(client), repr(client.token_store), repr(generation),
             str(caught.value), repr(caught.value), repr(generation.result())]
    for secret in (token.id_token, token.refresh_token, token.id_token.split(".")[2]):
        for text in texts:
            assert secret not in text
    assert "urllib3" in caplog.text or "arta" in caplog.text  # DEBUG logging did run


def test_store_lock_times_out_with_a_clear_error(tmp_path: Path) -> None:
    import filelock

    store = FileTokenStore(tmp_path / "auth_ARTA.json", lock_timeout=0.2)
    holder = filelock.FileLock(store.lock_path)
    with holder, pytest.raises(arta.errors.TokenStoreError, match="stayed taken"), store.lock():
        pass
    with store.lock():  # released: usable again
        assert store.load() is None
