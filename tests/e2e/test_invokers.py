"""`lamina up --invokers 2`: the controller's local orchestrator runs two invokers on one
machine, both register, both run functions in their own sandboxes, and the stack stops them."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

from lamina.controller_client import ControllerClient
from lamina.core.fleet import InvokerInfo
from lamina.core.ring import HashRing
from tests.e2e.conftest import ROOT, Stack, make_stack


def wait_for(check, what: str, timeout: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout:g} s: {what}")


def records_by_function(controller: str, token: str, names: list[str]) -> dict[str, set[str]]:
    async def query() -> dict[str, set[str]]:
        client = ControllerClient(controller, token)
        try:
            return {name: {r.invoker_id for r in await client.query_records(name)} for name in names}
        finally:
            await client.close()

    return asyncio.run(query())


def test_two_invokers_register_share_the_work_and_stop_with_the_stack(tmp_path) -> None:
    base = make_stack(tmp_path)
    stack = Stack(data_dir=base.data_dir, env=base.env, port=base.port, args=("--invokers", "2"))
    controller = stack.env["LAMINA_CONTROLLER_LISTEN"]
    port = controller.rsplit(":", 1)[1]
    ids = {f"local-{port}-1", f"local-{port}-2"}
    printed = stack.start()
    try:
        assert "2 invokers" in printed

        def both_healthy() -> list[dict] | None:
            with stack.http() as http:
                invokers = http.get("/healthz").json()["invokers"]
            ready = {i["id"] for i in invokers if i["isolation"]} == ids
            return invokers if ready and len(invokers) == 2 else None

        invokers = wait_for(both_healthy, "/healthz lists both invokers, each answering Health")
        assert len({i["address"] for i in invokers}) == 2

        # Two functions whose home invokers differ, so each invoker runs one.
        ring = HashRing([InvokerInfo(i, "") for i in sorted(ids)])
        homes: dict[str, str] = {}
        for n in range(100):
            homes.setdefault(ring.preference(f"hello{n}")[0], f"hello{n}")
            if len(homes) == 2:
                break
        names = sorted(homes.values())
        for name in names:
            stack.cli("deploy", str(ROOT / "examples" / "hello"), "--name", name)
            with stack.http() as http:
                response = http.get(f"/function/{name}", params={"name": name})
            assert response.status_code == 200, response.text
            assert response.json()["message"] == f"Hello, {name}!"

        ran_on = wait_for(lambda: (r := records_by_function(controller, stack.env["LAMINA_CLUSTER_TOKEN"], names)) and all(r.values()) and r,
                          "both invocations are recorded")
        assert set().union(*ran_on.values()) == ids, ran_on

        # Each invoker confines its workers under its own scope: one egress table each.
        if all("nftables-egress" in i["isolation"] for i in invokers) and shutil.which("nft"):
            tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
            for invoker_id in ids:
                assert f"lamina_lamina_{invoker_id.replace('-', '_')}" in tables
    finally:
        assert stack.stop() == 0
    log = "".join(stack.output)
    for invoker_id in ids:
        assert f"started invoker {invoker_id}" in log
        assert re.search(rf"invoker {invoker_id} \(pid \d+\) stopped with status 0", log), log
    assert "exited unexpectedly" not in log
