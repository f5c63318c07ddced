"""The app runner: confined worker processes, the thread runner, the wire between them.

These tests start real workers (``python -m mysimbdp.apps.runner.worker``) with the hostile test
app (``tests/plugins/hostile.py``) and read back what each attack got.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pytest

from mysimbdp.apps import BatchContext, Target
from mysimbdp.apps.runner import MAX_STUCK, AppError, Runners, WorkerFailed, calls, frames, ipc
from mysimbdp.apps.runner.confine import landlock_abi
from mysimbdp.config import RunnerSettings
from mysimbdp.errors import PluginError

HOSTILE = {"hostile": "tests.plugins.hostile", "batch_plain": "tests.plugins.batch_apps"}
CTX = BatchContext("t1", "hostile", "f.csv", "ab" * 32, "csv")
confined = pytest.mark.skipif(landlock_abi() < 6, reason="needs Landlock ABI 6 (Linux 6.12)")


@pytest.fixture
def runners() -> Iterator[Runners]:
    pool = Runners(RunnerSettings(memory_mb=512), HOSTILE)
    yield pool
    pool.close()


def _got(runners: Runners, *records: dict[str, Any], tenant: str = "t1") -> list[str]:
    session = runners.lease(tenant, "hostile", "process", "batch")
    try:
        return [(r.doc or {}).get("got", r.reason) for r in session.wrangle_records(list(records), CTX)]
    finally:
        runners.release(session)


def test_worker_environment_holds_nothing_of_the_platform(runners: Runners, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYSIMBDP_ADMIN_TOKEN", "the-admin-secret")
    monkeypatch.setenv("MYSIMBDP_MONGO_URI", "mongodb://secret@127.0.0.1:1/")
    (got,) = _got(runners, {"attack": "env"})
    assert "MYSIMBDP" not in got and "secret" not in got
    assert "PATH" in got


@confined
def test_worker_reads_no_file_of_the_host_or_the_platform(runners: Runners, tmp_path: Path) -> None:
    secret = tmp_path / "var" / "log" / "mysimbdp.jsonl"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"store_uri": "mongodb://127.0.0.1:27017"}')
    repo = Path(__file__).resolve().parent.parent
    got = _got(runners, {"attack": "read", "arg": "/etc/passwd"}, {"attack": "read", "arg": str(secret)},
               {"attack": "read", "arg": f"/proc/{os.getpid()}/environ"}, {"attack": "listdir", "arg": str(repo)},
               {"attack": "read", "arg": str(repo / "README.md")}, {"attack": "listdir", "arg": "/"})
    assert all(g.startswith("refused: PermissionError") for g in got), got


@confined
def test_worker_connects_nowhere(runners: Runners, mongo_uri: str) -> None:
    store = urlparse(mongo_uri)
    got = _got(runners, {"attack": "connect", "arg": f"{store.hostname}:{store.port}"},
               {"attack": "connect", "arg": "127.0.0.1:5672"}, {"attack": "connect", "arg": "127.0.0.1:15672"})
    assert all(g.startswith("refused:") for g in got), got


@confined
def test_worker_writes_execs_and_signals_nothing(runners: Runners, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    got = _got(runners, {"attack": "write", "arg": str(target)}, {"attack": "exec", "arg": "id"},
               {"attack": "signal_parent", "arg": str(os.getpid())})
    assert all(g.startswith("refused:") for g in got), got
    assert not target.exists()


def test_an_app_that_exits_rejects_only_that_record(runners: Runners) -> None:
    got = _got(runners, {"attack": "exit"}, {"attack": "keyboard"}, {"attack": "none"})
    assert got == ["SystemExit: 3", "KeyboardInterrupt: ", "nothing"]


def test_memory_is_bounded(runners: Runners) -> None:
    (got,) = _got(runners, {"attack": "memory", "arg": "2048"})
    assert got.startswith("refused: MemoryError")


def test_a_worker_that_dies_fails_the_call_and_is_replaced(runners: Runners) -> None:
    session = runners.lease("t1", "hostile", "process", "batch")
    with pytest.raises(WorkerFailed, match="exited with status 4"):
        session.wrangle_records([{"attack": "os_exit"}], CTX)
    assert not session.alive
    runners.release(session)
    assert runners.workers()["t1"] == {"busy": 0, "idle": 0, "stuck_threads": 0}
    assert _got(runners, {"attack": "none"}) == ["nothing"]


def test_a_hung_worker_is_killed_and_leaves_no_thread(runners: Runners) -> None:
    session = runners.lease("t1", "hostile", "process", "batch")
    errors: list[BaseException] = []

    def call() -> None:
        try:
            session.wrangle_records([{"attack": "hang"}], CTX)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)
    session.kill()
    thread.join(5)
    assert not thread.is_alive(), "the calling thread must end once the worker is killed"
    assert isinstance(errors[0], WorkerFailed)
    runners.release(session)
    assert session.proc.returncode is not None


def test_idle_workers_are_reused_per_tenant_only(runners: Runners) -> None:
    a = runners.lease("t1", "hostile", "process", "batch")
    pid = a.proc.pid
    runners.release(a)
    assert runners.lease("t1", "hostile", "process", "batch").proc.pid == pid
    other = runners.lease("t2", "hostile", "process", "batch")
    assert other.proc.pid != pid


def test_kind_and_presence_are_checked(runners: Runners) -> None:
    with pytest.raises(PluginError, match="no tenant app named 'missing'"):
        runners.lease("t1", "missing", "process", "batch")
    with pytest.raises(PluginError, match="is not a stream app"):
        runners.lease("t1", "batch_plain", "process", "stream")


def test_target_is_asked_of_the_worker(runners: Runners) -> None:
    session = runners.lease("t1", "batch_plain", "process", "batch")
    assert session.target("batch") == Target("items")
    runners.release(session)
    hung = runners.lease("x-target-exit", "hostile", "process", "batch")
    with pytest.raises(AppError, match="SystemExit"):
        hung.target("batch")
    runners.release(hung)


def test_thread_runner_counts_stuck_calls_and_refuses_past_the_limit() -> None:
    pool = Runners(RunnerSettings(), HOSTILE)
    sessions = []

    def hang(session: Any) -> None:
        with pytest.raises(WorkerFailed, match="abandoned"):
            session.wrangle_records([{"attack": "hang", "arg": "0.5"}], CTX)

    for _ in range(MAX_STUCK):
        session = pool.lease("t1", "hostile", "thread", "batch")
        sessions.append(session)
        threading.Thread(target=hang, args=(session,), daemon=True).start()
    time.sleep(0.1)
    for session in sessions:
        session.kill()
    assert pool.workers()["t1"]["stuck_threads"] == MAX_STUCK
    with pytest.raises(AppError, match="stuck"):
        pool.lease("t1", "hostile", "thread", "batch")
    deadline = time.monotonic() + 5
    while pool.workers()["t1"]["stuck_threads"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.workers()["t1"]["stuck_threads"] == 0
    assert pool.lease("t1", "hostile", "thread", "batch").name == "hostile"


def test_thread_runner_gives_the_same_answers(runners: Runners) -> None:
    records = [{"attack": "exit"}, {"attack": "none", "v": "1"}]
    process = runners.lease("t1", "hostile", "process", "batch")
    thread = runners.lease("t1", "hostile", "thread", "batch")
    a = process.wrangle_records(records, CTX)
    b = thread.wrangle_records(records, CTX)
    assert [(r.stage, r.reason) for r in a] == [(r.stage, r.reason) for r in b]
    assert a[1].doc == b[1].doc == {"attack": "none", "v": "1", "got": "nothing"}
    runners.release(process)


def test_columnar_batches_cross_as_arrow(runners: Runners) -> None:
    session = runners.lease("t1", "hostile", "process", "batch")
    batch = pa.RecordBatch.from_pylist([{"a": 1, "b": "x"}, {"a": 2, "b": None}])
    with pytest.raises(AppError, match="does not implement mysimbdp_batch_wrangle_table"):
        session.wrangle_table(batch, CTX)
    runners.release(session)


def test_frames_refuse_what_is_too_large_or_malformed() -> None:
    r, w = os.pipe()
    frames.write_frame(w, frames.encode({"x": "y" * 100}))
    with pytest.raises(frames.FrameError, match="over the limit"):
        frames.read_frame(r, 50)
    os.close(r)
    os.close(w)
    r, w = os.pipe()
    try:
        os.write(w, b"\x00\x00\x00\x05abcde")
        with pytest.raises(frames.FrameError, match="not a valid BSON"):
            frames.read_frame(r, 50)
    finally:
        os.close(w)
    with pytest.raises(frames.WorkerGone):
        frames.read_frame(r, 50)
    os.close(r)


def test_arrow_bytes_from_a_worker_are_validated() -> None:
    batch = pa.RecordBatch.from_pylist([{"a": 1}, {"a": 2}])
    assert ipc.read_batch(ipc.write_batch(batch)).equals(batch)
    with pytest.raises(ipc.IpcError):
        ipc.read_batch(b"\xff" * 64)


def test_targets_from_apps_are_checked() -> None:
    assert calls.target_from_doc(None) == Target()
    with pytest.raises(AppError, match="direction"):
        calls.target_from_doc({"collection": "c", "indexes": [{"keys": [["a", 7]]}]})
    assert calls.collection_problem("_rejects") is not None
    assert calls.collection_problem("system.users") is not None
    assert calls.collection_problem("a.b") is not None
    assert calls.collection_problem("readings") is None
