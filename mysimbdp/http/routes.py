"""The route table: every HTTP route of the daemon, in one place.

Each handler belongs to the component that serves it (the handler is a method of that
component, or a function handed it explicitly), so a route's owner is one read away. The
protocols say what each part of the table needs; :mod:`mysimbdp.daemon` passes the components.
``/health`` is the server's own (:class:`mysimbdp.http.server.HttpServer`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

__all__ = ["route_table", "UploadRoutes", "MonitorRoutes", "StreamRoutes", "ClusterRoutes", "DataRoutes",
           "RejectsRoutes", "UndoRoutes", "TrialRoutes", "SchemaRoutes", "ReplayRoutes"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class UploadRoutes(Protocol):
    """The tenant-facing file door (:class:`mysimbdp.batch.intake.UploadService`)."""

    async def get_constraints(self, request: web.Request) -> web.Response: ...
    async def put_file(self, request: web.Request) -> web.StreamResponse: ...
    async def expect_file(self, request: web.Request) -> web.StreamResponse | None: ...
    async def list_files(self, request: web.Request) -> web.Response: ...
    async def get_file(self, request: web.Request) -> web.Response: ...


class MonitorRoutes(Protocol):
    """Reports, metrics and statistics (:class:`mysimbdp.monitor.scaling.Monitor`)."""

    async def post_report(self, request: web.Request) -> web.Response: ...
    async def get_schema(self, request: web.Request) -> web.Response: ...
    async def get_metrics(self, request: web.Request) -> web.Response: ...
    async def get_stats(self, request: web.Request) -> web.Response: ...


class StreamRoutes(Protocol):
    """The operators' stream endpoints (:class:`mysimbdp.stream.control.StreamControlRoutes`)."""

    async def start(self, request: web.Request) -> web.Response: ...
    async def stop(self, request: web.Request) -> web.Response: ...
    async def scale(self, request: web.Request) -> web.Response: ...
    async def status(self, request: web.Request) -> web.Response: ...


class ClusterRoutes(Protocol):
    """The instances sharing the store (:class:`mysimbdp.cluster.instances.InstanceRegistry`)."""

    async def get_instances(self, request: web.Request) -> web.Response: ...


class DataRoutes(Protocol):
    """What a tenant has in the store (:class:`mysimbdp.batch.data.TenantData`)."""

    async def get_data(self, request: web.Request) -> web.Response: ...


class RejectsRoutes(Protocol):
    """The tenant's rejects (:class:`mysimbdp.store.browse.TenantRejects`)."""

    async def list_rejects(self, request: web.Request) -> web.Response: ...
    async def get_reject(self, request: web.Request) -> web.Response: ...
    async def purge_rejects(self, request: web.Request) -> web.Response: ...


class ReplayRoutes(Protocol):
    """Replaying the tenant's rejects (:class:`mysimbdp.store.replay.RejectsReplay`)."""

    async def replay(self, request: web.Request) -> web.Response: ...


class UndoRoutes(Protocol):
    """Undoing a committed file (:class:`mysimbdp.batch.undo.FileUndo`)."""

    async def undo_file(self, request: web.Request) -> web.Response: ...


class TrialRoutes(Protocol):
    """Dry-runs of files (:class:`mysimbdp.batch.trial.FileTrial`)."""

    async def try_file(self, request: web.Request) -> web.Response: ...


class SchemaRoutes(Protocol):
    """The tenant's schema and its history (:class:`mysimbdp.store.schemas.SchemaHistory`)."""

    async def get_schema(self, request: web.Request) -> web.Response: ...


def route_table(upload: UploadRoutes | None, monitor: MonitorRoutes | None,
                stream: StreamRoutes | None, cluster: ClusterRoutes | None = None,
                data: DataRoutes | None = None, rejects: RejectsRoutes | None = None,
                undo: UndoRoutes | None = None, trial: TrialRoutes | None = None,
                schema: SchemaRoutes | None = None, replay: ReplayRoutes | None = None) -> list[web.AbstractRouteDef]:
    """Every route but ``/health``; a component left out (None) serves none of its routes."""
    routes: list[web.AbstractRouteDef] = []
    if replay is not None:  # before the reject route, whose id pattern would take "replay"
        routes.append(web.post("/tenants/{id}/rejects/replay", replay.replay))
    if schema is not None:
        routes.append(web.get("/tenants/{id}/schema", schema.get_schema))
    if trial is not None:
        routes.append(web.post("/tenants/{id}/try", trial.try_file))
    if undo is not None:
        routes.append(web.delete("/tenants/{id}/files/{ledger_id}", undo.undo_file))
    if rejects is not None:
        routes += [
            web.get("/tenants/{id}/rejects", rejects.list_rejects),
            web.delete("/tenants/{id}/rejects", rejects.purge_rejects),
            web.get("/tenants/{id}/rejects/{reject_id:.+}", rejects.get_reject),  # ids hold ":" and maybe "/"
        ]
    if data is not None:
        routes.append(web.get("/tenants/{id}/data", data.get_data))
    if cluster is not None:
        routes.append(web.get("/instances", cluster.get_instances))
    if upload is not None:
        routes += [
            web.get("/tenants/{id}/constraints", upload.get_constraints),
            # {name:.+} so that a name with '/' gets a 400 that says why, not a bare 404.
            web.put("/tenants/{id}/files/{name:.+}", upload.put_file, expect_handler=upload.expect_file),
            web.get("/tenants/{id}/files", upload.list_files),
            web.get("/tenants/{id}/files/{ledger_id}", upload.get_file),
        ]
    if monitor is not None:
        routes += [
            web.post("/reports", monitor.post_report),
            web.get("/schemas/report.json", monitor.get_schema),
            web.get("/metrics", monitor.get_metrics),
            web.get("/tenants/{id}/stats", monitor.get_stats),
        ]
    if stream is not None:
        routes += [
            web.post("/tenants/{id}/stream/start", stream.start),
            web.post("/tenants/{id}/stream/stop", stream.stop),
            web.put("/tenants/{id}/stream/consumers", stream.scale),
            web.get("/tenants/{id}/stream", stream.status),
        ]
    return routes
