"""Cron triggers through real servers: the REST API and its validation, two gateways firing
an every-second schedule exactly once per tick across a failover, the overlap policy, and
the missed-tick policy."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.server import GatewayServer
from lamina.core.settings import GatewaySettings
from tests.bundles import make_zip
from tests.gateway.conftest import Stack, deploy_form, start_stack

CRON = {"cron_lease_s": 3.0, "cron_sync_interval_s": 0.5, "async_poll_interval_s": 0.1}
TICK = make_zip({"app.py": "import time\ndef handler(event, context):\n"
                           "    return {'time': event.get('time'), 'started': time.time()}\n"})
SLOW = make_zip({"app.py": "import time\ndef handler(event, context):\n    time.sleep(2.2)\n    return 'done'\n"})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("cron"), **CRON)
    try:
        s.wait_ready()
        with s.api() as api:
            for name, code in (("tick", TICK), ("slow", SLOW), ("idle", TICK)):
                response = api.put(f"/api/v1/functions/{name}", files=deploy_form({"name": name}, code))
                assert response.status_code in (200, 201), response.text
        yield s
    finally:
        s.stop()
        s.loop.close()


def second_gateway(stack: Stack, **settings: Any) -> GatewayServer:
    gateway = GatewayServer(GatewaySettings(controller_url=stack.controller.address, port=0,
                                            **{**CRON, **settings}))
    stack.loop.run(gateway.start())
    return gateway


def history(api: Any, name: str, trigger_id: str, limit: int = 200) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/functions/{name}/triggers/history", params={"trigger": trigger_id, "limit": limit})
    assert response.status_code == 200, response.text
    return response.json()["fires"]


def wait_for(predicate: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_triggers_are_validated_added_listed_and_removed(stack: Stack):
    with stack.api() as api:
        base = "/api/v1/functions/idle/triggers"
        bad = [({"schedule": "* * * *"}, "expected 6 fields"), ({"schedule": "61 * * * * *"}, "invalid schedule"),
               ({"schedule": "rate(1 minutes)"}, "singular unit"), ({"schedule": "* * * * *", "tz": "Mars/Base"},
                                                                   "unknown time zone 'Mars/Base'"),
               ({"schedule": "* * * * *", "payload": "{not json"}, "payload is not valid JSON"),
               ({"schedule": "* * * * *", "overlap": "sometimes"}, "invalid overlap policy"),
               ({"schedule": "* * * * *", "cadence": 1}, "unknown trigger keys cadence")]
        for body, message in bad:
            response = api.post(base, json=body)
            assert response.status_code == 400, (body, response.text)
            assert message in response.json()["error"]["message"]
        big = api.post(base, json={"schedule": "* * * * *", "payload": {"x": "a" * 300_000}})
        assert big.status_code == 413
        assert api.post("/api/v1/functions/nope/triggers", json={"schedule": "* * * * *"}).status_code == 404
        created = api.post(base, json={"schedule": "0 30 9 * * mon-fri", "tz": "Europe/Paris",
                                       "payload": {"report": "daily"}, "overlap": "skip", "missed": "run-once"})
        assert created.status_code == 201, created.text
        trigger = created.json()
        assert (trigger["schedule"], trigger["timezone"], trigger["payload"], trigger["overlap"], trigger["missed"]) \
            == ("0 30 9 * * mon-fri", "Europe/Paris", {"report": "daily"}, "skip", "run-once")
        assert len(trigger["next_ticks"]) == 3 and all(t[11:19] in ("07:30:00", "08:30:00")
                                                       for t in trigger["next_ticks"])
        listed = api.get(base).json()["triggers"]
        assert [t["id"] for t in listed] == [trigger["id"]]
        assert trigger["id"] in {t["id"] for t in api.get("/api/v1/triggers").json()["triggers"]}
        assert api.delete(f"{base}/{trigger['id']}").status_code == 204
        assert api.delete(f"{base}/{trigger['id']}").status_code == 404
        assert api.get(base).json()["triggers"] == []


def test_the_minimum_interval_is_enforced(tmp_path):
    s = start_stack(tmp_path, with_invoker=False, cron=False, cron_min_interval_s=5)
    try:
        with s.api() as api:
            assert api.put("/api/v1/functions/f", files=deploy_form({"name": "f"}, TICK)).status_code == 201
            response = api.post("/api/v1/functions/f/triggers", json={"schedule": "*/2 * * * * *"})
            assert response.status_code == 400
            assert "minimum interval of 5 s" in response.json()["error"]["message"]
            assert api.post("/api/v1/functions/f/triggers", json={"schedule": "*/5 * * * * *"}).status_code == 201
    finally:
        s.stop()
        s.loop.close()


def test_two_gateways_fire_each_tick_exactly_once_across_a_failover(stack: Stack):
    second = second_gateway(stack)
    gateways = [stack.gateway, second]
    try:
        with stack.api() as api:
            trigger = api.post("/api/v1/functions/tick/triggers", json={"schedule": "* * * * * *"}).json()
            wait_for(lambda: sum(g.cron.leader for g in gateways) == 1)
            time.sleep(7)
            leader = next(g for g in gateways if g.cron.leader)
            other = second if leader is stack.gateway else stack.gateway
            assert not other.cron.leader
            if leader is stack.gateway:
                # The stack's gateway serves the API: stop only its scheduler task (the
                # firing half of the gateway), and give it a new one after the test.
                stack.loop.run(_stop_cron(leader))
            else:
                stack.loop.run(second.stop())
            wait_for(lambda: other.cron.leader)
            time.sleep(5)
            api.delete(f"/api/v1/functions/tick/triggers/{trigger['id']}")
            time.sleep(1)
            fires = history(api, "tick", trigger["id"])
    finally:
        stack.loop.run(second.stop())
        if not any(t.get_name() == "gateway-cron" and not t.done() for t in stack.gateway._tasks):
            stack.loop.run(_start_cron(stack.gateway))
    ticks = sorted(f["scheduled_at"] for f in fires)
    assert len(ticks) >= 10
    counts = Counter(ticks)
    assert max(counts.values()) == 1, counts.most_common(3)
    seconds = [_unix(t) for t in ticks]
    # Before the failover every second fired; during it at most the lease's length is missed.
    gaps = [b - a for a, b in zip(seconds, seconds[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] == 1 and max(gaps) <= 5, gaps
    fired = [f for f in fires if f["outcome"] == "fired"]
    assert len({f["invocation_id"] for f in fired}) == len(fired) == len(fires)
    # ...and the gateways' own counters agree: each fire counted once, by whichever fired it
    counted = [g.metrics.registry.get_sample_value("lamina_gateway_cron_fires_total",
                                                   {"function": "tick", "outcome": "fired"}) or 0 for g in gateways]
    assert sum(counted) == len(fired) and all(counted)
    assert all(g.metrics.registry.get_sample_value("lamina_gateway_cron_fire_lag_seconds_count") for g in gateways)
    with stack.api() as api:
        for f in fired[:5]:
            inv = _wait_final(api, f["invocation_id"])
            assert inv["state"] == "succeeded"
            assert inv["event"]["source"] == "lamina.cron" and inv["event"]["time"] == f["scheduled_at"]


async def _stop_cron(gateway: GatewayServer) -> None:
    for task in gateway._tasks:
        if task.get_name() == "gateway-cron":
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled on purpose
                pass


async def _start_cron(gateway: GatewayServer) -> None:
    assert gateway.cron is not None
    gateway._tasks.append(asyncio.create_task(gateway.cron.run(), name="gateway-cron"))


def test_overlap_skip_records_the_skipped_ticks(stack: Stack):
    with stack.api() as api:
        trigger = api.post("/api/v1/functions/slow/triggers",
                           json={"schedule": "* * * * * *", "overlap": "skip", "payload": {"n": 1}}).json()
        wait_for(lambda: len(history(api, "slow", trigger["id"])) >= 7, timeout=20)
        api.delete(f"/api/v1/functions/slow/triggers/{trigger['id']}")
        fires = history(api, "slow", trigger["id"])
    outcomes = Counter(f["outcome"] for f in fires)
    assert outcomes["fired"] >= 2 and outcomes["skipped"] >= 2, outcomes
    skipped = next(f for f in fires if f["outcome"] == "skipped")
    assert skipped["invocation_id"] is None and "is still" in skipped["detail"]
    assert all(f["state"] == "skipped" for f in fires if f["outcome"] == "skipped")


def test_missed_ticks_run_once_or_are_skipped_per_trigger(tmp_path):
    s = start_stack(tmp_path, cron=False, **{k: v for k, v in CRON.items() if k != "cron"})
    try:
        s.wait_ready()
        with s.api() as api:
            assert api.put("/api/v1/functions/f", files=deploy_form({"name": "f"}, TICK)).status_code == 201
            once = api.post("/api/v1/functions/f/triggers", json={"schedule": "* * * * * *",
                                                                 "missed": "run-once"}).json()
            skip = api.post("/api/v1/functions/f/triggers", json={"schedule": "* * * * * *"}).json()
            time.sleep(2.5)  # ticks pass with no scheduler running
            started = time.time()
            scheduler = GatewayServer(GatewaySettings(controller_url=s.controller.address, port=0, **CRON))
            s.loop.run(scheduler.start())
            s.servers.append(scheduler)
            wait_for(lambda: len(history(api, "f", skip["id"])) >= 2)
            once_fires, skip_fires = history(api, "f", once["id"]), history(api, "f", skip["id"])
    finally:
        s.stop()
        s.loop.close()
    catch_up = [f for f in once_fires if f["detail"] == "catch-up"]
    regular = [_unix(f["scheduled_at"]) for f in once_fires if f["detail"] != "catch-up"]
    # One catch-up, for a tick missed while no scheduler ran: before the scheduler's first
    # regular tick, and not later than the second the scheduler started in.
    assert len(catch_up) == 1
    assert _unix(catch_up[0]["scheduled_at"]) < min(regular, default=float("inf"))
    assert _unix(catch_up[0]["scheduled_at"]) <= started + 1
    assert not [f for f in skip_fires if f["detail"] == "catch-up"]
    assert min(_unix(f["scheduled_at"]) for f in skip_fires) >= started - 0.01


def _wait_final(api: Any, invocation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        body = api.get(f"/api/v1/invocations/{invocation_id}").json()
        if body["state"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_schedule_event_is_json(stack: Stack):
    """The default event is an EventBridge-style Scheduled Event (a smoke check of its shape)."""
    from lamina.core.triggers import Trigger, TriggerSpec, scheduled_event

    event = json.loads(scheduled_event(Trigger("t1", TriggerSpec("f", "* * * * * *")), 1_700_000_000.0, 7))
    assert event["detail-type"] == "Scheduled Event" and event["time"] == "2023-11-14T22:13:20.000Z"


def test_lamina_yaml_cron_is_applied_declaratively(stack: Stack, tmp_path):
    from lamina.cli.functions import apply_cron, read_cron
    from lamina.client import Client
    from tests.gateway.conftest import ADMIN_KEY

    (tmp_path / "lamina.yaml").write_text(
        "name: idle\ncron:\n  - schedule: rate(5 minutes)\n  - schedule: '0 0 8 * * mon'\n    tz: Europe/Paris\n"
        "    payload: {kind: weekly}\n    overlap: skip\n")
    declared = read_cron(tmp_path, "idle")
    assert declared is not None and len(declared) == 2
    with Client(stack.url, ADMIN_KEY) as client:
        assert apply_cron(client, "idle", declared) == (2, 0)
        assert apply_cron(client, "idle", declared) == (0, 0)  # idempotent
        assert apply_cron(client, "idle", declared[1:]) == (0, 1)
        (remaining,) = client.triggers("idle")
        assert remaining["payload"] == {"kind": "weekly"} and remaining["overlap"] == "skip"
        assert apply_cron(client, "idle", []) == (0, 1)
    (tmp_path / "lamina.yaml").write_text("name: idle\ncron:\n  - schedule: '* * *'\n")
    with pytest.raises(Exception, match=r"cron\[0\]: invalid schedule"):
        read_cron(tmp_path, "idle")
