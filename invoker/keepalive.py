"""Adaptive keep-alive: the hybrid histogram policy of Shahrad et al., "Serverless in the Wild"
(USENIX ATC 2020, §4.2, https://www.usenix.org/conference/atc20/presentation/shahrad).

Per function, a histogram of *idle times* — from the end of one invocation to the start of the
next — decides two windows after each call: wait ``prewarm_s`` with no worker, then keep one
warm until ``keep_alive_s``. A function called every 30 s thus holds a worker for ~4 s of each
gap instead of the whole gap, with no extra cold start; an unpredictable function gets the
platform's fixed window, as without this policy.

Pure, synchronous and self-contained: the worker pool asks, the pool acts, and ``bench/``
replays traces against the same object.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Windows:
    """What to do with a function's workers once an invocation ends."""

    #: 0: keep the worker warm right after the call; > 0: stop it now and start one again this
    #: long (seconds) after the last call ended.
    prewarm_s: float
    #: Keep a warm worker until this long (seconds) after the last call ended; >= ``prewarm_s``.
    keep_alive_s: float
    #: One line for the decision log, saying which rule chose these windows and on what evidence.
    reason: str

    def __post_init__(self) -> None:
        if not 0 <= self.prewarm_s <= self.keep_alive_s:
            raise ValueError(f"windows need 0 <= prewarm_s <= keep_alive_s, got prewarm_s={self.prewarm_s!r}, "
                             f"keep_alive_s={self.keep_alive_s!r}")


class _Histogram:
    """Idle times of one function: counts per bin (only the bins seen, so memory is bounded by
    the number of bins), the seen bins in order, and what the policy's rules need in O(1)."""

    __slots__ = ("counts", "occupied", "in_range", "out_of_bounds", "sum_sq", "last_end")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.occupied: list[int] = []  # sorted keys of counts, grown only when a new bin is hit
        self.in_range = 0
        self.out_of_bounds = 0
        self.sum_sq = 0  # sum of squared bin counts, for the coefficient of variation
        self.last_end: float | None = None


class KeepAlivePolicy:
    """Windows per function from its idle-time histogram, or the fixed window when that
    histogram cannot be trusted.

    Rules, in order (the first that applies decides):

    1. ``override_s`` given (the function's ``--keep-alive``): ``Windows(0, override_s)``.
    2. ``adaptive`` off: the fixed window, ``Windows(0, fixed_s)``.
    3. Fewer than ``min_samples`` idle times: the fixed window.
    4. Half or more of the idle times beyond ``range_s``: the fixed window. The paper forecasts
       these functions' next idle time with ARIMA; a fixed window is what they get without
       this policy, so nothing is lost and no model has to be fitted on the hot path.
    5. Bin counts too even (coefficient of variation below ``min_cv``): the fixed window.
    6. Otherwise pre-warm = the ``head_pct`` percentile rounded down to a bin edge, less
       ``margin``; keep-alive = the ``tail_pct`` percentile rounded up to a bin edge, plus
       ``margin``. Percentiles are over the idle times within range, as in the paper; a
       pre-warm under one bin becomes 0 (keep the worker warm after the call).

    Not thread-safe: one owner (the pool's event loop) calls it.
    """

    def __init__(self, fixed_s: float = 600.0, *, adaptive: bool = True, bin_s: float = 1.0,
                 range_s: float = 4 * 3600.0, min_samples: int = 10, min_cv: float = 2.0, head_pct: float = 5.0,
                 tail_pct: float = 99.0, margin: float = 0.10) -> None:
        """
        :param fixed_s: the fallback keep-alive, seconds; 600 is AWS Lambda's (the paper's baseline).
        :param adaptive: False: always the fixed window (the policy only records).
        :param bin_s: histogram bin width, seconds. The paper's 60 s came from its trace's
            one-minute resolution; 1 s lets a function called every 30 s get a 27 s pre-warm
            and a 34 s keep-alive instead of 0 and 66 s.
        :param range_s: idle times the histogram covers, seconds (the paper's 4 h); longer ones
            are counted as out of bounds. At most ``range_s / bin_s`` counts per function.
        :param min_samples: idle times needed before the histogram is used. Below ten, the 5th
            and 99th percentiles are just the smallest and largest value seen.
        :param min_cv: the least coefficient of variation of the bin counts (over all bins of
            the range) for the histogram to be representative: 2, the paper's and its
            OpenWhisk implementation's threshold. With equal counts in ``k`` of ``n`` bins the
            CV is sqrt(n/k - 1), so CV < 2 means idle times spread evenly over a fifth of the
            range or more — nothing to predict. With 1 s bins that takes thousands of idle
            times; until then the rule passes and ``min_samples`` is the guard.
        :param head_pct: percentile of idle times that sets the pre-warm window (the paper's 5th).
        :param tail_pct: percentile of idle times that sets the keep-alive window (the paper's 99th).
        :param margin: fraction taken off the pre-warm and added to the keep-alive (the paper's 10 %).
        """
        checks = {
            "fixed_s": fixed_s >= 0, "bin_s": bin_s > 0, "range_s": range_s >= bin_s,
            "min_samples": min_samples >= 1, "min_cv": min_cv >= 0, "head_pct": 0 <= head_pct <= tail_pct,
            "tail_pct": head_pct <= tail_pct <= 100, "margin": 0 <= margin < 1,
        }
        values = {"fixed_s": fixed_s, "bin_s": bin_s, "range_s": range_s, "min_samples": min_samples,
                  "min_cv": min_cv, "head_pct": head_pct, "tail_pct": tail_pct, "margin": margin}
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"keep-alive policy: invalid {key}={values[key]!r}")
        self.fixed_s = fixed_s
        self.adaptive = adaptive
        self.bin_s = bin_s
        self.range_s = range_s
        self.min_samples = min_samples
        self.min_cv = min_cv
        self.head_pct = head_pct
        self.tail_pct = tail_pct
        self.margin = margin
        self.bins = max(1, round(range_s / bin_s))
        self._histograms: dict[str, _Histogram] = {}
        self._windows: dict[str, Windows] = {}  # per function, valid until its next record()

    def record(self, function: str, started_at: float, ended_at: float | None = None) -> None:
        """An invocation of `function` started at `started_at` (monotonic seconds); the idle time
        since the previous invocation's end (or start, if no end recorded) goes into its histogram.

        Call it when the invocation ends, with both times: an invocation that started before the
        latest recorded end (overlapping calls) adds an idle time of 0. The first invocation of a
        function only sets its reference point. O(1), except when the idle time hits a bin never
        hit before (a sorted insert into the bins seen).
        """
        h = self._histograms.get(function)
        if h is None:
            h = self._histograms[function] = _Histogram()
        end = started_at if ended_at is None else max(started_at, ended_at)
        if h.last_end is not None:
            self._add(h, max(0.0, started_at - h.last_end))
        h.last_end = end if h.last_end is None else max(h.last_end, end)
        self._windows.pop(function, None)

    def _add(self, h: _Histogram, idle_s: float) -> None:
        b = int(idle_s // self.bin_s)
        if b >= self.bins:
            h.out_of_bounds += 1
            return
        c = h.counts.get(b, 0)
        if c == 0:
            bisect.insort(h.occupied, b)
        h.counts[b] = c + 1
        h.sum_sq += 2 * c + 1  # (c+1)² - c²
        h.in_range += 1

    def windows(self, function: str, override_s: float | None = None) -> Windows:
        """The windows for `function` now. `override_s` (the function's --keep-alive) wins: Windows(0, override_s, "override...")."""
        if override_s is not None:
            return Windows(0.0, override_s, f"override: --keep-alive {override_s:g}")
        cached = self._windows.get(function)
        if cached is None:
            cached = self._windows[function] = self._decide(self._histograms.get(function))
        return cached

    def forget(self, function: str) -> None:
        """Drop everything known about `function` (deleted); unknown names are ignored."""
        self._histograms.pop(function, None)
        self._windows.pop(function, None)

    def _fixed(self, why: str) -> Windows:
        return Windows(0.0, self.fixed_s, f"fixed {self.fixed_s:g} s: {why}")

    def _decide(self, h: _Histogram | None) -> Windows:
        if not self.adaptive:
            return self._fixed("adaptive keep-alive off")
        total = 0 if h is None else h.in_range + h.out_of_bounds
        if h is None or total < self.min_samples:
            return self._fixed(f"only {total} idle times (< {self.min_samples})")
        if 2 * h.out_of_bounds >= total:
            return self._fixed(f"{h.out_of_bounds} of {total} idle times beyond {self.range_s:g} s "
                               f"(the paper forecasts these with ARIMA)")
        # Population CV of the counts over all bins, empty ones included: mean n/B and
        # variance Σc²/B - mean², so CV² = B·Σc²/n² - 1.
        n = h.in_range
        cv = math.sqrt(max(0.0, self.bins * h.sum_sq / (n * n) - 1))
        if cv < self.min_cv:
            return self._fixed(f"idle times too spread to predict (bin-count CV {cv:.2f} < {self.min_cv:g})")
        head = self._percentile_bin(h, self.head_pct) * self.bin_s  # lower edge: rounded down
        tail = (self._percentile_bin(h, self.tail_pct) + 1) * self.bin_s  # upper edge: rounded up
        prewarm = head * (1 - self.margin)
        if prewarm < self.bin_s:
            prewarm = 0.0
        return Windows(prewarm, tail * (1 + self.margin),
                       f"adaptive: {total} idle times, p{self.head_pct:g} {head:.1f} s, p{self.tail_pct:g} {tail:.1f} s")

    @staticmethod
    def _percentile_bin(h: _Histogram, pct: float) -> int:
        """The first bin whose cumulative count reaches ``pct`` % of the in-range idle times.
        Scanned from the nearer end, so the 5th and 99th percentiles each read a few bins."""
        target = pct * h.in_range / 100
        if pct <= 50:
            seen = 0
            for b in h.occupied:
                seen += h.counts[b]
                if seen >= target:
                    return b
            return h.occupied[-1]
        # From the top: bin b qualifies while the count at or below it, n - (count above b),
        # still reaches the target; the answer is the last one that does.
        above, answer = 0, h.occupied[-1]
        for b in reversed(h.occupied):
            if h.in_range - above < target:
                break
            answer = b
            above += h.counts[b]
        return answer
