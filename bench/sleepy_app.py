"""The step-load baseline: an ASGI app that sleeps 50 ms per request on its event loop
(unbounded concurrency, no cold start: what the ramp would look like with infinite warm
capacity)."""

import asyncio

BODY = b'{"slept_ms": 50}'


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
