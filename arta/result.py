"""The images of a finished job, and saving them to disk safely.

File names come from the record id, index and seed, never from the server
(which could send ``../``); each image is streamed to a temporary file and
renamed into place, so no half image ever has the final name.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import html
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from arta.atomic import CLAIM_SECONDS, remove_stale, replacing
from arta.errors import (
    ArtaError,
    DownloadError,
    GenerationInterrupted,
    InvalidInputError,
    MalformedResponse,
    ProtocolError,
    SaveError,
    ServiceError,
)
from arta.images import (
    DEFAULT_MAX_IMAGE_BYTES,
    Image,
    blocked_host,
    extension_of,
    image_html,
    image_request,
    magic_ok,
    read_image,
    whole,
)
from arta.params import GenerationParams
from arta.redact import printable
from arta.retry import TRANSIENT_STATUSES, RetryPolicy, retry_after, transient
from arta.transport import RequestsTransport, Transport

__all__ = ["DEFAULT_MAX_IMAGE_BYTES", "DEFAULT_NAME", "Image", "Result"]

log = logging.getLogger(__name__)

#: The default file name template of :meth:`Result.save`.
DEFAULT_NAME = "{record_id}-{index}-s{seed}"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

#: Images downloaded at once by one ``save()``: a status answer listing
#: thousands costs this many threads, not thousands.
MAX_DOWNLOAD_THREADS = 8

#: Longest file name stem (the extension on top), well under most file systems' 255 bytes.
MAX_STEM = 160



class _Stopped(BaseException):
    """The download was told to stop (Ctrl-C in the thread that called save())."""


def _safe(text: str) -> str:
    """Reduce ``text`` to a plain file name: no folder, no leading dot, no odd characters."""
    return _UNSAFE.sub("_", text).strip("._-") or "image"


def _fit(text: str, limit: int) -> str:
    """``text`` if it is at most ``limit`` long, else its two ends around a digest of the whole.

    Cutting only the end would drop what tells two names apart (the
    index, the seed, the end of a long record id); the digest keeps them apart.
    """
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    keep = (limit - len(digest) - 2) // 2
    return f"{text[:keep]}-{digest}-{text[-keep:]}"


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
        folder. A name too long for a file system is cut in the middle
        around a digest of the whole, so two jobs never share a name.
        """
        image = self.images[index]
        extension = extension_of(image.mime)
        try:
            stem = name.format(record_id=_fit(_safe(self.record_id), 100), index=index,
                               seed="" if self.seed is None else self.seed)
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            raise InvalidInputError(
                f"bad file name template {name!r} ({error}); it may use "
                "{record_id}, {index} and {seed}") from None
        return _fit(_safe(stem), MAX_STEM) + extension

    def _paths(self, target: Path, name: str) -> list[Path]:
        """One distinct path per image: ``-{index}`` is added if the template gives one name twice."""
        paths = [target / self.filename(index, name) for index in range(len(self.images))]
        if len(set(paths)) != len(paths):
            paths = [target / self.filename(index, f"{name}-{{index}}")
                     for index in range(len(self.images))]
        return paths

    def _check_images(self) -> None:
        """Refuse what no real job answers: no images at all, more than asked, bad URLs."""
        if not self.images:
            # Decided (issue 11): a DONE job with nothing to save is an error, not a silent 0.
            raise ProtocolError("the service finished the job but listed no images to save",
                                record_id=self.record_id)
        if self.params is not None and len(self.images) > self.params.n:
            raise MalformedResponse(
                f"the service listed {len(self.images)} images for a job of n={self.params.n}",
                record_id=self.record_id)
        endpoint = getattr(getattr(self.transport, "settings", None), "endpoint", None)
        for index, image in enumerate(self.images):
            why = blocked_host(image.url, endpoint)
            if why is not None:
                raise DownloadError(f"image {index}: its URL is {why}; not fetched",
                                    record_id=self.record_id)

    def save(self, folder: str | os.PathLike[str] = ".", *, name: str = DEFAULT_NAME,
             overwrite: bool = False, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
             transport: Transport | None = None) -> list[Path]:
        """Download every image into ``folder`` (created if needed), in parallel; return the paths.

        The downloads go through ``transport``, else the client's that made
        the result, else (a result unpickled in another process) a
        short-lived :class:`~arta.transport.RequestsTransport`.

        File names come from the template ``name`` (see :meth:`filename`);
        ``-{index}`` is added if it would give two images one name. An
        existing file of that name is kept if it holds this very image
        (fetched again to compare), replaced if ``overwrite``, and refused
        with :class:`~arta.errors.DownloadError` otherwise: a file from
        elsewhere is never taken for this job's image. Each image is
        streamed to a temporary file, checked (an image type, the
        PNG/JPEG/WebP signature, a whole body, at most ``max_bytes``) and
        only then renamed into place; at most :data:`MAX_DOWNLOAD_THREADS`
        download at once. Transient failures are retried. A job with no
        images, or more than it asked for, or an image URL that is not
        http(s) or points at a cloud-metadata address, is refused before
        any download. Raises :class:`~arta.errors.DownloadError` (or
        :class:`~arta.errors.ProtocolError`), carrying the record id; its
        subclass :class:`~arta.errors.SaveError` when the disk refuses the file.

        Ctrl-C returns at once, as :class:`~arta.errors.GenerationInterrupted`
        (a ``KeyboardInterrupt``) carrying the record id: the downloads stop
        at their next chunk and remove their temporary files.
        """
        self._check_images()
        target = Path(folder)
        try:
            target.mkdir(parents=True, exist_ok=True)
            paths = self._paths(target, name)
            _remove_stale_parts(target)
        except OSError as error:
            raise self._save_error(target, error) from None
        own = transport is None and self.transport is None
        used = transport or self.transport or RequestsTransport(pool_size=MAX_DOWNLOAD_THREADS)
        try:
            return self._save_all(used, paths, target, max_bytes, overwrite)
        except GenerationInterrupted:
            raise
        except KeyboardInterrupt:  # the job is DONE and paid for: say which one
            raise GenerationInterrupted(self.record_id, "saving the images of") from None
        finally:
            if own:
                used.close()

    def _save_all(self, transport: Transport, paths: list[Path], target: Path,
                  max_bytes: int, overwrite: bool) -> list[Path]:
        policy = self.retry_policy or RetryPolicy()
        stop = threading.Event()

        def fetch(image: Image, path: Path) -> None:
            def attempt() -> None:
                if stop.is_set():
                    raise _Stopped
                self._download(transport, image, path, max_bytes, overwrite, stop)

            policy.call(attempt, retry_on=transient)
            log.info("job %s: saved %s", self.record_id, path)

        try:
            if len(paths) == 1:  # one image: no thread to start (Ctrl-C lands in the download)
                fetch(self.images[0], paths[0])
            else:
                self._fetch_all(fetch, paths, stop)
        except ArtaError as error:
            raise error.with_record_id(self.record_id) from error
        except OSError as error:  # the disk, not the network: never worth a retry
            raise self._save_error(target, error) from None
        if self.blurred:
            log.warning("job %s: image(s) %s were blurred by the service's content filter",
                        self.record_id, ", ".join(map(str, self.blurred)))
        return paths

    def _fetch_all(self, fetch: Callable[[Image, Path], None], paths: list[Path],
                   stop: threading.Event) -> None:
        """Run ``fetch(image, path)`` for every image on a bounded pool of threads."""
        pool = concurrent.futures.ThreadPoolExecutor(min(len(paths), MAX_DOWNLOAD_THREADS),
                                                     thread_name_prefix="arta-download")
        try:
            for done in [pool.submit(fetch, image, path)
                         for image, path in zip(self.images, paths)]:
                done.result()
        finally:
            # On any way out (an error, Ctrl-C), the other downloads stop at their
            # next chunk and clean up; this thread does not wait for them.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _save_error(self, folder: Path, error: OSError) -> SaveError:
        """``error`` as a :class:`SaveError` naming the folder and this job's record id."""
        reason = error.strerror or str(error)
        return SaveError(f"could not save the images in {str(folder)!r}: {reason}",
                         record_id=self.record_id, path=str(folder))

    def _download(self, transport: Transport, image: Image, path: Path, max_bytes: int,
                  overwrite: bool = False, stop: threading.Event | None = None) -> None:
        """Fetch one image to a temp file beside ``path``, check it is whole, rename it."""
        extension = path.suffix
        with transport.handle_request(image_request(image.url)) as response:
            if response.status != 200:
                if response.status in TRANSIENT_STATUSES:
                    raise ServiceError(f"image {path.name}: HTTP {response.status}",
                                       status=response.status, retry_after=retry_after(response.headers))
                raise DownloadError(f"image {path.name}: HTTP {response.status}")
            mime = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not mime.startswith("image/"):
                raise DownloadError(
                    f"image {path.name}: the server sent {printable(mime) or 'no type'}, "
                    "not an image")
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > max_bytes:
                raise DownloadError(f"image {path.name} is announced as {int(declared)} bytes, "
                                    f"larger than the {max_bytes}-byte limit")
            # Created as open() creates any file (the umask applies), under a
            # name no other download can take; checked before it is placed.
            with replacing(path, prefix=".arta-", suffix=".part", private=False,
                           place=lambda temp, path: _place(temp, path, overwrite)) as file:
                size, head, tail = 0, b"", b""
                for chunk in response.iter_bytes():
                    if stop is not None and stop.is_set():
                        raise _Stopped
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


def _same_bytes(one: Path, other: Path) -> bool:
    if one.stat().st_size != other.stat().st_size:
        return False
    with open(one, "rb") as a, open(other, "rb") as b:
        while True:
            x, y = a.read(1024 * 1024), b.read(1024 * 1024)
            if x != y:
                return False
            if not x:
                return True


def _place(temp: Path, path: Path, overwrite: bool) -> None:
    """Move the checked image at ``temp`` to ``path``; an existing other file there is refused."""
    if not overwrite and path.exists():
        if path.is_file() and _same_bytes(temp, path):
            os.unlink(temp)  # this very image is already there
            return
        raise DownloadError(
            f"{path} already exists and holds something else; pass overwrite=True, "
            "another folder or another name template")
    os.replace(temp, path)


_swept: dict[Path, float] = {}  # folder -> when its stale parts were last removed


def _remove_stale_parts(folder: Path) -> None:
    """Remove the ``.part`` files of killed downloads (:func:`arta.atomic.remove_stale`).

    A folder is swept at most once every :data:`~arta.atomic.CLAIM_SECONDS`
    per process: a batch saving thousands of images into one folder must
    not list it before each one.
    """
    now = time.time()
    if now - _swept.get(folder, 0.0) < CLAIM_SECONDS:
        return
    _swept[folder] = now
    remove_stale(folder, ".arta-*.part")
