"""The progress display: a resumed run's rate, and a bar that is written only when it changed."""

from __future__ import annotations

import io
import time

from arta.progress import BatchProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_jobs_an_earlier_run_ended_are_not_in_the_rate_of_a_resumed_batch() -> None:
    now = [100.0]
    progress = BatchProgress(io.StringIO(), 120, clock=lambda: now[0], window=60)
    progress.resumed(30)  # skipped: ended before this run
    assert progress.text().startswith("30/120 done, 0 in flight, 90 queued, 0 failed, "
                                      "-- jobs/min, ETA --")
    now[0] = 130.0
    progress.update(done=32, in_flight=8, queued=80, failed=0)  # 2 ended here, in 30 s
    assert progress.text() == ("32/120 done, 8 in flight, 80 queued, 0 failed, 4.0 jobs/min, "
                               "ETA 22m00s, 30s elapsed")


def test_the_bar_is_written_again_only_when_it_changed() -> None:
    terminal = _Terminal()
    with BatchProgress(terminal, 4, clock=lambda: 100.0) as progress:  # time stands still
        progress.update(done=1, in_flight=1, queued=2, failed=0)
        time.sleep(1.0)  # five redraw periods of 0.2 s, nothing new to show
        progress.message("arta: line 2: failed")  # writes over the bar: drawn again
    bars = terminal.getvalue().count("arta: [")
    assert bars == 2, terminal.getvalue()


def test_the_progress_shows_counts_rate_and_time_left() -> None:
    now = [100.0]
    progress = BatchProgress(io.StringIO(), 10, clock=lambda: now[0], window=60)
    assert "0/10 done" in progress.text() and "ETA --" in progress.text()
    now[0] = 130.0
    progress.update(done=3, in_flight=2, queued=4, failed=1)  # 4 ended in 30 s: 8 a minute
    assert progress.text() == ("3/10 done, 2 in flight, 4 queued, 1 failed, 8.0 jobs/min, "
                               "ETA 45s, 30s elapsed")
    now[0] = 200.0  # the window moved past them: no recent rate
    assert "-- jobs/min, ETA --" in progress.text()
    assert progress.bar(130.0).startswith("[#########...............] 3/10 done")


def test_the_progress_is_a_bar_on_a_terminal_and_a_plain_line_in_a_log() -> None:
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        with BatchProgress(stream, 4, every=0.01) as progress:
            progress.update(done=2, in_flight=1, queued=0, failed=1)
            progress.message("arta: line 3: failed")
    assert "\r\x1b[K" in terminal.getvalue() and terminal.getvalue().endswith("\r\x1b[K")
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines()[-1].startswith(
        "arta: batch: 2/4 done, 1 in flight, 0 queued, 1 failed")
    quiet = io.StringIO()
    with BatchProgress(quiet, 4, enabled=False) as progress:
        progress.update(done=4, in_flight=0, queued=0, failed=0)
    assert quiet.getvalue() == ""
