"""Schema contracts: each ``on_violation`` policy on real loads (and on the stream), what
``try`` shows of them, and the schema history ``GET /tenants/{id}/schema`` shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from pydantic import ValidationError

from mysimbdp import tenants
from mysimbdp.apps.plugins import get_plugin_manager
from mysimbdp.config import Settings
from mysimbdp.http.tokens import hash_token
from mysimbdp.store.contracts import Contract, check_document
from tests.batch_support import wait_outcome
from tests.test_intake import APP_MODULE, Env, put

FIELDS = {"id": "int", "name": "string", "file": "string"}
RECORDS = [{"id": 1, "name": "a"}, {"id": "x", "name": "b"}, {"id": 3, "name": "c", "extra": True}, {"name": "d"}]
JSONL = b"".join(orjson.dumps(r) + b"\n" for r in RECORDS)


def _contract(policy: str) -> dict[str, Any]:
    return {"on_violation": policy, "required": ["id"], "fields": FIELDS}


# -- the rules, record by record ---------------------------------------------------------------

@pytest.mark.parametrize(("policy", "written", "evolved"), [
    ("reject_record", [{"id": 1, "name": "a"}], {}),
    ("drop_field", [{"id": 1, "name": "a"}, {"id": 3, "name": "c"}], {}),
    ("evolve", [{"id": 1, "name": "a"}, {"id": "x", "name": "b"}, {"id": 3, "name": "c", "extra": True}],
     {"id": "string", "extra": "bool"}),
])
def test_each_policy_decides_what_is_written(policy: str, written: list[dict[str, Any]],
                                              evolved: dict[str, str]) -> None:
    contract = Contract.model_validate(_contract(policy))
    results = [check_document(contract, dict(r)) for r in RECORDS]
    assert [r.document for r in results if r.document is not None] == written
    seen: dict[str, str] = {}
    for r in results:
        seen.update(r.evolved)
    assert seen == evolved
    missing = results[3]
    assert missing.document is None and missing.violations == ["required field 'id' is missing"]


def test_reject_file_fails_on_the_first_violation_and_platform_fields_never_violate() -> None:
    contract = Contract.model_validate(_contract("reject_file"))
    assert check_document(contract, {"id": 1, "_id": "x", "_quality": 0.5}).violations == []
    assert check_document(contract, {"id": 1, "name": None}).document is not None  # null in an optional field
    bad = check_document(contract, {"id": 2.5})
    assert bad.reject_file and bad.reason == "schema contract: field 'id' is double, the contract says int"
    assert check_document(Contract(fields={"n": "number"}), {"n": 2**40}).violations == []
    assert check_document(Contract(fields={"n": "long"}), {"n": 7}).violations == []


def test_a_contract_names_what_is_wrong_in_it() -> None:
    with pytest.raises(ValidationError, match="required field 'id' is not in fields"):
        Contract.model_validate({"required": ["id"]})
    with pytest.raises(ValidationError):
        Contract.model_validate({"fields": {"n": "integer"}})
    with pytest.raises(ValidationError):
        Contract.model_validate({"on_violation": "ignore"})


# -- on real loads -----------------------------------------------------------------------------

async def _schema(http: aiohttp.ClientSession, env: Env, token: str | None = None) -> tuple[int, Any]:
    async with http.get(f"{env.url}/tenants/{env.tenant}/schema",
                        headers={"Authorization": f"Bearer {token or env.token}"}) as resp:
        return resp.status, await resp.json()


async def test_every_policy_on_a_real_load_and_the_schema_history(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant_id: str,
        http: aiohttp.ClientSession, mongo: Any) -> None:
    routes = [{"pattern": f"{prefix}_*", "app": "upload_rows", "contract": _contract(policy)}
              for prefix, policy in (("r", "reject_record"), ("d", "drop_field"), ("e", "evolve"),
                                     ("f", "reject_file"))]
    settings = settings_factory(extra_apps={"upload_rows": APP_MODULE})
    tenants.write_profile(settings.tenants_dir, {
        "id": tenant_id, "token_sha256": hash_token(f"token-{tenant_id}"),
        "batch": {"app": "upload_rows", "formats": ["jsonl"], "max_error_rate": 1.0, "routes": routes}})
    rd = await start_daemon(settings, pm=get_plugin_manager({"upload_rows": APP_MODULE}))
    env = Env(rd.url, tenant_id, f"token-{tenant_id}", settings, rd.daemon)
    rows = mongo[f"tenant_{tenant_id}"]["rows"]
    rejects = mongo[f"tenant_{tenant_id}"]["_rejects"]

    # try shows what each policy would do, and writes nothing
    async with http.post(f"{env.url}/tenants/{tenant_id}/try", params={"name": "e_1.jsonl"}, data=JSONL,
                         headers=env.auth) as resp:
        tried = await resp.json()
    assert "counts" in tried, tried
    assert tried["counts"]["documents"] == 3 and tried["rejects_by_kind"] == {"contract": 1}
    assert tried["evolved"] == {"extra": ["bool"], "id": ["string"]}
    async with http.post(f"{env.url}/tenants/{tenant_id}/try", params={"name": "f_1.jsonl"}, data=JSONL,
                         headers=env.auth) as resp:
        tried = await resp.json()
    assert tried["verdict"] == "reject" and tried["code"] == "contract"
    assert await rows.count_documents({}) == 0

    for n, prefix in enumerate("rdef"):  # a different content each, or it is a duplicate
        assert (await put(http, env, f"{prefix}_1.jsonl", JSONL + b'{"id": %d, "name": "z"}\n' % (100 + n)))[0] == 201
    outcome = {p: (await wait_outcome(mongo, tenant_id, f"{p}_1.jsonl"))[0] for p in "rdef"}

    async def names(prefix: str) -> list[Any]:
        return sorted([[d.get("name"), d.get("extra")] async for d in rows.find({"file": f"{prefix}_1.jsonl"})])

    async def reject_kinds(prefix: str) -> list[Any]:
        return [d["kind"] async for d in rejects.find({"ledger_id": outcome[prefix]["_id"]})]

    assert outcome["r"]["state"] == "committed" and await names("r") == [["a", None], ["z", None]]
    assert await reject_kinds("r") == ["contract"] * 3
    one = await rejects.find_one({"ledger_id": outcome["r"]["_id"], "record_number": 3})
    assert one["raw"] == RECORDS[2] and "'extra' is not in the contract" in one["reason"]
    assert await names("d") == [["a", None], ["c", None], ["z", None]]  # extra dropped
    assert await reject_kinds("d") == ["contract"] * 2
    assert await names("e") == [["a", None], ["b", None], ["c", True], ["z", None]]
    assert await reject_kinds("e") == ["contract"]
    assert outcome["f"]["state"] == "rejected" and outcome["f"]["code"] == "contract"
    assert await rows.count_documents({"file": "f_1.jsonl"}) == 0

    status, schema = await _schema(http, env)
    assert status == 200
    scopes = {s["scope"]: s for s in schema["scopes"]}
    evolve = scopes["route:e_*"]
    assert evolve["current"] == {"id": ["int", "string"], "name": ["string"], "file": ["string"], "extra": ["bool"]}
    assert sorted((h["field"], h["type"], h["change"], h["source"]) for h in evolve["history"]) == [
        ("extra", "bool", "added", "file e_1.jsonl"), ("id", "string", "type_added", "file e_1.jsonl")]
    assert scopes["route:r_*"]["history"] == [] and scopes["route:r_*"]["contract"]["on_violation"] == "reject_record"
    assert scopes["batch"]["contract"] is None

    # the same fields again change nothing; another tenant's token sees nothing
    assert (await put(http, env, "e_2.jsonl", JSONL + b'{"id": 7, "name": "y", "extra": false}\n'))[0] == 201
    await wait_outcome(mongo, tenant_id, "e_2.jsonl")
    assert len({s["scope"]: s for s in (await _schema(http, env))[1]["scopes"]}["route:e_*"]["history"]) == 2
    status, body = await _schema(http, env, token="not-a-token")
    assert status == 401 and "extra" not in str(body)
