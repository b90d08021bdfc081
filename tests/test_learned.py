"""The learned poll policy, driven by synthetic jobs on a fake clock (no emulator, no sleeping).

Each job is played as the poll loop plays it: the submit's answer, then a
poll after every ``next_delay``, each answer computed from the job's true
start and end, until one finds it DONE and ``finished`` is called.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

import arta
from arta.config import Settings
from arta.generation import Generation, Status
from arta.params import GenerationParams
from arta.polling.learned import LearnedPollPolicy, Timeline, default_poll_policy
from arta.polling.model import DurationModel, QueueModel
from arta.polling.queue import QueueView
from arta.polling.stats import FORMAT, ClassStats, PollStats, StatsState

NO_JITTER = arta.PollPolicy(jitter=0)


class Clock:
    """A clock that moves only when a test moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def params(style: str = "Flux", steps: int = 30, n: int = 1, ratio: str = "1:1") -> GenerationParams:
    return GenerationParams.create("a fox", style=style, steps=steps, n=n, aspect_ratio=ratio,
                                   seed=1)


def play(policy: LearnedPollPolicy, clock: Clock, duration: float, queue: float = 0.0,
         p: GenerationParams | None = None, record_id: str = "job",
         max_polls: int = 10_000) -> tuple[list[float], float]:
    """Run one job through ``policy``: return its delays and how late DONE was seen."""
    generation = Generation(record_id, params=p or params())
    submitted = clock.now
    start, end = submitted + queue, submitted + queue + duration
    generation.status = Status.IN_QUEUE if queue > 0 else Status.IN_PROGRESS
    generation.seen.append((clock.now, generation.status))
    delays: list[float] = []
    while len(delays) < max_polls:
        delay = policy.next_delay(generation, len(delays) + 1)
        delays.append(delay)
        clock.now += delay
        status = (Status.IN_QUEUE if clock.now < start else
                  Status.IN_PROGRESS if clock.now < end else Status.DONE)
        generation.seen.append((clock.now, status))
        generation.status = status
        if status is Status.DONE:
            policy.finished(generation)
            return delays, clock.now - end
    return delays, math.inf


def learned(tmp_path: Path, clock: Clock, **options: object) -> LearnedPollPolicy:
    stats = PollStats(tmp_path / "poll_stats.json", flush_interval=0)
    return LearnedPollPolicy(stats=stats, clock=clock, fallback=NO_JITTER, **options)  # type: ignore[arg-type]


def test_cold_start_polls_exactly_like_the_fixed_default(tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    job = Generation("cold", params=params())
    job.seen.append((clock.now, Status.IN_QUEUE))
    assert [policy.next_delay(job, a) for a in range(1, 12)] == \
        [NO_JITTER.next_delay(job, a) for a in range(1, 12)]
    assert policy.timeout == NO_JITTER.timeout
    for index in range(policy.min_observations - 1):  # not yet enough to go by
        play(policy, clock, 10.0, record_id=f"warm{index}")
    assert [policy.next_delay(job, a) for a in range(1, 12)] == \
        [NO_JITTER.next_delay(job, a) for a in range(1, 12)]


def test_the_estimate_converges_to_the_true_duration_from_coarse_intervals() -> None:
    # Polls every 2 s at a random phase bound each 10 s (+-5%) job to a ~4 s
    # wide interval; the interval-censored fit still finds 10 s.
    rng = random.Random(3)
    stats = PollStats("/nonexistent/never-written.json")
    key = ("Flux", 30, 1, "1:1")
    for index in range(40):
        start = rng.uniform(0, 2)  # the job started between the polls at 0 and 2
        end = start + 10 * rng.uniform(0.95, 1.05)
        end_by = 2 * math.ceil(end / 2)
        stats.state().classes.setdefault(key, ClassStats()).add(
            [(end_by - 2 - 2, end_by - 0, float(index))], 1, keep=40)
    model = DurationModel.fit(stats.state(), half_life=1000)
    assert model is not None
    mu, sigma = model.predict(key)
    assert math.exp(mu) == pytest.approx(10, rel=0.04)
    assert sigma < 0.2  # the spread, too, is the jobs', not the polls'


def test_a_learned_class_is_polled_near_its_end_with_few_requests(tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    fixed_delays, _ = play(arta.PollPolicy(jitter=0), clock, 12.0)  # type: ignore[arg-type]
    rng = random.Random(5)
    for index in range(12):
        play(policy, clock, 12.0 * rng.uniform(0.95, 1.05), record_id=f"j{index}")
    polls, late = [], []
    for index in range(10):
        delays, lateness = play(policy, clock, 12.0 * rng.uniform(0.95, 1.05), record_id=f"k{index}")
        polls.append(len(delays))
        late.append(lateness)
    assert sum(polls) / len(polls) < len(fixed_delays) / 2
    assert sorted(late)[5] < 0.6  # the median: the fixed policy is about 1 s late here


def test_it_replans_when_the_job_leaves_the_queue(tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(8):  # jobs wait 0-8 s in the queue, then run 10 s
        play(policy, clock, 10.0, queue=index, record_id=f"q{index}")
    job = Generation("now", params=params())
    job.seen.append((clock.now, Status.IN_QUEUE))
    job.seen.append((clock.now + 1.0, Status.IN_QUEUE))
    clock.now += 1.0
    while_queued = policy.next_delay(job, 2)
    assert while_queued < 5  # it probes for the start, not for the far end
    clock.now += 0.5
    job.seen.append((clock.now, Status.IN_PROGRESS))
    job.status = Status.IN_PROGRESS
    assert 8 < policy.next_delay(job, 3) < 10.5  # the end is now about 10 s away


def test_recent_jobs_outweigh_old_ones_after_the_service_slows_down(tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(30):
        play(policy, clock, 10.0, record_id=f"fast{index}")
    polls = []
    for index in range(30):  # every job twice as slow from here on
        delays, lateness = play(policy, clock, 20.0, record_id=f"slow{index}")
        polls.append(len(delays))
        assert lateness < 3.1  # never worse than the fallback's bounded interval
    durations, _ = policy.models()
    assert durations is not None
    assert math.exp(durations.predict(("Flux", 30, 1, "1:1"))[0]) == pytest.approx(20, rel=0.1)
    # the first slow jobs cost polls (they outlive the old prediction); the last do not
    assert sum(polls[-10:]) / 10 <= 5 < min(polls[:3])


def test_a_job_far_past_its_prediction_is_polled_at_a_bounded_interval_forever(tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(10):
        play(policy, clock, 5.0, record_id=f"short{index}")
    delays, lateness = play(policy, clock, 600.0, record_id="stuck")
    assert lateness <= NO_JITTER.max_delay
    elapsed = [sum(delays[:i]) for i in range(len(delays))]
    late_delays = [d for d, at in zip(delays, elapsed) if at > 60]  # long past 5 s
    assert all(policy.min_delay <= d <= NO_JITTER.max_delay for d in late_delays)
    assert len(delays) > 600 / NO_JITTER.max_delay  # it kept polling all along


def test_a_job_resumed_by_id_or_without_data_uses_the_fallback(tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(5):
        play(policy, clock, 5.0, record_id=f"j{index}")
    resumed = Generation("resumed")  # no parameters: its class is unknown
    resumed.seen.append((clock.now, Status.IN_PROGRESS))
    assert [policy.next_delay(resumed, a) for a in (1, 2, 3)] == \
        [NO_JITTER.next_delay(resumed, a) for a in (1, 2, 3)]


def test_a_finished_job_is_learned_once_however_often_it_is_reported(tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    job = Generation("twice", params=params())
    job.seen += [(0.0, Status.IN_QUEUE), (1.0, Status.IN_PROGRESS), (9.0, Status.IN_PROGRESS),
                 (10.0, Status.DONE)]
    job.status = Status.DONE
    policy.finished(job)
    policy.finished(job)
    assert policy.stats.state().classes[("Flux", 30, 1, "1:1")].count == 1
    assert Timeline.of(job).duration() == (8.0, 10.0, 10.0)
    assert Timeline.of(job).queue() == (0.0, 1.0, 1.0)


def test_a_new_process_starts_warm_from_the_shared_file(tmp_path: Path) -> None:
    clock = Clock()
    first = learned(tmp_path, clock)
    for index in range(5):
        play(first, clock, 8.0, record_id=f"j{index}")
    first.stats.flush()
    fresh = LearnedPollPolicy(stats=PollStats(tmp_path / "poll_stats.json"), clock=clock)
    job = Generation("new", params=params())
    job.seen.append((clock.now, Status.IN_QUEUE))
    assert fresh.plan(job) is not None
    durations, queue = fresh.models()
    assert durations is not None and queue is not None


def test_default_policy_is_learned_unless_arta_poll_is_fixed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.resolve(home=tmp_path)
    policy = default_poll_policy(settings)
    assert isinstance(policy, LearnedPollPolicy)
    assert policy.stats.path == tmp_path / "poll_stats.json"
    monkeypatch.setenv("ARTA_POLL", "fixed")  # read with the rest of the environment
    assert default_poll_policy(Settings.resolve(home=tmp_path)) == arta.PollPolicy()
    with arta.Client(home=tmp_path) as client:
        assert client.poll_policy == arta.PollPolicy()
    monkeypatch.setenv("ARTA_POLL", "sometimes")
    with pytest.raises(arta.ConfigurationError, match="ARTA_POLL must be 'learned'"):
        arta.Client(home=tmp_path)


def test_queue_model_gives_the_recent_waits_quantiles() -> None:
    model = QueueModel([(1.0, 1.0), (3.0, 1.0), (4.0, 1.0), (9.0, 1.0)])
    assert model.quantile(0.5) == 3.0
    assert model.quantile(0.5, longer_than=3.5) == 4.0  # given the job has waited 3.5 s
    assert model.quantile(0.5, longer_than=10.0) is None  # longer than any job seen


def test_a_queued_job_is_known_started_once_a_job_submitted_after_it_is_seen_running(
        tmp_path: Path) -> None:
    # In a first-in-first-out queue every job's polls bound the others' starts.
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(8):
        play(policy, clock, 10.0, record_id=f"warm{index}")
    t0 = clock.now
    first, second = Generation("first", params=params()), Generation("second", params=params())
    first.seen += [(t0, Status.IN_QUEUE), (t0 + 4.0, Status.IN_QUEUE)]
    second.seen += [(t0 + 1.0, Status.IN_QUEUE), (t0 + 5.0, Status.IN_PROGRESS)]
    first.status, second.status = Status.IN_QUEUE, Status.IN_PROGRESS
    clock.now = t0 + 5.0
    policy.next_delay(first, 2)
    policy.next_delay(second, 2)
    # "first" started between 4 and 5 s: its end is ~10 s later, not a probe away
    assert 7.0 < policy.next_delay(first, 3) < 10.0


def test_the_model_is_fitted_when_the_statistics_change_not_at_every_poll(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(6):
        play(policy, clock, 10.0, record_id=f"warm{index}")
    policy.models()  # fitted to the six
    fits: list[int] = []
    real_fit = DurationModel.fit
    monkeypatch.setattr(DurationModel, "fit", classmethod(
        lambda cls, *args, **kwargs: fits.append(1) or real_fit(*args, **kwargs)))
    job = Generation("running", params=params())
    job.seen.append((clock.now, Status.IN_PROGRESS))
    job.status = Status.IN_PROGRESS
    for attempt in range(1, 40):  # polls of a running job, a second apart: nothing new learned
        clock.now += 1.0
        job.seen.append((clock.now, Status.IN_PROGRESS))
        policy.next_delay(job, attempt)
    assert fits == []
    play(policy, clock, 10.0, record_id="one more")  # the statistics change: one fit
    policy.next_delay(job, 40)
    policy.next_delay(job, 41)
    assert len(fits) == 1


@pytest.mark.parametrize("durations", [[1e-9, 86400.0], [86400.0], [1e-9], [0.0, 3.0, 86400.0]])
def test_no_statistics_file_can_make_a_job_poll_faster_than_a_quarter_second_or_fail(
        tmp_path: Path, durations: list[float]) -> None:
    # issue 19, item 3: the file is another process's (or a hostile server's) doing
    recent = [[d, d, 1000.0 + i] for i, d in enumerate(durations * 4)]
    classes = [{"style": style, "steps": steps, "n": 1, "aspect_ratio": "1:1", "count": 8,
                "recent": recent} for style, steps in (("Flux", 10), ("Anime", 50))]
    (tmp_path / "poll_stats.json").write_text(json.dumps({
        "format": FORMAT, "classes": classes,
        "queue": {"count": 8, "recent": [[0.0, 86400.0, 1000.0]] * 8}}), encoding="utf-8")
    clock = Clock()
    policy = LearnedPollPolicy(stats=PollStats(tmp_path / "poll_stats.json"), clock=clock)
    for p, status in ((params(steps=30), Status.IN_PROGRESS), (params("Anime", 150, 4, "9:21"),
                                                               Status.IN_QUEUE)):
        job = Generation("hostile", params=p)
        job.seen.append((clock.now, status))
        delays = [policy.next_delay(job, attempt) for attempt in range(1, 30)]
        assert all(policy.min_delay <= d <= policy.max_delay and math.isfinite(d) for d in delays)


def test_the_start_bounds_from_other_jobs_stop_when_the_queue_is_not_first_in_first_out() -> None:
    view = QueueView()
    view.see("a", 0.0, 0.0, None)  # submitted at 0, queued
    view.see("b", 1.0, None, 2.0)  # submitted after it, seen running at 2
    assert view.start_bounds(0.0, 0.0, math.inf) == (0.0, 2.0)  # so "a" started by 2
    view.see("a", 0.0, 3.0, None)  # yet "a" is seen queued at 3: the order does not hold
    assert view.start_bounds(0.0, 3.0, math.inf) == (3.0, math.inf)
    assert not view.fifo and view.start_bounds(5.0, 6.0, math.inf) == (6.0, math.inf)


def test_the_learned_duration_is_where_the_end_fell_not_the_middle_of_its_last_gap(
        tmp_path: Path) -> None:
    # The polls crowd just after each predicted end, so a job ends late in the gap
    # before the poll that sees it DONE: its middle would learn every job too short.
    clock = Clock()
    policy = learned(tmp_path, clock)
    rng = random.Random(7)
    for index in range(40):
        play(policy, clock, 12.0 * rng.uniform(0.97, 1.03), record_id=f"j{index}")
    durations, _ = policy.models()
    assert durations is not None
    assert math.exp(durations.predict(("Flux", 30, 1, "1:1"))[0]) == pytest.approx(12, rel=0.02)


def test_a_queued_job_is_polled_before_it_could_be_done_however_long_others_queued(
        tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(8):  # jobs of 10 s, after a minute or more in the queue
        play(policy, clock, 10.0, queue=60.0 + index, record_id=f"q{index}")
    job = Generation("new", params=params())
    job.seen.append((clock.now, Status.IN_QUEUE))
    # had this one started at once (a queue's length changes), it could end in 9 s: it is
    # polled within max_lateness (3 s) of that, as a running job would be
    assert policy.next_delay(job, 1) < 9.0 + policy.max_lateness


def test_a_job_overdue_after_a_slow_down_is_planned_again_once_the_model_catches_up(
        tmp_path: Path) -> None:
    clock = Clock()
    policy = learned(tmp_path, clock)
    for index in range(10):
        play(policy, clock, 10.0, record_id=f"fast{index}")
    job = Generation("slow", params=params())
    job.seen.append((clock.now, Status.IN_PROGRESS))
    job.status = Status.IN_PROGRESS
    started = clock.now
    while clock.now < started + 17.0:  # far past every prediction of a 10 s job: overdue
        clock.now += policy.next_delay(job, len(job.seen))
        job.seen.append((clock.now, Status.IN_PROGRESS))
    assert policy.next_delay(job, len(job.seen)) <= 3.0
    for index in range(15):  # meanwhile other jobs of the same kind took 30 s
        policy.stats.record(("Flux", 30, 1, "1:1"), (29.9, 30.1, clock.now), None)
    clock.now += 1.0  # (the model is refitted at most once a second)
    job.seen.append((clock.now, Status.IN_PROGRESS))
    assert 3.0 < policy.next_delay(job, len(job.seen)) < 30 - (clock.now - started)


def test_the_first_in_first_out_inference_is_tried_again_after_a_break_has_aged_out() -> None:
    view = QueueView()
    view.see("a", 0.0, 0.0, None)
    view.see("b", 1.0, None, 2.0)
    view.see("a", 0.0, 3.0, None)
    assert view.start_bounds(0.0, 3.0, math.inf) == (3.0, math.inf) and not view.fifo
    view.see("c", 1000.0, 1000.0, None)  # long after: the order may hold again
    view.see("d", 1001.0, None, 1005.0)
    assert view.fifo and view.start_bounds(1000.0, 1000.0, math.inf) == (1000.0, 1005.0)


def play_burst(policy: LearnedPollPolicy, clock: Clock, jobs: int, slots: int,
               seconds: float) -> list[tuple[int, float]]:
    """Submit ``jobs`` at once into a first-in-first-out queue of ``slots`` jobs of ``seconds``
    each, and poll each as the loop would: each job's (polls, lateness). The submits reach the
    service over 0.4 s, and their answers come back up to 0.135 s late (as measured)."""
    t0, ends = clock.now, [clock.now] * slots
    timeline, generations = [], []
    for index in range(jobs):
        start = min(ends)
        ends[ends.index(start)] = start + seconds * (1 + 0.05 * math.sin(index))
        timeline.append((start, start + seconds * (1 + 0.05 * math.sin(index))))
        job = Generation(f"b{index}", params=params())
        job.status = Status.IN_QUEUE if start > t0 else Status.IN_PROGRESS
        job.seen.append((t0 + 0.4 * index / jobs + 0.015 * ((index * 37) % 10), job.status))
        generations.append(job)
    due = sorted((policy.next_delay(g, 1) + g.seen[0][0], i) for i, g in enumerate(generations))
    out: list[tuple[int, float]] = [(0, 0.0)] * jobs
    while due:
        clock.now, index = due.pop(0)
        job, (start, end) = generations[index], timeline[index]
        job.status = (Status.IN_QUEUE if clock.now < start else
                      Status.IN_PROGRESS if clock.now < end else Status.DONE)
        job.seen.append((clock.now, job.status))
        if job.status is Status.DONE:
            policy.finished(job)
            out[index] = (len(job.seen) - 1, clock.now - end)
        else:
            due.append((clock.now + policy.next_delay(job, len(job.seen)), index))
            due.sort()
    return out


def test_the_jobs_deep_in_a_burst_are_polled_a_few_times_not_all_along_their_wait(
        tmp_path: Path) -> None:
    # 96 jobs at once into 8 slots of 10 s: the last wait 110 s; a fixed 2 s poll asks 60 times.
    # Their places in the queue are known only roughly (the submits' answers come back
    # shuffled), but a job the head of the queue has reached is about to start: not polled
    # every 1.5 s from there as if it had queued longer than any job seen.
    clock = Clock()
    policy = learned(tmp_path, clock)
    play_burst(policy, clock, 24, 8, 10.0)  # the warm-up: the rate at which jobs end
    clock.now += 5.0
    polls, lateness = zip(*play_burst(policy, clock, 96, 8, 10.0))
    assert sum(polls) / len(polls) < 13 and sorted(lateness)[48] < 1.0


def test_a_change_of_the_services_speed_is_learned_from_three_jobs_not_a_dozen() -> None:
    state = StatsState()
    key = ("Flux", 30, 1, "1:1")
    state.classes[key] = ClassStats(0, 0.0, [(9.9, 10.1, float(at)) for at in range(30)])
    state.classes[key].recent += [(19.9, 20.1, 100.0 + at) for at in range(3)]  # twice as slow
    model = DurationModel.fit(state)
    assert model is not None
    assert math.exp(model.predict(key)[0]) == pytest.approx(20.0, rel=0.1)


def three_jobs_running_late(tmp_path: Path, clock: Clock,
                            ) -> tuple[LearnedPollPolicy, list[Generation]]:
    """A policy that learned 10 s jobs, and three jobs since that have run 15-17 s (polled)."""
    policy = learned(tmp_path, clock)
    for index in range(10):
        play(policy, clock, 10.0, record_id=f"fast{index}")
    late = [Generation(f"late{index}", params=params()) for index in range(3)]
    for index, job in enumerate(late):
        job.seen.append((clock.now + index, Status.IN_PROGRESS))
    clock.now += 17.0
    for job in late:
        job.seen.append((clock.now, Status.IN_PROGRESS))
        policy.next_delay(job, 2)
    return policy, late


def test_jobs_running_far_past_their_prediction_move_the_plan_of_the_jobs_after_them(
        tmp_path: Path) -> None:
    # Three jobs late by half their time say the service slowed down before any of them
    # ends: a job submitted after them is not polled at the old prediction's end.
    clock = Clock()
    policy, _ = three_jobs_running_late(tmp_path, clock)
    after = Generation("after", params=params())
    after.seen += [(clock.now - 9.0, Status.IN_PROGRESS), (clock.now, Status.IN_PROGRESS)]
    # a 10 s job that has run 9 s: polled within a second or two, unless the service slowed
    assert policy.next_delay(after, 2) > 4.0


def test_stuck_jobs_do_not_move_the_plan_once_a_job_after_them_ends_as_predicted(
        tmp_path: Path) -> None:
    # Three jobs that never end look like a slow-down, until a job submitted after them
    # ends on time: then they were three stuck jobs, and the jobs after them are planned
    # as the model says.
    clock = Clock()
    policy, stuck = three_jobs_running_late(tmp_path, clock)
    play(policy, clock, 10.0, record_id="on time")  # submitted after them, 10 s as ever
    for job in stuck:
        job.seen.append((clock.now, Status.IN_PROGRESS))
        policy.next_delay(job, 3)
    after = Generation("after", params=params())
    after.seen.append((clock.now - 9.0, Status.IN_PROGRESS))
    after.seen.append((clock.now, Status.IN_PROGRESS))
    assert policy.next_delay(after, 2) < 3.0  # a 10 s job 9 s in: soon done
