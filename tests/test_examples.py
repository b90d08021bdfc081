"""Every example in examples/ runs, as its docstring says, against the emulator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(args: list[str], emulator: Emulator, home: Path, cwd: Path | None = None,
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
           "ARTA_HOME": str(home)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120, check=False)


def test_the_pool_pipeline_signs_up_once_for_all_its_processes(emulator: Emulator,
                                                                tmp_path: Path) -> None:
    done = run([str(EXAMPLES / "pool_pipeline.py"), str(tmp_path / "out")], emulator,
               tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 4 == len(done.stdout.splitlines())
    assert emulator.stats()["signups"] == 1 and emulator.stats()["submits"] == 4


def test_the_asyncio_pipeline(emulator: Emulator, tmp_path: Path) -> None:
    done = run([str(EXAMPLES / "asyncio_pipeline.py"), str(tmp_path / "out")], emulator,
               tmp_path / "home")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
    assert re.search(r"'a koi pond at night' \(seed 19\)", done.stdout)


def test_the_batch_gallery(emulator: Emulator, tmp_path: Path) -> None:
    emulator.app.inject("submit", "fail")  # one job fails: the gallery lists it
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\na <cat>\nan owl\n")
    done = run([str(EXAMPLES / "batch_gallery.py"), str(prompts), str(tmp_path / "out")],
               emulator, tmp_path / "home")
    assert done.returncode == 0, done.stderr
    index = Path(done.stdout.strip())
    page = index.read_text()
    assert index == tmp_path / "out" / "index.html"
    assert page.count("<img ") == 2 and "<h2>Failed</h2>" in page and "GENERATION_FAILED" in page
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert (index.parent / src).read_bytes().startswith(b"\x89PNG")


def test_the_user_test_file_passes_with_the_plugin(emulator: Emulator, tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "test_my_pipeline.py", tmp_path)
    done = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_pipeline.py"],
               emulator, tmp_path / "home", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout
    assert emulator.stats()["submits"] == 0  # the fixture's own emulator, not this one


def test_protocol_citations_point_at_the_shipped_document() -> None:
    document = (ROOT / "docs" / "protocol.rst").read_text()
    cited = 0
    for module in sorted((ROOT / "arta").rglob("*.py")):
        text = module.read_text()
        assert "PROTOCOL.md" not in text, module
        for section in re.findall(r"docs/protocol\.rst sections? (\d)", text):
            cited += 1
            assert re.search(rf"^{section}\. ", document, re.MULTILINE), (module, section)
    assert cited >= 10
