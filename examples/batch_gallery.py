"""A batch from the command line, then a contact sheet of it to open in a browser.

``arta batch --json`` prints one JSON object per job as it ends (its line
in the prompts file, its files or its error); this script turns them into
:class:`arta.batch.gallery.GalleryEntry` values and writes ``index.html`` beside
the images with :func:`arta.batch.gallery.write_gallery`::

    $ python examples/batch_gallery.py prompts.txt images/
    $ xdg-open images/index.html

Offline, against the bundled emulator::

    $ arta emulator --port 8765 &
    $ ARTA_ENDPOINT=http://127.0.0.1:8765 python examples/batch_gallery.py prompts.txt images/
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from arta.batch.gallery import GalleryEntry, write_gallery


def run_batch(prompts: Path, folder: Path) -> list[dict]:
    """Run ``arta batch`` (resumable: a second run skips what is done); its JSON records."""
    done = subprocess.run(
        [sys.executable, "-m", "arta", "batch", str(prompts), "-o", str(folder), "--json",
         "-q"], capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # 1: some jobs failed, which the gallery lists
        sys.exit(f"arta batch failed ({done.returncode}): {done.stderr.strip()}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def main(prompts_file: str, folder_name: str) -> int:
    """Batch every line of ``prompts_file`` into ``folder_name``, then write its gallery."""
    prompts = Path(prompts_file).read_text(encoding="utf-8").splitlines()
    folder = Path(folder_name).resolve()
    entries = [
        GalleryEntry(prompt=prompts[record["line"] - 1], files=record.get("files") or [],
                     error=record.get("error"), record_id=record.get("record_id"),
                     seed=record.get("seed"), style=record.get("style"))
        for record in sorted((r for r in run_batch(Path(prompts_file), folder) if "line" in r),
                             key=lambda r: r["line"])  # one record per job; the summary has none
    ]
    index = write_gallery(folder, entries, title=f"arta batch: {prompts_file}")
    print(index)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/batch_gallery.py PROMPTS_FILE OUTPUT_FOLDER")
    sys.exit(main(sys.argv[1], sys.argv[2]))
