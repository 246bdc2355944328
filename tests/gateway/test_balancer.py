"""The hash ring, and failover past an unreachable invoker without hanging or running twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from lamina.controller_client import ControllerClient
from lamina.core.fleet import InvokerInfo
from lamina.core.ring import HashRing
from tests.conftest import free_port
from tests.gateway.conftest import HELLO, Stack, deploy_form, start_stack


def invokers(*ids: str) -> list[InvokerInfo]:
    return [InvokerInfo(invoker_id=i, address=f"{i}:1") for i in ids]


def test_every_function_gets_all_invokers_in_a_stable_order():
    ring = HashRing(invokers("a", "b", "c"))
    order = ring.preference("hello")
    assert sorted(order) == ["a", "b", "c"]
    assert HashRing(invokers("c", "b", "a")).preference("hello") == order  # independent of listing order
    assert HashRing([]).preference("hello") == []


def test_functions_spread_and_few_move_when_an_invoker_joins():
    names = [f"fn-{i}" for i in range(3000)]
    three = HashRing(invokers("a", "b", "c"))
    homes = {n: three.preference(n)[0] for n in names}
    shares = Counter(homes.values())
    assert all(700 < count < 1300 for count in shares.values()), shares

    four = HashRing(invokers("a", "b", "c", "d"))
    moved = [n for n in names if four.preference(n)[0] != homes[n]]
    assert all(four.preference(n)[0] == "d" for n in moved)  # only to the newcomer
    assert 450 < len(moved) < 1100  # about a quarter


def test_failover_skips_an_unreachable_home(stack: Stack):
    """A registered invoker that does not answer: functions homed on it run on the live one."""
    dead_address = f"127.0.0.1:{free_port()}"

    async def register_dead() -> None:
        client = ControllerClient(stack.controller.address)
        try:
            await client.register_invoker("dead-invoker", dead_address, 1024)
        finally:
            await client.close()

    stack.loop.run(register_dead())
    balancer = stack.gateway.balancer
    deadline = time.monotonic() + 10
    while "dead-invoker" not in balancer.invokers and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "dead-invoker" in balancer.invokers
    ring = HashRing(list(balancer.invokers.values()))
    name = next(f"homeless-{i}" for i in range(1000) if ring.preference(f"homeless-{i}")[0] == "dead-invoker")

    with stack.api() as api:
        assert api.put(f"/api/v1/functions/{name}", files=deploy_form({}, HELLO)).status_code == 201
        started = time.monotonic()
        first = api.post(f"/api/v1/functions/{name}/invoke", content=b'{"name": "failover"}')
        second = api.post(f"/api/v1/functions/{name}/invoke", content=b'{"name": "again"}')
    assert first.status_code == 200, first.text
    assert first.json() == {"hello": "failover"} and second.json() == {"hello": "again"}
    assert time.monotonic() - started < 10  # bounded by the connect timeout, not a hang


def test_only_an_unreachable_invoker_is_a_clear_503(tmp_path: Path):
    lonely = start_stack(tmp_path, with_invoker=False)
    try:
        async def register_dead() -> None:
            client = ControllerClient(lonely.controller.address)
            try:
                await client.register_invoker("gone", f"127.0.0.1:{free_port()}", 1024)
            finally:
                await client.close()

        lonely.loop.run(register_dead())
        lonely.wait_ready()
        with lonely.api() as api:
            assert api.put("/api/v1/functions/f", files=deploy_form({}, HELLO)).status_code == 201
            response = api.post("/api/v1/functions/f/invoke", content=b"{}")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "Unavailable"
        assert "unreachable" in response.json()["error"]["message"]
        assert response.headers["x-lamina-request-id"]
    finally:
        lonely.stop()
        lonely.loop.close()


async def test_random_balancing_spreads_one_function_and_an_unknown_strategy_is_refused():
    from gateway.balancer import Balancer
    from gateway.invokers import InvokerClients
    from lamina.core.errors import InvalidSpec
    from lamina.core.functions import Function, FunctionSpec

    fn = Function(FunctionSpec(name="hello"), revision=1)
    consistent = Balancer(ControllerClient("127.0.0.1:1"), InvokerClients())
    spread = Balancer(ControllerClient("127.0.0.1:1"), InvokerClients(), strategy="random")
    for balancer in (consistent, spread):
        balancer.update(invokers("a", "b", "c"))
    assert len({consistent.order(fn)[0].invoker_id for _ in range(50)}) == 1  # always the home
    assert {spread.order(fn)[0].invoker_id for _ in range(200)} == {"a", "b", "c"}
    with pytest.raises(InvalidSpec, match="unknown balancer 'round-robin'"):
        Balancer(ControllerClient("127.0.0.1:1"), InvokerClients(), strategy="round-robin")
