"""Code blobs on disk: content addressing, dedup, and everything that must be refused."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zipfile
from pathlib import Path

import pytest

from controller.blobs import FileBlobStore
from lamina.core import bundles
from lamina.core.errors import InvalidSpec, LimitExceeded, NotFound
from tests.bundles import make_zip
from tests.controller.conftest import app_zip


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "blobs")


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def chunked(data: bytes, size: int = 1000):  # type: ignore[no-untyped-def]
    return (data[i : i + size] for i in range(0, len(data), size))


def test_put_stores_by_sha256_and_open_returns_the_bytes(blobs):
    data = app_zip()
    blob = blobs.put(chunked(data))
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    assert blob.size == len(data)
    assert stored_files(blobs.root) == [blobs.root / "sha256" / blob.sha256[:2] / blob.sha256]
    with blobs.open(blob.sha256) as f:
        assert f.read() == data


def test_identical_content_is_stored_once(blobs):
    data = app_zip()
    first = blobs.put([data])
    second = blobs.put(chunked(data, 7))
    assert first == second
    assert len(stored_files(blobs.root)) == 1


async def test_put_async_streams_the_same_way(blobs):
    data = app_zip("x = 1\n")

    async def stream():  # type: ignore[no-untyped-def]
        for chunk in chunked(data, 10):
            yield chunk

    blob = await blobs.put_async(stream())
    assert blob.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("digest", ["", "nothex", "A" * 64, "../" + "a" * 61, "a" * 63, "a" * 64])
def test_open_of_unknown_or_malformed_digests_is_not_found(blobs, digest):
    with pytest.raises(NotFound):
        blobs.open(digest)


@pytest.mark.parametrize(
    ("entries", "links", "message"),
    [
        ({"../evil.py": b"x"}, None, "escapes the bundle"),
        ({"/etc/cron.d/evil": b"x"}, None, "absolute path"),
        ({}, {"app.py": "../../../etc/passwd"}, "symlink escaping the bundle"),
        ({}, {"app.py": "/etc/passwd"}, "symlink to an absolute path"),
    ],
)
def test_unsafe_zips_are_refused_and_nothing_is_kept(blobs, entries, links, message):
    with pytest.raises(InvalidSpec, match=message):
        blobs.put([make_zip({"ok.py": b"1", **entries}, links)])
    assert stored_files(blobs.root) == []


def test_a_non_zip_is_refused(blobs):
    with pytest.raises(InvalidSpec, match="not a valid zip"):
        blobs.put([b"definitely not a zip"])
    assert stored_files(blobs.root) == []


def overlapping_bomb() -> bytes:
    """Two central-directory entries sharing one local entry: Fifield's non-recursive bomb."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", b"0" * 10_000)
        z.writestr("b.txt", b"0" * 10_000)
    data = bytearray(buffer.getvalue())
    central = [i for i in range(len(data)) if data[i : i + 4] == b"PK\x01\x02"]
    first_offset = struct.unpack_from("<I", data, central[0] + 42)[0]
    struct.pack_into("<I", data, central[1] + 42, first_offset)  # b.txt now points at a.txt's data
    return bytes(data)


def test_an_overlapping_entries_bomb_is_refused(blobs):
    with pytest.raises(InvalidSpec, match="overlap"):
        blobs.put([overlapping_bomb()])
    assert stored_files(blobs.root) == []


def zeros_zip(uncompressed: int) -> bytes:
    """A small zip that inflates to ``uncompressed`` bytes of zeros (deflate reaches ~1000:1)."""
    buffer = io.BytesIO()
    block = bytes(1 << 20)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z, z.open("zeros.bin", "w", force_zip64=True) as f:
        for start in range(0, uncompressed, len(block)):
            f.write(block[: min(len(block), uncompressed - start)])
    return buffer.getvalue()


def test_a_high_ratio_bomb_over_the_real_limit_is_refused(blobs):
    data = zeros_zip(bundles.MAX_UNCOMPRESSED_BYTES + (1 << 20))
    assert len(data) < 1024 * 1024  # small on the wire, 250 MB+ inflated
    with pytest.raises(LimitExceeded, match="inflates to more than"):
        blobs.put([data])
    assert stored_files(blobs.root) == []


def test_the_uncompressed_limit_is_configurable(tmp_path):
    small = FileBlobStore(tmp_path / "b", max_uncompressed_bytes=100_000)
    with pytest.raises(LimitExceeded):
        small.put([zeros_zip(200_000)])
    assert small.put([zeros_zip(50_000)]).size > 0


def test_over_50_mb_compressed_is_refused_as_soon_as_it_passes_the_limit(blobs):
    chunk = os.urandom(1 << 20)
    consumed = 0

    def endless():  # type: ignore[no-untyped-def]
        nonlocal consumed
        while consumed < 200:  # 200 MB if nothing stopped it
            consumed += 1
            yield chunk

    with pytest.raises(LimitExceeded, match=f"over the limit of {bundles.MAX_COMPRESSED_BYTES} bytes"):
        blobs.put(endless())
    assert consumed == bundles.MAX_COMPRESSED_BYTES // len(chunk) + 1  # refused on the first chunk past it
    assert stored_files(blobs.root) == []
