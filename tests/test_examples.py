"""Every example runs against the emulator: examples/, and the README's and docs' Python blocks.

The README's and docs' blocks are whole programs (a reader copies them), so
each is type-checked with ``mypy --strict`` and run as it is, with
``ARTA_ENDPOINT`` pointing at an emulator; one that defines tests runs
under pytest.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import isolated_env

from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(args: list[str], emulator: Emulator, home: Path, cwd: Path | None = None,
        ) -> subprocess.CompletedProcess[str]:
    # Isolated by hand: this also runs before a test's own isolation does.
    env = isolated_env(PYTHONPATH=str(ROOT), ARTA_ENDPOINT=emulator.url, ARTA_HOME=str(home))
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


# -- the README and the documentation ---------------------------------------------

DOCUMENTS = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]
_BLOCK = re.compile(r"^( *)\.\. code-block:: python\n\n((?:\1    .*\n|[ \t]*\n)+)", re.MULTILINE)


def python_examples() -> list[tuple[str, str]]:
    """``(name, code)`` of every Python example in the README and docs/, named file_line."""
    examples = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            indent = len(match.group(1)) + 4
            code = "\n".join(row[indent:] for row in match.group(2).splitlines()).strip() + "\n"
            examples.append((f"{document.stem.replace('-', '_').lower()}_{line}", code))
    return examples


EXAMPLES_IN_DOCS = python_examples()


def test_the_readme_is_a_few_screens_with_links_into_the_docs() -> None:
    readme = (ROOT / "README.rst").read_text()
    assert len(readme.encode()) <= 15 * 1024
    for section in ("Install", "Quick start", "Recipes", "Errors and exit codes",
                    "Environment variables", "Documentation", "Development"):
        assert re.search(rf"^{section}\n=+\n", readme, re.MULTILINE), section
    links = re.findall(r"<((?:docs/)?[\w-]+\.rst)>`_", readme)
    assert len(links) >= 15
    for link in links:
        assert (ROOT / link).is_file(), link


def test_the_readme_renders_without_a_warning() -> None:
    """The package index renders it (long_description) only if docutils finds nothing wrong."""
    import docutils.core

    docutils.core.publish_doctree((ROOT / "README.rst").read_text(),
                                  settings_overrides={"halt_level": 2, "report_level": 2})


def test_every_environment_variable_read_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.rst").read_text()
    table = readme[readme.index("Environment variables\n"):readme.index("\nDocumentation\n")]
    sources = [*(ROOT / "arta").rglob("*.py"), *(ROOT / "tests").glob("*.py"), ROOT / ".ci" / "run"]
    named = set()
    for source in sources:
        named |= set(re.findall(r"\b(ARTA_[A-Z_]+[A-Z]|FIREBASE_AUTH_EMULATOR_HOST)\b",
                                source.read_text()))
    named -= {"ARTA_FIREBASE_BIN", "ARTA_TEST_SEED"}  # test-suite knobs, named in their tests
    assert {"ARTA_ENDPOINT", "ARTA_HOME", "ARTA_POLL", "ARTA_LOG"} <= named
    for variable in named:
        assert f"``{variable}``" in table, variable


def test_the_python_examples_type_check_strictly(tmp_path: Path) -> None:
    assert len(EXAMPLES_IN_DOCS) >= 15
    for name, code in EXAMPLES_IN_DOCS:
        (tmp_path / f"{name}.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         *sorted(str(path) for path in tmp_path.glob("*.py"))],
        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False,
        env={**os.environ, "MYPYPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory,
                 ) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Every example of the README and docs, run at once (each its own process and folder).

    They share one emulator and one ``ARTA_HOME``, as a user's scripts share
    their machine: the learned poll policy learns from all of them. Run
    together, they take the time of the slowest, not of all in a row.
    """
    home = tmp_path_factory.mktemp("home")

    def one(name: str, code: str) -> subprocess.CompletedProcess[str]:
        folder = tmp_path_factory.mktemp(name)
        script = folder / f"{name}.py"
        script.write_text(code)
        args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", script.name] \
            if "\ndef test_" in code else [script.name]
        return run(args, emulator, home, cwd=folder)

    with Emulator(queue_seconds=0.05, progress_seconds=0.1) as emulator, \
            concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = {name: pool.submit(one, name, code) for name, code in EXAMPLES_IN_DOCS}
        yield {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize(("name", "code"), EXAMPLES_IN_DOCS, ids=[n for n, _ in EXAMPLES_IN_DOCS])
def test_each_python_example_runs_against_the_emulator(
        name: str, code: str, example_runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    done = example_runs[name]
    assert done.returncode == 0, done.stdout + done.stderr
    if "\ndef test_" in code:
        assert re.search(r"\b\d+ passed\b", done.stdout) and "failed" not in done.stdout


def test_help_shows_every_keyword_its_docstring_names() -> None:
    import inspect

    import arta

    for function in (arta.generate, arta.Client.generate, arta.Client.submit, arta.Client.map):
        named = set(re.findall(r"``(\w+)=``", function.__doc__ or ""))
        assert set(inspect.signature(function).parameters) >= named, function
    assert {"endpoint", "home", "transport"} <= set(inspect.signature(arta.generate).parameters)
