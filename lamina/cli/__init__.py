"""The `lamina` command: the only composition root.

Server commands (`up`, `controller`, `gateway`, `invoker`) build settings and start the
services; the others talk to a running gateway through ``lamina.client``. Service packages
are imported lazily, so `lamina list` does not pay for the servers' imports.
"""

from __future__ import annotations

import typer

from lamina.cli import cron, functions, servers

app = typer.Typer(
    name="lamina",
    help="Lamina: functions as a service on your own machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
servers.register(app)
functions.register(app)
cron.register(app)


def main() -> None:
    app()
