"""One tenant app, ready to be called: in a confined worker process, or in the daemon's threads.

A session is used by one thread at a time (a file's loading thread, a consumer's app thread)
and its calls block; :meth:`kill` may be called from anywhere (the event loop, at a timeout)
and makes the call in progress end with :class:`WorkerFailed`.

Both kinds of session call the app through :mod:`mysimbdp.apps.runner.calls`, so they share one
error policy; everything a worker answers is checked here (it is only data, and may be
hostile).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import pyarrow as pa

from mysimbdp.apps.app import App
from mysimbdp.apps.contract import BatchContext, Target
from mysimbdp.apps.runner import calls, frames, ipc
from mysimbdp.apps.runner.calls import AppError, RecordOut
from mysimbdp.config import RunnerSettings

__all__ = ["AppSession", "ProcessSession", "ThreadSession", "WorkerFailed", "OnMessage", "worker_env"]

#: ``on_message(index, documents, rejects, error)``: one message's outcome, as soon as it is
#: known; ``error`` (else None) says why the message could not be handled at all.
OnMessage = Callable[[int, list[dict[str, Any]], list[dict[str, Any]], str | None], None]


class WorkerFailed(AppError):
    """The worker is gone (it exited, was killed or broke the protocol); the session is dead."""


class AppSession(Protocol):
    """What the batch loader and the stream consumers call an app through."""

    tenant: str
    name: str
    kinds: list[str]
    #: whether :meth:`stream` always answers one message at a time (whatever ``per_frame``)
    answers_each_message: bool

    def has(self, hook: str) -> bool: ...
    def target(self, kind: str) -> Target: ...
    def columns(self, ctx: BatchContext) -> dict[str, pa.DataType]: ...
    def wrangle_table(self, batch: pa.RecordBatch, ctx: BatchContext) -> pa.RecordBatch: ...
    def wrangle_records(self, records: Sequence[dict[str, Any]], ctx: BatchContext) -> list[RecordOut]: ...
    def check_documents(self, docs: Sequence[dict[str, Any]], ctx: BatchContext) -> list[str | None]: ...
    def stream(self, items: Sequence[dict[str, Any]], min_quality: float, max_records: int,
               on_message: OnMessage, per_frame: int = 1) -> None: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...
    @property
    def alive(self) -> bool: ...


def _context_doc(ctx: BatchContext) -> dict[str, str]:
    return {"tenant": ctx.tenant, "app": ctx.app, "file": ctx.file, "sha256": ctx.sha256, "format": ctx.format}


def worker_env() -> dict[str, str]:
    """The worker's whole environment: nothing of the platform's (no tokens, URIs or credentials)."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/nonexistent"}


class ProcessSession:
    """A tenant app in its own confined worker process (:mod:`mysimbdp.apps.runner.worker`)."""

    answers_each_message = False

    def __init__(self, tenant: str, name: str, module: str | None, settings: RunnerSettings,
                 spawn: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
        self.tenant, self.name = tenant, name
        self.max_frame = settings.max_frame_mb * 1024 * 1024
        self.cpu_budget_s = settings.cpu_s / 2
        self._killed = False
        to_worker_r, self._out = os.pipe()
        self._in, from_worker_w = os.pipe()
        try:
            self.proc = spawn(
                [sys.executable, "-I", "-m", "mysimbdp.apps.runner.worker", str(to_worker_r), str(from_worker_w)],
                pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=worker_env(), cwd="/", start_new_session=True)
        except BaseException:
            for fd in (self._out, self._in):
                os.close(fd)
            raise
        finally:
            os.close(to_worker_r)
            os.close(from_worker_w)
        init = {"op": "init", "app": name, "module": module, "parent": os.getpid(), "sys_path": [os.path.abspath(p or ".") for p in sys.path],
                "limits": {"memory_mb": settings.memory_mb, "cpu_s": settings.cpu_s, "open_files": settings.open_files},
                "require_confinement": settings.require_confinement, "max_frame_bytes": self.max_frame}
        try:
            frames.write_frame(self._out, frames.encode(init))
            hello = self._answer(deadline=time.monotonic() + settings.start_timeout_s)
        except BaseException:
            self.close()
            raise
        if not isinstance(hello, dict):
            self.close()
            raise WorkerFailed("the worker's greeting is not a document")
        # from here on, answers are read through a buffer of this session's own pipe
        self._reader = io.open(self._in, "rb", buffering=256 * 1024, closefd=False)  # noqa: UP020
        self.kinds = [k for k in hello.get("kinds") or [] if k in ("batch", "stream")]
        self.hooks = {h for h in hello.get("hooks") or [] if isinstance(h, str)}
        self.confinement = hello.get("confinement") or {}

    # -- the protocol ----------------------------------------------------------------------
    def _request(self, doc: dict[str, Any]) -> Any:
        try:
            payload = frames.encode(doc)
        except Exception as exc:  # a record BSON cannot hold
            raise AppError(f"the data cannot be sent to the app: {type(exc).__name__}: {exc}"[:500]) from None
        try:
            frames.write_frame(self._out, payload)
        except frames.WorkerGone:
            raise self._gone() from None
        return self._answer()

    def _answer(self, deadline: float | None = None) -> Any:
        doc = self._frame(deadline)
        if "error" in doc:
            raise AppError(str(doc["error"])[:2000])
        if "ok" not in doc:
            self.kill()
            raise WorkerFailed("the worker broke the protocol (an answer without ok or error)")
        return doc["ok"]

    def _frame(self, deadline: float | None = None) -> dict[str, Any]:
        try:
            reader = getattr(self, "_reader", None)
            if reader is not None:
                return frames.read_frame_buffered(reader, self.max_frame)
            return frames.read_frame(self._in, self.max_frame, deadline)
        except frames.WorkerGone:
            raise self._gone() from None
        except TimeoutError:
            self.kill()
            raise WorkerFailed("the worker did not start in time") from None
        except frames.FrameError as exc:
            self.kill()
            raise WorkerFailed(f"the worker broke the protocol: {exc}") from None

    def _gone(self) -> WorkerFailed:
        if self._killed:
            return WorkerFailed("the app's worker was stopped (time limit)")
        try:
            code = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.kill()
            return WorkerFailed("the app's worker closed its pipe")
        if code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            how = f"was killed by {name}"
            if -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGXCPU):
                how += " (memory, CPU or a crash in native code)"
        else:
            how = f"exited with status {code}"
        return WorkerFailed(f"the app's worker {how}")

    # -- calls -----------------------------------------------------------------------------
    def has(self, hook: str) -> bool:
        """Whether the app implements ``hook``."""
        return hook in self.hooks

    def target(self, kind: str) -> Target:
        """The app's validated target for ``kind``."""
        return calls.target_from_doc(self._request({"op": "target", "kind": kind, "tenant": self.tenant}))

    def columns(self, ctx: BatchContext) -> dict[str, pa.DataType]:
        """Declared column types."""
        data = self._request({"op": "columns", "ctx": _context_doc(ctx)})
        try:
            schema = pa.ipc.read_schema(pa.py_buffer(bytes(data)))
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise AppError(f"mysimbdp_batch_columns: not a schema: {exc}"[:500]) from None
        return {f.name: f.type for f in schema}

    def wrangle_table(self, batch: pa.RecordBatch, ctx: BatchContext) -> pa.RecordBatch:
        """The app's table hook on one batch, its answer validated."""
        data = self._request({"op": "wrangle_table", "ctx": _context_doc(ctx), "batch": ipc.write_batch(batch)})
        try:
            out = ipc.read_batch(bytes(data))
        except (ipc.IpcError, TypeError) as exc:
            raise AppError(f"mysimbdp_batch_wrangle_table: {exc}") from None
        return calls.as_batch(out, batch.num_rows)

    def wrangle_records(self, records: Sequence[dict[str, Any]], ctx: BatchContext) -> list[RecordOut]:
        """The app's record hook on each record."""
        answer = self._request({"op": "wrangle_records", "ctx": _context_doc(ctx), "records": list(records)})
        if not isinstance(answer, list) or len(answer) != len(records):
            raise AppError("the worker answered for another number of records")
        return [_record_out(item) for item in answer]

    def check_documents(self, docs: Sequence[dict[str, Any]], ctx: BatchContext) -> list[str | None]:
        """The app's check hook on each document."""
        answer = self._request({"op": "check_documents", "ctx": _context_doc(ctx), "docs": list(docs)})
        if not isinstance(answer, list) or len(answer) != len(docs):
            raise AppError("the worker answered for another number of documents")
        return [None if a is None else str(a)[:2000] for a in answer]

    def stream(self, items: Sequence[dict[str, Any]], min_quality: float, max_records: int,
               on_message: OnMessage, per_frame: int = 1) -> None:
        """Each message through the app; ``on_message`` as each one's answer arrives.

        The worker answers for up to ``per_frame`` messages at a time (or every 20 ms): with
        more than 1, a worker that dies leaves several messages unanswered, and only
        ``per_frame = 1`` tells which one it died on.
        """
        try:
            payload = frames.encode({"op": "stream", "items": list(items), "min_quality": min_quality,
                                     "max_records": max_records, "per_frame": per_frame})
        except Exception as exc:
            raise AppError(f"the messages cannot be sent to the app: {exc}"[:500]) from None
        try:
            frames.write_frame(self._out, payload)
        except frames.WorkerGone:
            raise self._gone() from None
        expected = 0
        while True:
            doc = self._frame()
            if doc.get("done"):
                if expected != len(items):
                    raise AppError("the worker ended before answering every message")
                return
            if "error" in doc:
                raise AppError(str(doc["error"])[:2000])
            outcomes = doc.get("outcomes")
            if doc.get("i") != expected or not isinstance(outcomes, list) or not _dicts(outcomes) \
                    or expected + len(outcomes) > len(items):
                self.kill()
                raise WorkerFailed("the worker broke the protocol (a stream answer out of order or malformed)")
            assert isinstance(outcomes, list)
            for outcome in outcomes:
                docs, rejects, error = outcome.get("docs"), outcome.get("rejects"), outcome.get("error")
                if not _dicts(docs) or not _dicts(rejects):
                    self.kill()
                    raise WorkerFailed("the worker broke the protocol (a malformed stream answer)")
                on_message(expected, docs, rejects, None if error is None else str(error)[:2000])
                expected += 1

    # -- life ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Not killed and still running."""
        return not self._killed and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the worker has used (0 when it cannot be read)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def kill(self) -> None:
        """Kill the worker and anything it started (its process group); never blocks."""
        self._killed = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """End the worker: close its input, give it a moment to exit, then kill it; reap it."""
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()
        for fd in (self._out, self._in):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()


def _dicts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def _record_out(item: Any) -> RecordOut:
    if not isinstance(item, dict):
        return RecordOut(stage="wrangle", reason="the worker's answer for this record is malformed")
    if "doc" in item:
        doc = item["doc"]
        if isinstance(doc, dict):
            return RecordOut(doc=doc)
        return RecordOut(stage="wrangle", reason="the worker's document is malformed")
    if "stage" in item:
        stage = item["stage"] if item["stage"] in ("wrangle", "check") else "wrangle"
        return RecordOut(stage=stage, reason=str(item.get("reason"))[:2000])
    return RecordOut()


class ThreadSession:
    """A trusted tenant app called in the daemon's own threads (``runner = "thread"``).

    A call that does not return cannot be stopped: :meth:`kill` only abandons it, and the
    thread ends when the app returns. ``on_stuck`` counts such threads (the pool refuses new
    sessions to a tenant with too many).
    """

    answers_each_message = True

    def __init__(self, tenant: str, app: App, on_stuck: Callable[[str, int], None]) -> None:
        self.tenant, self.name, self.app = tenant, app.name, app
        self.kinds = app.kinds
        self.hooks = set(app.hooks)
        self._on_stuck = on_stuck
        self._lock = threading.Lock()
        self._busy = False
        self._abandoned = False

    def _call(self, fn: Callable[[], Any]) -> Any:
        if self._abandoned:
            raise WorkerFailed("the app's call was abandoned (time limit)")
        with self._lock:
            self._busy = True
        try:
            result = fn()
        finally:
            with self._lock:
                self._busy = False
                abandoned = self._abandoned
            if abandoned:
                self._on_stuck(self.tenant, -1)
        if abandoned:
            raise WorkerFailed("the app's call was abandoned (time limit)")
        return result

    def has(self, hook: str) -> bool:
        """Whether the app implements ``hook``."""
        return hook in self.hooks

    def target(self, kind: str) -> Target:
        """The app's validated target for ``kind``."""
        return calls.target_from_doc(self._call(lambda: calls.target_to_doc(calls.target_of(self.app, kind, self.tenant))))

    def columns(self, ctx: BatchContext) -> dict[str, pa.DataType]:
        """Declared column types."""
        return dict(self._call(lambda: calls.columns_of(self.app, ctx)))

    def wrangle_table(self, batch: pa.RecordBatch, ctx: BatchContext) -> pa.RecordBatch:
        """The app's table hook on one batch."""
        return self._call(lambda: calls.wrangle_table(self.app, batch, ctx))  # type: ignore[no-any-return]

    def wrangle_records(self, records: Sequence[dict[str, Any]], ctx: BatchContext) -> list[RecordOut]:
        """The app's record hook on each record."""
        return self._call(lambda: calls.wrangle_records(self.app, records, ctx))  # type: ignore[no-any-return]

    def check_documents(self, docs: Sequence[dict[str, Any]], ctx: BatchContext) -> list[str | None]:
        """The app's check hook on each document."""
        return self._call(lambda: calls.check_documents(self.app, docs, ctx))  # type: ignore[no-any-return]

    def stream(self, items: Sequence[dict[str, Any]], min_quality: float, max_records: int,
               on_message: OnMessage, per_frame: int = 1) -> None:
        """Each message through the app, ``on_message`` after each."""
        def run() -> None:
            stream = calls.StreamCalls(self.app, {"min_quality": min_quality, "max_records": max_records})
            for index, item in enumerate(items):
                docs, rejects = stream.message(item)
                if self._abandoned:
                    return
                on_message(index, docs, rejects, None)
        self._call(run)

    @property
    def alive(self) -> bool:
        """Not abandoned."""
        return not self._abandoned

    def kill(self) -> None:
        """Abandon the call in progress (its thread is counted as stuck until it returns)."""
        with self._lock:
            if self._abandoned:
                return
            self._abandoned = True
            busy = self._busy
        if busy:
            self._on_stuck(self.tenant, +1)

    def close(self) -> None:
        """Nothing to release."""
