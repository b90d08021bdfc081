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
