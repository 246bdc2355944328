"""Adaptive keep-alive: the hybrid histogram policy of Shahrad et al., "Serverless in the Wild"
(USENIX ATC 2020, §4.2, https://www.usenix.org/conference/atc20/presentation/shahrad).

Per function, a histogram of *idle times* — from the end of one invocation to the start of the
next — decides two windows after each call: wait ``prewarm_s`` with no worker, then keep one
warm until ``keep_alive_s``. A function called every 30 s thus holds a worker for ~3 s of each
gap instead of the whole gap, with no extra cold start; an unpredictable function gets the
platform's fixed window, as without this policy.

The paper has one instance per application, so its idle time is simply the gap between calls.
Here a function may run on several workers at once, and the idle time of a call is that of the
worker that would serve it: the one freed most recently before the call started, as the pool
picks. Measured per function instead (overlapping calls giving idle times of 0), a function
that often runs twice at once learns a keep-alive of a few seconds and its second worker goes
cold between peaks: on the synthetic trace of ``bench/keepalive_traces.py`` that gave 13 % cold
starts against a fixed 10-minute window's 2.3 %; measured per worker, 1.7 %.

Pure, synchronous and self-contained: the worker pool asks, the pool acts, and ``bench/``
replays traces against the same object.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

#: Most workers remembered per function (see ``_History.free``): a bound on memory far above
#: any function's concurrency on one invoker.
MAX_WORKERS = 1024


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


class _Mark:
    """Where a percentile of a histogram is: its bin's index in the bins seen, and the count of
    idle times in the bins before it."""

    __slots__ = ("pct", "i", "below")

    def __init__(self, pct: float) -> None:
        self.pct = pct
        self.i = 0
        self.below = 0


class _History:
    """What is known of one function: its idle times in ``bins`` bins of ``bin_s``, plus what the
    rules need, kept up to date on each sample — counts only for the bins seen (at most ``bins``
    of them), those bins in order, the sum of squared counts (for the CV), and each tracked
    percentile's bin (moved a step or two per sample, so reading it is O(1)) — and when its
    workers were last freed."""

    __slots__ = ("bin_s", "bins", "counts", "occupied", "in_range", "out_of_bounds", "sum_sq", "marks", "free")

    def __init__(self, bin_s: float, bins: int, percentiles: tuple[float, ...]) -> None:
        self.bin_s = bin_s
        self.bins = bins
        self.counts: dict[int, int] = {}
        self.occupied: list[int] = []
        self.in_range = 0
        self.out_of_bounds = 0
        self.sum_sq = 0
        self.marks = [_Mark(pct) for pct in percentiles]
        #: When each of the function's (virtual) workers finished its last call, ascending: a
        #: call is served by the one freed most recently before it started, as in the pool.
        self.free: list[float] = []

    def add(self, idle_s: float) -> None:
        b = int(idle_s // self.bin_s)
        if b >= self.bins:
            self.out_of_bounds += 1
            return
        occupied, counts = self.occupied, self.counts
        c = counts.get(b, 0)
        if c == 0:
            j = bisect.bisect_left(occupied, b)
            occupied.insert(j, b)
            for mark in self.marks:
                if j <= mark.i and self.in_range:
                    mark.i += 1  # its bin moved one place up the list
        counts[b] = c + 1
        self.sum_sq += 2 * c + 1  # (c+1)² - c²
        self.in_range += 1
        for mark in self.marks:
            i, below = mark.i, mark.below
            if b < occupied[i]:
                below += 1
            # The percentile's bin is the first whose cumulative count reaches the target.
            target = mark.pct * self.in_range / 100
            while below + counts[occupied[i]] < target and i + 1 < len(occupied):
                below += counts[occupied[i]]
                i += 1
            while i > 0 and below >= target:
                i -= 1
                below -= counts[occupied[i]]
            mark.i, mark.below = i, below

    def percentile_bin(self, k: int) -> int:
        """The bin of the ``k``-th tracked percentile (of the idle times within range)."""
        return self.occupied[self.marks[k].i]


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

    As in the paper, a histogram never forgets: a function whose pattern changes is followed
    as the new idle times outnumber the old ones.

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
        for key, value, ok in (
            ("fixed_s", fixed_s, fixed_s >= 0), ("bin_s", bin_s, bin_s > 0), ("range_s", range_s, range_s >= bin_s),
            ("min_samples", min_samples, min_samples >= 1), ("min_cv", min_cv, min_cv >= 0),
            ("head_pct", head_pct, 0 <= head_pct <= tail_pct), ("tail_pct", tail_pct, head_pct <= tail_pct <= 100),
            ("margin", margin, 0 <= margin < 1),
        ):
            if not ok:
                raise ValueError(f"keep-alive policy: invalid {key}={value!r}")
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
        self._history: dict[str, _History] = {}
        self._windows: dict[str, Windows] = {}  # per function, valid until its next record()
        self._overrides: dict[float, Windows] = {}  # per --keep-alive value

    def record(self, function: str, started_at: float, ended_at: float | None = None) -> None:
        """An invocation of `function` started at `started_at` (monotonic seconds); the idle time
        since the previous invocation's end (or start, if no end recorded) goes into its histogram.

        Call it when the invocation ends, with both times (the same clock as ``started_at``).
        "The previous invocation" is the one whose worker this call would have reused: the latest
        recorded one that ended at or before ``started_at``. A call that overlaps all recorded
        ones needed another worker: it adds no idle time, and its end becomes that worker's.
        The first invocation of a function only sets its reference point. Amortised O(1), plus a
        list insert (a memmove) when an idle time falls in a bin not seen before.
        """
        if not self.adaptive:
            return  # nothing to learn: the fixed window holds for every function
        h = self._history.get(function)
        if h is None:
            h = self._history[function] = _History(self.bin_s, self.bins, (self.head_pct, self.tail_pct))
        end = started_at if ended_at is None else max(started_at, ended_at)
        i = bisect.bisect_right(h.free, started_at)
        if i:
            h.add(started_at - h.free.pop(i - 1))
        bisect.insort(h.free, end)
        # A worker idle past the range could only add an out-of-bounds idle time, and only when
        # all fresher ones are busy; the last one is kept, it is the function's reference point.
        while len(h.free) > MAX_WORKERS or (len(h.free) > 1 and h.free[0] < end - self.range_s):
            h.free.pop(0)
        self._windows.pop(function, None)

    def windows(self, function: str, override_s: float | None = None) -> Windows:
        """The windows for `function` now. `override_s` (the function's --keep-alive) wins: Windows(0, override_s, "override...")."""
        if override_s is not None:  # per invocation: built once per value
            cached = self._overrides.get(override_s)
            if cached is None:
                cached = self._overrides[override_s] = Windows(0.0, override_s, f"override: --keep-alive {override_s:g}")
            return cached
        cached = self._windows.get(function)
        if cached is None:
            cached = self._windows[function] = self._decide(self._history.get(function))
        return cached

    def forget(self, function: str) -> None:
        """Drop everything known about `function` (deleted); unknown names are ignored."""
        self._history.pop(function, None)
        self._windows.pop(function, None)

    def _fixed(self, why: str) -> Windows:
        return Windows(0.0, self.fixed_s, f"fixed {self.fixed_s:g} s: {why}")

    def _decide(self, h: _History | None) -> Windows:
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
        head = h.percentile_bin(0) * self.bin_s  # lower edge: rounded down
        tail = (h.percentile_bin(1) + 1) * self.bin_s  # upper edge: rounded up
        prewarm = head * (1 - self.margin)
        if prewarm < self.bin_s:
            prewarm = 0.0
        return Windows(prewarm, tail * (1 + self.margin),
                       f"adaptive: {total} idle times, p{self.head_pct:g} {head:.1f} s, p{self.tail_pct:g} {tail:.1f} s")
