"""``Client``: wires settings, a transport and a token store into submit/resume/generate."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, TypeVar, Union

from arta import api
from arta.auth import Authenticator, FileTokenStore, Token, TokenStore
from arta.config import Settings
from arta.errors import (
    AuthError,
    InvalidInputError,
    NoResponseError,
    ProtocolError,
    ServiceError,
    SubmitOutcomeUnknown,
)
from arta.generation import Generation, OnChange, PollPlanner, PollPolicy
from arta.learned import default_poll_policy
from arta.params import DEFAULT_NEGATIVE_PROMPT, GenerationParams
from arta.result import Result
from arta.retry import RetryPolicy, surely_not_taken, transient
from arta.styles import DEFAULT_STYLE
from arta.transport import (
    DEFAULT_POOL_SIZE,
    DEFAULT_TIMEOUT,
    Request,
    RequestsTransport,
    Response,
    Timeout,
    Transport,
)

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker needs it
    from typing_extensions import Self

__all__ = ["Client"]

T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]


class Client:
    """A client of the ARTA service: one transport, one shared token, one poll policy.

    Every argument is optional: ``endpoint`` (else ``ARTA_ENDPOINT``, else
    the real service), ``home`` (else ``ARTA_HOME``, else ``~/.cache/arta``),
    ``transport`` (else a pooled :class:`~arta.transport.RequestsTransport`),
    ``token_store`` (else the file-locked ``auth_ARTA.json`` in ``home``,
    shared with every other process), ``poll_policy`` and ``timeout`` (the
    default bound, in seconds, of every wait), ``retry_policy`` (how
    transient failures are retried), ``request_timeout`` (``(connect,
    read)`` seconds of one request). ``settings`` replaces ``endpoint``,
    ``home``, ``api_key`` and ``auth_endpoint`` with a ready
    :class:`~arta.config.Settings`. ``pool_size`` is the connections kept
    open when the client makes its own transport: the threads sharing it.

    A client is thread-safe; close it (or use ``with``) to release its
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
        self.settings = settings or Settings.resolve(endpoint, home, api_key, auth_endpoint)
        self._owns_transport = transport is None
        self.transport: Transport = transport or RequestsTransport(pool_size=pool_size)
        self.token_store: TokenStore = token_store or FileTokenStore(self.settings.token_file)
        self.poll_policy = poll_policy or default_poll_policy(self.settings)
        self.retry_policy = retry_policy or RetryPolicy()
        self.request_timeout = request_timeout
        self.timeout = timeout
        self.auth = Authenticator(self.settings, self, self.token_store,
                                  retry_policy=self.retry_policy)

    # -- the public calls ----------------------------------------------------

    def submit(
        self,
        prompt: str,
        *,
        style: str = DEFAULT_STYLE,
        n: int = 1,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        guidance_scale: float = 7,
        steps: int = 30,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
    ) -> Generation:
        """Validate the parameters, start a job and return its :class:`Generation`.

        Bad input raises an :class:`~arta.errors.InvalidInputError` before
        anything is sent. If the request was sent but no answer came, the job
        may exist: :class:`~arta.errors.SubmitOutcomeUnknown` is raised rather
        than risk paying for it twice.
        """
        params = GenerationParams.create(
            prompt, style=style, n=n, negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, steps=steps, aspect_ratio=aspect_ratio, seed=seed,
        )
        try:
            state = self._authorized(
                lambda token: api.submit_request(self.settings, token, params),
                lambda response: api.parse_job(response, "submit"),
                retry_on=surely_not_taken,
            )
        except (NoResponseError, ProtocolError, ServiceError) as error:
            if isinstance(error, ServiceError) and (
                    error.status < 500 or surely_not_taken(error)):
                raise  # refused outright, or surely not taken: no job exists
            raise SubmitOutcomeUnknown(
                f"the submit was sent but no usable answer came ({error}). The job may or "
                f"may not exist, so it was not sent again; it had seed {params.seed}",
                params=params,
            ) from error
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

    def generate(
        self,
        prompt: str,
        *,
        style: str = DEFAULT_STYLE,
        n: int = 1,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        guidance_scale: float = 7,
        steps: int = 30,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
        timeout: float | None = None,
        on_change: OnChange | None = None,
        poll_policy: PollPolicy | None = None,
    ) -> Result:
        """Submit, wait until the job ends, and return its :class:`~arta.result.Result`.

        ``timeout`` (else the client's) bounds the wait; past it,
        :class:`~arta.errors.GenerationTimeout` carries the record id.
        """
        generation = self.submit(
            prompt, style=style, n=n, negative_prompt=negative_prompt,
            guidance_scale=guidance_scale, steps=steps, aspect_ratio=aspect_ratio, seed=seed,
        )
        if on_change is not None:
            on_change(generation)
        generation.wait(timeout if timeout is not None else self.timeout, on_change, poll_policy)
        return generation.result()

    # -- what a Generation needs (JobSession) -------------------------------

    def fetch_state(self, record_id: str) -> api.JobState:
        """Ask the service how job ``record_id`` stands (retrying transient failures)."""
        return self._authorized(
            lambda token: api.status_request(self.settings, token, record_id),
            lambda response: api.parse_job(response, "status", record_id),
            retry_on=transient,
        )

    def handle_request(self, request: Request) -> Response:
        """Send ``request`` once through the transport, with the client's timeouts."""
        return self.transport.handle_request(replace(request, timeout=self.request_timeout))

    # -- plumbing ------------------------------------------------------------

    def _authorized(self, build: Callable[[str], Request], parse: Callable[[Response], T],
                    retry_on: Callable[[BaseException], bool]) -> T:
        """Send with the shared token, retrying per ``retry_on``.

        On 401/403, exactly the rejected token is replaced and the call is
        made once more. The token's own calls retry inside the
        Authenticator: retries are never nested.
        """

        def send(token: Token) -> T:
            return self.retry_policy.call(lambda: self._send(build(token.id_token), parse),
                                          retry_on=retry_on)

        token = self.auth.token()
        try:
            return send(token)
        except api.TokenRejected:
            pass
        try:
            return send(self.auth.replace(token))
        except api.TokenRejected as error:
            raise AuthError(
                f"{error}, even with a fresh token. The service may have changed how it "
                "signs in; check the endpoint and API key, or clear the token with "
                "`arta token --clear`"
            ) from None

    def _send(self, request: Request, parse: Callable[[Response], T]) -> T:
        with self.handle_request(request) as response:
            return parse(response)

    def close(self) -> None:
        """Release the transport's connections (if the client made the transport)."""
        if self._owns_transport:
            self.transport.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.settings.endpoint or "the ARTA service"
        return f"<arta.Client {where} store={self.token_store!r}>"

