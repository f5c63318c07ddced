"""The console's sessions and event streams without a browser: what a hostile client tries.
Forged, foreign and non-ASCII cookies; a sign-in from another site's form; guessing tokens;
opening every event stream; a session whose token changed; a tenant reading instance names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from mysimbdp import tenants
from mysimbdp.config import Settings
from mysimbdp.events.catalog import StreamConsumersChanged
from mysimbdp.http.console import FAILURES_PER_MINUTE, STREAMS_PER_CALLER
from mysimbdp.http.signin import COOKIE, SessionCodec
from mysimbdp.http.tokens import hash_token
from tests.conftest import ADMIN_TOKEN
from tests.harness.wait import await_until


def test_a_cookie_is_checked_whole() -> None:
    codec = SessionCodec("admin-secret")
    value, caller = codec.issue("tenant", "acme", "ab" * 32)
    assert codec.check(value) == caller
    payload, signature = value.split(".")
    assert codec.check(f"{payload}x.{signature}") is None  # the payload changed
    assert codec.check(f"{payload}.{signature[:-2]}AA") is None  # the signature changed
    assert SessionCodec("another-admin-token").check(value) is None  # another key
    assert codec.check(value, now=caller.expires + 1) is None  # expired
    for junk in ("abc.é", "\udcff.abc", "", ".", "a.b.c", "x" * 5000):
        assert codec.check(junk) is None


async def _sign_in(http: aiohttp.ClientSession, url: str, token: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(f"{url}/console/session", json={"token": token}, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_sign_in_refuses_forms_other_sites_and_guessing(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str) -> None:
    settings = settings_factory()
    tenants.write_profile(settings.tenants_dir, {"id": tenant_id, "token_sha256": hash_token("t-token")})
    rd = await start_daemon(settings)
    async with aiohttp.ClientSession() as http:
        # a form of another site (text/plain, the token smuggled into a field name): refused
        async with http.post(f"{rd.url}/console/session", data='{"token":"t-token","x":"=1"}',
                             headers={"Content-Type": "text/plain"}) as resp:
            assert resp.status == 415 and COOKIE not in resp.cookies
        status, _ = await _sign_in(http, rd.url, "t-token", headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 403
        # a non-ASCII cookie is no session and no error
        async with http.get(f"{rd.url}/console/session", headers={"Cookie": f"{COOKIE}=abc.\u00e9"}) as resp:
            assert resp.status == 401
        status, me = await _sign_in(http, rd.url, "t-token")
        assert status == 200 and me["kind"] == "tenant" and me["tenant"] == tenant_id
    async with aiohttp.ClientSession() as guesser:
        answers = [(await _sign_in(guesser, rd.url, f"guess-{n}"))[0] for n in range(FAILURES_PER_MINUTE + 1)]
        assert answers == [401] * FAILURES_PER_MINUTE + [429]
        assert (await _sign_in(guesser, rd.url, "t-token"))[0] == 429  # even the right one, for a minute


async def _events(http: aiohttp.ClientSession, url: str, seconds: float) -> tuple[int, str]:
    """Read the event stream for ``seconds`` (or until it ends)."""
    async with http.get(f"{url}/console/events") as resp:
        if resp.status != 200:
            return resp.status, await resp.text()
        chunks: list[bytes] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = await asyncio.wait_for(resp.content.readany(), max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return resp.status, b"".join(chunks).decode()


async def test_event_streams_are_bounded_scoped_and_end_with_their_session(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str) -> None:
    settings = settings_factory(batch={"rescan_interval_s": 0.5})
    tenants.write_profile(settings.tenants_dir, {"id": tenant_id, "token_sha256": hash_token("t-token")})
    rd = await start_daemon(settings)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        assert (await _sign_in(http, rd.url, "t-token"))[0] == 200
        streams = [asyncio.create_task(_events(http, rd.url, 30)) for _ in range(STREAMS_PER_CALLER)]
        await asyncio.sleep(0.5)
        status, _ = await _events(http, rd.url, 1)
        assert status == 503  # one tenant cannot hold every stream
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as operator:
            assert (await _sign_in(operator, rd.url, ADMIN_TOKEN))[0] == 200
            watched = asyncio.create_task(_events(operator, rd.url, 2))
            await asyncio.sleep(0.3)
            # a decision's reason may name instances: operators see it, the tenant does not
            rd.daemon.events.emitter("stream").emit(StreamConsumersChanged(
                tenant=tenant_id, from_=1, to=2, reason="instances changed (joined: node-secret)",
                decided_by="node-secret"))
            status, seen = await watched
            assert status == 200 and "node-secret" in seen
        # the tenant's token changes: its open streams end at their next event (or ping), the
        # cookie is refused
        tenants.write_profile(settings.tenants_dir, {"id": tenant_id, "token_sha256": hash_token("new-token")})

        def reloaded() -> bool:
            profile = rd.daemon.tenants.get(tenant_id)
            return profile is not None and profile.token_sha256 == hash_token("new-token")
        await await_until(reloaded, 30, "the new token")
        rd.daemon.events.emitter("stream").emit(StreamConsumersChanged(tenant=tenant_id, from_=2, to=1, reason="x"))
        ended = await asyncio.wait_for(asyncio.gather(*streams), 10)
        for status, text in ended:
            assert status == 200 and "stream.consumers.changed" in text and "node-secret" not in text
        async with http.get(f"{rd.url}/console/session") as resp:
            assert resp.status == 401


@pytest.mark.parametrize("method", ["PUT", "DELETE", "POST"])
async def test_a_change_with_the_cookie_needs_the_csrf_header(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        method: str) -> None:
    settings = settings_factory()
    tenants.write_profile(settings.tenants_dir, {"id": tenant_id, "token_sha256": hash_token("t-token"),
                                                 "batch": {"app": "x"}})
    rd = await start_daemon(settings)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        _, me = await _sign_in(http, rd.url, "t-token")
        url = {"PUT": f"/tenants/{tenant_id}/files/a.csv", "DELETE": f"/tenants/{tenant_id}/rejects?all=true",
               "POST": f"/tenants/{tenant_id}/rejects/replay"}[method]
        async with http.request(method, rd.url + url, data=b"a\n1\n") as resp:
            assert resp.status == 403 and (await resp.json())["code"] == "csrf"
        async with http.request(method, rd.url + url, data=b"a\n1\n", headers={"X-CSRF-Token": me["csrf"]}) as resp:
            assert resp.status != 403
