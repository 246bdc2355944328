"""Generate the Python stubs of ``proto/lamina/v1/*.proto`` into a package directory.

``make proto`` writes them to ``lamina/rpc/``; ``tests/test_proto.py`` writes them to a
temporary directory and compares, so committed stubs can never drift from the protos.
protoc names imports after the proto package (``from lamina.v1 import …``); they are
rewritten to the package the stubs live in.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTOS = sorted((PROTO_ROOT / "lamina" / "v1").glob("*.proto"))


def generate(out_dir: Path, package: str = "lamina.rpc") -> list[Path]:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for every proto into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in PROTOS],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted((Path(tmp) / "lamina" / "v1").iterdir()):
            text = re.sub(r"^from lamina\.v1 import", f"from {package} import", src.read_text(), flags=re.M)
            dest = out_dir / src.name
            dest.write_text(text)
            written.append(dest)
        return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent / "lamina" / "rpc"
    for path in generate(target):
        print(path)
