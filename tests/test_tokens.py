"""Tokens: hashing and constant-time checks, bearer parsing, tenant isolation on the upload
routes (A's token can neither read nor write B's files), and `mysimbdp tenants token`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from mysimbdp.apps.plugins import get_plugin_manager
from mysimbdp.cli import main
from mysimbdp.config import Settings
from mysimbdp.http.tokens import bearer_token, hash_token, new_token, token_matches
from mysimbdp.tenants import load_profile
from tests.conftest import ADMIN_TOKEN
from tests.test_intake import APP_MODULE, CSV, leftovers, write_tenant

# -- the functions ---------------------------------------------------------------------------


def test_hash_and_match() -> None:
    token = new_token()
    digest = hash_token(token)
    assert len(digest) == 64 and digest == hash_token(token)
    assert token_matches(token, digest)
    assert not token_matches(token + "x", digest)
    assert not token_matches(None, digest)
    assert not token_matches("", digest)
    assert not token_matches(token, None)


def test_new_tokens_are_long_and_distinct() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 40 for t in tokens)


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer abc", "abc"),
    ("bearer   abc  ", "abc"),
    ("Basic abc", None),
    ("Bearer", None),
    ("Bearer   ", None),
    ("", None),
    (None, None),
])
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected


# -- tenant isolation ------------------------------------------------------------------------


@pytest.fixture
async def two_tenants(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings],
                      tenant_id: str) -> dict[str, Any]:
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE})
    a, b = f"{tenant_id}a", f"{tenant_id}b"
    write_tenant(settings, a, "token-a")
    write_tenant(settings, b, "token-b")
    rd = await start_daemon(settings, pm=get_plugin_manager({"upload_rows": APP_MODULE}))
    return {"url": rd.url, "a": a, "b": b, "settings": settings, "daemon": rd.daemon}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_of(http: aiohttp.ClientSession, method: str, url: str, token: str | None,
                    **kwargs: Any) -> tuple[int, dict[str, Any]]:
    headers = bearer(token) if token is not None else {}
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_missing_or_invalid_token_is_401(two_tenants: dict[str, Any], http: aiohttp.ClientSession) -> None:
    base = f"{two_tenants['url']}/tenants/{two_tenants['a']}"
    for method, path in [("GET", "/constraints"), ("GET", "/files"), ("GET", "/files/x"),
                         ("PUT", "/files/x.csv")]:
        for token in (None, "not-a-token"):
            status, body = await status_of(http, method, base + path, token, data=CSV if method == "PUT" else None)
            assert status == 401, (method, path, token, body)
            assert body["code"] == "unauthorized" and body["message"]
    async with http.get(base + "/files", headers={"Authorization": "Basic dG9rZW4tYQ=="}) as resp:
        assert resp.status == 401


async def test_token_of_another_tenant_is_403(two_tenants: dict[str, Any], http: aiohttp.ClientSession) -> None:
    url, a, b = two_tenants["url"], two_tenants["a"], two_tenants["b"]
    staging: Path = two_tenants["settings"].staging_dir
    status, body_b = await status_of(http, "PUT", f"{url}/tenants/{b}/files/mine.csv", "token-b", data=CSV)
    assert status == 201
    with capture_logs() as logs:
        status, body = await status_of(http, "PUT", f"{url}/tenants/{b}/files/evil.csv", "token-a", data=CSV)
    assert status == 403 and body["code"] == "forbidden"
    assert any(e["event"] == "upload.rejected" and e["code"] == "forbidden" for e in logs)
    assert "evil.csv" not in leftovers(staging / b) and leftovers(staging / a) == []
    for path in ("/constraints", "/files", f"/files/{body_b['id']}"):
        status, body = await status_of(http, "GET", f"{url}/tenants/{b}{path}", "token-a")
        assert status == 403, (path, body)
    # B's file id under A's own path: not found, not leaked
    status, body = await status_of(http, "GET", f"{url}/tenants/{a}/files/{body_b['id']}", "token-a")
    assert status == 404 and body["code"] == "unknown_file"
    status, listing = await status_of(http, "GET", f"{url}/tenants/{a}/files", "token-a")
    assert status == 200 and listing["files"] == []
    # unknown tenants: 403 for a tenant's token (nothing to probe), 404 for the operators
    status, _ = await status_of(http, "GET", f"{url}/tenants/nobody/files", "token-a")
    assert status == 403
    status, body = await status_of(http, "GET", f"{url}/tenants/nobody/files", ADMIN_TOKEN)
    assert status == 404 and body["code"] == "unknown_tenant"


async def test_admin_token_reads_any_tenant(two_tenants: dict[str, Any], http: aiohttp.ClientSession) -> None:
    url, b = two_tenants["url"], two_tenants["b"]
    status, sent = await status_of(http, "PUT", f"{url}/tenants/{b}/files/rows.csv", "token-b", data=CSV)
    assert status == 201
    status, entry = await status_of(http, "GET", f"{url}/tenants/{b}/files/{sent['id']}", ADMIN_TOKEN)
    assert status == 200 and entry["name"] == "rows.csv" and entry["tenant"] == b


# -- mysimbdp tenants token ------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    return int(exc.value.code or 0)


async def test_tenants_token_issues_a_working_token_once(
        two_tenants: dict[str, Any], http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]) -> None:
    settings: Settings = two_tenants["settings"]
    a, url = two_tenants["a"], two_tenants["url"]
    capsys.readouterr()
    assert run_cli("--config-dir", str(settings.config_dir), "tenants", "token", a) == 0
    token = capsys.readouterr().out.strip()
    assert token and "\n" not in token
    profile_path = settings.tenants_dir / f"{a}.toml"
    text = profile_path.read_text()
    assert token not in text  # only the hash is stored
    assert load_profile(profile_path).token_sha256 == hash_token(token)
    # the running daemon picks the new token up; the old one stops working
    deadline = time.monotonic() + 15
    while True:
        status, _ = await status_of(http, "GET", f"{url}/tenants/{a}/constraints", token)
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert status == 200
    status, _ = await status_of(http, "GET", f"{url}/tenants/{a}/constraints", "token-a")
    assert status == 401


def test_tenants_token_for_unknown_tenant_fails(settings_factory: Callable[..., Settings],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_factory()
    assert run_cli("--config-dir", str(settings.config_dir), "tenants", "token", "ghost") == 1
    assert "no such tenant profile" in capsys.readouterr().err
