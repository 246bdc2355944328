"""Code bundles: what is refused, and that refusing leaves nothing extracted."""

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from lamina.core import bundles
from lamina.core.errors import InvalidSpec, LimitExceeded
from tests.bundles import make_zip


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bundle.zip"
    path.write_bytes(data)
    return path


def test_a_good_bundle_extracts_with_its_tree(tmp_path):
    path = write(tmp_path, make_zip({"app.py": b"x = 1\n", "pkg/mod.py": b"y = 2\n"}, {"link.py": "pkg/mod.py"}))
    info = bundles.check(path)
    assert info.entries == 3
    bundles.extract(path, tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "mod.py").read_bytes() == b"y = 2\n"
    assert os.readlink(tmp_path / "out" / "link.py") == "pkg/mod.py"


@pytest.mark.parametrize(
    ("entries", "links", "message"),
    [
        ({"/etc/passwd": b"x"}, None, "absolute path"),
        ({"../evil.py": b"x"}, None, "escapes the bundle with '..'"),
        ({"a/../../evil.py": b"x"}, None, "escapes the bundle"),
        ({"C:/evil.py": b"x"}, None, "absolute path"),
        ({}, {"link": "/etc/passwd"}, "symlink to an absolute path"),
        ({}, {"a/link": "../../outside"}, "symlink escaping the bundle"),
    ],
)
def test_escaping_entries_are_refused_and_nothing_is_extracted(tmp_path, entries, links, message):
    path = write(tmp_path, make_zip(entries, links))
    with pytest.raises(InvalidSpec, match=message):
        bundles.check(path)
    with pytest.raises(InvalidSpec):
        bundles.extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil.py").exists()


def test_not_a_zip_is_refused(tmp_path):
    with pytest.raises(InvalidSpec, match="not a valid zip"):
        bundles.check(write(tmp_path, b"this is not a zip file at all"))


def test_compressed_size_limit(tmp_path):
    path = write(tmp_path, make_zip({"a.bin": os.urandom(4096)}))
    with pytest.raises(LimitExceeded, match="over the limit of 1000 bytes"):
        bundles.check(path, max_compressed=1000)


def test_a_bomb_that_declares_its_size_is_refused_before_inflating(tmp_path):
    path = write(tmp_path, make_zip({"zeros.bin": bytes(3 * 1024 * 1024)}))
    assert path.stat().st_size < 20_000
    with pytest.raises(LimitExceeded, match="inflates to more than"):
        bundles.check(path, max_uncompressed=1024 * 1024)


def test_a_bomb_that_lies_about_its_size_is_caught_while_inflating(tmp_path):
    """Headers claim 10 bytes; the data inflates to 2 MiB. The real count stops it."""
    real = bytes(2 * 1024 * 1024)
    path = write(tmp_path, make_zip({"zeros.bin": real}))
    data = bytearray(path.read_bytes())
    # Patch the declared uncompressed size (local header offset 22, central directory +24).
    struct.pack_into("<I", data, 22, 10)
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)
    path.write_bytes(bytes(data))
    with pytest.raises((LimitExceeded, InvalidSpec)):
        bundles.check(path, max_uncompressed=1024 * 1024)


def test_overlapping_entries_are_refused_as_a_bomb(tmp_path):
    """Fifield's non-recursive bomb: many central-directory entries share one data blob."""
    payload = zlib.compressobj(9, zlib.DEFLATED, -15)
    blob = payload.compress(bytes(100_000)) + payload.flush()
    crc = zlib.crc32(bytes(100_000))
    name = b"a"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(blob), 100_000, len(name), 0)
    body = local + name + blob
    central = b""
    for entry_name in (b"a", b"b", b"c"):
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(blob), 100_000,
            len(entry_name), 0, 0, 0, 0, 0, 0,
        ) + entry_name
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 3, 3, len(central), len(body), 0)
    path = write(tmp_path, body + central + end)
    with pytest.raises(InvalidSpec, match="overlap"):
        bundles.check(path)


def test_pack_is_deterministic_and_skips_caches(tmp_path):
    src = tmp_path / "src"
    (src / "__pycache__").mkdir(parents=True)
    (src / "app.py").write_text("def handler(e, c):\n    return 1\n")
    (src / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"junk")
    first, second = io.BytesIO(), io.BytesIO()
    bundles.pack(src, first)
    bundles.pack(src, second)
    assert first.getvalue() == second.getvalue()
    assert zipfile.ZipFile(first).namelist() == ["app.py"]
