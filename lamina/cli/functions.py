"""The developer's commands: deploy, invoke, list, describe, delete, logs, usage.

They talk to the gateway at ``LAMINA_URL`` with ``LAMINA_API_KEY`` (default: the admin key
file of ``./.lamina``), through ``lamina.client``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from lamina.client import DEFAULT_URL, Client, pack_directory
from lamina.core.errors import Conflict, InvalidSpec, LaminaError, NotFound
from lamina.core.functions import FunctionSpec, validate_spec
from lamina.core.triggers import TriggerSpec, spec_from_json, validate_trigger

err = Console(stderr=True)
out = Console()

Url = Annotated[str, typer.Option("--url", envvar="LAMINA_URL", help="Gateway URL")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="LAMINA_API_KEY", show_default=False,
                                               help="API key [default: ./.lamina/admin.key]")]

#: lamina.yaml keys and the spec fields they set.
YAML_KEYS = {"name": "name", "runtime": "runtime", "handler": "handler", "memory": "memory_mb",
             "timeout": "timeout_s", "environment": "environment", "description": "description",
             "egress": "egress", "min_scale": "min_scale", "max_scale": "max_scale",
             "concurrency": "concurrency", "keep_alive": "keep_alive_s", "max_retries": "max_retries",
             "retry_delay": "retry_delay_s"}


def _client(url: str, api_key: str | None) -> Client:
    if not api_key:
        key_file = Path(".lamina") / "admin.key"
        api_key = key_file.read_text().strip() if key_file.exists() else ""
    return Client(url, api_key)


def _fail(exc: LaminaError) -> typer.Exit:
    err.print(f"[red]error:[/] {exc.message}", highlight=False)
    return typer.Exit(1)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The spec fields set by ``directory/lamina.yaml`` (empty when there is none)."""
    path = directory / "lamina.yaml"
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidSpec(f"{path} must be a mapping of settings")
    unknown = sorted(set(data) - set(YAML_KEYS) - {"cron"})
    if unknown:
        raise InvalidSpec(f"{path}: unknown keys {', '.join(unknown)} (known: {', '.join([*YAML_KEYS, 'cron'])})")
    spec = {YAML_KEYS[k]: v for k, v in data.items() if k != "cron"}
    env = spec.get("environment", {})
    if not isinstance(env, dict):
        raise InvalidSpec(f"{path}: environment must be a mapping")
    spec["environment"] = {str(k): str(v) for k, v in env.items()}
    return spec


def read_cron(directory: Path, function: str) -> list[TriggerSpec] | None:
    """The triggers declared by ``lamina.yaml``'s ``cron:`` key, validated: a list of
    ``{schedule, tz, payload, overlap, missed}`` (only ``schedule`` required). None when the
    key is absent: `lamina deploy` then leaves the function's triggers alone; when present,
    deploy makes the function's triggers exactly these (an empty list removes them all)."""
    path = directory / "lamina.yaml"
    if not path.exists():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or "cron" not in data:
        return None
    entries = data["cron"] or []
    if not isinstance(entries, list):
        raise InvalidSpec(f"{path}: cron must be a list of {{schedule, tz, payload, overlap, missed}}")
    specs = []
    for i, entry in enumerate(entries):
        try:
            specs.append(validate_trigger(spec_from_json(function, entry)))
        except InvalidSpec as exc:
            raise InvalidSpec(f"{path}: cron[{i}]: {exc.message}") from exc
    return specs


def apply_cron(client: Client, function: str, declared: list[TriggerSpec]) -> tuple[int, int]:
    """Make ``function``'s triggers exactly ``declared``: keep identical ones, add the missing,
    remove the rest. Returns (added, removed)."""
    def key(schedule: str, tz: str, payload: Any, overlap: str, missed: str) -> tuple[Any, ...]:
        return (schedule, tz, json.dumps(payload, sort_keys=True), overlap, missed)

    existing = {t["id"]: key(t["schedule"], t["timezone"], t["payload"], t["overlap"], t["missed"])
                for t in client.triggers(function)}
    wanted = [(spec, key(spec.schedule, spec.timezone, json.loads(spec.payload) if spec.payload else None,
                         spec.overlap.value, spec.missed.value)) for spec in declared]
    keep: set[str] = set()
    added = 0
    for spec, k in wanted:
        match = next((tid for tid, ek in existing.items() if ek == k and tid not in keep), None)
        if match is not None:
            keep.add(match)
            continue
        client.add_trigger(function, spec.schedule, tz=spec.timezone,
                           payload=json.loads(spec.payload) if spec.payload else None,
                           overlap=spec.overlap.value, missed=spec.missed.value)
        added += 1
    removed = [tid for tid in existing if tid not in keep]
    for tid in removed:
        client.remove_trigger(function, tid)
    return added, len(removed)


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidSpec(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def _payload(text: str | None) -> bytes:
    if text is None:
        return b"{}"
    data = Path(text[1:]).read_bytes() if text.startswith("@") else text.encode()
    try:
        json.loads(data)
    except ValueError as exc:
        raise InvalidSpec(f"--payload is not valid JSON: {exc}") from exc
    return data


def _amount(value: float) -> str:
    """``value`` to 6 significant digits, positional (a cost of 3.3e-08 reads 0.000000033)."""
    if value <= 0:
        return "0"
    decimals = max(2, 5 - math.floor(math.log10(value)))
    text = f"{value:.{decimals}f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(
        directory: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Function source directory")],
        name: Annotated[str | None, typer.Option("--name", "-n")] = None,
        runtime: Annotated[str | None, typer.Option("--runtime")] = None,
        handler: Annotated[str | None, typer.Option("--handler")] = None,
        memory: Annotated[int | None, typer.Option("--memory", help="MB")] = None,
        timeout: Annotated[int | None, typer.Option("--timeout", help="seconds")] = None,
        env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable")] = None,
        description: Annotated[str | None, typer.Option("--description")] = None,
        egress: Annotated[str | None, typer.Option("--egress", help="internet (default) or none")] = None,
        min_scale: Annotated[int | None, typer.Option("--min-scale", help="workers kept warm [default: 0]")] = None,
        max_scale: Annotated[int | None, typer.Option("--max-scale", help="most workers per invoker [default: 100]")] = None,
        concurrency: Annotated[int | None, typer.Option(
            "--concurrency", help="reserved concurrency: most invocations in flight, beyond it 429 [default: 0, none]")] = None,
        keep_alive: Annotated[int | None, typer.Option(
            "--keep-alive", help="seconds an idle worker stays warm [default: 0, the adaptive policy]")] = None,
        max_retries: Annotated[int | None, typer.Option(
            "--max-retries", help="async retries after a handler error, 0..2 [default: 2]")] = None,
        retry_delay: Annotated[float | None, typer.Option(
            "--retry-delay", help="seconds before the first async retry, doubling after [default: 1]")] = None,
        url: Url = DEFAULT_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Deploy DIRECTORY as a function (settings from flags, then DIRECTORY/lamina.yaml)."""
        try:
            fields = read_manifest(directory)
            flags = {"name": name, "runtime": runtime, "handler": handler, "memory_mb": memory,
                     "timeout_s": timeout, "description": description, "egress": egress, "min_scale": min_scale,
                     "max_scale": max_scale, "concurrency": concurrency, "keep_alive_s": keep_alive,
                     "max_retries": max_retries, "retry_delay_s": retry_delay}
            fields.update({k: v for k, v in flags.items() if v is not None})
            fields["environment"] = {**fields.get("environment", {}), **_parse_env(env or [])}
            fields.setdefault("name", directory.resolve().name)
            try:
                validate_spec(FunctionSpec(**fields), require_code=False)
            except TypeError as exc:
                raise InvalidSpec(f"invalid settings: {exc}") from exc
            schedules = read_cron(directory, fields["name"])
            code = pack_directory(directory)
            with _client(url, api_key) as client:
                try:
                    current = client.get_function(fields["name"])["revision"]
                except NotFound:
                    current = None
                fn = client.create(fields, code) if current is None else client.deploy(fields, code, if_match=current)
                cron_changes = apply_cron(client, fn["name"], schedules) if schedules is not None else None
        except Conflict as exc:
            err.print(f"[red]error:[/] {exc.message} (someone else deployed meanwhile; run deploy again)")
            raise typer.Exit(1) from exc
        except LaminaError as exc:
            raise _fail(exc) from exc
        verb = "updated" if current else "created"
        out.print(f"{verb} [bold]{fn['name']}[/] revision {fn['revision']} "
                  f"(code {fn['code_sha256'][:12]}, {fn['code_size']} bytes)")
        out.print(f"  HTTP: {url.rstrip('/')}/function/{fn['name']}", highlight=False)
        if cron_changes is not None:
            out.print(f"  cron: {len(schedules or [])} schedule(s) from lamina.yaml ({cron_changes[0]} added, "
                      f"{cron_changes[1]} removed)", highlight=False)

    @app.command()
    def invoke(
        name: str,
        payload: Annotated[str | None, typer.Option("--payload", "-p", help="JSON event or @file")] = None,
        log_tail: Annotated[bool, typer.Option("--log-tail", help="Print the last 4 KB of the invocation's logs "
                                               "and its REPORT line to stderr")] = False,
        asynchronous: Annotated[bool, typer.Option("--async", help="Queue it (202) and print the invocation id")] = False,
        idempotency_key: Annotated[str | None, typer.Option(
            "--idempotency-key", help="With --async: the same key within the window returns the first id")] = None,
        callback_url: Annotated[str | None, typer.Option(
            "--callback-url", help="With --async: POST the final state there")] = None,
        url: Url = DEFAULT_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Invoke NAME with a JSON event; print its result (exit 1 if the function failed).
        With --async, queue it and print the invocation id (see `lamina invocation ID`)."""
        try:
            with _client(url, api_key) as client:
                if asynchronous:
                    sys.stdout.write(client.invoke_async(name, _payload(payload), idempotency_key=idempotency_key or "",
                                                         callback_url=callback_url or "") + "\n")
                    return
                result = client.invoke(name, _payload(payload), log_tail=log_tail)
        except LaminaError as exc:
            raise _fail(exc) from exc
        if log_tail and result.log_result:
            # stderr, so that stdout stays exactly the result (pipeable to jq).
            sys.stderr.write(result.log_result if result.log_result.endswith("\n") else result.log_result + "\n")
            sys.stderr.flush()
        if result.function_error:
            body = result.json() or {}
            err.print(f"[red]{result.function_error}:[/] {body.get('errorMessage', '')}", highlight=False)
            for line in body.get("stackTrace", []):
                err.print(line.rstrip("\n"), highlight=False, markup=False)
            raise typer.Exit(1)
        sys.stdout.write(result.body.decode() + "\n")

    @app.command()
    def invocation(
        invocation_id: str,
        cancel: Annotated[bool, typer.Option("--cancel", help="Cancel it if it has not started")] = False,
        url: Url = DEFAULT_URL, api_key: ApiKey = None,
    ) -> None:
        """Show an async invocation (state, attempts, result or error, logs tail, timings) as JSON."""
        try:
            with _client(url, api_key) as client:
                body = client.cancel_invocation(invocation_id) if cancel else client.invocation(invocation_id)
        except LaminaError as exc:
            raise _fail(exc) from exc
        sys.stdout.write(json.dumps(body, indent=2) + "\n")

    dlq = typer.Typer(help="A function's dead-letter list: async invocations out of retries.", no_args_is_help=True)
    app.add_typer(dlq, name="dlq")

    @dlq.command("list")
    def dlq_list(name: str, limit: Annotated[int, typer.Option("--limit", "-n")] = 100,
                 url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
        """List NAME's dead-lettered invocations, newest first."""
        table = Table("ID", "ATTEMPTS", "ERROR", "FINISHED")
        try:
            with _client(url, api_key) as client:
                for inv in client.dead_letters(name, limit):
                    error = inv["error"] or {}
                    table.add_row(inv["id"], str(inv["attempts"]), error.get("type", ""), inv["finished_at"] or "")
        except LaminaError as exc:
            raise _fail(exc) from exc
        out.print(table)

    @dlq.command("show")
    def dlq_show(name: str, invocation_id: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
        """Show one dead-lettered invocation of NAME: event, error, attempts, last logs."""
        try:
            with _client(url, api_key) as client:
                body = client.invocation(invocation_id)
        except LaminaError as exc:
            raise _fail(exc) from exc
        if body["function"] != name or body["state"] != "dead-lettered":
            raise _fail(NotFound(f"invocation {invocation_id!r} is not in the dead-letter list of {name!r}"))
        sys.stdout.write(json.dumps(body, indent=2) + "\n")

    @dlq.command("redrive")
    def dlq_redrive(name: str, ids: Annotated[list[str] | None, typer.Argument(help="Only these (default: all)")] = None,
                    url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
        """Queue NAME's dead-lettered invocations again."""
        try:
            with _client(url, api_key) as client:
                count = client.redrive(name, ids or [])
        except LaminaError as exc:
            raise _fail(exc) from exc
        out.print(f"redriven {count} invocation(s) of [bold]{name}[/]")

    @dlq.command("purge")
    def dlq_purge(name: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
        """Delete NAME's dead-lettered invocations."""
        try:
            with _client(url, api_key) as client:
                count = client.purge(name)
        except LaminaError as exc:
            raise _fail(exc) from exc
        out.print(f"purged {count} invocation(s) of [bold]{name}[/]")

    @app.command("list")
    def list_(url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
        """List functions."""
        table = Table("NAME", "RUNTIME", "HANDLER", "MEMORY", "TIMEOUT", "REVISION", "UPDATED")
        try:
            with _client(url, api_key) as client:
                for fn in client.list_functions():
                    table.add_row(fn["name"], fn["runtime"], fn["handler"], f"{fn['memory_mb']} MB",
                                  f"{fn['timeout_s']} s", str(fn["revision"]), fn["updated_at"])
        except LaminaError as exc:
            raise _fail(exc) from exc
        out.print(table)

    @app.command()
    def describe(name: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
        """Show NAME's configuration."""
        try:
            with _client(url, api_key) as client:
                fn = client.get_function(name)
        except LaminaError as exc:
            raise _fail(exc) from exc
        sys.stdout.write(json.dumps(fn, indent=2) + "\n")

    @app.command()
    def delete(name: str, url: Url = DEFAULT_URL, api_key: ApiKey = None) -> None:
        """Delete NAME."""
        try:
            with _client(url, api_key) as client:
                client.delete_function(name)
        except LaminaError as exc:
            raise _fail(exc) from exc
        out.print(f"deleted [bold]{name}[/]")

    @app.command()
    def logs(
        name: str,
        request_id: Annotated[str | None, typer.Option("--request-id", "-r")] = None,
        limit: Annotated[int, typer.Option("--limit", "-n")] = 200,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines")] = False,
        url: Url = DEFAULT_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Print NAME's logs, each line tagged with its request id."""
        after = 0
        try:
            with _client(url, api_key) as client:
                while True:
                    for record in client.logs(name, request_id=request_id or "", after_id=after, limit=limit):
                        after = max(after, record["id"])
                        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record["timestamp"]))
                        line = record["message"].rstrip("\n")
                        sys.stdout.write(f"{stamp} {record['request_id']} {line}\n")
                    sys.stdout.flush()
                    if not follow:
                        return
                    time.sleep(1)
        except LaminaError as exc:
            raise _fail(exc) from exc
        except KeyboardInterrupt:
            return

    @app.command()
    def usage(
        since: Annotated[str, typer.Option("--since", help="30m, 24h, 7d, an ISO-8601 date or time, or unix "
                                           "seconds")] = "24h",
        until: Annotated[str | None, typer.Option("--until", help="Same forms as --since [default: now]")] = None,
        function: Annotated[str | None, typer.Option("--function", "-f", help="Only this function")] = None,
        price: Annotated[float | None, typer.Option("--price", min=0.0, help="Price per GB-second, to show a "
                                                    "COST column (e.g. 0.0000166667)")] = None,
        url: Url = DEFAULT_URL,
        api_key: ApiKey = None,
    ) -> None:
        """Invocations, errors, cold starts, billed time and GB-seconds per function."""
        try:
            with _client(url, api_key) as client:
                report = client.usage(since, until or "", function or "")
        except LaminaError as exc:
            raise _fail(exc) from exc
        rows = report["functions"]
        window = f"{report['since']} to {report['until']}"
        if not rows:
            out.print(f"no invocations from {window}", highlight=False)
            return
        columns = ["FUNCTION", "INVOCATIONS", "ERRORS", "COLD STARTS", "BILLED (s)", "GB-s"]
        table = Table(*columns, *(["COST"] if price is not None else []), title=f"Usage from {window}",
                      show_footer=len(rows) > 1)
        for column in table.columns[1:]:
            column.justify = "right"
        totals = {k: sum(r[k] for r in rows) for k in ("invocations", "errors", "cold_starts", "billed_ms",
                                                        "gb_seconds")}
        for row in [*rows, {"function": "TOTAL", **totals}]:
            cells = [row["function"], str(row["invocations"]), str(row["errors"]), str(row["cold_starts"]),
                     f"{row['billed_ms'] / 1000:.3f}", _amount(row["gb_seconds"])]
            if price is not None:
                cells.append(_amount(row["gb_seconds"] * price))
            if row["function"] == "TOTAL":
                for column, cell in zip(table.columns, cells, strict=True):
                    column.footer = cell
            else:
                table.add_row(*cells)
        out.print(table)
