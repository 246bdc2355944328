"""The egress filter for workers with ``egress: internet``: no host-local services.

One nftables table per invoker, ``inet lamina_<scope>``, installed at start and deleted at
stop, rejects whatever a worker uid (the invoker's uid range) sends to an address of this
host (``fib daddr type local``: loopback, and every address the host owns — the database,
the controller, the invoker's own ports) and to link-local addresses (cloud metadata
services). Functions with ``egress: none`` get no network namespace interface at all.
Needs the ``nft`` command (Debian package ``nftables``) and root.
"""

from __future__ import annotations

import re
import shutil
import subprocess

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class NftFilter:
    """The installed table; :meth:`close` removes it."""

    def __init__(self, table: str) -> None:
        self.table = table

    @staticmethod
    def table_name(scope: str) -> str:
        """The table of invoker scope ``scope``."""
        return "lamina_" + _UNSAFE.sub("_", scope)[:40]

    @classmethod
    def install(cls, scope: str, uid_first: int, uid_last: int) -> NftFilter:
        """Install (or replace) the table. Raises ``OSError`` naming what is missing."""
        nft = shutil.which("nft")
        if nft is None:
            raise OSError(2, "the nft command is not installed (Debian package nftables)")
        table = cls.table_name(scope)
        skuid = f"meta skuid {uid_first}-{uid_last}"
        rules = (f"table inet {table}\ndelete table inet {table}\n"
                 f"table inet {table} {{\n  chain output {{\n"
                 f"    type filter hook output priority 0; policy accept;\n"
                 f"    {skuid} fib daddr type local reject with icmpx admin-prohibited\n"
                 f"    {skuid} ip daddr 169.254.0.0/16 reject with icmpx admin-prohibited\n"
                 f"    {skuid} ip6 daddr fe80::/10 reject with icmpx admin-prohibited\n"
                 f"  }}\n}}\n")
        done = subprocess.run([nft, "-f", "-"], input=rules, capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise OSError(1, f"nft refused the egress table: {done.stderr.strip()}")
        return cls(table)

    def close(self) -> None:
        """Delete the table. Idempotent; never raises."""
        nft = shutil.which("nft")
        if nft is not None:
            subprocess.run([nft, "delete", "table", "inet", self.table], capture_output=True, timeout=10)
