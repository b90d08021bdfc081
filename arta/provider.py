"""The old async provider's ``ARTA`` class, kept as it was on the outside, on the sync core inside.

Code written for the provider runs with one changed import::

    from arta.provider import ARTA, Reasoning, ImageResponse

    async for item in ARTA.create_async_generator(
            model="Realistic tattoo",
            messages=[{"role": "user", "content": "Generate an image of dragon"}]):
        if isinstance(item, Reasoning):
            print(item.label, item.status)      # Waiting, Generating, Generated
        elif isinstance(item, ImageResponse):
            print(item.images)                  # the image URLs

The names, signatures and defaults are the provider's. Underneath, every
call is the sync core run on :mod:`arta.aio`'s bounded thread pool: the
token file is the locked, atomically replaced one that ``arta`` shares
between threads and processes (the old class read and wrote it with no lock,
so concurrent runs raced), polling follows :class:`arta.PollPolicy`, and
transient failures are retried.

Differences worth knowing:

- Every failure after the arguments are checked raises :class:`ResponseError`
  (also an :class:`arta.ArtaError`), chained to the precise ``arta`` error,
  with the job's record id in the message once there is a job.
- Bad arguments fail before any request: an unknown ``model`` raises
  :class:`ModelNotFoundError` naming the closest models; a bad ``n``,
  ``aspect_ratio``, ... raises :class:`arta.InvalidInputError` (a
  ``ValueError``) saying what is allowed.
- Two class attributes beyond the provider's: ``poll_policy`` and ``timeout``
  (also accepted as keyword arguments of ``create_async_generator``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from arta.aio import AsyncClient, AsyncGeneration, run_sync
from arta.auth import FileTokenStore
from arta.client import Client
from arta.config import API_KEY, Settings
from arta.errors import ArtaError, InvalidInputError, InvalidPromptError, InvalidStyleError
from arta.generation import PollPolicy, Status
from arta.params import DEFAULT_NEGATIVE_PROMPT, RANDOM_SEED_RANGE
from arta.provider_types import (
    ImageResponse,
    Messages,
    ModelNotFoundError,
    Reasoning,
    ResponseError,
)
from arta.styles import DEFAULT_STYLE, STYLE_ALIASES, STYLES, closest_styles, resolve_style
from arta.transport import RequestsTransport

__all__ = ["ARTA", "ImageResponse", "Messages", "ModelNotFoundError", "Reasoning",
           "ResponseError"]

T = TypeVar("T")

_SIGNUP_URL = ("https://www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser"
               f"?key={API_KEY}")
_REFRESH_URL = f"https://securetoken.googleapis.com/v1/token?key={API_KEY}"
_SUBMIT_URL = "https://img-gen-prod.ai-arta.com/api/v1/text2image"
_STATUS_URL = "https://img-gen-prod.ai-arta.com/api/v1/text2image/{record_id}/status"

# The provider's snake_case aliases (``realistic_tattoo``, ``sdxl_1_0``,
# ``flux_black_ink``, ...), with its first entry, the default model itself.
_ALIASES: dict[str, str] = {
    DEFAULT_STYLE: DEFAULT_STYLE,
    **{alias: style for alias, style in STYLE_ALIASES.items() if "-" not in alias},
}


class ARTA:
    """The ARTA image provider: the old class's API, on ``arta``'s sync core.

    Setting a URL attribute on the class (``ARTA.image_generation_url =
    ...``) redirects that call, as it did; left at their defaults, the
    environment (``ARTA_ENDPOINT``, ``FIREBASE_AUTH_EMULATOR_HOST``) applies
    as it does to :class:`arta.Client`. ``ARTA_HOME`` is where the token
    file lives.
    """

    url: ClassVar[str] = "https://ai-arta.com"
    auth_url: ClassVar[str] = _SIGNUP_URL
    token_refresh_url: ClassVar[str] = _REFRESH_URL
    image_generation_url: ClassVar[str] = _SUBMIT_URL
    status_check_url: ClassVar[str] = _STATUS_URL

    working: ClassVar[bool] = True

    default_model: ClassVar[str] = DEFAULT_STYLE
    default_image_model: ClassVar[str] = DEFAULT_STYLE
    #: The provider's aliases, snake_case, to the display names the service takes.
    model_aliases: ClassVar[dict[str, str]] = _ALIASES
    #: Every name ``model`` accepts: the display names, then the aliases (the
    #: provider's list was its alias keys). Any case is accepted too.
    image_models: ClassVar[list[str]] = [*STYLES, *(a for a in _ALIASES if a not in STYLES)]
    models: ClassVar[list[str]] = image_models

    #: How often jobs are polled (None: :class:`arta.PollPolicy`'s defaults).
    poll_policy: ClassVar[PollPolicy | None] = None
    #: Seconds a job is waited for at most (None: no bound, as the provider did).
    timeout: ClassVar[float | None] = None

    # -- models --------------------------------------------------------------

    @classmethod
    def get_model(cls, model: str) -> str:
        """The display name the service takes for ``model`` (a name, an alias, any case).

        An empty ``model`` is the default one. Raises
        :class:`ModelNotFoundError` naming the closest models.
        """
        if not model:
            return cls.default_model
        if isinstance(model, str) and model in cls.model_aliases:
            return cls.model_aliases[model]
        try:
            return resolve_style(model)
        except InvalidStyleError:
            pass
        close = closest_styles(str(model))
        hint = " Did you mean " + " or ".join(map(repr, close)) + "?" if close else ""
        raise ModelNotFoundError(
            f"Model is not supported: {model!r} in ARTA.{hint} "
            f"`arta styles` lists the {len(STYLES)} models") from None

    # -- configuration -------------------------------------------------------

    @classmethod
    def _settings(cls) -> Settings:
        """The core's settings, with the URL attributes that were changed as overrides."""
        changed = {
            key: value for key, value, default in (
                ("signup", cls.auth_url, _SIGNUP_URL),
                ("refresh", cls.token_refresh_url, _REFRESH_URL),
                ("submit", cls.image_generation_url, _SUBMIT_URL),
                ("status", cls.status_check_url, _STATUS_URL),
            ) if value != default
        }
        settings = Settings.resolve()
        return dataclasses.replace(settings, urls=changed) if changed else settings

    @classmethod
    @contextlib.contextmanager
    def _client(cls, proxy: str | None, *, token_file: Path | None = None,
                poll_policy: PollPolicy | None = None,
                timeout: float | None = None) -> Iterator[Client]:
        """A sync client for one call: the class's URLs, ``proxy``, the token file."""
        # A client per call, since the URL attributes may change between calls.
        transport = RequestsTransport(proxies={"http": proxy, "https": proxy}) if proxy else None
        client = Client(settings=cls._settings(), transport=transport,
                        token_store=FileTokenStore(token_file or cls.get_auth_file()),
                        poll_policy=poll_policy, timeout=timeout)
        try:
            yield client
        finally:
            client.close()
            if transport is not None:  # the client closes only a transport it made
                transport.close()

    # -- the token file ------------------------------------------------------

    @classmethod
    def get_auth_file(cls) -> Path:
        """The token file, ``auth_ARTA.json`` in ``ARTA_HOME``; its folder is made if missing.

        It is the file :class:`arta.Client` uses too, so the provider and the
        library share one sign-up.
        """
        path = Settings.resolve().token_file
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    @classmethod
    async def create_token(cls, path: Path, proxy: str | None = None) -> dict[str, Any]:
        """Sign up a new anonymous account, save its token at ``path``, and return it.

        The dict is the token file's content: the provider's fields
        (``idToken``, ``refreshToken``, ``expiresIn``, ``localId``) and more.
        The file is written under its lock, atomically. Raises
        :class:`ResponseError` if no token could be had.
        """

        def create() -> dict[str, Any]:
            with cls._client(proxy, token_file=Path(path)) as client, \
                    client.token_store.lock():
                # The core's sign-up (retries, quota memo) without its "is there
                # a fresh token?" check: this call asks for a new account.
                token = client.auth.sign_up()
                client.token_store.save(token)
            return token.to_json()

        return await _as_response_error("Failed to obtain authentication token", create)

    @classmethod
    async def refresh_token(cls, refresh_token: str, proxy: str | None = None) -> tuple[str, str]:
        """Trade ``refresh_token`` for a new ID token; return ``(id_token, refresh_token)``.

        Writes no file (as before). Raises :class:`ResponseError` if Firebase
        refuses.
        """

        def refresh() -> tuple[str, str]:
            with cls._client(proxy) as client:
                # The core's refresh call (with its retries); the token file is
                # not touched, as the provider's refresh_token did not touch it.
                token = client.auth.refresh(refresh_token)
            return token.id_token, token.refresh_token

        return await _as_response_error("Failed to refresh authentication token", refresh)

    @classmethod
    async def read_and_refresh_token(cls, proxy: str | None = None) -> dict[str, Any]:
        """The token of :meth:`get_auth_file`: read, refreshed past half its life, or made.

        Through the core's locked, double-checked path: N processes calling
        this together make one sign-up. Returns the token file's content.
        """

        def read() -> dict[str, Any]:
            with cls._client(proxy) as client:
                return client.auth.token().to_json()

        return await _as_response_error("Failed to obtain authentication token", read)

    # -- generation ----------------------------------------------------------

    @classmethod
    async def create_async_generator(
        cls,
        model: str,
        messages: Messages,
        proxy: str | None = None,
        prompt: str | None = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        n: int = 1,
        guidance_scale: int = 7,
        num_inference_steps: int = 30,
        aspect_ratio: str = "1:1",
        seed: int | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Reasoning | ImageResponse]:
        """Generate images; yield :class:`Reasoning` updates, then one :class:`ImageResponse`.

        ``model`` is a display name or an alias (any case); the prompt is
        ``prompt`` if given, else the last user message of ``messages``; a
        ``seed`` is drawn from 9999..99999999 when none is given; ``proxy``
        (``"http://host:port"``) carries every request. Yields
        ``Reasoning(label="Waiting")`` while the job is queued,
        ``Reasoning(label="Generating")`` while it runs (each once), then
        ``Reasoning(label="Generated", status="N image(s) in X.XXs")`` and
        ``ImageResponse(images=[urls], alt=prompt)``.

        Keyword extras: ``poll_policy`` (a :class:`arta.PollPolicy`) and
        ``timeout`` (seconds), else the class attributes of those names;
        other keywords are ignored, as they were. Raises
        :class:`ResponseError` (with the record id once the job exists) for
        a failed job or a failed call, :class:`ModelNotFoundError` or
        :class:`arta.InvalidInputError` for bad arguments, before any request.
        """
        style = cls.get_model(model)
        prompt = _image_prompt(messages, prompt)
        if seed is None:
            seed = random.randint(*RANDOM_SEED_RANGE)
        poll_policy: PollPolicy | None = kwargs.get("poll_policy") or cls.poll_policy
        timeout: float | None = kwargs.get("timeout", cls.timeout)

        with cls._client(proxy, poll_policy=poll_policy, timeout=timeout) as sync_client:
            try:
                generation = await AsyncClient(sync_client).submit(
                    prompt, style=style, n=n, negative_prompt=negative_prompt,
                    guidance_scale=guidance_scale, steps=num_inference_steps,
                    aspect_ratio=aspect_ratio, seed=seed)
            except InvalidInputError:
                raise
            except ArtaError as error:
                raise _response_error("Failed to initiate image generation", error) from error
            started = time.monotonic()
            async for reasoning in _progress(generation):
                yield reasoning
            urls = [image.url for image in generation.images]
            yield Reasoning(label="Generated",
                            status=f"{len(urls)} image(s) in {time.monotonic() - started:.2f}s")
            yield ImageResponse(images=urls, alt=prompt,
                                options={"record_id": generation.record_id,
                                         "seed": generation.seed})


async def _progress(generation: AsyncGeneration) -> AsyncIterator[Reasoning]:
    """The provider's updates while a job runs, each said once; raise if it does not end DONE."""
    # The submit's answer is the first sight of the queue.
    said = generation.status
    if said is Status.IN_QUEUE:
        yield Reasoning(label="Waiting")
    updates = generation.events()
    try:
        async for update in updates:
            if update.status is Status.IN_PROGRESS and said is not Status.IN_PROGRESS:
                said = update.status
                yield Reasoning(label="Generating")
    except ArtaError as error:
        raise _response_error("Failed to check image generation status", error,
                              generation.record_id) from error
    finally:
        # Left early (the consumer stopped iterating) or not: the wait in
        # the poll loop ends now, not when the GC gets to it.
        await updates.aclose()
    if generation.status is not Status.DONE:
        reason = ": ".join(x for x in (generation.error_code, generation.error_details) if x)
        raise ResponseError(
            f"Image generation failed with status: {generation.raw_status}"
            + (f" ({reason})" if reason else ""), record_id=generation.record_id)


def _image_prompt(messages: Messages, prompt: str | None) -> str:
    """``prompt`` if given, else the content of the last user message."""
    if prompt is not None:
        return prompt
    for message in reversed(list(messages or ())):
        if message.get("role") == "user":
            return _text(message.get("content"))
    raise InvalidPromptError("no prompt: pass prompt= or a message with role 'user'")


def _text(content: Any) -> str:
    """A message's text: a str, or the text parts of an OpenAI-style list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return " ".join(part["text"] for part in content
                        if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return "" if content is None else str(content)


def _response_error(what: str, error: ArtaError, record_id: str | None = None) -> ResponseError:
    """``error`` as the provider's ``ResponseError``, keeping its record id (said once)."""
    record_id = error.record_id or record_id
    if error.record_id is not None:  # its message already says how to resume
        response = ResponseError(f"{what}: {error}")
        response.record_id = record_id
        return response
    return ResponseError(f"{what}: {error}", record_id=record_id)


async def _as_response_error(what: str, call: Callable[[], T]) -> T:
    """Run ``call`` on the pool; re-raise an ``ArtaError`` as ``ResponseError``."""
    try:
        return await run_sync(call)
    except ArtaError as error:
        raise _response_error(what, error) from error
