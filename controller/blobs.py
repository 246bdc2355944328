"""Code bundles as content-addressed files: ``<root>/sha256/<first two hex>/<digest>``.

An upload streams to a temporary file under ``<root>/tmp`` (same file system, so the final
rename is atomic) while it is hashed and counted; it is refused as soon as it passes the
size limit, so a huge upload never fills the disk or the memory. A complete upload is then
checked as a zip (``lamina.core.bundles.check``: traversal, absolute paths, escaping
symlinks, zip bombs) before it is renamed into place. Identical content is stored once.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lamina.core import bundles
from lamina.core.errors import LimitExceeded, NotFound

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Blob:
    """A stored code bundle."""

    sha256: str
    #: Compressed size in bytes.
    size: int


class FileBlobStore:
    """Code bundles on the local file system (the controller's data dir).

    ``max_bytes`` and ``max_uncompressed_bytes`` default to the platform's bundle limits.
    """

    def __init__(self, root: Path, *, max_bytes: int = bundles.MAX_COMPRESSED_BYTES,
                 max_uncompressed_bytes: int = bundles.MAX_UNCOMPRESSED_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_uncompressed_bytes = max_uncompressed_bytes
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        (root / "sha256").mkdir(exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob ``digest`` lives; ``NotFound`` for anything but 64 lowercase hex
        digits, so a digest can never name a path outside the store."""
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise NotFound(f"code {digest!r} not found: not a sha256 hex digest")
        return self.root / "sha256" / digest[:2] / digest

    def open(self, digest: str) -> BinaryIO:
        """The blob for reading; ``NotFound`` if it was never stored. The caller closes it."""
        try:
            return self.path(digest).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"code {digest!r} not found") from exc

    def put(self, chunks: Iterable[bytes]) -> Blob:
        """Store the zip streamed as ``chunks``; idempotent for identical content.

        Raises ``LimitExceeded`` past ``max_bytes`` (without reading further) or when it
        inflates past ``max_uncompressed_bytes``, and ``InvalidSpec`` for an unsafe or
        invalid zip. Nothing is left on disk after a refusal. Blocking."""
        upload = self.begin()
        try:
            for chunk in chunks:
                upload.write(chunk)
            return upload.commit()
        finally:
            upload.discard()

    async def put_async(self, chunks: AsyncIterable[bytes]) -> Blob:
        """``put`` for an async stream (a gRPC request): file work runs in threads."""
        upload = self.begin()
        try:
            async for chunk in chunks:
                await asyncio.to_thread(upload.write, chunk)
            return await asyncio.to_thread(upload.commit)
        finally:
            upload.discard()

    def begin(self) -> Upload:
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")
        return Upload(self, os.fdopen(fd, "wb"), Path(name))


class Upload:
    """One upload in progress: a temporary file, its running hash and size."""

    def __init__(self, store: FileBlobStore, file: BinaryIO, path: Path) -> None:
        self._store = store
        self._file = file
        self._path = path
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._store.max_bytes:
            raise LimitExceeded(f"code bundle is over the limit of {self._store.max_bytes} bytes")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> Blob:
        """Check the zip and move it into place (or drop it if the content is already stored)."""
        self._file.close()
        bundles.check(self._path, max_compressed=self._store.max_bytes,
                      max_uncompressed=self._store.max_uncompressed_bytes)
        digest = self._hash.hexdigest()
        final = self._store.path(digest)
        if not final.exists():
            final.parent.mkdir(exist_ok=True)
            os.chmod(self._path, 0o444)
            # Atomic: readers see no file or the whole file. Two uploads of the same content
            # racing here both write identical bytes, so either rename may win.
            os.replace(self._path, final)
        return Blob(sha256=digest, size=self.size)

    def discard(self) -> None:
        """Remove the temporary file if it is still there. Idempotent."""
        self._file.close()
        self._path.unlink(missing_ok=True)
