"""The bill from the command line, on `lamina up`: `invoke --log-tail` shows the REPORT line,
`lamina usage` sums the stored records per function, `/metrics` carries the GB-seconds."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Stack

APP = '''
def handler(event, context):
    print("billing", event.get("n"))
    if event.get("fail"):
        raise ValueError("no")
    return {"n": event.get("n")}
'''


def test_log_tail_and_usage_from_the_cli(stack: Stack, tmp_path: Path):
    source = tmp_path / "metered"
    source.mkdir()
    (source / "app.py").write_text(APP)
    stack.cli("deploy", str(source), "--name", "metered", "--handler", "app.handler", "--memory", "512")

    tailed = stack.cli("invoke", "metered", "--payload", '{"n": 1}', "--log-tail")
    assert json.loads(tailed.stdout) == {"n": 1}  # stdout stays the result
    assert "billing 1" in tailed.stderr
    report = next(line for line in tailed.stderr.splitlines() if line.startswith("REPORT RequestId:"))
    assert re.search(r"Billed Duration: \d+ ms", report) and "Memory Size: 512 MB" in report
    assert re.search(r"Init Duration: [\d.]+ ms", report), "the first invocation is a cold start"

    stack.cli("invoke", "metered", "--payload", '{"n": 2}')
    failed = stack.cli("invoke", "metered", "--payload", '{"fail": true}', "--log-tail", check=False)
    assert failed.returncode == 1 and "ValueError" in failed.stderr and "REPORT RequestId:" in failed.stderr
    plain = stack.cli("invoke", "metered", "--payload", '{"n": 3}')
    assert "REPORT" not in plain.stderr

    # Records reach the controller in batches: poll until all four are counted.
    deadline = time.monotonic() + 20
    while True:
        usage = stack.cli("usage", "--since", "1h", "--function", "metered", "--price", "0.0000166667")
        cells = _row(usage.stdout, "metered")
        if (cells and cells[1] == "4") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert cells is not None, usage.stdout
    assert cells[:4] == ["metered", "4", "1", "1"], usage.stdout  # invocations, errors, cold starts
    billed_s, gb_s, cost = float(cells[4]), float(cells[5]), float(cells[6])
    assert billed_s >= 0.004
    assert gb_s == pytest.approx(billed_s * 0.5, rel=1e-3)  # 512 MB
    assert cost == pytest.approx(gb_s * 0.0000166667, rel=1e-3)
    assert "COST" in usage.stdout and "Usage from" in usage.stdout

    assert _row(stack.cli("usage", "--since", "7d").stdout, "metered") is not None
    bad = stack.cli("usage", "--since", "last tuesday", check=False)
    assert bad.returncode == 1 and "is not a time" in bad.stderr

    with stack.http() as http:
        text = http.get("/metrics").text
    gb = [s.value for f in text_string_to_metric_families(text) if f.name == "lamina_invoker_gb_seconds"
          for s in f.samples if s.labels.get("function") == "metered"]
    assert sum(gb) == pytest.approx(gb_s, rel=1e-3)


def _row(table: str, name: str) -> list[str] | None:
    """The cells of the Rich table row whose first cell is ``name``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells[0] == name:
            return cells
    return None
