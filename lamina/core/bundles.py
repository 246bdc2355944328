"""Code bundles: zips checked before they are stored and again before they are extracted.

A bundle is refused, with a message naming the entry, when it is not a zip, is larger than
the limits, has an entry with an absolute path, a ``..`` component or a symlink pointing
outside the bundle, or is a zip bomb: entries whose data overlap (the non-recursive bomb),
or whose real decompressed size exceeds the limit (counted while inflating, never trusted
from the headers).
"""

from __future__ import annotations

import os
import posixpath
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lamina.core.errors import InvalidSpec, LimitExceeded

MAX_COMPRESSED_BYTES = 50 * 1024 * 1024
MAX_UNCOMPRESSED_BYTES = 250 * 1024 * 1024
MAX_ENTRIES = 20_000
_CHUNK = 1 << 16


@dataclass(frozen=True)
class BundleInfo:
    """What checking a bundle found."""

    entries: int
    uncompressed_bytes: int


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _check_path(name: str) -> str:
    if not name or "\x00" in name:
        raise InvalidSpec(f"zip entry {name!r} has an empty or NUL-containing name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidSpec(f"zip entry {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise InvalidSpec(f"zip entry {name!r} escapes the bundle with '..'")
    return posixpath.normpath(name.replace("\\", "/"))


def _check_link(info: zipfile.ZipInfo, target: str) -> None:
    if target.startswith("/") or "\x00" in target:
        raise InvalidSpec(f"zip entry {info.filename!r} is a symlink to an absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(info.filename), target))
    if resolved == ".." or resolved.startswith("../"):
        raise InvalidSpec(f"zip entry {info.filename!r} is a symlink escaping the bundle ({target!r})")


def _data_span(fp: BinaryIO, info: zipfile.ZipInfo) -> tuple[int, int]:
    """The byte range of an entry's local header and data in the archive."""
    fp.seek(info.header_offset)
    header = fp.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise InvalidSpec(f"zip entry {info.filename!r} has a corrupt local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset
    return start, info.header_offset + 30 + name_len + extra_len + info.compress_size


def check(source: str | os.PathLike[str] | BinaryIO, *, compressed_size: int | None = None,
          max_compressed: int = MAX_COMPRESSED_BYTES,
          max_uncompressed: int = MAX_UNCOMPRESSED_BYTES) -> BundleInfo:
    """Check a bundle completely (inflating every entry); raise ``InvalidSpec``/``LimitExceeded``."""
    if compressed_size is None and isinstance(source, (str, os.PathLike)):
        compressed_size = os.path.getsize(source)
    if compressed_size is not None and compressed_size > max_compressed:
        raise LimitExceeded(f"code bundle is {compressed_size} bytes, over the limit of {max_compressed} bytes")
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidSpec(f"code bundle is not a valid zip file: {exc}") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise LimitExceeded(f"code bundle has {len(infos)} entries, over the limit of {MAX_ENTRIES}")
        seen: set[str] = set()
        spans = []
        declared = 0
        for info in infos:
            normalized = _check_path(info.filename)
            if normalized in seen and not info.is_dir():
                raise InvalidSpec(f"zip entry {info.filename!r} appears twice")
            seen.add(normalized)
            if info.flag_bits & 0x1:
                raise InvalidSpec(f"zip entry {info.filename!r} is encrypted")
            declared += info.file_size
            if declared > max_uncompressed:
                raise LimitExceeded(
                    f"code bundle inflates to more than {max_uncompressed} bytes (entry {info.filename!r})"
                )
            spans.append((*_data_span(archive.fp, info), info.filename))
        # Entries whose data overlap are how a small zip claims terabytes (Fifield's bomb).
        spans.sort()
        for (_, end, name), (start, _, other) in zip(spans, spans[1:], strict=False):
            if start < end:
                raise InvalidSpec(f"zip entries {name!r} and {other!r} overlap: refused as a zip bomb")
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            try:
                with archive.open(info) as member:
                    link = bytearray() if _is_symlink(info) else None
                    while chunk := member.read(_CHUNK):
                        total += len(chunk)
                        if total > max_uncompressed:
                            raise LimitExceeded(
                                f"code bundle inflates to more than {max_uncompressed} bytes "
                                f"(entry {info.filename!r}): refused as a zip bomb"
                            )
                        if link is not None:
                            link += chunk
                            if len(link) > 4096:
                                raise InvalidSpec(f"zip entry {info.filename!r} is a symlink with a too long target")
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise InvalidSpec(f"zip entry {info.filename!r} is corrupt: {exc}") from exc
            if link is not None:
                _check_link(info, link.decode("utf-8", "replace"))
        return BundleInfo(entries=len(infos), uncompressed_bytes=total)


def extract(archive_path: str | os.PathLike[str], target: Path) -> None:
    """Check and extract a bundle into ``target`` (which must not exist yet)."""
    check(archive_path)
    target.mkdir(parents=True)
    root = target.resolve()
    with zipfile.ZipFile(archive_path) as archive:
        for info in archive.infolist():
            dest = (root / _check_path(info.filename)).resolve()
            if dest != root and root not in dest.parents:
                raise InvalidSpec(f"zip entry {info.filename!r} escapes the bundle")
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if _is_symlink(info):
                link = archive.read(info).decode()
                _check_link(info, link)
                os.symlink(link, dest)
                continue
            with archive.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            mode = (info.external_attr >> 16) & 0o777 if info.create_system == 3 else 0
            os.chmod(dest, (mode | 0o444) & 0o755 if mode else 0o644)


def pack(directory: Path, out: BinaryIO, *, exclude: tuple[str, ...] = (".git", "__pycache__", ".lamina")) -> None:
    """Zip the contents of ``directory`` (deterministically: sorted, fixed timestamps)."""
    directory = directory.resolve()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(directory.rglob("*")):
            rel = path.relative_to(directory)
            if any(part in exclude for part in rel.parts) or path.suffix == ".pyc":
                continue
            if path.is_symlink() or not path.is_file():
                continue
            info = zipfile.ZipInfo(rel.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100000 | (path.stat().st_mode & 0o777)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with path.open("rb") as src, archive.open(info, "w") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
