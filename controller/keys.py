"""API keys: minted here, stored only as a hash, checked on every authenticated request.

A key reads ``lmn_<key id>_<secret>``. The key id is not secret: it finds the stored record
in one indexed lookup. The secret is 256 random bits (``secrets.token_urlsafe(32)``).

Only the sha256 of the whole key is stored. A fast hash is the right choice here, unlike for
passwords: a slow KDF exists to make guessing *low-entropy* secrets expensive, and nobody
enumerates 2**256 candidates however fast each guess is. It also keeps authentication cheap
enough to run on every gateway request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from pathlib import Path

from controller.store import KeyRecord, KeyStore
from lamina.core.errors import InvalidSpec, Unauthenticated
from lamina.core.keys import Principal

log = logging.getLogger(__name__)

PREFIX = "lmn"
ADMIN_KEY_FILE = "admin.key"
_KEY_RE = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{20,}})$")
#: Below this, an operator-chosen LAMINA_ADMIN_KEY is guessable offline from its fast hash.
_MIN_CHOSEN_KEY_LENGTH = 32


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str:
    """The id a key is stored under: the one it carries, or for an operator-chosen key in
    another format (LAMINA_ADMIN_KEY), one derived from its hash."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else "h" + hash_key(key)[:15]


def mint(store: KeyStore, name: str, admin: bool = False) -> tuple[Principal, str]:
    """Create and store a new key; return its principal and the key (shown exactly once)."""
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidSpec(f"invalid API key name {name!r}: use 1 to 128 characters")
    key = _new_key()
    record = KeyRecord(key_id=key_id_of(key), name=name, hash=hash_key(key), admin=admin, created_at=time.time())
    store.add_key(record)
    return Principal(key_id=record.key_id, name=name, admin=admin), key


def _new_key() -> str:
    return f"{PREFIX}_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def authenticate(store: KeyStore, key: str) -> Principal:
    """The principal of ``key``; ``Unauthenticated`` if it is unknown, wrong or revoked.

    The message is the same in every case, so a caller learns nothing about which part failed.
    """
    record = store.find_key(key_id_of(key)) if key else None
    # compare_digest: the comparison takes the same time wherever the hashes differ.
    if record is None or record.revoked or not hmac.compare_digest(record.hash, hash_key(key)):
        raise Unauthenticated("invalid or revoked API key")
    return Principal(key_id=record.key_id, name=record.name, admin=record.admin)


def ensure_admin_key(store: KeyStore, data_dir: Path, admin_key: str = "") -> Principal | None:
    """Make sure an admin can log in on a fresh database; return the principal if one was added.

    When no key exists yet: store ``admin_key`` (LAMINA_ADMIN_KEY) if given; otherwise adopt
    the key in ``<data_dir>/admin.key`` if a previous run left one (its database was reset),
    else mint one and write it there, readable by the owner only. Does nothing once any key
    exists. The key itself is never logged.
    """
    if store.has_keys():
        return None
    path = data_dir / ADMIN_KEY_FILE
    if admin_key:
        if len(admin_key) < _MIN_CHOSEN_KEY_LENGTH:
            log.warning("LAMINA_ADMIN_KEY is shorter than %d characters: prefer a long random key",
                        _MIN_CHOSEN_KEY_LENGTH)
        return _store_admin(store, admin_key)
    if path.exists():
        existing = path.read_text().strip()
        if _KEY_RE.match(existing):
            log.info("adopted the admin key in %s", path)
            return _store_admin(store, existing)
        raise InvalidSpec(f"{path} exists but does not hold a Lamina key: remove it to mint a new one")
    key = _new_key()
    # The file first: if storing then fails, the next start adopts the file's key, whereas
    # a stored key that never reached the file would lock the operator out.
    # O_EXCL: never follow a planted symlink or overwrite a file; 0600 from the first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    log.info("minted the admin API key and wrote it to %s (mode 0600)", path)
    return _store_admin(store, key)


def _store_admin(store: KeyStore, key: str) -> Principal:
    record = KeyRecord(key_id=key_id_of(key), name="admin", hash=hash_key(key), admin=True, created_at=time.time())
    store.add_key(record)
    return Principal(key_id=record.key_id, name="admin", admin=True)
