"""Apply Alembic migrations to the controller's database.

Alembic is configured here, in code: the script location is the installed ``migrations``
package, so upgrading works from a wheel as well as from a checkout, with no alembic.ini.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import migrations
from controller.store.database import begin_write, create_engine, redacted
from lamina.core.errors import Unavailable

SCRIPT_LOCATION = str(Path(migrations.__file__).resolve().parent)


def config(url: str) -> Config:
    """An Alembic config for the database at ``url`` (for ``upgrade`` and for tests)."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    # ConfigParser interpolates '%' (URL-encoded passwords have them).
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest revision. A no-op when it is current.

    Safe on every start: the whole upgrade is one transaction that holds SQLite's write lock
    or, on PostgreSQL, an advisory lock (see ``migrations/env.py``), so concurrent starts
    migrate one after the other and the later ones find nothing to do.
    """
    cfg = config(url)
    engine = create_engine(url)
    try:
        with begin_write(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.OperationalError as exc:
        raise Unavailable(f"cannot migrate the database at {redacted(url)}: {exc.orig or exc}") from exc
    finally:
        engine.dispose()
