"""Schema contracts on the stream, end to end: a tenant's ``[stream]`` contract checked on the
documents its app made from each message (the real daemon, RabbitMQ and the store), each
``on_violation`` policy, the contract rejects in ``_rejects`` and the schema history that
``GET /tenants/{id}/schema`` shows for ``evolve`` (scope ``stream``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from pymongo import AsyncMongoClient

from mysimbdp import tenants
from mysimbdp.config import Settings
from mysimbdp.http.tokens import hash_token
from tests.harness.wait import await_until
from tests.plugins.stream_support import ECHO_APPS, publish_raw, wait_consumers

# stream_echo adds seen_by and routing_key to each record: declared, so that only the test's fields violate
FIELDS = {"id": "int", "name": "string", "seen_by": "string", "routing_key": "string"}
Mongo = AsyncMongoClient[dict[str, Any]]


def _token(tenant: str) -> str:
    return f"token-{tenant}"


async def _start(start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], tenant: str,
                 policy: str) -> Any:
    """A daemon running ``tenant``'s stream (app stream_echo) under a contract with ``policy``."""
    settings = settings_factory(extra_apps=ECHO_APPS)
    tenants.write_profile(settings.tenants_dir, {
        "id": tenant, "runner": "process", "token_sha256": hash_token(_token(tenant)),
        "stream": {"app": "stream_echo", "min_consumers": 1, "max_consumers": 1, "prefetch": 100,
                   "batch_max_messages": 50, "batch_max_wait_ms": 50, "report_interval_s": 1.0,
                   "contract": {"on_violation": policy, "required": ["id"], "fields": FIELDS}}})
    rd = await start_daemon(settings)
    await wait_consumers(rd.daemon, tenant, 1)
    return rd


async def _publish(amqp_url: str, tenant: str, messages: dict[str, Any]) -> None:
    assert await publish_raw(amqp_url, tenant, list(messages.values()), list(messages)) == len(messages)


async def _processed(events: list[dict[str, Any]], tenant: str, count: int) -> None:
    """Wait until the tenant's consumer committed (wrote, recorded the schema, acknowledged)
    ``count`` messages in all; then every document and reject of them is in the store."""
    def committed() -> int:
        return sum(e["messages"] for e in events
                   if e["event"] == "stream.batch.committed" and e.get("tenant") == tenant)
    await await_until(lambda: committed() >= count, what=f"{count} messages committed for {tenant}")
    assert committed() == count  # each message once: none redelivered, none failed its batch


async def _documents(mongo: Mongo, tenant: str) -> dict[str, dict[str, Any]]:
    return {d["_id"]: d async for d in mongo[f"tenant_{tenant}"]["events"].find({})}


async def _rejects(mongo: Mongo, tenant: str) -> dict[str, dict[str, Any]]:
    return {d["_id"]: d async for d in mongo[f"tenant_{tenant}"]["_rejects"].find({})}


def _raw(body: Any) -> str:
    """The body as publish_raw sent it, as a reject keeps it."""
    return orjson.dumps(body).decode()


def _echoed(tenant: str, _id: str, **record: Any) -> dict[str, Any]:
    """The document stream_echo makes of ``record``."""
    return {**record, "seen_by": "stream_echo", "routing_key": tenant, "_id": _id}


def _assert_contract_reject(reject: dict[str, Any], tenant: str, message_id: str, mentions: str) -> None:
    assert reject["kind"] == "contract" and reject["source"] == "stream", reject
    assert reject["tenant"] == tenant and reject["app"] == "stream_echo" and reject["routing_key"] == tenant
    assert reject["message_id"] == message_id
    assert reject["reason"].startswith("schema contract") or "violates the contract" in reject["reason"], reject
    assert mentions in reject["reason"], reject["reason"]


async def test_reject_record_writes_the_valid_documents_and_rejects_the_others_keeping_the_raw_body_once(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], mongo: Mongo,
        amqp_url: str, tenant_id: str, events: list[dict[str, Any]]) -> None:
    await _start(start_daemon, settings_factory, tenant_id, "reject_record")
    array = [{"id": 4}, {"id": "y"}, {"id": 5, "extra": 1}, {"id": 6, "name": None}]
    mixed = [{"bad": True}, {"id": "z"}]  # the app rejects record 0, the contract record 1
    messages: dict[str, Any] = {
        "r0": {"id": 1, "name": "a"},
        "r1": {"name": "b"},                          # required field missing
        "r2": {"id": "x", "name": "c"},               # wrong type
        "r3": {"id": 3, "name": "d", "extra": True},  # undeclared field
        "r4": array,
        "r5": mixed,
    }
    await _publish(amqp_url, tenant_id, messages)
    await _processed(events, tenant_id, len(messages))

    docs = await _documents(mongo, tenant_id)
    assert docs == {
        "m:r0": _echoed(tenant_id, "m:r0", id=1, name="a"),
        "m:r4:0": _echoed(tenant_id, "m:r4:0", id=4),
        "m:r4:3": _echoed(tenant_id, "m:r4:3", id=6, name=None),  # null in an optional field is fine
    }

    rejects = await _rejects(mongo, tenant_id)
    # the id and index of every reject of one record: its place in the body
    assert set(rejects) == {"stream:r1", "stream:r2", "stream:r3", "stream:r4:1", "stream:r4:2", "stream:r5:0",
                            "stream:r5:1"}

    r1 = rejects["stream:r1"]
    _assert_contract_reject(r1, tenant_id, "r1", "required field 'id' is missing")
    assert r1["record"] == {"name": "b"} and r1["index"] is None  # the record as published (a replay's input)
    assert r1["raw"] == _raw(messages["r1"]) and r1["raw_bytes"] == len(_raw(messages["r1"]))
    r2 = rejects["stream:r2"]
    _assert_contract_reject(r2, tenant_id, "r2", "field 'id' is string, the contract says int")
    assert r2["record"]["id"] == "x" and r2["raw"] == _raw(messages["r2"])
    r3 = rejects["stream:r3"]
    _assert_contract_reject(r3, tenant_id, "r3", "field 'extra' is not in the contract")
    assert r3["record"] == messages["r3"]
    assert r3["raw"] == _raw(messages["r3"])

    # an array body: the raw body in the first contract reject of the message, a reference in the other
    first, second = rejects["stream:r4:1"], rejects["stream:r4:2"]
    _assert_contract_reject(first, tenant_id, "r4", "field 'id' is string, the contract says int")
    _assert_contract_reject(second, tenant_id, "r4", "field 'extra' is not in the contract")
    assert first["record"] == {"id": "y"} and first["index"] == 1
    assert second["record"] == {"id": 5, "extra": 1} and second["index"] == 2
    assert first["raw"] == _raw(array) and first.get("raw_in") is None
    assert second["raw"] is None and second["raw_in"] == "stream:r4:1"

    # the app's own reject of the message already holds the raw body: the contract reject points to it
    app_reject = rejects["stream:r5:0"]
    assert app_reject["kind"] == "rejected" and app_reject["raw"] == _raw(mixed)
    contract = rejects["stream:r5:1"]
    _assert_contract_reject(contract, tenant_id, "r5", "field 'id' is string, the contract says int")
    assert contract["record"] == {"id": "z"} and contract["index"] == 1
    assert contract["raw"] is None and contract["raw_in"] == "stream:r5:0"


async def test_drop_field_writes_the_document_without_the_offending_fields(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], mongo: Mongo,
        amqp_url: str, tenant_id: str, events: list[dict[str, Any]]) -> None:
    await _start(start_daemon, settings_factory, tenant_id, "drop_field")
    array = [{"id": 3, "more": {"a": 1}}, {"name": "c"}]
    messages: dict[str, Any] = {
        "d0": {"id": 1, "name": "a", "extra": True},  # undeclared: dropped
        "d1": {"id": 2, "name": 7},                   # wrong type, not required: dropped
        "d2": {"id": "x", "name": "b"},               # wrong type of a required field: rejected
        "d3": array,                                  # record 1 misses the required field
    }
    await _publish(amqp_url, tenant_id, messages)
    await _processed(events, tenant_id, len(messages))

    assert await _documents(mongo, tenant_id) == {
        "m:d0": _echoed(tenant_id, "m:d0", id=1, name="a"),
        "m:d1": _echoed(tenant_id, "m:d1", id=2),
        "m:d3:0": _echoed(tenant_id, "m:d3:0", id=3),
    }
    rejects = await _rejects(mongo, tenant_id)
    assert set(rejects) == {"stream:d2", "stream:d3:1"}  # nothing for what was dropped
    _assert_contract_reject(rejects["stream:d2"], tenant_id, "d2",
                            "field 'id' is string, the contract says int")
    assert rejects["stream:d2"]["raw"] == _raw(messages["d2"])
    missing = rejects["stream:d3:1"]
    _assert_contract_reject(missing, tenant_id, "d3", "required field 'id' is missing")
    assert missing["record"] == {"name": "c"} and missing["raw"] == _raw(array)


async def _stream_scope(http: aiohttp.ClientSession, url: str, tenant: str) -> dict[str, Any]:
    async with http.get(f"{url}/tenants/{tenant}/schema",
                        headers={"Authorization": f"Bearer {_token(tenant)}"}) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    scopes = {s["scope"]: s for s in body["scopes"]}
    assert set(scopes) == {"stream"}, body
    return scopes["stream"]


def _history(scope: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return sorted((h["field"], h["type"], h["change"], h["source"]) for h in scope["history"])


async def test_evolve_writes_new_fields_and_records_them_once_in_the_stream_schema(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], mongo: Mongo,
        amqp_url: str, tenant_id: str, events: list[dict[str, Any]], http: aiohttp.ClientSession) -> None:
    rd = await _start(start_daemon, settings_factory, tenant_id, "evolve")
    first: dict[str, Any] = {
        "e0": {"id": 1, "name": "a", "extra": True},  # a new field
        "e1": {"id": "x", "name": "b"},               # a new type of a declared (required) field
        "e2": {"name": "c", "other": 1.5},            # required field missing: rejected, 'other' not recorded
    }
    await _publish(amqp_url, tenant_id, first)
    await _processed(events, tenant_id, 3)

    assert await _documents(mongo, tenant_id) == {
        "m:e0": _echoed(tenant_id, "m:e0", id=1, name="a", extra=True),
        "m:e1": _echoed(tenant_id, "m:e1", id="x", name="b"),
    }
    rejects = await _rejects(mongo, tenant_id)
    assert set(rejects) == {"stream:e2"}
    _assert_contract_reject(rejects["stream:e2"], tenant_id, "e2", "required field 'id' is missing")
    assert rejects["stream:e2"]["raw"] == _raw(first["e2"])

    expected = [("extra", "bool", "added", "stream"), ("id", "string", "type_added", "stream")]
    scope = await _stream_scope(http, rd.url, tenant_id)
    assert _history(scope) == expected
    assert scope["contract"]["on_violation"] == "evolve" and scope["contract"]["required"] == ["id"]
    assert scope["current"] == {"id": ["int", "string"], "name": ["string"], "seen_by": ["string"],
                                "routing_key": ["string"], "extra": ["bool"]}

    # the same new field and type again, in later batches: written, and the history does not grow
    await _publish(amqp_url, tenant_id, {"e3": {"id": 2, "extra": False}})
    await _processed(events, tenant_id, 4)
    await _publish(amqp_url, tenant_id, {"e4": [{"id": 3, "extra": True}, {"id": "y"}]})
    await _processed(events, tenant_id, 5)
    docs = await _documents(mongo, tenant_id)
    assert docs["m:e3"] == _echoed(tenant_id, "m:e3", id=2, extra=False)
    assert docs["m:e4:0"] == _echoed(tenant_id, "m:e4:0", id=3, extra=True)
    assert docs["m:e4:1"] == _echoed(tenant_id, "m:e4:1", id="y")
    assert len(docs) == 5 and set(await _rejects(mongo, tenant_id)) == {"stream:e2"}
    scope = await _stream_scope(http, rd.url, tenant_id)
    assert _history(scope) == expected
    assert [h["field"] for h in scope["history"]].count("extra") == 1

    # another tenant's token sees nothing of it
    async with http.get(f"{rd.url}/tenants/{tenant_id}/schema",
                        headers={"Authorization": "Bearer not-a-token"}) as resp:
        assert resp.status == 401 and "extra" not in await resp.text()


async def test_reject_file_rejects_the_whole_message_as_one_contract_reject(
        start_daemon: Callable[..., Any], settings_factory: Callable[..., Settings], mongo: Mongo,
        amqp_url: str, tenant_id: str, events: list[dict[str, Any]]) -> None:
    await _start(start_daemon, settings_factory, tenant_id, "reject_file")
    array = [{"id": 1, "name": "a"}, {"id": 2, "extra": 1}, {"id": 3}]  # only record 1 violates
    messages: dict[str, Any] = {
        "f0": array,
        "f1": {"id": 9, "name": "ok"},  # in the same batch: not affected
        "f2": {"id": "x"},
    }
    await _publish(amqp_url, tenant_id, messages)
    await _processed(events, tenant_id, len(messages))

    assert await _documents(mongo, tenant_id) == {"m:f1": _echoed(tenant_id, "m:f1", id=9, name="ok")}
    rejects = await _rejects(mongo, tenant_id)
    assert set(rejects) == {"stream:f0", "stream:f2"}  # one per message, none per record
    whole = rejects["stream:f0"]
    _assert_contract_reject(whole, tenant_id, "f0", "field 'extra' is not in the contract")
    assert "reject_file" in whole["reason"]
    assert whole["raw"] == _raw(array) and whole["raw_bytes"] == len(_raw(array))
    assert whole.get("raw_in") is None
    _assert_contract_reject(rejects["stream:f2"], tenant_id, "f2", "field 'id' is string, the contract says int")
    assert rejects["stream:f2"]["raw"] == _raw(messages["f2"])
