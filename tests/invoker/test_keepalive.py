"""The adaptive keep-alive policy on synthetic arrivals, and the trace replay of ``bench/``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from invoker.keepalive import KeepAlivePolicy, Windows

BENCH = Path(__file__).resolve().parents[2] / "bench"


def feed(policy: KeepAlivePolicy, idle_times: list[float], function: str = "f", duration: float = 0.0,
         start: float = 1000.0) -> float:
    """Record one call, then one more after each idle time; return the last call's end."""
    end = start + duration
    policy.record(function, start, end)
    for idle in idle_times:
        start = end + idle
        end = start + duration
        policy.record(function, start, end)
    return end


def test_periodic_calls_prewarm_just_before_the_next_and_keep_alive_just_past_it() -> None:
    policy = KeepAlivePolicy()
    for k in range(40):  # every 30 s, instantaneous
        policy.record("tick", 100.0 + 30 * k)
    w = policy.windows("tick")
    assert w.prewarm_s == pytest.approx(27.0)  # 30 s bin, less 10 %
    assert w.keep_alive_s == pytest.approx(34.1)  # up to the bin's upper edge, 31 s, plus 10 %
    assert w.reason == "adaptive: 39 idle times, p5 30.0 s, p99 31.0 s"


def test_jittered_periodic_calls_still_get_a_prewarm_below_every_idle_time() -> None:
    rng = random.Random(7)
    idle = [30 + rng.uniform(-0.9, 0.9) for _ in range(200)]
    policy = KeepAlivePolicy()
    feed(policy, idle, duration=0.2)
    w = policy.windows("f")
    assert 0 < w.prewarm_s < min(idle)
    assert max(idle) < w.keep_alive_s < 36


def test_too_few_idle_times_give_the_fixed_window_until_the_tenth() -> None:
    policy = KeepAlivePolicy(fixed_s=600)
    feed(policy, [30.0] * 9)
    assert policy.windows("f") == Windows(0.0, 600.0, "fixed 600 s: only 9 idle times (< 10)")
    policy.record("f", 10_000.0)
    assert policy.windows("f").reason.startswith("adaptive: 10 idle times")


def test_an_unknown_function_gets_the_fixed_window() -> None:
    assert KeepAlivePolicy(fixed_s=1200).windows("never-called") == Windows(0.0, 1200.0, "fixed 1200 s: only 0 idle times (< 10)")


def test_override_wins_over_a_learnt_pattern_and_leaves_it_intact() -> None:
    policy = KeepAlivePolicy()
    feed(policy, [30.0] * 50)
    assert policy.windows("f", override_s=30) == Windows(0.0, 30, "override: --keep-alive 30")
    assert policy.windows("nobody", override_s=0) == Windows(0.0, 0, "override: --keep-alive 0")
    assert policy.windows("f").prewarm_s == pytest.approx(27.0)


def test_adaptive_off_always_gives_the_fixed_window() -> None:
    policy = KeepAlivePolicy(fixed_s=900, adaptive=False)
    feed(policy, [30.0] * 50)
    assert policy.windows("f") == Windows(0.0, 900, "fixed 900 s: adaptive keep-alive off")


def test_idle_times_mostly_out_of_range_give_the_fixed_window() -> None:
    policy = KeepAlivePolicy()
    feed(policy, [5 * 3600.0] * 10 + [30.0] * 10)  # half beyond the 4 h range
    w = policy.windows("f")
    assert (w.prewarm_s, w.keep_alive_s) == (0.0, 600.0)
    assert "10 of 20 idle times beyond 14400 s" in w.reason


def test_a_few_out_of_range_idle_times_leave_the_in_range_percentiles() -> None:
    policy = KeepAlivePolicy()
    feed(policy, [5 * 3600.0] * 9 + [30.0] * 11)
    w = policy.windows("f")
    assert (w.prewarm_s, w.keep_alive_s) == (pytest.approx(27.0), pytest.approx(34.1))
    assert w.reason.startswith("adaptive: 20 idle times")


def test_idle_times_spread_evenly_over_the_range_give_the_fixed_window() -> None:
    # 600 one-second bins, 3000 idle times uniform over them: ~5 a bin, CV ~0.45 < 2.
    rng = random.Random(1)
    policy = KeepAlivePolicy(range_s=600.0)
    feed(policy, [rng.uniform(0, 600) for _ in range(3000)])
    w = policy.windows("f")
    assert (w.prewarm_s, w.keep_alive_s) == (0.0, 600.0)
    assert "too spread to predict (bin-count CV 0.4" in w.reason


def test_bursts_with_gaps_keep_the_worker_through_the_gaps() -> None:
    # Bursts of 20 calls 1.5 s apart, 2 h between bursts: 1 idle time in 20 is a gap, more than
    # the 1 % above the 99th percentile, so the keep-alive covers the gaps; the head is 1.5 s,
    # a pre-warm under one bin, so the worker stays warm after each call.
    policy = KeepAlivePolicy()
    feed(policy, ([1.5] * 19 + [7200.0]) * 5)
    w = policy.windows("f")
    assert w.prewarm_s == 0.0
    assert w.keep_alive_s == pytest.approx(7201 * 1.1)


def test_bursts_with_rare_gaps_keep_the_worker_only_within_a_burst() -> None:
    policy = KeepAlivePolicy()
    feed(policy, ([1.5] * 199 + [7200.0]) * 2)  # gaps are 0.5 % of idle times
    w = policy.windows("f")
    assert (w.prewarm_s, w.keep_alive_s) == (0.0, pytest.approx(2.2))
    assert w.reason == "adaptive: 400 idle times, p5 1.0 s, p99 2.0 s"


@pytest.mark.parametrize("seed", range(6))
def test_windows_are_the_percentiles_of_the_idle_times(seed: int) -> None:
    rng = random.Random(seed)
    head, tail = rng.choice([(5.0, 99.0), (1.0, 90.0), (25.0, 75.0)])
    spread = rng.choice([lambda: rng.expovariate(1 / 120), lambda: rng.choice([40, 41, 300]) + rng.random(),
                         lambda: rng.lognormvariate(4, 1)])
    idle = [spread() for _ in range(rng.randint(10, 2000))]
    policy = KeepAlivePolicy(head_pct=head, tail_pct=tail)
    feed(policy, idle)
    bins = sorted(int(x) for x in idle)

    def nearest_rank(pct: float) -> int:
        return next(b for k, b in enumerate(bins, 1) if k >= pct * len(bins) / 100)

    prewarm = nearest_rank(head) * 0.9
    w = policy.windows("f")
    assert w.prewarm_s == pytest.approx(prewarm if prewarm >= 1 else 0.0)
    assert w.keep_alive_s == pytest.approx((nearest_rank(tail) + 1) * 1.1)


def test_a_call_overlapping_every_running_one_adds_no_idle_time() -> None:
    policy = KeepAlivePolicy(min_samples=1)
    policy.record("f", 0.0, 10.0)
    policy.record("f", 5.0, 12.0)  # needed a second worker
    assert policy.windows("f").reason == "fixed 600 s: only 0 idle times (< 1)"
    policy.record("f", 20.0, 21.0)  # reuses the worker freed at 12 s
    assert policy.windows("f").reason == "adaptive: 1 idle times, p5 8.0 s, p99 9.0 s"


def test_calls_in_overlapping_pairs_learn_each_workers_idle_time_not_zero() -> None:
    # Every 60 s two calls overlap. Each worker waits ~59 s for its next call; taking the
    # overlap as an idle time of 0 would give the pair no pre-warm at all.
    policy = KeepAlivePolicy()
    for k in range(30):
        t = 60.0 * k
        policy.record("pair", t, t + 1.0)  # recorded as they end
        policy.record("pair", t + 0.5, t + 1.5)
    w = policy.windows("pair")
    assert w.prewarm_s == pytest.approx(58 * 0.9)
    assert w.keep_alive_s == pytest.approx(60 * 1.1)
    assert w.reason.startswith("adaptive: 58 idle times")


def test_windows_are_recomputed_after_each_record_and_cached_between() -> None:
    policy = KeepAlivePolicy()
    end = feed(policy, [30.0] * 20)
    first = policy.windows("f")
    assert policy.windows("f") is first
    feed(policy, [90.0] * 20, start=end + 90)
    assert policy.windows("f").keep_alive_s == pytest.approx(91 * 1.1)


def test_forget_drops_the_history() -> None:
    policy = KeepAlivePolicy()
    feed(policy, [30.0] * 20)
    feed(policy, [30.0] * 20, function="other")
    policy.forget("f")
    policy.forget("never-known")
    assert policy.windows("f") == Windows(0.0, 600.0, "fixed 600 s: only 0 idle times (< 10)")
    policy.record("f", 50_000.0)  # a new reference point, not an idle time since the old calls
    assert policy.windows("f").reason == "fixed 600 s: only 0 idle times (< 10)"
    assert policy.windows("other").prewarm_s == pytest.approx(27.0)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"bin_s": 0}, "bin_s=0"), ({"range_s": 0.5}, "range_s=0.5"), ({"head_pct": 99.5}, "head_pct=99.5"),
    ({"tail_pct": 101}, "tail_pct=101"), ({"margin": 1.0}, "margin=1.0"), ({"min_samples": 0}, "min_samples=0"),
])
def test_invalid_settings_are_named(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ValueError, match=f"invalid {key}"):
        KeepAlivePolicy(**kwargs)


def test_windows_refuse_a_keep_alive_shorter_than_the_prewarm() -> None:
    with pytest.raises(ValueError, match="prewarm_s=10"):
        Windows(10.0, 5.0, "")


def test_replay_of_a_timer_adaptive_holds_less_memory_at_no_more_cold_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper's claim for periodic functions, on the bench's simulator: a 5-minute timer
    (1 s jitter, 0.5 s calls) over 12 hours."""
    monkeypatch.syspath_prepend(str(BENCH))
    import keepalive_traces

    rng = random.Random(3)
    calls = [(300.0 * k + rng.gauss(0, 1), 0.5) for k in range(1, 145)]
    horizon = 12 * 3600.0
    fixed = keepalive_traces.replay(calls, KeepAlivePolicy(600.0, adaptive=False), "timer", horizon)
    adaptive = keepalive_traces.replay(calls, KeepAlivePolicy(), "timer", horizon)
    assert fixed.cold_starts == 1
    assert adaptive.cold_starts <= fixed.cold_starts
    assert adaptive.prewarm_loads >= 100
    assert adaptive.idle_s < 0.2 * fixed.idle_s
