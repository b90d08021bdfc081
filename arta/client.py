"""``Client``: wires settings, a transport, a token store and a poll loop into submit/resume/generate/map."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sized
from typing import TYPE_CHECKING, Any, Callable, TypedDict, TypeVar, Union

from arta import protocol
from arta.auth import Authenticator, FileTokenStore, Token, TokenStore
from arta.config import Settings
from arta.engine.jobs import Job, Outcome
from arta.engine.mapping import map_outcomes
from arta.engine.run import JobRun
from arta.engine.window import AdaptiveWindow
from arta.errors import (
    AuthError,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    GenerationInterrupted,
    InvalidInputError,
    NoResponseError,
    ProtocolError,
    ServiceError,
    SubmitInterrupted,
    SubmitOutcomeUnknown,
)
from arta.generation import Generation, OnChange
from arta.loop import PollLoop
from arta.params import GenerationOptions, GenerationParams, shows_generation_options
from arta.polling.learned import default_poll_policy
from arta.polling.policy import PollPlanner, check_timeout, check_wait_options
from arta.progress import ProgressDisplay, progress_display
from arta.redact import redact
from arta.result import MAX_DOWNLOAD_THREADS, Result
from arta.retry import RetryPolicy, surely_not_taken
from arta.transport import (
    DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
    Request,
    RequestsTransport,
    Response,
    Timeout,
    Transport,
)
from arta.transport.timeouts import TimeoutTransport

if TYPE_CHECKING:  # typing.Self and Unpack are newer than 3.9; only the type checker needs them
    from collections.abc import Iterator

    from typing_extensions import Self, Unpack

__all__ = ["Client", "ClientOptions", "ConnectionOptions", "split_options"]

log = logging.getLogger(__name__)

T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]


class ConnectionOptions(TypedDict, total=False):
    """The keywords of :class:`Client` that say how it connects (all but the waits' defaults)."""

    endpoint: str | None
    home: PathLike | None
    transport: Transport | None
    token_store: TokenStore | None
    retry_policy: RetryPolicy | None
    request_timeout: Timeout
    api_key: str | None
    auth_endpoint: str | None
    settings: Settings | None
    pool_size: int


class ClientOptions(ConnectionOptions, total=False):
    """All the keywords of :class:`Client`, for calls that make a client of their own."""

    poll_policy: PollPlanner | None
    timeout: float | None


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keywords into a generation's (``style``, ``n``, ...) and a client's (the rest)."""
    params = {k: v for k, v in options.items() if k in GenerationOptions.__annotations__}
    return params, {k: v for k, v in options.items() if k not in params}


def _check_request_timeout(value: object) -> Timeout:
    parts = value if isinstance(value, tuple) else (value,)
    if not 1 <= len(parts) <= 2 or not all(
            not isinstance(p, bool) and isinstance(p, (int, float)) and 0 < p < float("inf")
            for p in parts):
        raise ConfigurationError(
            "request_timeout must be seconds > 0, or a (connect, read) pair of them, "
            f"not {value!r}")
    return value  # type: ignore[return-value]


class Client:
    """A client of the ARTA service: one transport, one shared token, one poll loop.

    Every argument is optional: ``endpoint`` (else ``ARTA_ENDPOINT``, else
    the real service), ``home`` (else ``ARTA_HOME``, else ``~/.cache/arta``),
    ``transport`` (else a pooled :class:`~arta.transport.RequestsTransport`),
    ``token_store`` (else the file-locked ``auth_ARTA.json`` in ``home``,
    shared with every other process), ``poll_policy`` and ``timeout`` (the
    default bound, in seconds, of every wait), ``retry_policy`` (how
    transient failures are retried), ``request_timeout`` (``(connect,
    read)`` seconds of one request). ``settings`` replaces ``endpoint``,
    ``home``, ``api_key`` and ``auth_endpoint`` with a ready
    :class:`~arta.config.Settings`. ``pool_size`` is the most I/O threads of
    its poll loop (added as calls wait on the network) (a client that makes its own transport keeps twice as many
    connections open, plus room for downloads).

    A client is thread-safe. Every job it waits on is an entry in its poll
    loop (one scheduler thread, at most ``pool_size`` I/O threads, started on
    first use); close it (or use ``with``) to stop them and release its
    connections.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        home: PathLike | None = None,
        transport: Transport | None = None,
        token_store: TokenStore | None = None,
        poll_policy: PollPlanner | None = None,
        timeout: float | None = None,
        retry_policy: RetryPolicy | None = None,
        request_timeout: Timeout = DEFAULT_TIMEOUT,
        api_key: str | None = None,
        auth_endpoint: str | None = None,
        settings: Settings | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(f"pool_size must be an int of at least 1, not {pool_size!r}")
        check_wait_options(timeout, None, poll_policy)
        self.settings = settings or Settings.resolve(endpoint, home, api_key, auth_endpoint)
        self.request_timeout = _check_request_timeout(request_timeout)
        self._owns_transport = transport is None
        #: Every request goes through this, with the client's timeouts.
        self.transport: Transport = TimeoutTransport(
            transport or RequestsTransport(pool_size=_connections(pool_size)),
            self.request_timeout)
        self.token_store: TokenStore = token_store or FileTokenStore(self.settings.token_file)
        self.poll_policy: PollPlanner = poll_policy or default_poll_policy(self.settings)
        self.retry_policy = retry_policy or RetryPolicy()
        self.timeout = check_timeout(timeout)
        self.pool_size = pool_size
        self.auth = Authenticator(self.settings, self.transport, self.token_store,
                                  retry_policy=self.retry_policy)
        #: The cap on jobs in flight that :meth:`map` and :meth:`run` share (AIMD).
        self.window = AdaptiveWindow()
        self._loop: PollLoop | None = None
        self._loop_lock = threading.Lock()
        self._closed = False

    # -- the public calls ----------------------------------------------------

    @shows_generation_options
    def submit(self, prompt: str, **options: Unpack[GenerationOptions]) -> Generation:
        """Validate the parameters, start a job and return its :class:`Generation`.

        The keywords are :meth:`GenerationParams.create`'s (``style``, ``n``,
        ``seed``, ...). Bad input raises an
        :class:`~arta.errors.InvalidInputError` before anything is sent. If
        the request was sent but no answer came, the job may exist:
        :class:`~arta.errors.SubmitOutcomeUnknown` is raised rather than risk
        paying for it twice.
        """
        return self.submit_params(GenerationParams.create(prompt, **options))

    def submit_params(self, params: GenerationParams, *, retry: bool = True) -> Generation:
        """Start a job for validated ``params``; see :meth:`submit`.

        With ``retry=False`` the submit is sent once: a 429 or 503 is raised
        as it is, for a caller that paces submits itself (:meth:`map`).
        """
        self._check_open()
        token = self.auth.token()  # a token error is no submit failure: nothing was sent
        try:
            state = self.retry_policy.call(
                lambda: self._authorized(
                    lambda id_token: protocol.submit_request(self.settings, id_token, params,
                                                             self.request_timeout),
                    lambda response, secrets: protocol.parse_job(response, "submit",
                                                                 secrets=secrets), token),
                retry_on=surely_not_taken if retry else _never)
        except ConnectError as error:  # nothing was sent: say which setting chose the address
            raise error.naming(self.settings.where)
        except KeyboardInterrupt:
            log.warning("interrupted while the submit was on its way: the job may exist "
                        "(seed %s)", params.seed)
            raise SubmitInterrupted(params) from None
        except (NoResponseError, ProtocolError, ServiceError) as error:
            if isinstance(error, ServiceError) and (
                    error.status < 500 or surely_not_taken(error)):
                raise  # refused outright, or surely not taken: no job exists
            raise SubmitOutcomeUnknown(
                f"the submit was sent but no usable answer came ({error}). The job may or "
                f"may not exist, so it was not sent again; it had seed {params.seed}",
                params=params,
            ) from error
        log.info("submitted %s seed=%s", state.record_id, state.seed or params.seed)
        generation = Generation(state.record_id, params=params, session=self)
        generation.apply(state)
        return generation

    def resume(self, record_id: str) -> Generation:
        """Pick up a job submitted earlier, perhaps by another process.

        Polls once, so an unknown record id fails here, not later.
        """
        if not isinstance(record_id, str) or not record_id.strip():
            raise InvalidInputError(f"record_id must be a non-empty str, not {record_id!r}")
        generation = Generation(record_id.strip(), session=self)
        generation.refresh()
        return generation

    @shows_generation_options
    def generate(self, prompt: str, *, timeout: float | None = None,
                 on_change: OnChange | None = None, poll_policy: PollPlanner | None = None,
                 **options: Unpack[GenerationOptions]) -> Result:
        """Submit, wait until the job ends, and return its :class:`~arta.result.Result`.

        ``timeout`` (else the client's) bounds the wait; past it,
        :class:`~arta.errors.GenerationTimeout` carries the record id. Every
        argument is checked before the submit. Ctrl-C while waiting logs the
        record id and raises :class:`~arta.errors.GenerationInterrupted` (a
        ``KeyboardInterrupt``) carrying it: the job is paid for and can be resumed.
        """
        check_wait_options(timeout, on_change, poll_policy)
        generation = self.submit(prompt, **options)
        try:
            if on_change is not None:
                on_change(generation)
            generation.wait(timeout, on_change, poll_policy)
        except GenerationInterrupted:
            raise
        except KeyboardInterrupt:
            log.warning("interrupted: job %s goes on at the service; resume it with "
                        "Client().resume(%r)", generation.record_id, generation.record_id)
            raise GenerationInterrupted(generation.record_id) from None
        return generation.result()

    def map(self, items: Iterable[str | Mapping[str, Any] | GenerationParams], *,
            concurrency: int = 64, ordered: bool = False, timeout: float | None = None,
            poll_policy: PollPlanner | None = None, progress: bool | ProgressDisplay = False,
            **defaults: Unpack[GenerationOptions]) -> Iterator[Outcome]:
        """Generate for every item, ``concurrency`` jobs in flight at most; yield each :class:`Outcome`.

        An item is a prompt, a dict of :meth:`submit`'s keywords (``prompt``
        included), or a :class:`GenerationParams`; ``defaults`` fill what an
        item leaves out. Submits go out as the service's capacity allows (an
        adaptive window shared by the client's threads: a 429 slows it down
        and is never a failed job). Outcomes come as jobs finish, or in the
        items' order with ``ordered``; a failure is an outcome too, its
        ``error`` carrying the record id, so one failure does not end the
        run. ``outcome.index`` is the item's position. ``progress=True``
        shows the counts on stderr while the outcomes are read (tqdm's bar
        when installed, else rich's, else a plain one: see
        :func:`arta.progress.progress_display`), or pass a display of your own.
        """
        self._check_open()
        GenerationParams.create("a prompt", **defaults)  # bad defaults fail here, before any request
        check_wait_options(timeout, None, poll_policy)
        display = progress_display(progress, len(items) if isinstance(items, Sized) else None,
                                   label="map")
        return map_outcomes(self, self.window, items, concurrency=concurrency, ordered=ordered,
                            timeout=timeout, poll_policy=poll_policy, defaults=dict(defaults),
                            progress=display)

    def run(self, jobs: Iterable[Job], *, concurrency: int = 64, timeout: float | None = None,
            poll_policy: PollPlanner | None = None,
            on_submitting: Callable[[Job], object] | None = None,
            on_submitted: Callable[[Job, Generation], object] | None = None) -> JobRun:
        """Run ``jobs`` (submits and resumes) through the poll loop; iterate the run for outcomes.

        The engine under :meth:`map` and ``arta batch``: ``on_submitting(job)``
        is called just before a submit is sent (write an intent there), and
        ``on_submitted(job, generation)`` as soon as the service has named
        the record id, before the job is polled (record it there).
        """
        self._check_open()
        check_wait_options(timeout, None, poll_policy)
        return JobRun(self, self.window, jobs, concurrency=concurrency, timeout=timeout,
                      poll_policy=poll_policy, on_submitting=on_submitting,
                      on_submitted=on_submitted)

    # -- what a Generation and the engine need (arta.generation.Session) ----

    @property
    def loop(self) -> PollLoop:
        """This client's poll loop: made on first use, and anew in a forked child.

        Raises :class:`~arta.errors.ClientClosedError` once the client is closed.
        """
        with self._loop_lock:
            self._check_open()
            if self._loop is None or self._loop.pid != os.getpid():
                self._loop = PollLoop(self.pool_size)
            return self._loop

    def poll(self, record_id: str, deadline: float | None = None) -> protocol.JobState:
        """Ask the service once how job ``record_id`` stands; no request outlasts ``deadline``."""
        self._check_open()
        return self._authorized(
            lambda token: protocol.status_request(self.settings, token, record_id, deadline,
                                                  self.request_timeout),
            lambda response, secrets: protocol.parse_job(response, "status", record_id, secrets))

    # -- plumbing ------------------------------------------------------------

    def _authorized(self, build: Callable[[str], Request],
                    parse: Callable[[Response, tuple[str, ...]], T],
                    token: Token | None = None) -> T:
        """Send once with the shared token; on 401/403 replace exactly that token and send once more.

        The token's own calls retry inside the Authenticator; the caller
        decides whether the whole call is worth another try.
        """
        token = token or self.auth.token()
        try:
            return self._send(build(token.id_token), parse)
        except protocol.TokenRejected:
            pass
        try:
            return self._send(build(self.auth.replace(token).id_token), parse)
        except protocol.TokenRejected as error:
            raise AuthError(
                f"{error}, even with a fresh token. The service may have changed how it "
                "signs in; check the endpoint and API key, or clear the token with "
                "`arta token --clear`"
            ) from None

    def _send(self, request: Request, parse: Callable[[Response, tuple[str, ...]], T]) -> T:
        with self.transport.handle_request(request) as response:
            return parse(response, protocol.request_secrets(request))

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("the client is closed: it sends nothing more; "
                                    "make a new arta.Client")

    def close(self) -> None:
        """Stop the poll loop (ending its waits and runs, record ids kept) and release connections.

        Afterwards every call raises :class:`~arta.errors.ClientClosedError`
        (nothing is sent). The transport is closed only if the client made it.
        """
        with self._loop_lock:
            self._closed = True
            loop, self._loop = self._loop, None
        if loop is not None and loop.pid == os.getpid():
            loop.close()
        flush = getattr(self.poll_policy, "close", None)  # a learning policy writes what it saw
        if callable(flush):
            flush()
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = redact(self.settings.endpoint or "the ARTA service")  # a password in the URL
        return f"<arta.Client {where} store={self.token_store!r}>"


def _connections(pool_size: int) -> int:
    """Connections a client's own transport keeps: its I/O threads', and room beside them.

    Callers' threads submit and download beside the loop's I/O threads
    (``Result.save`` runs up to :data:`~arta.result.MAX_DOWNLOAD_THREADS`
    downloads at once); a pool smaller than that makes and discards a
    connection per request, and urllib3 warns of it each time.
    """
    return 2 * pool_size + MAX_DOWNLOAD_THREADS


def _never(error: BaseException) -> bool:
    """A ``retry_on`` for calls made once."""
    return False
