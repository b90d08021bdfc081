"""An offline emulator of the whole ARTA service, for tests and demos.

It speaks the service's wire protocol on one local port: Firebase anonymous
sign-up and token refresh, text2image submit and status polling with jobs
that move ``IN_QUEUE`` -> ``IN_PROGRESS`` -> ``DONE`` on a timer, and real
PNG images (small generated landscapes, the same bytes for the same prompt,
style, seed and aspect ratio). It needs nothing but the standard library.

Use it in your own tests with a context manager and point the client at it
with ``ARTA_ENDPOINT``::

    import arta
    from arta.emulator import Emulator

    def test_my_pipeline(monkeypatch, tmp_path):
        with Emulator(queue_seconds=0.05, progress_seconds=0.1) as emu:
            monkeypatch.setenv("ARTA_ENDPOINT", emu.url)
            result = arta.generate("a red dragon", style="Fantasy Art")
            result.save(tmp_path)
            assert emu.stats()["signups"] == 1

or, as a pytest fixture shared by a whole session::

    @pytest.fixture(scope="session")
    def arta_emulator():
        with Emulator(queue_seconds=0, progress_seconds=0) as emu:
            yield emu

    @pytest.fixture
    def emu(arta_emulator):
        arta_emulator.app.reset()        # zero counters, forget jobs
        return arta_emulator

From a shell, ``arta emulator --port 8765`` serves it until Ctrl-C.

What a test can check or provoke:

- ``emu.stats()`` (also ``GET {url}/emulator/stats``): ``signups``,
  ``refreshes``, ``submits``, ``duplicate_submits`` (a submit whose fields,
  seed included, repeat an earlier one), ``polls``, ``downloads``,
  ``faults``, ``rejected_tokens`` (401s answered). ``POST
  {url}/emulator/reset`` or ``emu.app.reset()`` zeroes them and forgets
  accounts and jobs.
- ``emu.app.revoke_tokens()``: every ID token issued so far now gets 401
  (refresh tokens still work), to test a client's 401 recovery.
- ``emu.app.set_token_lifetime(seconds)``: tokens issued from then on
  expire after ``seconds`` (0 issues already-expired ones).
- ``Emulator(signup_quota=N)``: the N+1th sign-up within an hour gets
  Firebase's ``TOO_MANY_ATTEMPTS_TRY_LATER``.
- A prompt containing a ``blur_words`` word (``"nsfw"``) gets images
  flagged ``isBlur: true``.
- Tokens from Google's Firebase Auth Emulator (unsigned, ``alg: none``)
  are accepted unless ``accept_unsigned_tokens=False``.

The service logic, :class:`EmulatorApp`, opens no socket: its
``handle(Request) -> Response`` can be called in-process.
"""

from arta.emulator.app import STAT_NAMES, EmulatorApp
from arta.emulator.messages import Request, Response
from arta.emulator.service import Emulator

__all__ = ["STAT_NAMES", "Emulator", "EmulatorApp", "Request", "Response"]
