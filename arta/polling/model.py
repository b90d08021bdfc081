"""How long a job will be in progress, and wait in the queue: models fitted to the statistics.

A regression of log seconds on the work (style, steps, images, megapixels),
fitted to every job at once, plus a ``level`` that follows the service's
speed through time (docs/polling.rst has the formula and why).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass

from arta.polling.stats import MAX_SECONDS, ClassKey, StatsState
from arta.styles import aspect_ratio_size

__all__ = ["DurationModel", "QueueModel", "features"]

#: The slopes before data says otherwise (no curvature), and that belief's weight
#: (in jobs x log-units^2).
_PRIOR_SLOPES, _SLOPE_WEIGHT = (0.5, 0.5, 0.5, 0.0), 0.1
#: The spread (log seconds) before data says otherwise, and its weight in jobs.
_PRIOR_SIGMA, _SIGMA_WEIGHT = 0.3, 1.0
_MIN_SIGMA, _MAX_SIGMA = 0.03, 2.0
#: The shortest in-progress time the model takes seriously (seconds).
_SHORTEST = 0.05
#: How far each job moves the level (its half-life is 4 jobs): a change of speed is followed.
_LEVEL_GAIN = 1 - 0.5 ** (1 / 4)
#: log(steps x images x megapixels) of a common job (30 steps, one 1:1 image).
_COMMON_WORK = math.log(30 * 1.048576)


@functools.lru_cache(maxsize=4096)
def features(steps: int, n: int, aspect_ratio: str) -> tuple[float, ...]:
    """``(log steps, log images, log megapixels, curvature)`` of a job (1024 px on the long side)."""
    width, height = aspect_ratio_size(aspect_ratio, 1024)
    logs = (math.log(steps), math.log(n), math.log(width * height / 1e6))
    return (*logs, (sum(logs) - _COMMON_WORK) ** 2)


def recency_weights(count: int, half_life: float) -> list[float]:
    """``0.5 ** (age / half_life)`` for ``count`` observations sorted oldest first (age 0: newest)."""
    return [0.5 ** ((count - 1 - index) / half_life) for index in range(count)]


#: Per class: the weight and the weighted sum of its observations' log seconds.
_Sums = dict[ClassKey, list[float]]


@dataclass
class DurationModel:
    """The fitted regression; :meth:`predict` answers any class."""

    alpha: dict[str, float]
    alpha_mean: float
    slopes: tuple[float, ...]
    level: float = 0.0
    sigma: float = _PRIOR_SIGMA

    @classmethod
    def fit(cls, state: StatsState, half_life: float = 40.0) -> DurationModel | None:
        """Fit the model to ``state``'s in-progress observations; None if there are none."""
        raw = sorted(((at, key, lo, hi) for key, stats in state.classes.items()
                      for lo, hi, at in stats.recent if hi > 0), key=lambda item: item[0])
        if not raw:
            return None
        weights = recency_weights(len(raw), half_life)
        ys = [math.log(max(_SHORTEST, (lo + hi) / 2)) for _, _, lo, hi in raw]
        halves = [math.log(hi / max(lo, hi / 4)) / 2 for _, _, lo, hi in raw]  # (log) half-widths
        model, offsets, spread = cls({}, 0.0, _PRIOR_SLOPES), [0.0] * len(raw), _PRIOR_SIGMA
        for _ in range(2):  # the regression on the jobs' times net of the level when they ran
            sums: _Sums = defaultdict(lambda: [0.0, 0.0])
            for (_, key, _, _), y, offset, w in zip(raw, ys, offsets, weights):
                sums[key][0] += w
                sums[key][1] += w * (y - offset)
            model._fit_slopes(sums)
            model._fit_levels(sums)
            # the level through time: each job predicted from the jobs before it
            level, offsets, surprises, since = 0.0, [], [], -len(raw)  # (no change seen)
            for (_, key, _, _), y in zip(raw, ys):
                offsets.append(level)
                surprises.append(y - model._mean(key) - level)
                # three far surprises of one sign among the last five (far beyond their own
                # interval): the speed changed; the level moves at once, then is the mean of
                # the jobs since, for a half-life
                first = max(0, since, len(surprises) - 5)
                far = sorted(e for e, half in zip(surprises[first:], halves[first:])
                             if abs(e) - half > 3 * spread)
                if len(far) >= 3 and far[0] * far[-1] > 0:
                    level, since = level + far[len(far) // 2], len(surprises)
                else:
                    level += max(_LEVEL_GAIN, 1 / (len(surprises) - since + 1)) * surprises[-1]
            model.level = level
            # the spread of those surprises (robust: the few just after a change of speed
            # are large); less what the intervals' own widths account for, below
            spread = 1.4826 * _weighted_median([abs(e) for e in surprises], weights)
        total = sum(weights)
        widths = sum(w * half * half / 3 for w, half in zip(weights, halves)) / total
        variance = (total * max(0.0, spread * spread - widths)
                    + _SIGMA_WEIGHT * _PRIOR_SIGMA ** 2) / (total + _SIGMA_WEIGHT)
        model.sigma = max(_MIN_SIGMA, math.sqrt(variance))
        return model

    def _mean(self, key: ClassKey) -> float:
        """The regression's log seconds for ``key``, before ``level``."""
        x = features(key[1], key[2], key[3])
        return self.alpha.get(key[0], self.alpha_mean) + sum(b * xi for b, xi in zip(self.slopes, x))

    def _fit_levels(self, sums: _Sums) -> None:
        """Each style's level given the slopes, pooled toward their mean (one job's weight)."""
        by_style: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for key, (w, y) in sums.items():
            x = features(key[1], key[2], key[3])
            pair = by_style[key[0]]
            pair[0] += y - w * sum(b * xi for b, xi in zip(self.slopes, x))
            pair[1] += w
        self.alpha_mean = sum(p[0] for p in by_style.values()) / sum(p[1] for p in by_style.values())
        self.alpha = {style: (p[0] + self.alpha_mean) / (p[1] + 1.0) for style, p in by_style.items()}

    def _fit_slopes(self, sums: _Sums) -> None:
        """The slopes, from the variation within each style: ridge least squares toward the prior."""
        size = len(_PRIOR_SLOPES)
        centre: dict[str, list[float]] = defaultdict(lambda: [0.0] * (2 + size))  # w, y, x...
        for key, (w, y) in sums.items():
            c = centre[key[0]]
            c[0] += w
            c[1] += y
            for i, xi in enumerate(features(key[1], key[2], key[3])):
                c[2 + i] += w * xi
        a = [[_SLOPE_WEIGHT if i == j else 0.0 for j in range(size)] for i in range(size)]
        b = [_SLOPE_WEIGHT * prior for prior in _PRIOR_SLOPES]
        for key, (w, y) in sums.items():
            c = centre[key[0]]
            dx = [xi - c[2 + i] / c[0] for i, xi in enumerate(features(key[1], key[2], key[3]))]
            dy = y - w * c[1] / c[0]
            for i in range(size):
                b[i] += dx[i] * dy
                for j in range(size):
                    a[i][j] += w * dx[i] * dx[j]
        self.slopes = _solve(a, b)

    def predict(self, key: ClassKey) -> tuple[float, float]:
        """``(mu, sigma)`` of log in-progress seconds for a job of class ``key``.

        The spread is wider for a style never seen.
        """
        # bounded whatever the file held: the plan computes exp(mu + sigma^2 / 2)
        mu = min(math.log(MAX_SECONDS), max(math.log(_SHORTEST), self._mean(key) + self.level))
        sigma = self.sigma if key[0] in self.alpha else math.hypot(self.sigma, 0.25)
        return mu, min(sigma, _MAX_SIGMA)


def _weighted_median(values: list[float], weights: list[float]) -> float:
    """The value below which half the weight lies."""
    pairs = sorted(zip(values, weights))
    half, cumulative = sum(weights) / 2, 0.0
    for value, weight in pairs:
        cumulative += weight
        if cumulative >= half:
            return value
    return pairs[-1][0]


def _solve(a: list[list[float]], b: list[float]) -> tuple[float, ...]:
    """Solve ``a x = b`` for a small symmetric positive definite ``a`` (Gaussian elimination)."""
    size = len(b)
    rows = [list(row) + [value] for row, value in zip(a, b)]
    for i in range(size):
        for j in range(i + 1, size):
            factor = rows[j][i] / rows[i][i]
            rows[j] = [x - factor * y for x, y in zip(rows[j], rows[i])]
    x = [0.0] * size
    for i in reversed(range(size)):
        x[i] = (rows[i][size] - sum(rows[i][j] * x[j] for j in range(i + 1, size))) / rows[i][i]
    return tuple(x)


@dataclass
class QueueModel:
    """Queue waits: the recency-weighted quantiles of the observed waits' midpoints."""

    waits: list[tuple[float, float]]  # (seconds, weight), sorted

    @classmethod
    def fit(cls, state: StatsState, half_life: float = 10.0) -> QueueModel | None:
        """The waits of ``state``'s queue observations; None if there are none."""
        recent = state.queue.recent
        if not recent:
            return None
        weights = recency_weights(len(recent), half_life)
        return cls(sorted(((lo + hi) / 2, w) for (lo, hi, _), w in zip(recent, weights)))

    def quantile(self, q: float, longer_than: float = 0.0) -> float | None:
        """The ``q``-quantile of the wait, given it is longer than ``longer_than``; None if none was."""
        waits = [(s, w) for s, w in self.waits if s > longer_than]
        total = sum(w for _, w in waits)
        cumulative = 0.0
        for seconds, weight in waits:
            cumulative += weight
            if cumulative >= q * total:
                return seconds
        return None
