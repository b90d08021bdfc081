"""The `arta` command, run as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import png_size

from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``arta ARGS`` (as ``python -m arta.cli``, so it works from a checkout too)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "arta.cli", *args], check=False, capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def test_generate_offline_with_the_embedded_emulator(tmp_path: Path) -> None:
    done = run("generate", "a red dragon", "--style", "fantasy_art", "-n", "2",
               "--aspect-ratio", "9:16", "--seed", "9", "--emulator", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    paths = [Path(line) for line in done.stdout.splitlines()]
    assert len(paths) == 2
    for path in paths:
        assert path.parent == tmp_path / "out" and png_size(path) == (288, 512)
    assert not list(Path(os.environ["ARTA_HOME"]).glob("auth_ARTA*.json"))  # throw-away token


@pytest.mark.parametrize(("args", "words"), [
    (["generate", "", "--emulator"], "prompt must not be empty"),
    (["generate", "a fox", "-n", "7", "--emulator"], "n must be from 1 to 4"),
    (["generate", "a fox", "--style", "vangog", "--emulator"], "unknown style 'vangog'"),
    (["generate", "a fox", "--aspect-ratio", "5:4", "--emulator"], "use one of 1:1"),
])
def test_bad_input_is_one_line_and_exit_code_2(args: list, words: str) -> None:
    done = run(*args)
    assert done.returncode == 2
    assert done.stderr.startswith("arta: error: ") and words in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1


def test_usage_errors_exit_2() -> None:
    done = run("generate")
    assert done.returncode == 2 and "the following arguments are required: prompt" in done.stderr


def test_unreachable_service_exits_5_without_traceback(tmp_path: Path) -> None:
    done = run("generate", "a fox", "--endpoint", "http://127.0.0.1:9", env={"ARTA_HOME": str(tmp_path)})
    assert done.returncode == 5, done.stderr
    assert "could not connect (connection refused" in done.stderr and "Traceback" not in done.stderr


def test_styles_lists_every_style_with_its_aliases() -> None:
    done = run("styles")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert len(lines) == 53
    assert any(line.startswith("Realistic tattoo") and "realistic_tattoo" in line for line in lines)


def test_status_waits_and_saves_a_job_submitted_elsewhere(emulator: Emulator, tmp_path: Path) -> None:
    import arta

    with arta.Client(emulator.url, home=tmp_path / "home") as client:
        record_id = client.submit("a fox", seed=11).record_id
    done = run("status", record_id, "--wait", "-o", str(tmp_path / "out"),
               env={"ARTA_ENDPOINT": emulator.url, "ARTA_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    first, saved = done.stdout.splitlines()
    assert first == f"{record_id} DONE" and png_size(Path(saved)) == (512, 512)


def test_emulator_command_serves_the_readme_one_liner(tmp_path: Path) -> None:
    """README: `arta emulator --port P` in one shell, `arta.generate(...).save('out')` in another."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "arta.cli", "emulator", "--port", "0",
         "--queue-seconds", "0.1", "--progress-seconds", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        done = subprocess.run(
            [sys.executable, "-c", "import arta; print(arta.generate('a fox').save('out'))"],
            check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60,
            env={**env, "ARTA_ENDPOINT": url, "ARTA_HOME": str(tmp_path / "home")})
        assert done.returncode == 0, done.stderr
        saved = list((tmp_path / "out").glob("*.png"))
        assert len(saved) == 1 and str(saved[0].name) in done.stdout
        png_size(saved[0])
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_the_package_imports_nothing_but_its_three_dependencies() -> None:
    code = ("import sys, arta, arta.cli, arta.emulator; "
            "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    allowed = {"arta", "requests", "urllib3", "idna", "certifi", "charset_normalizer",
               "tenacity", "filelock",
               # what those import of their own accord when it is installed (the
               # test and dask extras bring these): tenacity tries tornado,
               # urllib3 PySocks
               "tornado", "socks"}
    foreign = {m for m in done.stdout.split() if m not in sys.stdlib_module_names  # type: ignore[attr-defined]
               and not m.startswith("_") and m not in allowed | {"cython_runtime"}}
    assert not foreign
