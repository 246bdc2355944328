"""Schedules and their validation: cron with seconds, standard cron, rate(), time zones, and
the daylight-saving rule (APScheduler's, documented in lamina.core.triggers)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from lamina.core.errors import InvalidSpec, LimitExceeded
from lamina.core.triggers import (
    Missed,
    Overlap,
    TriggerSpec,
    last_tick,
    next_ticks,
    parse_schedule,
    spec_from_json,
    validate_trigger,
)

PARIS = ZoneInfo("Europe/Paris")


def unix(*args: int, tz=UTC) -> float:  # type: ignore[no-untyped-def]
    return datetime(*args, tzinfo=tz).timestamp()


def paris(ticks: list[float]) -> list[str]:
    return [datetime.fromtimestamp(t, PARIS).strftime("%m-%d %H:%M:%S%z") for t in ticks]


def test_six_fields_are_seconds_first_and_five_are_standard_cron():
    start = unix(2026, 5, 4, 12, 0, 0)  # a Monday
    assert next_ticks(parse_schedule("*/10 * * * * *"), start, 3) == [start + 10, start + 20, start + 30]
    assert next_ticks(parse_schedule("*/5 * * * *"), start, 2) == [start + 300, start + 600]
    # Weekdays as crontab numbers them: 0 and 7 are Sunday, 1-5 Monday to Friday.
    sundays = next_ticks(parse_schedule("0 9 * * 0"), start, 2)
    assert [datetime.fromtimestamp(t, UTC).strftime("%a %H:%M") for t in sundays] == ["Sun 09:00"] * 2
    assert next_ticks(parse_schedule("0 9 * * 7"), start, 2) == sundays
    weekdays = next_ticks(parse_schedule("0 0 9 * * 1-5"), start, 5)
    assert [datetime.fromtimestamp(t, UTC).strftime("%a") for t in weekdays] == ["Tue", "Wed", "Thu", "Fri", "Mon"]
    assert next_ticks(parse_schedule("0 0 9 * * mon-fri"), start, 5) == weekdays


def test_rate_is_aws_syntax_anchored_at_creation():
    anchor = unix(2026, 1, 1, 0, 0, 7)
    five = parse_schedule("rate(5 minutes)", anchor=anchor + 0.6)
    assert next_ticks(five, anchor + 1, 2) == [anchor + 300, anchor + 600]
    assert next_ticks(parse_schedule("rate(1 hour)", anchor=anchor), anchor, 1) == [anchor + 3600]
    assert next_ticks(parse_schedule("rate(2 days)", anchor=anchor), anchor, 1) == [anchor + 2 * 86400]


@pytest.mark.parametrize(("expression", "message"), [
    ("", "expected 5 or 6 cron fields"),
    ("* * * *", "got 4 fields"),
    ("* * * * * * *", "got 7 fields"),
    ("60 * * * * *", "higher than the maximum value (59)"),
    ("0 0 25 * * *", "higher than the maximum value (23)"),
    ("0 0 * * 8", "invalid weekday '8'"),
    ("rate(5 minute)", "singular unit for 1 and the plural otherwise"),
    ("rate(1 minutes)", "singular unit for 1"),
    ("rate(0 hours)", "positive whole number"),
    ("rate(10 seconds)", "expected rate(N minute[s]|hour[s]|day[s])"),
    ("every minute", "got 2 fields"),
])
def test_bad_expressions_are_rejected_with_what_is_wrong(expression: str, message: str):
    with pytest.raises(InvalidSpec, match="invalid schedule") as info:
        parse_schedule(expression)
    assert message in info.value.message


def test_unknown_time_zones_are_rejected():
    with pytest.raises(InvalidSpec, match="unknown time zone 'Europe/Atlantis'"):
        parse_schedule("* * * * *", "Europe/Atlantis")
    with pytest.raises(InvalidSpec, match="invalid time zone"):
        parse_schedule("* * * * *", "")


def test_validation_of_payload_interval_and_policies():
    ok = validate_trigger(TriggerSpec("fn", "  */10  * * * * * ", payload=b'{"a": 1}'), min_interval_s=10)
    assert ok.schedule == "*/10 * * * * *"
    with pytest.raises(InvalidSpec, match="payload is not valid JSON"):
        validate_trigger(TriggerSpec("fn", "* * * * *", payload=b"{nope"))
    with pytest.raises(LimitExceeded, match="over the limit of 16 bytes"):
        validate_trigger(TriggerSpec("fn", "* * * * *", payload=b'"' + b"x" * 20 + b'"'), max_payload_bytes=16)
    with pytest.raises(InvalidSpec, match=r"fires every 1 s at times, more often than the minimum interval of 2 s"):
        validate_trigger(TriggerSpec("fn", "* * * * * *"), min_interval_s=2)
    # The shortest gap counts, not the average: two ticks a second apart once a minute.
    with pytest.raises(InvalidSpec, match="every 1 s"):
        validate_trigger(TriggerSpec("fn", "0,1 * * * * *"), min_interval_s=30)
    validate_trigger(TriggerSpec("fn", "rate(1 minute)"), min_interval_s=60)
    with pytest.raises(InvalidSpec, match="invalid function name"):
        validate_trigger(TriggerSpec("bad name!", "* * * * *"))
    spec = spec_from_json("fn", {"schedule": "rate(1 day)", "tz": "Asia/Tokyo", "payload": {"k": [1]},
                                 "overlap": "skip", "missed": "run-once"})
    assert spec == TriggerSpec("fn", "rate(1 day)", "Asia/Tokyo", b'{"k":[1]}', Overlap.SKIP, Missed.RUN_ONCE)
    with pytest.raises(InvalidSpec, match="expected skip or run-once"):
        spec_from_json("fn", {"schedule": "* * * * *", "missed": "catch-up-all"})


def test_dst_spring_forward_fires_the_missing_wall_time_once_an_hour_later():
    """2026-03-29, Europe/Paris: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that
    day. Rule (APScheduler's): it fires once, at the instant the old offset gives it (01:30
    UTC, 03:30 CEST): the day is neither skipped nor doubled."""
    trigger = parse_schedule("0 30 2 * * *", "Europe/Paris")
    ticks = next_ticks(trigger, unix(2026, 3, 27, 12, 0, 0), 4)
    assert paris(ticks) == ["03-28 02:30:00+0100", "03-29 03:30:00+0200", "03-30 02:30:00+0200",
                            "03-31 02:30:00+0200"]
    assert [t % 86400 for t in ticks] == [1.5 * 3600, 1.5 * 3600, 0.5 * 3600, 0.5 * 3600]  # UTC times of day


def test_dst_fall_back_fires_the_repeated_wall_time_at_each_occurrence():
    """2026-10-25, Europe/Paris: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice.
    Rule (APScheduler's): both occurrences fire; they are distinct instants an hour apart,
    hence distinct ticks (fired once each, never deduplicated into one or run a third time)."""
    trigger = parse_schedule("0 30 2 * * *", "Europe/Paris")
    ticks = next_ticks(trigger, unix(2026, 10, 23, 12, 0, 0), 5)
    assert paris(ticks) == ["10-24 02:30:00+0200", "10-25 02:30:00+0200", "10-25 02:30:00+0100",
                            "10-26 02:30:00+0100", "10-27 02:30:00+0100"]
    assert ticks[2] - ticks[1] == 3600
    assert len(set(ticks)) == len(ticks)
    # A schedule outside the transition hour fires exactly once a day across both changes.
    daily = parse_schedule("0 0 9 * * *", "Europe/Paris")
    for start in (unix(2026, 3, 27), unix(2026, 10, 23)):
        days = [datetime.fromtimestamp(t, PARIS).strftime("%m-%d %H:%M") for t in next_ticks(daily, start, 4)]
        assert len(set(d[:5] for d in days)) == 4 and all(d.endswith("09:00") for d in days)


def test_last_tick_finds_the_most_recent_tick():
    every_second = parse_schedule("* * * * * *")
    now = unix(2026, 6, 1, 12, 0, 0) + 0.4
    assert last_tick(every_second, now) == now - 0.4
    monthly = parse_schedule("0 0 0 1 * *")
    assert last_tick(monthly, now) == unix(2026, 6, 1)
    assert last_tick(parse_schedule("0 0 0 29 2 *"), unix(2026, 6, 1)) is None  # beyond a year back
