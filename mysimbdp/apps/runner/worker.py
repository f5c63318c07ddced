"""The app worker: one process per tenant app, started by the daemon, confined before the app loads.

Run as ``python -I -m mysimbdp.apps.runner.worker <in fd> <out fd>``: it reads one ``init`` frame
(the app to load, the limits, where to find code), confines itself
(:mod:`mysimbdp.apps.runner.confine`), imports the app, answers ``hello`` with the hooks it
implements, then serves one request at a time until its input closes. Standard input,
output and error are ``/dev/null``: nothing an app prints reaches the protocol or the daemon.

Requests (``op``): ``target``, ``columns``, ``wrangle_table``, ``wrangle_records``,
``check_documents``, ``stream``. Answers are ``{"ok": ...}`` or ``{"error": reason}``; a
``stream`` request is answered with one ``{"i": n, ...}`` frame per message, then ``{"done": true}``,
so the daemon always knows which message the app is on.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Serve the daemon over the two descriptors named in ``argv``."""
    from mysimbdp.apps.runner import frames

    fd_in, fd_out = int(argv[0]), int(argv[1])
    try:
        init = frames.read_frame(fd_in, 16 * 1024 * 1024)
    except (frames.WorkerGone, frames.FrameError):
        return 2
    if not _die_with_parent(init.get("parent")):
        return 2
    try:
        server = _start(init)
    except BaseException as exc:  # the app cannot load: say why, then exit
        _send(fd_out, {"error": f"{type(exc).__name__}: {exc}"[:2000]})
        return 3
    _send(fd_out, {"ok": server.hello})
    return server.serve(fd_in, fd_out, int(init.get("max_frame_bytes", 256 * 1024 * 1024)))


def _die_with_parent(parent: Any) -> bool:
    """Ask the kernel to kill this worker when the daemon's thread that started it ends; False
    if the daemon is already gone."""
    import ctypes
    import os
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    return not isinstance(parent, int) or os.getppid() == parent


def _send(fd: int, doc: dict[str, Any]) -> None:
    from mysimbdp.apps.runner import frames

    try:
        payload = frames.encode(doc)
    except Exception as exc:  # what BSON cannot hold (an app's odd value): say so instead
        payload = frames.encode({"error": f"the answer cannot be encoded: {type(exc).__name__}: {exc}"[:2000]})
    frames.write_frame(fd, payload)


class _Server:
    def __init__(self, app: Any, hello: dict[str, Any]) -> None:
        self.app = app
        self.hello = hello

    def serve(self, fd_in: int, fd_out: int, max_frame: int) -> int:
        from mysimbdp.apps.runner import frames

        while True:
            try:
                request = frames.read_frame(fd_in, max_frame)
            except frames.WorkerGone:
                return 0
            op = request.get("op")
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                _send(fd_out, {"error": f"unknown request {op!r}"})
                continue
            try:
                handler(request, fd_out)
            except frames.WorkerGone:
                return 0
            except BaseException as exc:  # AppError, or anything an app raised past its boundary
                _send(fd_out, {"error": f"{exc}"[:2000] or type(exc).__name__})

    # -- batch -----------------------------------------------------------------------------
    def _op_target(self, request: dict[str, Any], fd_out: int) -> None:
        from mysimbdp.apps.runner import calls

        target = calls.target_of(self.app, request["kind"], request["tenant"])
        _send(fd_out, {"ok": calls.target_to_doc(target)})

    def _op_columns(self, request: dict[str, Any], fd_out: int) -> None:
        import pyarrow as pa

        from mysimbdp.apps.runner import calls

        declared = calls.columns_of(self.app, _context(request["ctx"]))
        schema = pa.schema(list(declared.items()))
        _send(fd_out, {"ok": schema.serialize().to_pybytes()})

    def _op_wrangle_table(self, request: dict[str, Any], fd_out: int) -> None:
        from mysimbdp.apps.runner import calls, ipc

        batch = ipc.read_batch(request["batch"])
        out = calls.wrangle_table(self.app, batch, _context(request["ctx"]))
        _send(fd_out, {"ok": ipc.write_batch(out)})

    def _op_wrangle_records(self, request: dict[str, Any], fd_out: int) -> None:
        from mysimbdp.apps.runner import calls

        results = calls.wrangle_records(self.app, request["records"], _context(request["ctx"]))
        _send_items(fd_out, {}, "ok", [_record_out(r) for r in results], lambda reason: {
            "stage": "wrangle", "reason": f"the document cannot be stored: {reason}"[:2000]})

    def _op_check_documents(self, request: dict[str, Any], fd_out: int) -> None:
        from mysimbdp.apps.runner import calls

        _send(fd_out, {"ok": calls.check_documents(self.app, request["docs"], _context(request["ctx"]))})

    # -- stream ----------------------------------------------------------------------------
    def _op_stream(self, request: dict[str, Any], fd_out: int) -> None:
        """Each message through the app; answers ``{"i": first, "outcomes": [...]}`` for up to
        ``per_frame`` messages at a time (or every 20 ms), then ``{"done": true}``."""
        import time

        from mysimbdp.apps.runner import calls

        stream = calls.StreamCalls(self.app, request)
        per_frame = max(1, int(request.get("per_frame", 1)))
        pending: list[dict[str, Any]] = []
        first, since = 0, time.monotonic()
        for index, item in enumerate(request["items"]):
            if not pending:
                first, since = index, time.monotonic()
            docs, rejects = stream.message(item)
            pending.append({"docs": docs, "rejects": rejects})
            if len(pending) >= per_frame or time.monotonic() - since > 0.02:
                _send_items(fd_out, {"i": first}, "outcomes", pending, _unstorable)
                pending = []
        if pending:
            _send_items(fd_out, {"i": first}, "outcomes", pending, _unstorable)
        _send(fd_out, {"done": True})


def _send_items(fd: int, head: dict[str, Any], key: str, items: list[dict[str, Any]],
                broken: Any) -> None:
    """One frame: ``head`` and ``items`` under ``key``, encoded once. Only if that fails is each
    item tried alone, and one BSON cannot hold (an app's odd value) is replaced by ``broken(reason)``."""
    from mysimbdp.apps.runner import frames

    try:
        payload = frames.encode({**head, key: items})
    except Exception:
        for k, item in enumerate(items):
            try:
                frames.encode(item)
            except Exception as exc:
                items[k] = broken(f"{type(exc).__name__}: {exc}")
        payload = frames.encode({**head, key: items})
    frames.write_frame(fd, payload)


def _unstorable(reason: str) -> dict[str, Any]:
    """A message's outcome whose documents BSON cannot hold."""
    return {"docs": [], "rejects": [], "error": f"the app's document cannot be stored: {reason}"[:2000]}


def _record_out(result: Any) -> dict[str, Any]:
    if result.doc is not None:
        return {"doc": result.doc}
    if result.stage is not None:
        return {"stage": result.stage, "reason": result.reason}
    return {}


def _context(doc: dict[str, Any]) -> Any:
    from mysimbdp.apps.contract import BatchContext

    return BatchContext(str(doc["tenant"]), str(doc["app"]), str(doc["file"]), str(doc["sha256"]), str(doc["format"]))


def _start(init: dict[str, Any]) -> _Server:
    """Confine this process, then load the app named in ``init``."""
    for entry in init.get("sys_path") or []:
        if isinstance(entry, str) and entry not in sys.path:
            sys.path.append(entry)
    import pyarrow as pa  # the platform's own imports first, before the file system closes
    import pyarrow.compute  # noqa: F401
    import pyarrow.ipc  # noqa: F401

    import mysimbdp.apps.app
    import mysimbdp.apps.contract
    import mysimbdp.apps.defaults
    import mysimbdp.apps.plugins
    import mysimbdp.apps.runner.calls
    import mysimbdp.apps.runner.ipc
    import mysimbdp.stream.records  # noqa: F401
    from mysimbdp.apps.runner.confine import confine

    pa.cpu_count()
    name, module = str(init["app"]), init.get("module")
    top = _top_level(name, module)
    applied = confine(dict(init["limits"]), ["mysimbdp", "pluggy", *([top] if top else [])])
    if init.get("require_confinement", True) and not (applied["landlock_abi"] or applied["netns"]):
        raise RuntimeError("the kernel offers neither Landlock nor a network namespace to confine the app; "
                           "set MYSIMBDP_RUNNER__REQUIRE_CONFINEMENT=false to run it unconfined")
    pm = mysimbdp.apps.plugins.get_plugin_manager({name: module} if module else None, load_entry_points=False)
    if not module:
        pm.load_setuptools_entrypoints(mysimbdp.apps.plugins.ENTRY_POINT_GROUP, name=name)
    app = mysimbdp.apps.app.App(pm, name)  # the app's own plugin manager, the defaults in it
    hello = {"app": name, "kinds": app.kinds, "hooks": sorted(app.hooks), "confinement": applied}
    return _Server(app, hello)


def _top_level(name: str, module: str | None) -> str | None:
    """The top-level package of the app's code, found without importing it."""
    if module:
        return module.split(".", 1)[0]
    from importlib.metadata import entry_points

    from mysimbdp.apps.plugins import ENTRY_POINT_GROUP

    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return ep.value.split(":", 1)[0].split(".", 1)[0]
    return None


if __name__ == "__main__":
    importlib.invalidate_caches()
    sys.exit(main(sys.argv[1:]))
