"""What the old provider's ``ARTA`` class yields and raises, kept with their names and shapes.

Re-exported by :mod:`arta.provider`, where code written for the provider
imports them from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from arta.errors import ArtaError, InvalidStyleError

__all__ = ["ImageResponse", "Messages", "ModelNotFoundError", "Reasoning", "ResponseError"]

#: A chat history, as the provider took it: ``[{"role": "user", "content": "..."}, ...]``.
Messages = Sequence[Mapping[str, Any]]


class ResponseError(ArtaError):
    """The service (or the way to it) failed a call: the provider's error, now an ``ArtaError``.

    ``record_id`` is set once a job exists; ``__cause__`` is the precise
    ``arta`` error (:class:`arta.GenerationFailed`, :class:`arta.errors.AuthError`, ...).
    """


class ModelNotFoundError(InvalidStyleError):
    """``model`` names none of ARTA's models; the message names the closest ones."""


class Reasoning:
    """A progress update, as the provider yielded them: ``label`` and ``status``.

    The provider yields ``Reasoning(label="Waiting")`` while the job is
    queued, ``Reasoning(label="Generating")`` while it runs, and
    ``Reasoning(label="Generated", status="1 image(s) in 4.20s")`` at the
    end. ``token`` and ``is_thinking`` exist for code written against the
    general class; this provider leaves them None.
    """

    def __init__(self, token: str | None = None, label: str | None = None,
                 status: str | None = None, is_thinking: str | None = None) -> None:
        self.token = token
        self.label = label
        self.status = status
        self.is_thinking = is_thinking

    def get_dict(self) -> dict[str, Any]:
        """The set fields as a dict (for JSON output)."""
        fields = {"token": self.token, "label": self.label, "status": self.status,
                  "is_thinking": self.is_thinking}
        return {key: value for key, value in fields.items() if value is not None}

    def __str__(self) -> str:
        if self.is_thinking is not None:
            return self.is_thinking
        if self.token is not None:
            return self.token
        return ": ".join(part for part in (self.label, self.status) if part is not None)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reasoning) and self.get_dict() == other.get_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.get_dict().items())
        return f"Reasoning({fields})"


class ImageResponse:
    """The provider's last item: the image URLs and the prompt as their ``alt`` text.

    ``options`` holds extra facts about the job; this provider puts its
    ``record_id`` and ``seed`` there.
    """

    def __init__(self, images: str | Sequence[str], alt: str,
                 options: Mapping[str, Any] | None = None) -> None:
        self.images: list[str] = [images] if isinstance(images, str) else list(images)
        self.alt = alt
        self.options: dict[str, Any] = dict(options or {})

    def get(self, key: str) -> Any:
        """The option ``key``, or None."""
        return self.options.get(key)

    def get_list(self) -> list[str]:
        """The image URLs."""
        return list(self.images)

    def __str__(self) -> str:
        # Markdown, as the provider's chat front ends render it.
        alt = self.alt.replace("[", " ").replace("]", " ").replace("\n", " ")
        return "\n".join(f"[![{alt}]({url})]({url})" for url in self.images)

    def __repr__(self) -> str:
        return f"ImageResponse(images={self.images!r}, alt={self.alt!r})"
