"""Bearer API keys on the management API, checked by the controller and cached here.

A key is known to this module only by its sha256: the cache is keyed by the digest and no
key is ever logged. A valid key is trusted for ``positive_ttl`` seconds (so revoking one
takes effect within that window), an invalid one is refused for ``negative_ttl`` seconds
without asking the controller again (a client retrying a bad key cannot flood it).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lamina.controller_client import ControllerClient
from lamina.core.errors import Unauthenticated
from lamina.core.keys import Principal

POSITIVE_TTL_S = 30.0
NEGATIVE_TTL_S = 2.0
#: Bound on cached digests; random invalid keys must not grow the gateway's memory.
MAX_ENTRIES = 10_000


class Authenticator:
    """Resolves bearer keys to principals through the controller, with a TTL cache."""

    def __init__(
        self, controller: ControllerClient, *, positive_ttl: float = POSITIVE_TTL_S,
        negative_ttl: float = NEGATIVE_TTL_S, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._controller = controller
        self.positive_ttl = positive_ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, key: str) -> Principal:
        """The principal of ``key``; raise ``Unauthenticated`` if it is unknown or revoked, and
        ``Unavailable`` if the controller cannot be asked (such failures are not cached)."""
        if not key:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = self._clock()
        entry = self._cache.get(digest)
        if entry is not None and entry[0] > now:
            if entry[1] is None:
                raise Unauthenticated("invalid API key")
            return entry[1]
        try:
            principal = await self._controller.authenticate(key)
        except Unauthenticated:
            self._remember(digest, now + self.negative_ttl, None)
            raise Unauthenticated("invalid API key") from None
        self._remember(digest, now + self.positive_ttl, principal)
        return principal

    def _remember(self, digest: str, expires: float, principal: Principal | None) -> None:
        if len(self._cache) >= MAX_ENTRIES:
            now = self._clock()
            self._cache = {d: e for d, e in self._cache.items() if e[0] > now}
            if len(self._cache) >= MAX_ENTRIES:
                self._cache.clear()
        self._cache[digest] = (expires, principal)


# auto_error=False: a missing header is answered by our own 401 (JSON body + WWW-Authenticate)
# rather than FastAPI's 403; the scheme still documents the API's security in /openapi.json.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


async def require_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """FastAPI dependency: the caller's principal, or ``Unauthenticated`` (401)."""
    authenticator: Authenticator = request.app.state.auth
    key = credentials.credentials if credentials is not None else ""
    if not key and "authorization" in request.headers:
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <key>'")
    return await authenticator.authenticate(key)
