"""The baseline: a bare ASGI hello-world, the physical limit of a Python HTTP edge here."""

BODY = b'{"message":"Hello, world!"}'


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
