"""Alembic migrations of the controller's database: the only way its schema changes.

``controller.migrate`` configures Alembic programmatically with this package's directory as
the script location, so migrations run from an installed package with no ``alembic.ini``.
"""
