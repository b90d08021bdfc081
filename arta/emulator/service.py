"""The running emulator: an :class:`EmulatorApp` served on a port, in a thread or blocking."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from arta.emulator.app import EmulatorApp
from arta.emulator.faults import FaultPlan
from arta.emulator.server import EmulatorHTTPServer
from arta.emulator.timing import TimingModel

__all__ = ["Emulator"]


class Emulator:
    """The offline ARTA service (Firebase sign-up and refresh, text2image, images) on one port.

    Use it as a context manager, which serves on a background thread::

        with Emulator(queue_seconds=0.05, progress_seconds=0.1) as emu:
            os.environ["ARTA_ENDPOINT"] = emu.url
            ...

    or call :meth:`start` / :meth:`stop`, or :meth:`serve_forever` to block
    (as ``arta emulator`` does).

    Options:

    - ``host``, ``port``: where to listen; port 0 picks a free port, which
      :attr:`url` then names.
    - ``queue_seconds`` (default 1.0), ``progress_seconds`` (default 2.0):
      how long each job stays ``IN_QUEUE`` (a fixed delay, before waiting
      for a slot), then ``IN_PROGRESS``, before it is ``DONE``; a float, or
      a ``(min, max)`` range drawn per job from ``random.Random(seed)``, so
      runs repeat. ``progress_seconds=None`` uses the service-like timing
      model instead (8-20 s for common parameters).
    - ``timing`` (None): a :class:`~arta.emulator.timing.TimingModel`;
      giving one selects the model, with its constants.
    - ``capacity`` (None: unlimited): at most this many jobs IN_PROGRESS at
      once; the others wait IN_QUEUE, first submitted first served.
    - ``max_jobs_per_user`` (None: unlimited): a submit from an account
      that has this many unfinished jobs gets 429 with ``Retry-After``.
    - ``token_lifetime`` (3600): seconds an ID token lives.
    - ``signup_quota`` (None): sign-ups allowed per rolling hour, None for
      unlimited; past it sign-up answers ``TOO_MANY_ATTEMPTS_TRY_LATER``
      as Firebase does (its real quota is 100 per hour per IP).
    - ``accept_unsigned_tokens`` (True): also accept the unsigned tokens of
      Google's Firebase Auth Emulator.
    - ``long_side`` (512): pixels of the longer side of each image.
    - ``seed`` (0): seeds job durations and the seeds picked for requests
      that send none.
    - ``blur_words`` (``("nsfw",)``): a prompt containing one of these gets
      images flagged ``isBlur: true``.
    - ``faults`` (None): a :class:`~arta.emulator.faults.FaultPlan` or its
      spec, e.g. ``"submit:drop=0.05,status:503=0.1"``
      (:func:`~arta.emulator.faults.parse_faults` says what is allowed).
    - ``fault_seed`` (None): seeds the fault draws so that a run's faults
      repeat; None draws from the OS.
    - ``slow_seconds`` (35.0): how late a ``slow`` fault answers.
    - ``clock`` (``time.time``): the service's time source in Unix seconds;
      a test may pass a fake one and move it instead of sleeping.

    Test hooks live on :attr:`app` (:meth:`EmulatorApp.revoke_tokens`,
    :meth:`EmulatorApp.set_token_lifetime`, :meth:`EmulatorApp.reset`,
    :meth:`EmulatorApp.set_faults`, :meth:`EmulatorApp.inject`,
    :meth:`EmulatorApp.set_job_status`, :meth:`EmulatorApp.last_record_id`,
    :meth:`EmulatorApp.job_timeline`, :meth:`EmulatorApp.set_speed`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        queue_seconds: float | tuple[float, float] = 1.0,
        progress_seconds: float | tuple[float, float] | None = 2.0,
        timing: TimingModel | None = None,
        capacity: int | None = None,
        max_jobs_per_user: int | None = None,
        token_lifetime: int = 3600,
        signup_quota: int | None = None,
        accept_unsigned_tokens: bool = True,
        long_side: int = 512,
        seed: int | None = 0,
        blur_words: Sequence[str] = ("nsfw",),
        faults: FaultPlan | str | None = None,
        fault_seed: int | None = None,
        slow_seconds: float = 35.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self.port = port
        #: The service logic; call its test hooks directly.
        self.app = EmulatorApp(
            queue_seconds=queue_seconds,
            progress_seconds=progress_seconds,
            timing=timing,
            capacity=capacity,
            max_jobs_per_user=max_jobs_per_user,
            token_lifetime=token_lifetime,
            signup_quota=signup_quota,
            accept_unsigned_tokens=accept_unsigned_tokens,
            long_side=long_side,
            seed=seed,
            blur_words=blur_words,
            faults=faults,
            fault_seed=fault_seed,
            slow_seconds=slow_seconds,
            clock=clock,
        )
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"<Emulator {self._url or 'not started'}>"

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``"http://127.0.0.1:54321"`` (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("the emulator is not started: call start() or use `with`")
        return self._url

    def stats(self) -> dict[str, float]:
        """The counters, as ``GET {url}/emulator/stats`` answers them."""
        return self.app.stats()

    def fault_counts(self) -> dict[str, int]:
        """Faults injected so far, by ``"endpoint:fault"``: :meth:`EmulatorApp.fault_counts`."""
        return self.app.fault_counts()

    def _bind(self) -> EmulatorHTTPServer:
        if self._server is not None:
            raise RuntimeError("the emulator is already started")
        server = EmulatorHTTPServer((self.host, self.port), self.app)
        host, port = server.server_address[:2]
        if isinstance(host, bytes):
            host = host.decode()
        # A wildcard address is not somewhere a client can connect to.
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._url = f"http://{netloc}"
        self.app.base_url = self._url
        self._server = server
        return server

    def start(self) -> Emulator:
        """Bind and serve on a daemon thread; return self."""
        server = self._bind()
        self._thread = threading.Thread(
            target=server.serve_until_stopped,
            name=f"arta-emulator-{self._url}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self, on_ready: Callable[[Emulator], None] | None = None) -> None:
        """Bind and serve in this thread until Ctrl-C, then shut down cleanly.

        ``on_ready(self)`` runs once the port is bound, e.g. to print :attr:`url`.
        """
        server = self._bind()
        try:
            if on_ready is not None:
                on_ready(self)
            server.serve_until_stopped()
        except KeyboardInterrupt:
            pass
        finally:
            self._close()

    def stop(self) -> None:
        """Stop serving, close every connection and the port. Safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.stop_serving()
        if thread is not None:
            thread.join()
        self._close()

    def _close(self) -> None:
        server = self._server
        if server is not None:
            # After Ctrl-C in serve_forever() nothing has stopped the server
            # yet; a handler holding back a slow answer must wake up too.
            server.stop_serving()
            server.close_connections()
            server.server_close()
        self._server = None
        self._thread = None

    # typing.Self is Python 3.11+, and this package supports 3.9.
    def __enter__(self) -> Emulator:  # noqa: PYI034
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
