"""`lamina cron`: a function's schedules (add, list, remove) and the history of their fires.

Schedules may also be declared in ``lamina.yaml`` (``cron:``, applied by `lamina deploy`);
the syntax and the policies are documented in ``lamina.core.triggers``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from lamina.cli.functions import ApiKey, Url, _client, _fail, out
from lamina.client import DEFAULT_URL
from lamina.core.errors import InvalidSpec, LaminaError
from lamina.core.triggers import spec_from_json, validate_trigger

cron = typer.Typer(help="Cron triggers: schedules that invoke a function asynchronously.", no_args_is_help=True)


def _payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidSpec(f"--payload is not valid JSON: {exc}") from exc


@cron.command("add")
def add(
    name: str,
    schedule: Annotated[str, typer.Argument(help='6 fields, seconds first ("*/10 * * * * *"), 5 standard fields, '
                                            'or "rate(5 minutes)"')],
    tz: Annotated[str, typer.Option("--tz", help="IANA time zone the fields are read in")] = "UTC",
    payload: Annotated[str | None, typer.Option("--payload", "-p", help="JSON event [default: a Scheduled "
                                                "Event naming the tick]")] = None,
    overlap: Annotated[str, typer.Option("--overlap", help="allow, or skip while the previous run is going")] = "allow",
    missed: Annotated[str, typer.Option("--missed", help="skip, or run-once: one catch-up fire for ticks "
                                        "missed while no scheduler ran")] = "skip",
    url: Url = DEFAULT_URL, api_key: ApiKey = None,
) -> None:
    """Fire NAME on SCHEDULE (through the async path: retries and the DLQ apply)."""
    body = {"schedule": schedule, "tz": tz, "payload": _payload_or_fail(payload), "overlap": overlap,
            "missed": missed}
    try:
        validate_trigger(spec_from_json(name, body))  # early, same messages as the server
        with _client(url, api_key) as client:
            trigger = client.add_trigger(name, schedule, tz=tz, payload=body["payload"], overlap=overlap,
                                         missed=missed)
    except LaminaError as exc:
        raise _fail(exc) from exc
    out.print(f"added trigger [bold]{trigger['id']}[/] to [bold]{name}[/]: {trigger['schedule']} "
              f"({trigger['timezone']}); next: {', '.join(trigger['next_ticks'])}", highlight=False)


def _payload_or_fail(text: str | None) -> Any:
    try:
        return _payload(text)
    except LaminaError as exc:
        raise _fail(exc) from exc


@cron.command("list")
def list_(name: Annotated[str | None, typer.Argument(help="Only this function's")] = None,
          url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """List the triggers of NAME (or of every function) with their next ticks."""
    table = Table("FUNCTION", "ID", "SCHEDULE", "TZ", "OVERLAP", "MISSED", "NEXT")
    try:
        with _client(url, api_key) as client:
            for t in client.triggers(name or ""):
                table.add_row(t["function"], t["id"], t["schedule"], t["timezone"], t["overlap"], t["missed"],
                              (t["next_ticks"] or [""])[0])
    except LaminaError as exc:
        raise _fail(exc) from exc
    out.print(table)


@cron.command("remove")
def remove(name: str, trigger_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Remove trigger TRIGGER_ID of NAME (its history stays)."""
    try:
        with _client(url, api_key) as client:
            client.remove_trigger(name, trigger_id)
    except LaminaError as exc:
        raise _fail(exc) from exc
    out.print(f"removed trigger {trigger_id} of [bold]{name}[/]", highlight=False)


@cron.command("history")
def history(name: str, limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
            trigger_id: Annotated[str | None, typer.Option("--trigger", help="Only this trigger's")] = None,
            url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Recent fires of NAME's triggers: scheduled and actual time, invocation, outcome."""
    table = Table("SCHEDULED", "FIRED", "LAG (ms)", "INVOCATION", "OUTCOME", "DETAIL")
    try:
        with _client(url, api_key) as client:
            for f in client.trigger_history(name, limit, trigger_id or ""):
                error = f["error"] or {}
                outcome = f["state"] + (f" ({error['type']})" if error else "")
                table.add_row(f["scheduled_at"], f["fired_at"], f"{f['lag_ms']:.0f}", f["invocation_id"] or "",
                              outcome, f["detail"])
    except LaminaError as exc:
        raise _fail(exc) from exc
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(cron, name="cron")
