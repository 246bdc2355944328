"""The bill: invocations and GB-seconds per function over a time window.

Summed by the controller from the stored invocation records (one per invocation, written by
the invokers), so it covers every invoker and survives restarts. Records reach the
controller in batches, so the last half second or so of invocations may not be counted yet.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from gateway import schemas
from lamina.core.errors import InvalidSpec
from lamina.core.functions import validate_name

router = APIRouter(tags=["usage"])

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The window when no ``since`` is given: the last day.
DEFAULT_SINCE = "24h"
_TIME_HELP = "A duration back from now (30m, 24h, 7d), an ISO-8601 date or time (UTC unless it says), or unix seconds."


def parse_time(value: str, now: float, field: str) -> float:
    """Unix seconds of ``value``: a duration ago (``90s``, ``30m``, ``24h``, ``7d``, ``2w``), an
    ISO-8601 date or date-time (naive means UTC), or unix seconds. ``InvalidSpec`` otherwise."""
    text = value.strip()
    if match := _RELATIVE.fullmatch(text):
        return now - float(match[1]) * _UNIT_S[match[2]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidSpec(f"{field} {value!r} is not a time: expected e.g. 24h, 7d, 2024-05-01, "
                          "2024-05-01T12:00:00Z or unix seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@router.get(
    "/usage", summary="Usage per function", response_model=schemas.UsageOut, responses=schemas.ERRORS,
    description="Invocations, errors, cold starts, billed milliseconds and GB-seconds per function, summed from "
    "the invocation records that started in [since, until).",
)
async def usage(
    request: Request,
    since: str = Query(DEFAULT_SINCE, description=_TIME_HELP),
    until: str = Query("", description=f"{_TIME_HELP} Empty means now."),
    function: str = Query("", description="Only this function."),
) -> JSONResponse:
    now = time.time()
    start = parse_time(since, now, "since")
    end = parse_time(until, now, "until") if until else now
    if start < 0 or end <= start:
        raise InvalidSpec(f"empty window: since ({since}) must be before until ({until or 'now'}) and not before 1970")
    if function:
        validate_name(function)
    # An open end when until is "now", so a record that started during this request counts.
    rows = await request.app.state.controller.query_usage(start, end if until else 0.0, function)
    return JSONResponse({
        "since": schemas.iso_time(start), "until": schemas.iso_time(end),
        "functions": [
            {"function": u.function, "invocations": u.invocations, "errors": u.errors, "cold_starts": u.cold_starts,
             "billed_ms": u.billed_ms, "gb_seconds": u.gb_seconds}
            for u in rows
        ],
    })
