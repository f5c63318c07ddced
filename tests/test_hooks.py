"""One test per hook, named ``test_hook_<hook name>``, each calling the hook for real through the
runner, in a confined worker process and in a daemon thread (``runner = "thread"``).

``tests/test_plugins.py::test_every_hook_has_a_test_named_after_it`` checks that this module
has a test function of exactly that name for every hook in :mod:`mysimbdp.apps.hookspecs`.
The last tests show that pluggy's semantics apply to a tenant app (tryfirst/trylast, old- and
new-style hookwrappers, call monitoring), not only their names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from mysimbdp import BatchContext, Index, MessageContext, Target, hookimpl
from mysimbdp.apps import App
from mysimbdp.apps.plugins import get_plugin_manager
from mysimbdp.apps.runner import AppError, AppSession, Runners, calls
from mysimbdp.config import RunnerSettings
from mysimbdp.errors import PluginError
from mysimbdp.stream.records import Incoming

APPS = {"batch_plain": "tests.plugins.batch_apps", "hostile": "tests.plugins.hostile",
        "stream_echo": "tests.plugins.stream_echo", "columnar": "tests.plugins.columnar",
        "layered": "tests.plugins.layered", "misspelt": "tests.plugins.misspelt"}
MODES = ["process", "thread"]


def _ctx(app: str, fmt: str = "csv") -> BatchContext:
    return BatchContext("t1", app, "f.csv", "ab" * 32, fmt)


@pytest.fixture(scope="module")
def runners() -> Iterator[Runners]:
    pool = Runners(RunnerSettings(memory_mb=512), APPS)
    yield pool
    pool.close()


@pytest.fixture
def lease(runners: Runners) -> Iterator[Any]:
    leased: list[AppSession] = []

    def take(app: str, mode: str, kind: str = "batch", tenant: str = "t1") -> AppSession:
        session = runners.lease(tenant, app, mode, kind)  # type: ignore[arg-type]
        leased.append(session)
        return session

    yield take
    for session in leased:
        runners.release(session)


def _message(body: Any, message_id: str = "m1") -> dict[str, Any]:
    incoming = Incoming(tenant="t1", routing_key="t1.readings", body=json.dumps(body).encode(),
                        message_id=message_id, timestamp=None, headers={"h": "v"})
    return {f.name: getattr(incoming, f.name) for f in dataclasses.fields(Incoming)}


def _stream(session: AppSession, *bodies: Any, min_quality: float = 0.0) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    got: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []
    session.stream([_message(b, f"m{i}") for i, b in enumerate(bodies)], min_quality, 100,
                   lambda i, docs, rejects, error: got.append((docs, rejects)))
    return got


# -- batch hooks ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_batch_target(lease: Any, mode: str) -> None:
    assert lease("batch_plain", mode).target("batch") == Target("items")
    assert lease("columnar", mode).target("batch") == Target()  # the default plugin's answer
    with pytest.raises(AppError, match="mysimbdp_batch_target raised SystemExit"):
        lease("hostile", mode, tenant="x-target-exit").target("batch")  # fails the file, not the daemon


@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_batch_wrangle(lease: Any, mode: str) -> None:
    session = lease("batch_plain", mode)
    out = session.wrangle_records([{"n": "4"}, {"n": "1", "skip": "yes"}, {"n": "1", "bad": "yes"},
                                   {"n": "x"}], _ctx("batch_plain"))
    assert out[0].doc == {"n": 4, "file": "f.csv"}
    assert (out[1].doc, out[1].stage) == (None, None)  # None: skipped on purpose
    assert (out[2].stage, out[2].reason) == ("wrangle", "bad is yes")  # Reject: its reason
    assert out[3].stage == "wrangle" and out[3].reason.startswith("ValueError")
    exits = lease("hostile", mode).wrangle_records([{"attack": "exit"}, {"attack": "none"}], _ctx("hostile"))
    assert exits[0].stage == "wrangle" and "SystemExit" in (exits[0].reason or "")  # only that record
    assert exits[1].doc is not None


@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_batch_wrangle_table(lease: Any, mode: str) -> None:
    session = lease("columnar", mode)
    assert session.has("mysimbdp_batch_wrangle_table") and not session.has("mysimbdp_batch_wrangle")
    out = session.wrangle_table(pa.RecordBatch.from_pylist([{"n": 2}, {"n": -1}]), _ctx("columnar"))
    assert out.to_pylist() == [{"n": 2, "twice": 4, "_reject": None},
                               {"n": -1, "twice": -2, "_reject": "n is negative"}]
    with pytest.raises(AppError, match="cannot load jsonl files"):
        session.wrangle_records([{"n": 1}], _ctx("columnar", "jsonl"))


@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_batch_columns(lease: Any, mode: str) -> None:
    session = lease("columnar", mode)
    assert session.has("mysimbdp_batch_columns")
    assert session.columns(_ctx("columnar")) == {"n": pa.int64()}
    plain = lease("batch_plain", mode)
    assert not plain.has("mysimbdp_batch_columns") and plain.columns(_ctx("batch_plain")) == {}  # the default


@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_batch_check(lease: Any, mode: str) -> None:
    session = lease("batch_plain", mode)
    out = session.wrangle_records([{"n": "-3"}, {"n": "3"}], _ctx("batch_plain"))
    assert (out[0].stage, out[0].reason) == ("check", "n must not be negative") and out[1].doc is not None
    assert session.check_documents([{"n": -1}, {"n": 1}], _ctx("batch_plain")) == ["n must not be negative", None]
    columnar = lease("columnar", mode)
    assert columnar.check_documents([{"n": 13}, {"n": 12}], _ctx("columnar")) == ["13 is unlucky", None]


# -- stream hooks --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_stream_target(lease: Any, mode: str) -> None:
    assert lease("stream_echo", mode, "stream").target("stream") == Target("events")
    assert lease("layered", mode, "stream").target("stream") == Target()  # the default plugin's answer


@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_stream_wrangle(lease: Any, mode: str) -> None:
    session = lease("stream_echo", mode, "stream")
    (docs, rejects), (docs2, rejects2), (docs3, rejects3), (docs4, rejects4) = _stream(
        session, {"v": 1}, [{"v": 2}, {"bad": True}], {"skip": True}, {"boom": True})
    assert docs == [{"v": 1, "seen_by": "stream_echo", "routing_key": "t1.readings", "_id": "m:m0"}] and not rejects
    assert [d["_id"] for d in docs2] == ["m:m1:0"] and [r["kind"] for r in rejects2] == ["rejected"]
    assert not docs3 and not rejects3  # None: skipped on purpose
    assert not docs4 and [r["kind"] for r in rejects4] == ["app_error"] and "RuntimeError" in rejects4[0]["reason"]


@pytest.mark.parametrize("mode", MODES)
def test_hook_mysimbdp_stream_quality(lease: Any, mode: str) -> None:
    session = lease("stream_echo", mode, "stream")
    (docs, _), (low, rejects), (none, _) = _stream(session, {"q": 0.9}, {"q": 0.1}, {"v": 1}, min_quality=0.5)
    assert docs[0]["_quality"] == 0.9
    assert not low and [r["kind"] for r in rejects] == ["quality"]
    assert "_quality" not in none[0]  # None: no score


# -- pluggy's semantics apply --------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_tryfirst_and_a_hookwrapper_of_a_tenant_app_take_effect(lease: Any, mode: str) -> None:
    session = lease("layered", mode)
    out = session.wrangle_records([{"n": "1"}, {"first": "1"}, {"none": "1"}], _ctx("layered"))
    assert out[0].doc == {"n": "1", "by": "main", "stamped": "f.csv"}
    assert out[1].doc == {"by": "tryfirst", "stamped": "f.csv"}  # tryfirst answered, main never asked
    assert (out[2].doc, out[2].stage) == (None, None)  # every implementation said None: skipped


@pytest.mark.parametrize("mode", MODES)
def test_trylast_of_a_tenant_app_takes_effect(lease: Any, mode: str) -> None:
    (docs, _), (passed, _) = _stream(lease("layered", mode, "stream"), {"v": 1}, {"pass": True})
    assert docs[0]["by"] == "main"  # registered later, the trylast plugin still comes after main
    assert passed[0]["by"] == "trylast"


@pytest.mark.parametrize("mode", MODES)
def test_a_new_style_wrapper_wraps_the_platforms_default(lease: Any, mode: str) -> None:
    session = lease("layered", mode)
    assert session.target("batch") == Target("records_wrapped")
    assert not session.has("mysimbdp_batch_target")  # a wrapper alone does not implement a hook


def test_calls_can_be_monitored() -> None:
    app = App(get_plugin_manager({"batch_plain": APPS["batch_plain"]}, load_entry_points=False), "batch_plain")
    seen: list[str] = []
    undo = app.pm.add_hookcall_monitoring(lambda name, impls, kwargs: seen.append(name),
                                          lambda outcome, name, impls, kwargs: None)
    calls.wrangle_records(app, [{"n": "1"}, {"n": "2"}], _ctx("batch_plain"))
    assert seen == ["mysimbdp_batch_wrangle", "mysimbdp_batch_check"] * 2
    undo()
    seen.clear()
    calls.wrangle_records(app, [{"n": "1"}], _ctx("batch_plain"))
    assert seen == [] and app.pm.monitors == 0


def test_the_direct_path_gives_what_pluggy_gives() -> None:
    """One plain implementation is called directly; its answers are pluggy's, record for record."""
    app = App(get_plugin_manager({"batch_plain": APPS["batch_plain"]}, load_entry_points=False), "batch_plain")
    records = [{"n": "4"}, {"n": "1", "skip": "yes"}, {"n": "1", "bad": "yes"}, {"n": "x"}, {"n": "-1"}]
    direct = calls.wrangle_records(app, records, _ctx("batch_plain"))
    undo = app.pm.add_hookcall_monitoring(lambda *a: None, lambda *a: None)  # forces pluggy's own call
    through_pluggy = calls.wrangle_records(app, records, _ctx("batch_plain"))
    undo()
    assert direct == through_pluggy


@pytest.mark.parametrize("mode", MODES)
def test_a_misspelt_hook_is_refused_naming_it(runners: Runners, mode: str) -> None:
    with pytest.raises(AppError, match="unknown hook 'mysimbdp_batch_wrangel'"):  # the file: app_failed
        runners.lease("t1", "misspelt", mode, "batch")  # type: ignore[arg-type]


def test_a_misspelt_hook_in_a_listed_plugin_is_refused_naming_it() -> None:
    class Typo:
        @hookimpl
        def mysimbdp_batch_wrangel(self, record: dict[str, Any]) -> None:  # the typo is the test
            return None

    class Main:
        mysimbdp_plugins = [Typo()]

        @hookimpl
        def mysimbdp_batch_wrangle(self, record: dict[str, Any]) -> dict[str, Any]:
            return record

    pm = get_plugin_manager({"main": Main()}, load_entry_points=False)
    with pytest.raises(PluginError, match="app 'main': unknown hook 'mysimbdp_batch_wrangel'.*docs/plugins.md"):
        App(pm, "main")


def test_public_types_come_from_the_top() -> None:
    import mysimbdp
    import mysimbdp.apps

    for name in ("Target", "Index", "BatchContext", "MessageContext"):
        assert getattr(mysimbdp, name) is getattr(mysimbdp.apps, name)
    assert {Index, MessageContext} <= {getattr(mysimbdp, n) for n in mysimbdp.__all__}
