"""Migration scripts, applied in order by ``controller.migrate.upgrade``."""
