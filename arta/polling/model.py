"""How long a job will be in progress, and wait in the queue: estimated from intervals.

A diffusion job's in-progress time follows from what it computes. The model
is, in log seconds::

    log D = alpha[style] + beta * log(steps * n * megapixels) + gamma[class] + noise

with ``noise ~ N(0, sigma^2)``. ``alpha`` is a per-style level, ``beta``
how time scales with the work (1: proportional), ``gamma`` what a class
(style, steps, n, aspect ratio) does beyond that. Each is pooled toward
something broader when data is thin: ``gamma`` toward 0, a style's
``alpha`` toward the mean of all styles, ``beta`` toward 1. So a class
seen often is predicted from its own jobs, a new class of a known style by
scaling that style's jobs by their work, and a new style from the others,
with a wider spread.

Every observation is an interval: a poll that found the job IN_QUEUE and
the next that found it IN_PROGRESS bound its start; the last IN_PROGRESS
and the first DONE bound its end. The fit is interval-censored maximum
likelihood by EM (the E step replaces each observation by its mean and
variance under the current normal, truncated to its interval), not the
interval's midpoint: a 3 s-wide interval from a coarse poll pulls the
estimate only as far as it says. Observations are weighted by recency
(``0.5 ** (age_rank / half_life)``, age counted in jobs across all
classes), so that a service that slows down is followed within a few
half-lives.

The queue wait depends on load, not on parameters: it is the recency
weighted mixture of the observed queue intervals (uniform within each).
"""

from __future__ import annotations

import bisect
import collections
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from arta.polling.stats import ClassKey, Interval, StatsState
from arta.styles import aspect_ratio_size

__all__ = ["DurationModel", "QueueModel", "Samples", "work_units"]

_NORMAL = NormalDist()
#: Equal-probability points of the standard normal, for sampling a lognormal.
_Z = tuple(_NORMAL.inv_cdf((i + 0.5) / 16) for i in range(16))
_Z_WIDE = tuple(_NORMAL.inv_cdf((i + 0.5) / 8) for i in range(8))
#: The share of the prediction given to "the model is wrong for this job": a
#: spread three times as wide, so that a job in the tail is not polled as if
#: it were about to end at every poll.
_WIDE_SHARE, _WIDE_FACTOR = 0.06, 3.0
#: The spread assumed before data says otherwise (log seconds), and its weight in jobs.
_PRIOR_SIGMA, _PRIOR_WEIGHT = 0.3, 0.5
_MIN_SIGMA = 0.02

#: Weighted points of a distribution, sorted by value: ``(value, weight)``.
Samples = list[tuple[float, float]]


def work_units(steps: int, n: int, aspect_ratio: str) -> float:
    """What a job computes: steps x images x megapixels (1024 px on the long side)."""
    width, height = aspect_ratio_size(aspect_ratio, 1024)
    return steps * n * width * height / 1e6


def recency_weights(times: Sequence[float], half_life: float) -> list[float]:
    """``0.5 ** (rank / half_life)``, rank 0 for the most recent time."""
    order = sorted(range(len(times)), key=lambda i: times[i], reverse=True)
    weights = [0.0] * len(times)
    for rank, index in enumerate(order):
        weights[index] = 0.5 ** (rank / half_life)
    return weights


def _truncated_moments(mean: float, sigma: float, lo: float, hi: float) -> tuple[float, float]:
    """Mean and variance of N(mean, sigma) restricted to [lo, hi] (lo may be -inf)."""
    a = (lo - mean) / sigma if lo > -math.inf else -math.inf
    b = (hi - mean) / sigma if hi < math.inf else math.inf
    mass = (_NORMAL.cdf(b) if b < math.inf else 1.0) - (_NORMAL.cdf(a) if a > -math.inf else 0.0)
    if mass < 1e-9:  # the interval is far in a tail: trust the interval itself
        if lo == -math.inf:
            return hi, 0.0
        if hi == math.inf:
            return lo, 0.0
        return (lo + hi) / 2, (hi - lo) ** 2 / 12
    pa, apa = (_NORMAL.pdf(a), a * _NORMAL.pdf(a)) if a > -math.inf else (0.0, 0.0)
    pb, bpb = (_NORMAL.pdf(b), b * _NORMAL.pdf(b)) if b < math.inf else (0.0, 0.0)
    shift = (pa - pb) / mass
    variance = sigma * sigma * max(0.0, 1 + (apa - bpb) / mass - shift * shift)
    return mean + sigma * shift, variance


@dataclass
class _Obs:
    key: ClassKey
    x: float  # log work units
    lo: float  # log seconds (-inf for 0)
    hi: float
    weight: float


@dataclass
class DurationModel:
    """The fitted model of in-progress time; :meth:`predict` answers a class."""

    alpha: dict[str, float]
    alpha_mean: float
    beta: float
    gamma: dict[ClassKey, float]
    class_weight: dict[ClassKey, float]
    sigma: float
    weight: float  # effective number of observations

    @classmethod
    def fit(cls, state: StatsState, half_life: float = 10.0, iterations: int = 6,
            running: Sequence[tuple[ClassKey, float, float]] = (),
            previous: DurationModel | None = None) -> DurationModel | None:
        """Fit the model to ``state``'s observations; None if there are none.

        ``running`` are jobs still in progress, ``(class, seconds so far,
        when they started)``: right-censored observations. Without them the
        first jobs to finish, the short ones, would teach that every job is
        short. ``previous`` (the last fit) is a warm start: two EM rounds
        then suffice.
        """
        raw: list[tuple[ClassKey, Interval]] = [
            (key, item) for key, stats in state.classes.items() for item in stats.recent]
        if not raw:
            return None
        # Recency by start time, for every job alike: the jobs started lately, the
        # short ones finished and the long ones still running, are a fair sample;
        # ranked by end time the running ones would all count as newest, and the
        # long jobs among them (most running jobs are long ones) would pull the fit.
        started = [at - (lo + hi) / 2 for _, (lo, hi, at) in raw]
        raw += [(key, (lo, math.inf, at)) for key, lo, at in running if lo > 0]
        started += [at for key, lo, at in running if lo > 0]
        weights = recency_weights(started, half_life)
        obs = [  # observations under 1% of the newest one's weight change nothing
            _Obs(key, math.log(work_units(key[1], key[2], key[3])),
                 math.log(lo) if lo > 0 else -math.inf,
                 math.log(max(hi, 1e-3)) if hi < math.inf else math.inf, weight)
            for (key, (lo, hi, _)), weight in zip(raw, weights) if weight >= 0.01
        ]
        model = cls({}, 0.0, 1.0, {}, defaultdict(float), _PRIOR_SIGMA, sum(o.weight for o in obs))
        for o in obs:
            model.class_weight[o.key] += o.weight
        z = [o.hi + math.log(0.5) if o.lo == -math.inf else o.lo if o.hi == math.inf
             else (o.lo + o.hi) / 2 for o in obs]
        v = [0.0] * len(obs)
        if previous is not None:
            model.alpha, model.alpha_mean = dict(previous.alpha), previous.alpha_mean
            model.beta, model.gamma = previous.beta, dict(previous.gamma)
            model.sigma, iterations = previous.sigma, min(iterations, 2)
            model._e_step(obs, z, v)
        for _ in range(iterations):
            model._m_step(obs, z, v)
            model._e_step(obs, z, v)
        model._m_step(obs, z, v)
        return model

    def _e_step(self, obs: list[_Obs], z: list[float], v: list[float]) -> None:
        """Each interval's mean and variance under the current normal, truncated to it."""
        for i, o in enumerate(obs):
            z[i], v[i] = _truncated_moments(self._mean(o.key, o.x), self.sigma, o.lo, o.hi)

    def _mean(self, key: ClassKey, x: float) -> float:
        return (self.alpha.get(key[0], self.alpha_mean) + self.beta * x
                + self.gamma.get(key, 0.0))

    def _m_step(self, obs: list[_Obs], z: list[float], v: list[float]) -> None:
        """Weighted least squares by alternation, each effect pooled toward its prior."""
        for _ in range(2):
            # style levels, shrunk toward their common mean (one job's weight)
            sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
            for o, zi in zip(obs, z):
                s = sums[o.key[0]]
                s[0] += o.weight * (zi - self.beta * o.x - self.gamma.get(o.key, 0.0))
                s[1] += o.weight
            total = sum(s[1] for s in sums.values())
            self.alpha_mean = sum(s[0] for s in sums.values()) / total
            self.alpha = {style: (s[0] + self.alpha_mean) / (s[1] + 1.0)
                          for style, s in sums.items()}
            # the slope on log work, from variation within styles, shrunk toward 1
            sxy, sxx = 1.0, 1.0
            centre = {style: 0.0 for style in sums}
            for o in obs:
                centre[o.key[0]] += o.weight * o.x / sums[o.key[0]][1]
            for o, zi in zip(obs, z):
                dx = o.x - centre[o.key[0]]
                sxy += o.weight * dx * (zi - self.gamma.get(o.key, 0.0))
                sxx += o.weight * dx * dx
            self.beta = sxy / sxx
            # class effects, shrunk toward 0 (two jobs' weight)
            residual: dict[ClassKey, float] = defaultdict(float)
            for o, zi in zip(obs, z):
                residual[o.key] += o.weight * (zi - self.alpha[o.key[0]] - self.beta * o.x)
            self.gamma = {key: r / (self.class_weight[key] + 2.0) for key, r in residual.items()}
        square = sum(o.weight * ((zi - self._mean(o.key, o.x)) ** 2 + vi)
                     for o, zi, vi in zip(obs, z, v))
        total = sum(o.weight for o in obs)
        variance = (square + _PRIOR_WEIGHT * _PRIOR_SIGMA ** 2) / (total + _PRIOR_WEIGHT)
        self.sigma = max(_MIN_SIGMA, math.sqrt(variance))

    def predict(self, key: ClassKey) -> tuple[float, float]:
        """``(mu, sigma)`` of log in-progress seconds for a job of class ``key``.

        The spread grows when the class has little data of its own, and
        more when its style has none.
        """
        x = math.log(work_units(key[1], key[2], key[3]))
        own = self.class_weight.get(key, 0.0)
        sigma = self.sigma * math.sqrt(1 + 1 / (own + 2))
        if key[0] not in self.alpha:
            sigma = math.hypot(sigma, 0.25)
        return self._mean(key, x), sigma

    def quantile(self, key: ClassKey, q: float) -> float:
        """The ``q``-quantile of class ``key``'s in-progress seconds (from the model, not points)."""
        mu, sigma = self.predict(key)
        return math.exp(mu + sigma * _NORMAL.inv_cdf(q))

    def samples(self, key: ClassKey) -> Samples:
        """Weighted points of the predicted in-progress seconds of class ``key``, sorted."""
        mu, sigma = self.predict(key)
        core = [(math.exp(mu + sigma * z), (1 - _WIDE_SHARE) / len(_Z)) for z in _Z]
        wide = [(math.exp(mu + _WIDE_FACTOR * sigma * z), _WIDE_SHARE / len(_Z_WIDE))
                for z in _Z_WIDE]
        return sorted(core + wide)


@dataclass
class QueueModel:
    """Queue waits: the recency-weighted mixture of observed intervals, uniform in each."""

    intervals: list[tuple[float, float, float]]  # (lo, hi, weight)

    @classmethod
    def fit(cls, state: StatsState, half_life: float = 10.0) -> QueueModel | None:
        """The mixture of ``state``'s queue observations; None if there are none."""
        recent = state.queue.recent
        if not recent:
            return None
        weights = recency_weights([item[2] for item in recent], half_life)
        return cls([(lo, hi, w) for (lo, hi, _), w in zip(recent, weights)])

    def spread(self) -> float:
        """From the 10% to the 90% quantile, in seconds."""
        points = self.samples(0.0, math.inf)
        return _quantile(points, 0.9) - _quantile(points, 0.1) if points else 0.0

    def samples(self, low: float, high: float, count: int = 24) -> Samples:
        """``count`` equal-weight points of the wait, given it is in ``(low, high]``.

        Empty if the observed waits put no weight there.
        """
        pieces = []
        for lo, hi, weight in self.intervals:
            a, b = max(lo, low), min(hi, high)
            if hi <= lo:  # a point
                if low < lo <= high:
                    pieces.append((lo, lo, weight))
            elif b > a:
                pieces.append((a, b, weight * (b - a) / (hi - lo)))
        total = sum(p[2] for p in pieces)
        if total <= 1e-12:
            return []
        qs = [(i + 0.5) / count for i in range(count)]
        return [(value, 1 / count) for value in _mixture_quantiles(pieces, total, qs)]


def _mixture_quantiles(pieces: list[tuple[float, float, float]], total: float,
                       qs: Sequence[float]) -> list[float]:
    """The ``qs``-quantiles (increasing) of a mixture of uniforms ``(a, b, weight)`` and points.

    The CDF is linear between breakpoints and jumps at points: it is
    evaluated at each breakpoint from both sides, then inverted in one sweep.
    """
    # One sweep over the sorted breakpoints (the pieces can number hundreds):
    # between two breakpoints the CDF grows at the summed density of the
    # uniforms covering them; a point adds its weight at its breakpoint.
    slope_at: dict[float, float] = collections.defaultdict(float)
    jump_at: dict[float, float] = collections.defaultdict(float)
    for a, b, w in pieces:
        if b > a:
            slope_at[a] += w / (b - a)
            slope_at[b] -= w / (b - a)
        else:
            jump_at[a] += w
    xs = sorted({x for a, b, _ in pieces for x in (a, b)})
    left, right = [], []
    mass = slope = 0.0
    previous = xs[0]
    for x in xs:
        mass += slope * (x - previous)
        left.append(mass / total)
        mass += jump_at.get(x, 0.0)
        right.append(mass / total)
        slope += slope_at.get(x, 0.0)
        previous = x
    out, i = [], 0
    for q in qs:
        while i < len(xs) - 1 and right[i] < q:
            i += 1
        if left[i] >= q and i > 0:  # inside the segment before xs[i]
            low, high = right[i - 1], left[i]
            share = (q - low) / (high - low) if high > low else 1.0
            out.append(xs[i - 1] + share * (xs[i] - xs[i - 1]))
        else:  # at xs[i] (a point's jump, or the first breakpoint)
            out.append(xs[i])
    return out


def _quantile(points: Samples, q: float) -> float:
    """The weighted q-quantile of sorted ``points``."""
    total = sum(w for _, w in points)
    cumulative = 0.0
    for value, weight in points:
        cumulative += weight
        if cumulative >= q * total:
            return value
    return points[-1][0]


def convolve(starts: Samples, durations: Samples) -> Samples:
    """The sorted weighted points of start + duration."""
    return sorted((s + d, ws * wd) for s, ws in starts for d, wd in durations)


def after(points: Samples, t: float) -> Samples:
    """The points later than ``t`` (``points`` sorted)."""
    return points[bisect.bisect_right(points, (t, math.inf)):]
