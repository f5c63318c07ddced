"""``GET/DELETE /tenants/{id}/rejects`` and ``mysimbdp rejects``: a tenant lists (filtered,
paged), shows and purges its own rejects, never another tenant's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from mysimbdp.cli import main
from mysimbdp.config import Settings
from mysimbdp.store.rejects import reject_document
from tests.test_intake import APP_MODULE, start_env, write_tenant

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def _rejects(tenant: str) -> list[dict[str, Any]]:
    docs = [reject_document(id=f"{'a' * 20}:{n}", source="file", kind="parse" if n < 3 else "check",
                            reason=f"row {n} is bad", tenant=tenant, app="x", at=T0, file="f.csv",
                            ledger_id="L1", record_number=n, raw=f"raw {n}") for n in range(1, 5)]
    docs += [reject_document(id=f"stream:m{n}", source="stream", kind="malformed", reason="not JSON",
                             tenant=tenant, app="x", at=datetime(2026, 12, 3, tzinfo=UTC), message_id=f"m{n}",
                             raw="{oops") for n in range(2)]
    return docs


async def test_a_tenant_lists_shows_and_purges_its_rejects(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: AsyncMongoClient[dict[str, Any]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE})
    other = f"{tenant_id}x"
    write_tenant(settings, other, f"token-{other}")  # known to the daemon from its start
    env = await start_env(start_daemon, settings_factory, tenant_id, settings=settings, formats=["csv"])
    await mongo[f"tenant_{tenant_id}"]["_rejects"].insert_many(_rejects(tenant_id))
    await mongo[f"tenant_{other}"]["_rejects"].insert_many(_rejects(other))
    base = f"{env.url}/tenants/{tenant_id}/rejects"

    async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with http.get(url, headers=env.auth if headers is None else headers) as resp:
            return resp.status, await resp.json()

    status, page = await get(f"{base}?limit=4")
    assert status == 200 and len(page["rejects"]) == 4 and page["next"] == f"{'a' * 20}:4"
    assert all(r["tenant"] == tenant_id for r in page["rejects"])
    status, rest = await get(f"{base}?limit=4&after={page['next']}")
    assert [r["_id"] for r in rest["rejects"]] == ["stream:m0", "stream:m1"] and rest["next"] is None
    _, parse = await get(f"{base}?file=L1&reason=parse")
    assert [r["record_number"] for r in parse["rejects"]] == [1, 2]
    _, recent = await get(f"{base}?since=2026-12-02T00:00:00Z")
    assert {r["source"] for r in recent["rejects"]} == {"stream"}
    assert "raw" not in page["rejects"][0] and "record" not in page["rejects"][0]  # a page stays small
    assert (await get(f"{base}?kind=parse"))[1]["code"] == "bad_parameter"  # a misspelt filter
    async with http.delete(f"{base}?kind=parse", headers=env.auth) as resp:
        assert resp.status == 400  # never a purge of everything
    async with http.delete(base, headers=env.auth) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "no_filter"
    assert (await get(f"{base}?after={'x' * 5000}"))[1]["code"] == "bad_after"
    status, one = await get(f"{base}/{'a' * 20}:3")
    assert status == 200 and one["kind"] == "check" and one["raw"] == "raw 3"
    assert (await get(f"{base}/nope"))[0] == 404
    assert (await get(f"{base}?since=yesterday"))[1]["code"] == "bad_since"
    assert (await get(f"{base}?limit=501"))[1]["code"] == "bad_limit"
    status, refused = await get(base, {"Authorization": f"Bearer token-{other}"})
    assert status == 403 and tenant_id not in str(refused.get("rejects", ""))

    token_file = tmp_path / "token"
    token_file.write_text(env.token)
    token_file.chmod(0o600)

    def cli(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as info:
            main(["rejects", *argv, "--tenant", tenant_id, "--token-file", str(token_file), "--url", env.url])
        out, err = capsys.readouterr()
        printed = "".join(line for line in out.splitlines(keepends=True) if not line.startswith("{"))  # not the daemon's log
        return int(info.value.code or 0), printed, err

    code, out, _ = await asyncio.to_thread(cli, "list", "--source", "stream")
    assert code == 0 and out.splitlines() == ["stream:m0  malformed  message m0  not JSON",
                                              "stream:m1  malformed  message m1  not JSON"]
    code, _, err = await asyncio.to_thread(cli, "purge", "--reason", "parse")
    assert code == 1 and "--yes" in err
    code, out, _ = await asyncio.to_thread(cli, "purge", "--reason", "parse", "--yes")
    assert code == 0 and out.strip() == "2 rejects deleted"
    assert await mongo[f"tenant_{tenant_id}"]["_rejects"].count_documents({}) == 4
    assert await mongo[f"tenant_{other}"]["_rejects"].count_documents({}) == 6  # the other's untouched
