"""A contact sheet of a batch: ``index.html`` beside the images, to look at rather than read.

:func:`write_gallery` takes one :class:`GalleryEntry` per job and writes a
single static page: a thumbnail of every image, captioned with its prompt,
style and seed and linking to the file, then the jobs that failed with their
errors. No JavaScript and no network: it opens from the file system
(``file://``), and every string that came from a user or a server is
HTML-escaped, so a prompt cannot inject markup.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from arta.atomic import replacing

__all__ = ["GalleryEntry", "write_gallery"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; }
.sheet { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 220px; background: #fff; border: 1px solid #ddd; padding: 6px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.8em; margin-top: 4px; overflow-wrap: anywhere; }
.meta { color: #666; }
.failed li { margin-bottom: 0.4em; }
.error { color: #a00; }
"""


@dataclass(frozen=True)
class GalleryEntry:
    """One job on the sheet: what was asked, and its files or its error.

    ``files`` are paths relative to the gallery's folder, or absolute ones;
    ``error`` (a failed job) puts the entry in the list of failures.
    """

    prompt: str
    style: str | None = None
    seed: int | None = None
    files: Sequence[str | os.PathLike[str]] = ()
    error: str | None = None
    record_id: str | None = None


def _href(folder: Path, file: str | os.PathLike[str]) -> str:
    """A link to ``file`` that works from ``folder`` over ``file://``: relative when inside."""
    path = Path(file)
    if not path.is_absolute():
        return quote(path.as_posix())
    try:
        return quote(path.resolve().relative_to(folder.resolve()).as_posix())
    except ValueError:
        return path.resolve().as_uri()


def _caption(entry: GalleryEntry) -> str:
    meta = " · ".join(part for part in (
        entry.style or "",
        "" if entry.seed is None else f"seed {entry.seed}",
    ) if part)
    return (f"{html.escape(entry.prompt)}"
            + (f'<br><span class="meta">{html.escape(meta)}</span>' if meta else ""))


def _figures(folder: Path, entries: Sequence[GalleryEntry]) -> list[str]:
    figures = []
    for entry in entries:
        for file in entry.files:
            href = html.escape(_href(folder, file), quote=True)
            alt = html.escape(entry.prompt, quote=True)
            figures.append(f'<figure><a href="{href}"><img src="{href}" alt="{alt}"></a>'
                           f"<figcaption>{_caption(entry)}</figcaption></figure>")
    return figures


def _failures(entries: Sequence[GalleryEntry]) -> list[str]:
    items = []
    for entry in entries:
        if entry.error is None:
            continue
        record = f" (record {html.escape(entry.record_id)})" if entry.record_id else ""
        items.append(f"<li>{_caption(entry)}{record}<br>"
                     f'<span class="error">{html.escape(entry.error)}</span></li>')
    return items


def write_gallery(folder: str | os.PathLike[str], entries: Iterable[GalleryEntry], *,
                  title: str = "arta gallery") -> Path:
    """Write ``folder/index.html``, a contact sheet of ``entries``; return its path.

    The page is replaced atomically (a reader never sees half of it), and is
    rewritten whole each time: call it again after more jobs end.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    jobs = list(entries)
    figures = _figures(target, jobs)
    failures = _failures(jobs)
    done = sum(1 for job in jobs if job.error is None)
    summary = f"{done} of {len(jobs)} jobs done, {len(figures)} images, {len(failures)} failed"
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(summary)}</p>",
        '<div class="sheet">', *figures, "</div>",
        *(['<h2>Failed</h2><ul class="failed">', *failures, "</ul>"] if failures else []),
        "</body></html>",
        "",
    ])
    index = target / "index.html"
    # A page to share, like the images beside it: created as they are (umask).
    with replacing(index, prefix=".index-", suffix=".part", private=False) as file:
        file.write(page.encode("utf-8"))
    return index
