"""``GET /tenants/{id}/data`` and ``mysimbdp data``: a tenant sees its own collections, their
counts and indexes and its last committed file; never another tenant's."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from mysimbdp.config import Settings
from tests.batch_support import wait_outcome
from tests.conftest import ADMIN_TOKEN
from tests.test_intake import APP_MODULE, CSV, put, start_env, write_tenant


async def test_a_tenant_sees_its_collections_and_last_file(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path) -> None:
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE})
    other = f"{tenant_id}x"
    write_tenant(settings, other, f"token-{other}")  # known to the daemon from its start
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings, formats=["csv"])
    status, body = await put(http, env, "rows.csv")
    assert status == 201, body
    await wait_outcome(mongo, tenant_id, "rows.csv")
    url = f"{env.url}/tenants/{tenant_id}/data"
    async with http.get(url, headers=env.auth) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["database"] == f"tenant_{tenant_id}"
    rows = next(c for c in data["collections"] if c["name"] == "rows")
    assert rows["estimated_count"] == CSV.count(b"\n") - 1
    assert "_id_" in [i["name"] for i in rows["indexes"]]
    assert data["last_file"]["name"] == "rows.csv" and data["last_file"]["records_written"] == 3
    # another tenant's token: refused, and it learns nothing of this tenant's data
    async with http.get(url, headers={"Authorization": f"Bearer token-{other}"}) as resp:
        assert resp.status == 403
        assert "rows" not in await resp.text()
    async with http.get(url) as resp:
        assert resp.status == 401
    async with http.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200

    token_file = tmp_path / "token"
    token_file.write_text(env.token)
    token_file.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from mysimbdp.cli import main; main()",
        "--config-dir", str(tmp_path), "data", "--tenant", tenant_id, "--token-file", str(token_file),
        "--url", env.url, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == f"database tenant_{tenant_id}"
    assert any(line.split()[:2] == ["rows", "3"] for line in lines)
    assert lines[-1].startswith("last file committed: rows.csv at ")
