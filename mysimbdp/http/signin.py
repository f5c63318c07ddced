"""Browser sessions: a token exchanged once for a signed, HttpOnly, SameSite=Strict cookie.

The console (:mod:`mysimbdp.http.console`) signs a tenant or an operator in with its token
and sets the cookie ``mysimbdp_session``: ``<payload>.<signature>``, the payload the
caller's kind (``admin`` or ``tenant``), its tenant, when it expires and a random CSRF
nonce, signed with HMAC-SHA256. Nothing is kept on the server, so a session survives a
restart of the daemon and is valid on every instance that has the same key: the key is
derived from the admin token with scrypt (``MYSIMBDP_ADMIN_TOKEN``; without one, a random key
of this process: sessions end with it). A tenant's session also names the first 16 hex digits of its
token's hash: a new token (``mysimbdp tenants token``) ends its sessions; a new admin token
ends every session.

:func:`session_middleware` turns a valid cookie into the request's caller (a request with an
``Authorization`` header is judged by its token only), which ``require_tenant``,
``require_admin`` and ``is_admin`` honour, so every endpoint of the API serves the console
as it serves the CLI. A request with the cookie that changes something (any method but GET,
HEAD, OPTIONS) must also carry the nonce in ``X-CSRF-Token``: 403 ``csrf`` otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import orjson
from aiohttp import web

__all__ = ["Caller", "SessionCodec", "session_middleware", "CALLER_KEY", "COOKIE", "CSRF_HEADER", "SESSION_S"]

COOKIE = "mysimbdp_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_S = 12 * 3600.0
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_COOKIE = 1024


@dataclass(frozen=True)
class Caller:
    """Who a session is: an operator, or one tenant."""

    kind: Literal["admin", "tenant"]
    tenant: str | None
    csrf: str
    expires: float
    token_hash: str = ""  # a tenant's: the first 16 hex digits of its token's sha256


#: where the session middleware puts the request's caller
CALLER_KEY: web.RequestKey[Caller] = web.RequestKey("mysimbdp.caller", Caller)


class SessionCodec:
    """Signs and checks session cookies."""

    def __init__(self, admin_token: str | None) -> None:
        seed = admin_token.encode() if admin_token else secrets.token_bytes(32)
        # scrypt, not one hash: a tenant holding its own cookie cannot test guesses of the admin
        # token at hash speed (each guess costs this much memory and time, some 50 ms)
        self._key = hashlib.scrypt(seed, salt=b"mysimbdp console session", n=2**14, r=8, p=1, dklen=32)

    def issue(self, kind: Literal["admin", "tenant"], tenant: str | None, token_hash: str = "",
              now: float | None = None) -> tuple[str, Caller]:
        """A new session's cookie value and its caller."""
        caller = Caller(kind, tenant, secrets.token_urlsafe(24), (now or time.time()) + SESSION_S, token_hash[:16])
        payload = _b64(orjson.dumps({"k": caller.kind, "t": caller.tenant, "c": caller.csrf, "e": caller.expires,
                                     "h": caller.token_hash}))
        return f"{payload}.{self._sign(payload)}", caller

    def check(self, value: str, now: float | None = None) -> Caller | None:
        """The caller of a cookie value; None if it is forged, malformed or expired."""
        if len(value) > _MAX_COOKIE or not value.isascii() or value.count(".") != 1:
            return None
        payload, signature = value.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            caller = Caller(data["k"], data["t"], str(data["c"]), float(data["e"]), str(data.get("h") or ""))
        except (ValueError, KeyError, TypeError):
            return None
        if caller.kind not in ("admin", "tenant") or caller.expires < (now or time.time()):
            return None
        return caller

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def session_middleware(codec: SessionCodec, still_valid: Callable[[Caller], bool]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that makes a session cookie the request's caller (``still_valid``: the
    tenant still exists and has the same token)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        value = request.cookies.get(COOKIE)
        if value and "Authorization" not in request.headers:
            caller = codec.check(value)
            if caller is not None and still_valid(caller):
                if request.method not in _SAFE and not hmac.compare_digest(
                        request.headers.get(CSRF_HEADER, "").encode("utf-8", "replace"), caller.csrf.encode()):
                    return web.json_response({"code": "csrf", "message": f"a change made with the console's "
                                              f"session needs its {CSRF_HEADER} header"}, status=403)
                request[CALLER_KEY] = caller
        return await handler(request)

    return middleware
