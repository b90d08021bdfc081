"""`arta generate` in a real terminal (a pty): progress is shown, then the screen is left clean."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from conftest import png_size

from arta.emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
_CSI = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])")


def screen(output: str) -> list[str]:
    """What a terminal shows after ``output``: enough of a VT100 for a status line."""
    lines, row, col = [""], 0, 0
    i = 0
    while i < len(output):
        char = output[i]
        match = _CSI.match(output, i)
        if match:
            if match.group(2) == "K":  # erase to the end of the line
                lines[row] = lines[row][:col]
            i = match.end()  # colours (m) change nothing on the grid
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1:]
            col += 1
        i += 1
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def run_in_terminal(*args: str, env: dict) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "arta.cli", *args], stdin=terminal,
                               stdout=terminal, stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    return process.wait(timeout=60), b"".join(chunks).decode()


def test_generate_in_a_terminal_shows_progress_and_leaves_a_clean_screen(tmp_path: Path) -> None:
    with Emulator(queue_seconds=0.4, progress_seconds=0.6) as emulator:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
               "ARTA_HOME": str(tmp_path / "home"), "TERM": "xterm"}
        env.pop("NO_COLOR", None)
        code, output = run_in_terminal("generate", "a fox", "--poll-interval", "0.1",
                                       "-o", str(tmp_path / "out"), env=env)
    assert code == 0, output
    assert "IN_QUEUE" in output and "IN_PROGRESS" in output  # the status line moved on
    assert "\x1b[33mIN_PROGRESS\x1b[0m" in output  # in colour, on a terminal
    assert re.search(r"\(\d+\.\ds\)", output)  # with the elapsed time
    shown = screen(output)
    assert len(shown) == 1, shown  # only the saved file is left on the screen
    assert png_size(Path(shown[0].strip())) == (512, 512)


def test_no_color_is_honoured(tmp_path: Path) -> None:
    with Emulator(queue_seconds=0.2, progress_seconds=0.2) as emulator:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
               "ARTA_HOME": str(tmp_path / "home"), "TERM": "xterm", "NO_COLOR": "1"}
        code, output = run_in_terminal("generate", "a fox", "--poll-interval", "0.1",
                                       "-o", str(tmp_path / "out"), env=env)
    assert code == 0 and "IN_PROGRESS" in output and "\x1b[3" not in output


def test_no_progress_when_stderr_is_not_a_terminal(emulator: Emulator, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "arta.cli", "generate", "a fox", "--poll-interval", "0.05",
         "-o", str(tmp_path)], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ARTA_ENDPOINT": emulator.url,
             "ARTA_HOME": str(tmp_path / "home")})
    assert done.returncode == 0 and done.stderr == ""
