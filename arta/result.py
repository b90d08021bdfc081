"""The images of a finished job, and saving them to disk safely.

File names are made here, from the record id, the image's index and the
seed: never from the server's name or URL path, which could hold ``../``.
Each image is streamed to a temporary file in the target folder and renamed
into place, so an interrupted download never leaves a half image under the
final name.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arta import api
from arta.errors import ArtaError, DownloadError, ProtocolError, SaveError
from arta.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    checked_response,
    extension_of,
    image_html,
    magic_ok,
    read_image,
    whole,
)
from arta.params import GenerationParams
from arta.retry import RetryPolicy, transient
from arta.transport import RequestsTransport, Transport

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "DEFAULT_NAME", "Image", "Result"]

log = logging.getLogger(__name__)

Image = api.Image

#: The default file name template of :meth:`Result.save`.
DEFAULT_NAME = "{record_id}-{index}-s{seed}"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(text: str) -> str:
    """Reduce ``text`` to a plain file name: no folder, no leading dot, no odd characters."""
    return _UNSAFE.sub("_", text).strip("._-")[:120] or "image"


@dataclass(frozen=True)
class Result:
    """A finished job: its images, the seed used and the record id.

    ``save(folder)`` downloads the images; the result can be pickled and
    saved in another process.
    """

    record_id: str
    images: tuple[Image, ...]
    seed: int | None = None
    params: GenerationParams | None = None
    transport: Transport | None = field(default=None, repr=False, compare=False)
    retry_policy: RetryPolicy | None = field(default=None, repr=False, compare=False)

    @property
    def urls(self) -> list[str]:
        """The image URLs, in the service's order."""
        return [image.url for image in self.images]

    @property
    def blurred(self) -> list[int]:
        """Indexes of the images the service blurred (its content filter)."""
        return [index for index, image in enumerate(self.images) if image.blurred]

    def filename(self, index: int, name: str = DEFAULT_NAME) -> str:
        """The file name of image ``index``, from the template ``name``.

        ``name`` may use ``{record_id}``, ``{index}`` and ``{seed}``; the
        extension follows the image's type. Each value, and the result, is
        reduced to a plain file name: nothing from the server can choose a
        folder.
        """
        image = self.images[index]
        extension = extension_of(image.mime)
        try:
            stem = name.format(record_id=_safe(self.record_id), index=index,
                               seed="" if self.seed is None else self.seed)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(
                f"bad file name template {name!r} ({error}); it may use "
                "{record_id}, {index} and {seed}") from None
        return _safe(stem) + extension

    def save(self, folder: str | os.PathLike[str] = ".", *, name: str = DEFAULT_NAME,
             overwrite: bool = False, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> list[Path]:
        """Download every image into ``folder`` (created if needed), in parallel; return the paths.

        File names come from the template ``name`` (see :meth:`filename`).
        An existing file of that name is kept, not downloaded again, unless
        ``overwrite``. Each image is streamed to a temporary file, checked
        (an image type, the PNG/JPEG/WebP signature, a whole body, at most
        ``max_bytes``) and only then renamed into place. Transient failures
        are retried. Raises :class:`~arta.errors.DownloadError`, carrying the
        record id, for an image that cannot be had; its subclass
        :class:`~arta.errors.SaveError` when the disk refuses the file.
        """
        target = Path(folder)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise self._save_error(target, error) from None
        paths = [target / self.filename(index, name) for index in range(len(self.images))]
        if len(set(paths)) != len(paths):
            raise ValueError(f"the file name template {name!r} gives two images one name: "
                             "use {index} in it")
        transport = self.transport or RequestsTransport()
        policy = self.retry_policy or RetryPolicy()

        def fetch(image: Image, path: Path) -> None:
            if overwrite or not path.exists():
                policy.call(lambda: self._download(transport, image, path, max_bytes),
                            retry_on=transient)

        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, len(paths))) as pool:
                for done in [pool.submit(fetch, image, path)
                             for image, path in zip(self.images, paths)]:
                    done.result()
        except ArtaError as error:
            raise error.with_record_id(self.record_id) from error
        except OSError as error:  # the disk, not the network: never worth a retry
            raise self._save_error(target, error) from None
        finally:
            if self.transport is None:
                transport.close()
        if self.blurred:
            log.warning("job %s: image(s) %s were blurred by the service's content filter",
                        self.record_id, ", ".join(map(str, self.blurred)))
        return paths

    def _save_error(self, folder: Path, error: OSError) -> SaveError:
        """``error`` as a :class:`SaveError` naming the folder and this job's record id."""
        reason = error.strerror or str(error)
        return SaveError(f"could not save the images in {str(folder)!r}: {reason}",
                         record_id=self.record_id, path=str(folder))

    def _download(self, transport: Transport, image: Image, path: Path, max_bytes: int) -> None:
        """Fetch one image to a temp file beside ``path``, check it is whole, rename it."""
        extension = path.suffix
        with transport.handle_request(api.image_request(image.url)) as response:
            checked_response(response, path.name)
            # Created as open() creates any file (the umask applies), under a
            # name no other download can take.
            temp = path.with_name(f".arta-{uuid.uuid4().hex}.part")
            try:
                size, head, tail = 0, b"", b""
                with open(temp, "xb") as file:
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise DownloadError(
                                f"image {path.name} is larger than the {max_bytes}-byte limit")
                        head = head if len(head) >= 16 else (head + chunk)[:16]
                        tail = (tail + chunk)[-16:]
                        file.write(chunk)
                if not magic_ok(extension, head):
                    raise DownloadError(
                        f"image {path.name}: the bytes are not a {extension[1:].upper()} image")
                if not whole(extension, head, tail, size):
                    # The right start but no proper end: cut short on the way, worth a retry.
                    raise ProtocolError(f"image {path.name} ended early, after {size} bytes")
                os.replace(temp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise

    def read(self, index: int = 0, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
        """The bytes of image ``index``, in memory and checked as :meth:`save` checks files."""
        try:
            return read_image(self.images[index], self.transport, max_bytes=max_bytes,
                              retry_policy=self.retry_policy)
        except ArtaError as error:
            raise error.with_record_id(self.record_id) from error

    def _repr_html_(self) -> str:
        """The images inline in Jupyter: fetched when shown, each capped in size."""
        figures = "".join(
            image_html(image, self.transport, caption=f"{self.record_id[:8]} #{index}"
                       + ("" if self.seed is None else f" seed {self.seed}"))
            for index, image in enumerate(self.images))
        return f"<div>{figures or html.escape(f'job {self.record_id}: no images')}</div>"

    def __getstate__(self) -> dict[str, Any]:
        # A live transport does not cross processes; save() opens its own.
        state = dict(self.__dict__)
        state["transport"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
