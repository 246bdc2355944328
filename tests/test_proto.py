"""The committed stubs in lamina/rpc are exactly what `make proto` generates from proto/."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stubs_are_fresh(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    written = generate.generate(tmp_path)
    assert written, "no stubs generated"
    for fresh in written:
        committed = ROOT / "lamina" / "rpc" / fresh.name
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `make proto`"
    stale = {p.name for p in (ROOT / "lamina" / "rpc").glob("*_pb2*")} - {p.name for p in written}
    assert not stale, f"stubs without a proto: {sorted(stale)}"
