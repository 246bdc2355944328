"""Code bundles for tests: zips built in memory, and a directory's zip as upload chunks."""

from __future__ import annotations

import io
import stat
import zipfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from lamina.core import bundles


def make_zip(entries: Mapping[str, bytes | str], links: Mapping[str, str] | None = None) -> bytes:
    """A zip of ``entries`` (name → content) plus ``links`` (name → symlink target)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            # An explicit ZipInfo would be STORED; entries are deflated, so a zip of zeros is small.
            z.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buffer.getvalue()


async def zip_chunks(directory: Path) -> AsyncIterator[bytes]:
    """``directory`` packed as a bundle, as the chunks ``ControllerClient.upload_code`` takes."""
    buffer = io.BytesIO()
    bundles.pack(directory, buffer)
    yield buffer.getvalue()
