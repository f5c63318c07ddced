"""Property tests of the stream message decoder (:func:`mysimbdp.stream.records.process_message`):
any body yields documents and/or reject documents — every record accounted for once, with
unique ids — and never an unhandled exception, whatever the tenant's app does.

Part of guarantee 5 of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mysimbdp.apps import MessageContext
from mysimbdp.errors import Reject
from mysimbdp.stream.records import Incoming, Route, process_message
from tests.reliability.results import full_run, record

EXAMPLES = 1000 if full_run() else 100
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not full_run(),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GUARANTEE = "5. parsers under fuzzing"
tried: dict[tuple[str, str], int] = {}


def _echo(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    return {**record, "n": message.index}


def _moody(record: dict[str, Any], message: MessageContext) -> Any:
    """An app that misbehaves in every way the contract allows, chosen by the record."""
    mood = len(record) % 5
    if mood == 0:
        raise Reject("no thanks")
    if mood == 1:
        raise ValueError("app bug")
    if mood == 2:
        return None
    if mood == 3:
        return ["not", "a", "dict"]
    return dict(record)


def _quality(document: dict[str, Any], message: MessageContext) -> float:
    return float(len(document) % 3) / 2  # 0.0, 0.5 or 1.0: some below min_quality


ROUTES = {
    "echo": Route(app="echo", collection="records", wrangle=_echo),
    "moody": Route(app="moody", collection="records", wrangle=_moody, quality=_quality),
}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for name, n in sorted(tried.items()):
        label, test = name
        record(GUARANTEE, label, test, injected=n, bad_inputs=n)


def _count(label: str, test: str) -> None:
    tried[(label, test)] = tried.get((label, test), 0) + 1


def _incoming(body: bytes, message_id: str | None) -> Incoming:
    return Incoming(tenant="t", routing_key="t", body=body, message_id=message_id,
                    timestamp=datetime.now(UTC), headers={})


def _records_in(body: bytes) -> int | None:
    """How many records the body holds (None: not a usable JSON body: one reject)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict):
        return 1
    if isinstance(value, list):
        return len(value)
    return None


def _check(body: bytes, message_id: str | None, route: str, min_quality: float) -> None:
    outcome = process_message(_incoming(body, message_id), ROUTES[route], min_quality)
    docs = [d for ds in outcome.documents.values() for d in ds]
    expected = _records_in(body)
    # None from the app skips a record on purpose: neither a document nor a reject
    assert len(docs) + len(outcome.rejects) + outcome.skipped == (1 if expected is None else expected)
    ids = [d["_id"] for d in docs] + [r["_id"] for r in outcome.rejects]
    assert len(set(ids)) == len(ids), ids
    for reject in outcome.rejects:
        assert reject["reason"] and reject["message_id"]
        orjson.dumps(reject, default=str)  # storable as it is


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)


@FUZZ
@given(body=st.binary(max_size=2048), message_id=st.none() | st.text(min_size=1, max_size=40),
       route=st.sampled_from(sorted(ROUTES)), min_quality=st.sampled_from([0.0, 0.6]))
def test_any_body_is_accounted_for(body: bytes, message_id: str | None, route: str,
                                   min_quality: float) -> None:
    _count("any message body (bytes)", "test_any_body_is_accounted_for")
    _check(body, message_id, route, min_quality)


@FUZZ
@given(value=_json, message_id=st.none() | st.text(min_size=1, max_size=40),
       route=st.sampled_from(sorted(ROUTES)), min_quality=st.sampled_from([0.0, 0.6]))
def test_any_json_body_is_accounted_for(value: Any, message_id: str | None, route: str,
                                        min_quality: float) -> None:
    _count("any JSON message body, misbehaving app", "test_any_json_body_is_accounted_for")
    _check(json.dumps(value).encode(), message_id, route, min_quality)


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b"\xff\xfe\x00garbage",
    b"",
    b"[]",
    b"[1, {}, null]",
])
def test_hostile_bodies(body: bytes) -> None:
    _count("hostile message bodies (deep nesting, empty, garbage)", "test_hostile_bodies")
    _check(body, "m-1", "echo", 0.0)
