"""Every event the platform emits, as a small frozen dataclass: the name and fields of
``docs/logging.md`` (the user contract; ``tests/test_events.py`` checks the two agree both ways).

A field named like a Python keyword carries a trailing underscore (``from_``); it is logged
under its documented name (``from``). A field declared with ``OMIT_NONE`` is left out of the
log line when it is None (an optional field that only some emissions carry). The traceback
of an event whose class sets ``TRACEBACK`` is logged as ``exception``, not held as a field.

:data:`EVENTS` maps each name to its class; :meth:`Event.from_fields` makes the typed event
of a mapping of its fields (values as given), :meth:`Event.from_log_line` that of a line read back.
"""

from __future__ import annotations

import keyword
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

__all__ = ["Event", "EVENTS", "Level", "OMIT_NONE", "event_class"]

Level = Literal["debug", "info", "warning", "error"]
OMIT_NONE: Mapping[str, bool] = types.MappingProxyType({"omit_none": True})


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One thing that happened, with its documented name (``NAME``) and level (``LEVEL``)."""

    NAME: ClassVar[str] = ""
    LEVEL: ClassVar[Level] = "info"
    TRACEBACK: ClassVar[bool] = False  # logged with the current exception's traceback

    def fields(self) -> dict[str, Any]:
        """The fields as logged: documented names, optional ones left out when None."""
        out: dict[str, Any] = {}
        for spec in _specs(type(self)):
            value = getattr(self, spec.attr)
            if value is None and spec.omit_none:
                continue
            out[spec.key] = value
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The documented field names, in order."""
        return tuple(spec.key for spec in _specs(cls))

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> Event:
        """The event of a mapping of its fields by their logged names, values as given (not
        checked): keys that are not fields are ignored, a field left out is None."""
        return cls(**{spec.attr: data.get(spec.key) for spec in _specs(cls)})

    @classmethod
    def from_log_line(cls, data: Mapping[str, Any]) -> Event:
        """The event of a line read back from a log file, written by any version of the daemon.

        The one lenient reading of logged events: a number that is missing or not a finite
        number is 0 (None where the field may be None), a text that is missing or not text is
        None, a list that is missing is empty; other keys are ignored.
        """
        return cls(**{spec.attr: spec.coerce(data.get(spec.key)) for spec in _specs(cls)})


class _Spec:
    """How one field is named in the log and read back from it."""

    __slots__ = ("attr", "key", "omit_none", "kind", "nullable")

    def __init__(self, attr: str, omit_none: bool, hint: Any) -> None:
        self.attr = attr
        self.key = attr[:-1] if attr.endswith("_") and keyword.iskeyword(attr[:-1]) else attr
        self.omit_none = omit_none
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        self.nullable = type(None) in args
        base = next((a for a in args if a is not type(None)), Any)
        self.kind = typing.get_origin(base) or base

    def coerce(self, value: Any) -> Any:
        kind = self.kind
        if kind is int or kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                return kind(value)
            return None if self.nullable else kind(0)
        if kind is bool:
            return value if isinstance(value, bool) else (None if self.nullable else False)
        if kind is str:
            return value if isinstance(value, str) else None
        if kind is list:
            return value if isinstance(value, list) else (None if self.nullable else [])
        return value


_SPECS: dict[type[Event], tuple[_Spec, ...]] = {}


def _specs(cls: type[Event]) -> tuple[_Spec, ...]:
    specs = _SPECS.get(cls)
    if specs is None:
        hints = typing.get_type_hints(cls)
        specs = _SPECS[cls] = tuple(_Spec(f.name, bool(f.metadata.get("omit_none")), hints[f.name])
                                    for f in fields(cls))
    return specs


def event_class(name: str) -> type[Event] | None:
    """The class of the event named ``name``, or None for a name no event has."""
    return EVENTS.get(name)


# ---- the events of docs/logging.md, in its order -------------------------------------------

@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonStarted(Event):
    """Every component is up (``arrow_memory_pool``: the allocator Arrow uses for CSV files,
    ``jemalloc`` unless ``ARROW_DEFAULT_MEMORY_POOL`` chooses another)."""

    NAME: ClassVar[str] = "daemon.started"
    LEVEL: ClassVar[Level] = "info"

    version: str
    http_port: int
    store_uri: str
    tenants: list[str]
    arrow_memory_pool: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonStopping(Event):
    """A stop was requested; new work is refused."""

    NAME: ClassVar[str] = "daemon.stopping"
    LEVEL: ClassVar[Level] = "info"

    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonDrained(Event):
    """In-flight work finished (or was cancelled at the deadline)."""

    NAME: ClassVar[str] = "daemon.drained"
    LEVEL: ClassVar[Level] = "info"

    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonStopped(Event):
    """Every component stopped."""

    NAME: ClassVar[str] = "daemon.stopped"
    LEVEL: ClassVar[Level] = "info"


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonThreadsAbandoned(Event):
    """Worker threads of tenant apps still running at exit (an app stuck in a loop); the process
    exits without waiting for them."""

    NAME: ClassVar[str] = "daemon.threads_abandoned"
    LEVEL: ClassVar[Level] = "warning"

    threads: list[str]


@dataclass(frozen=True, kw_only=True, slots=True)
class DaemonStopFailed(Event):
    """A component failed to stop cleanly."""

    NAME: ClassVar[str] = "daemon.stop_failed"
    LEVEL: ClassVar[Level] = "error"

    stopped_component: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterInstanceJoined(Event):
    """Another instance registered (its heartbeat appeared in ``mysimbdp.instances``)."""

    NAME: ClassVar[str] = "cluster.instance.joined"
    LEVEL: ClassVar[Level] = "info"

    instance: str
    host: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterInstanceGone(Event):
    """An instance's heartbeat is older than the lease (or it stopped): its claims lapse."""

    NAME: ClassVar[str] = "cluster.instance.gone"
    LEVEL: ClassVar[Level] = "warning"

    instance: str
    last_heartbeat_s_ago: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterHeartbeatFailed(Event):
    """This instance could not write its heartbeat (store unreachable); past the lease the
    others count it gone."""

    NAME: ClassVar[str] = "cluster.heartbeat.failed"
    LEVEL: ClassVar[Level] = "warning"

    error: str
    lease_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreEmbeddedStarted(Event):
    """The embedded NX-27017 server answers ``ping``."""

    NAME: ClassVar[str] = "store.embedded.started"
    LEVEL: ClassVar[Level] = "info"

    uri: str | None
    pid: int
    data_dir: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreEmbeddedStale(Event):
    """A store left running by a daemon killed hard was stopped."""

    NAME: ClassVar[str] = "store.embedded.stale"
    LEVEL: ClassVar[Level] = "warning"

    pid: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreEmbeddedStopped(Event):
    """Store.embedded.stopped."""

    NAME: ClassVar[str] = "store.embedded.stopped"
    LEVEL: ClassVar[Level] = "info"

    pid: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreEmbeddedDied(Event):
    """The embedded server exited unexpectedly; it is started again on the same port and data."""

    NAME: ClassVar[str] = "store.embedded.died"
    LEVEL: ClassVar[Level] = "error"

    pid: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreConnected(Event):
    """The store answers (again)."""

    NAME: ClassVar[str] = "store.connected"
    LEVEL: ClassVar[Level] = "info"

    uri: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreUnavailable(Event):
    """The store stopped answering (pinged again every 2 s), or the embedded server failed to
    start (started again after ``retry_in_s``, doubling up to 30 s); the daemon keeps running
    and ``/health`` names the reason."""

    NAME: ClassVar[str] = "store.unavailable"
    LEVEL: ClassVar[Level] = "error"

    uri: str | None
    reason: str | None
    retry_in_s: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerConnected(Event):
    """First connection to RabbitMQ."""

    NAME: ClassVar[str] = "broker.connected"
    LEVEL: ClassVar[Level] = "info"


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerUnavailable(Event):
    """A connection attempt failed; retried with backoff."""

    NAME: ClassVar[str] = "broker.unavailable"
    LEVEL: ClassVar[Level] = "warning"

    reason: str | None
    retry_in_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerDisconnected(Event):
    """The connection was lost; it reconnects by itself."""

    NAME: ClassVar[str] = "broker.disconnected"
    LEVEL: ClassVar[Level] = "warning"

    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerReconnected(Event):
    """Broker.reconnected."""

    NAME: ClassVar[str] = "broker.reconnected"
    LEVEL: ClassVar[Level] = "info"


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerClosed(Event):
    """The daemon closed its connection at shutdown."""

    NAME: ClassVar[str] = "broker.closed"
    LEVEL: ClassVar[Level] = "info"


@dataclass(frozen=True, kw_only=True, slots=True)
class BrokerCallbackFailed(Event):
    """The stream manager's first-connection step (declaring the exchange, then each loaded
    tenant's topology and consumers) failed unexpectedly; the daemon keeps running and a tenant
    change or ``mysimbdp stream start`` starts a stream again."""

    NAME: ClassVar[str] = "broker.callback_failed"
    LEVEL: ClassVar[Level] = "error"
    TRACEBACK: ClassVar[bool] = True

    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantAdded(Event):
    """A profile appeared, changed, disappeared."""

    NAME: ClassVar[str] = "tenant.added"
    LEVEL: ClassVar[Level] = "info"

    tenant: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantChanged(Event):
    """A profile appeared, changed, disappeared."""

    NAME: ClassVar[str] = "tenant.changed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantRemoved(Event):
    """A profile appeared, changed, disappeared."""

    NAME: ClassVar[str] = "tenant.removed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantInvalid(Event):
    """A profile cannot be used; the tenant keeps its last valid profile."""

    NAME: ClassVar[str] = "tenant.invalid"
    LEVEL: ClassVar[Level] = "error"

    tenant: str
    path: str
    key: str
    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantReloadFailed(Event):
    """An unexpected error while re-reading the profiles; the tenants keep their current
    profiles and the next change (or rescan) reads them again."""

    NAME: ClassVar[str] = "tenant.reload_failed"
    LEVEL: ClassVar[Level] = "error"
    TRACEBACK: ClassVar[bool] = True

    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantListenerFailed(Event):
    """A component failed to apply a tenant change."""

    NAME: ClassVar[str] = "tenant.listener_failed"
    LEVEL: ClassVar[Level] = "error"

    tenant: str
    change: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpStarted(Event):
    """Http.started."""

    NAME: ClassVar[str] = "http.started"
    LEVEL: ClassVar[Level] = "info"

    host: str
    port: int


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpError(Event):
    """A handler failed unexpectedly (the client got a 500)."""

    NAME: ClassVar[str] = "http.error"
    LEVEL: ClassVar[Level] = "error"

    path: str
    method: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpConnectionClosed(Event):
    """The connection guard closed a slow or surplus connection (counted in ``/health`` and
    ``mysimbdp_http_connections_closed`` at any log level)."""

    NAME: ClassVar[str] = "http.connection.closed"
    LEVEL: ClassVar[Level] = "debug"

    reason: str | None
    peer: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadStarted(Event):
    """The checks before the body passed; streaming begins."""

    NAME: ClassVar[str] = "upload.started"
    LEVEL: ClassVar[Level] = "debug"

    tenant: str
    name: str
    declared_bytes: int | None


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadStaged(Event):
    """The file is complete, in the ledger as ``staged`` and renamed into staging."""

    NAME: ClassVar[str] = "upload.staged"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    name: str
    file_id: str
    bytes: int
    sha256: str | None
    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadRejected(Event):
    """The upload was refused; ``code`` is one of those in upload.md (``bad_name``,
    ``unauthorized``, ``forbidden``, ``no_batch``, ``exists``, ``in_progress``, ``duplicate``,
    ``too_big``, ``format``, ``staging_full``, ``over_quota``, ``no_space``,
    ``length_mismatch``, ``draining``, ``store_unavailable``)."""

    NAME: ClassVar[str] = "upload.rejected"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str | None
    code: str
    status: int
    reason: str | None
    name: str | None = field(default=None, metadata=OMIT_NONE)
    name_bytes: int | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadInterrupted(Event):
    """The body broke off (connection lost, bad chunked encoding); the partial file was deleted."""

    NAME: ClassVar[str] = "upload.interrupted"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    name: str
    bytes_received: int
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadPartRemoved(Event):
    """At start, the temporary file (``.<name>.<tag>.part``) of an upload cut off by a daemon
    that was killed (this one, or an instance no longer up) was removed (see upload.md)."""

    NAME: ClassVar[str] = "upload.part.removed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    name: str
    bytes: int
    age_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class UploadDrainCancelled(Event):
    """Uploads still in progress at the drain deadline (or at stop) were cancelled and cleaned
    up."""

    NAME: ClassVar[str] = "upload.drain.cancelled"
    LEVEL: ClassVar[Level] = "warning"

    uploads: list[dict[str, str]]


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchTenantWatching(Event):
    """A tenant with a ``[batch]`` section was onboarded (or the daemon started)."""

    NAME: ClassVar[str] = "batch.tenant.watching"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    folder: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchTenantUnwatched(Event):
    """The tenant was offboarded or lost its ``[batch]`` section."""

    NAME: ClassVar[str] = "batch.tenant.unwatched"
    LEVEL: ClassVar[Level] = "info"

    tenant: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileLoading(Event):
    """A file got its slot and starts loading."""

    NAME: ClassVar[str] = "batch.file.loading"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    sha256: str | None
    bytes: int
    app: str | None
    route: str | None
    ledger_id: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileResumed(Event):
    """A file left ``loading`` by a crash or a stop starts loading again."""

    NAME: ClassVar[str] = "batch.file.resumed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    sha256: str | None
    bytes: int
    app: str | None
    route: str | None
    ledger_id: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileProgress(Event):
    """While a file loads, at most every ``MYSIMBDP_BATCH__PROGRESS_INTERVAL_S`` (10 s), after a
    write: a long load can be followed without asking the store."""

    NAME: ClassVar[str] = "batch.file.progress"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    ledger_id: str | None
    seconds: float
    records_in: int
    records_written: int
    records_rejected: int
    duplicates: int
    records_skipped: int
    bytes: int = 0
    bytes_read: int = 0
    compressed: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileCommitted(Event):
    """Every record is in the store; the file moved to ``archive/<tenant>/done/``."""

    NAME: ClassVar[str] = "batch.file.committed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    sha256: str | None
    bytes: int
    records_in: int
    records_written: int
    records_rejected: int
    duplicates: int
    records_skipped: int
    seconds: float
    records_per_s: float
    mb_per_s: float
    app: str | None
    ledger_id: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileRejected(Event):
    """The file was refused; it moved to ``archive/<tenant>/rejected/`` beside
    ``<name>.reason.json``. ``code`` is one of the reason codes in ``docs/tenants.md``."""

    NAME: ClassVar[str] = "batch.file.rejected"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    file: str
    sha256: str | None
    bytes: int
    records_in: int
    records_written: int
    records_rejected: int
    duplicates: int
    records_skipped: int
    seconds: float
    records_per_s: float
    mb_per_s: float
    code: str
    reason: str | None
    ledger_id: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileRolledBack(Event):
    """A file failed after writing: its documents were removed again."""

    NAME: ClassVar[str] = "batch.file.rolled_back"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    documents: int
    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileUndoing(Event):
    """A tenant (or an operator) asked to undo a committed file: its documents and rejects are
    being removed (``documents``, ``rejects``: how many there are to remove)."""

    NAME: ClassVar[str] = "batch.file.undoing"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    ledger_id: str
    by: str
    documents: int
    rejects: int
    resumed: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileUndone(Event):
    """Every document and reject of the file is removed; its ledger entry is ``undone`` and the
    same content may be loaded again."""

    NAME: ClassVar[str] = "batch.file.undone"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    ledger_id: str
    by: str
    documents: int
    rejects: int
    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileUndoFailed(Event):
    """An undo stopped (the store went away, another instance took it over); it is taken up
    again once its lease lapses, by this instance or another."""

    NAME: ClassVar[str] = "batch.file.undo_failed"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    file: str
    ledger_id: str
    error: str


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileRollbackFailed(Event):
    """The removal failed (the store was down); the documents carry the file's ``_id`` prefix
    ``<sha256[:20]>:``."""

    NAME: ClassVar[str] = "batch.file.rollback_failed"
    LEVEL: ClassVar[Level] = "error"

    tenant: str
    file: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileInterrupted(Event):
    """The daemon stopped during the load; the file stays in staging and resumes at the next
    start."""

    NAME: ClassVar[str] = "batch.file.interrupted"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    file: str
    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchAppStuck(Event):
    """A load was cancelled (timeout or shutdown) while the app was still busy on a batch and
    its call did not end (``runner = "thread"``: a worker process is killed at once); its thread
    is left to finish on its own."""

    NAME: ClassVar[str] = "batch.app.stuck"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    file: str
    waited_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileDeferred(Event):
    """The store was unreachable; the file stays in staging and is tried again."""

    NAME: ClassVar[str] = "batch.file.deferred"
    LEVEL: ClassVar[Level] = "error"

    tenant: str
    file: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileFailed(Event):
    """An unexpected platform error; the file is rejected with code ``internal``."""

    NAME: ClassVar[str] = "batch.file.failed"
    LEVEL: ClassVar[Level] = "error"
    TRACEBACK: ClassVar[bool] = True

    tenant: str
    file: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileArchivedLate(Event):
    """A committed (or rejected) file the daemon had no time to archive, or whose staging name
    it had no time to remove (crash), was archived at the next start."""

    NAME: ClassVar[str] = "batch.file.archived_late"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    ledger_id: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchStoreRetry(Event):
    """A write failed for lack of a connection; retried with backoff until the file's timeout."""

    NAME: ClassVar[str] = "batch.store_retry"
    LEVEL: ClassVar[Level] = "warning"

    error: str | None
    retry_in_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchWatchFailed(Event):
    """File notifications failed (e.g. inotify limits); periodic rescans keep finding files."""

    NAME: ClassVar[str] = "batch.watch_failed"
    LEVEL: ClassVar[Level] = "warning"

    error: str | None
    retry_in_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileReplaced(Event):
    """Another file took the name of a file while it loaded (renamed over it): the loaded file
    was archived, the new one stays in staging and loads as a new file."""

    NAME: ClassVar[str] = "batch.file.replaced"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    file: str
    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileLeaseLost(Event):
    """This instance no longer holds its claim on a file it was loading (paused or cut off
    past the lease, and another instance took the file over): it stops without committing,
    archiving or rolling back; the other instance finishes the file."""

    NAME: ClassVar[str] = "batch.file.lease_lost"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    file: str
    ledger_id: str
    step: str
    owner: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileClaimedElsewhere(Event):
    """Another instance claimed the file first (its ledger claim won): this one leaves it."""

    NAME: ClassVar[str] = "batch.file.claimed_elsewhere"
    LEVEL: ClassVar[Level] = "debug"

    tenant: str
    file: str
    ledger_id: str
    owner: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchFileThrottled(Event):
    """The tenant already loads ``max_concurrent_files`` files across all instances: the file
    waits (its claim given back) and is tried again shortly."""

    NAME: ClassVar[str] = "batch.file.throttled"
    LEVEL: ClassVar[Level] = "debug"

    tenant: str
    file: str
    ledger_id: str
    loading: int
    limit: int


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchScanTruncated(Event):
    """The tenant's staging folder holds more entries (hidden ones included) than one scan
    reads; files past the limit wait until it holds fewer. Logged once until the folder shrinks."""

    NAME: ClassVar[str] = "batch.scan.truncated"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    folder: str
    limit: int
    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchScanFailed(Event):
    """Scanning one tenant's folder failed; the other tenants are scanned as usual."""

    NAME: ClassVar[str] = "batch.scan_failed"
    LEVEL: ClassVar[Level] = "error"

    tenant: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchDrainCancelled(Event):
    """At shutdown these loads did not finish within the drain timeout; they resume at the next
    start."""

    NAME: ClassVar[str] = "batch.drain.cancelled"
    LEVEL: ClassVar[Level] = "warning"

    files: list[str]
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RunnerWorkerStarted(Event):
    """A worker process for one tenant's app started and is confined."""

    NAME: ClassVar[str] = "runner.worker.started"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    app: str | None
    pid: int
    landlock_abi: int
    netns: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class RunnerThreadStuck(Event):
    """A call of a trusted app (``runner = "thread"``) passed its time limit and was abandoned;
    its thread runs on until the app returns."""

    NAME: ClassVar[str] = "runner.thread.stuck"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    stuck: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTopologyDeclared(Event):
    """The tenant's queues, dead-letter exchange and bindings exist."""

    NAME: ClassVar[str] = "stream.topology.declared"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    queue: str
    dead_letter: str
    delivery_limit: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTopologyMismatch(Event):
    """The queue exists with other arguments (e.g. a changed ``delivery_limit``); it is used as
    it is. A queue the broker refuses to create (arguments it does not support: RabbitMQ older
    than 3.10) is ``stream.tenant.failed``, whose ``error`` says so."""

    NAME: ClassVar[str] = "stream.topology.mismatch"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    queue: str
    error: str | None
    hint: str


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamProvisionDone(Event):
    """The tenant's broker user exists with its permissions."""

    NAME: ClassVar[str] = "stream.provision.done"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    user: str
    vhost: str
    created: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamProvisionFailed(Event):
    """The management API refused or is unreachable, or a user of the tenant's name exists that
    this installation did not create (left as it is; ``error`` says what to do, see stream.md);
    publishing as the tenant may fail until provisioned."""

    NAME: ClassVar[str] = "stream.provision.failed"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamIndexFailed(Event):
    """An index a stream app asks for could not be created."""

    NAME: ClassVar[str] = "stream.index.failed"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    collection: str
    index: str | None
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTenantFailed(Event):
    """The tenant's stream app cannot be loaded, or its topology cannot be declared; the stream
    stays stopped (``state: failed``)."""

    NAME: ClassVar[str] = "stream.tenant.failed"
    LEVEL: ClassVar[Level] = "error"

    tenant: str
    app: str | None
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTenantRemoved(Event):
    """Offboarded: consumers stopped, the queues kept."""

    NAME: ClassVar[str] = "stream.tenant.removed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    queue: str


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConsumersChanged(Event):
    """The number of the tenant's consumers changed (start, stop, scale, onboarding, drain).
    ``decided_by``: the instance whose scaling decision this carries out (left out for a
    change no decision made, e.g. onboarding or drain)."""

    NAME: ClassVar[str] = "stream.consumers.changed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    from_: int
    to: int
    reason: str | None
    decided_by: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConsumerStarted(Event):
    """A consumer is consuming."""

    NAME: ClassVar[str] = "stream.consumer.started"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    consumer: str
    prefetch: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConsumerWarmUpFailed(Event):
    """The consumer's app worker could not be started before it took messages (or not within 10
    s); its first batch tries again."""

    NAME: ClassVar[str] = "stream.consumer.warm_up_failed"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    consumer: str
    app: str | None
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConsumerStopped(Event):
    """A consumer stopped; ``unacked`` messages were returned to the queue."""

    NAME: ClassVar[str] = "stream.consumer.stopped"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    consumer: str
    unacked: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConsumerCancelFailed(Event):
    """At a consumer's stop, a step (``consumer tag cancel``, ``channel close``, …) failed, e.g.
    the channel was already closed; the stop goes on."""

    NAME: ClassVar[str] = "stream.consumer.cancel_failed"
    LEVEL: ClassVar[Level] = "debug"

    tenant: str
    consumer: str
    step: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConsumerStopStepLeft(Event):
    """At a consumer's stop, a step did not finish within the stop timeout (a broker call that
    does not answer): it is cancelled and left behind, so that a scale-down or a shutdown never
    hangs."""

    NAME: ClassVar[str] = "stream.consumer.stop_step_left"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    consumer: str
    step: str
    timeout_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamDepthFailed(Event):
    """The tenant's queue depth could not be read (queue missing, broker down); the depth is
    reported as unknown (``null``)."""

    NAME: ClassVar[str] = "stream.depth.failed"
    LEVEL: ClassVar[Level] = "debug"

    tenant: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamConsumerAbandoned(Event):
    """A consumer could not flush within the stop/drain timeout; its messages go back to the
    queue."""

    NAME: ClassVar[str] = "stream.consumer.abandoned"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    consumer: str
    unacked: int
    timeout_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamBatchCommitted(Event):
    """Once per second per consumer with commits."""

    NAME: ClassVar[str] = "stream.batch.committed"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    consumer: str
    batches: int
    messages: int
    documents: int
    rejected: int
    duplicates: int
    bytes: int
    seconds: float
    oldest_latency_ms: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamBatchRetry(Event):
    """A write failed (store unreachable): the batch is kept unacknowledged and retried with
    backoff."""

    NAME: ClassVar[str] = "stream.batch.retry"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    consumer: str
    collection: str
    documents: int
    attempt: int
    retry_in_s: float
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamBatchFailed(Event):
    """An unexpected error in a flush; the batch was returned to the queue."""

    NAME: ClassVar[str] = "stream.batch.failed"
    LEVEL: ClassVar[Level] = "error"
    TRACEBACK: ClassVar[bool] = True

    tenant: str
    consumer: str
    messages: int
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamAppTimeout(Event):
    """The app took longer than ``app_timeout_s`` on a message; it was returned to the queue
    (dead-lettered past ``delivery_limit``)."""

    NAME: ClassVar[str] = "stream.app.timeout"
    LEVEL: ClassVar[Level] = "error"

    tenant: str
    consumer: str
    app: str | None
    message_id: str | None
    timeout_s: float
    redelivered: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamAckFailed(Event):
    """An acknowledgement could not be sent (channel closed); the broker redelivers, the write
    deduplicates."""

    NAME: ClassVar[str] = "stream.ack.failed"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    consumer: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamReport(Event):
    """Every ``report_interval_s``, per consumer; and each report posted to ``POST /reports``,
    with ``source`` (``http``)."""

    NAME: ClassVar[str] = "stream.report"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    app: str | None
    instance: str
    window_start: str
    window_end: str
    messages: int
    documents: int
    bytes: int
    rejected: int
    avg_ingest_ms: float
    p95_ingest_ms: float | None
    avg_processing_ms: float
    queue_depth: int | None
    source: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamTickFailed(Event):
    """A consumer's ``stream.batch.committed`` summary or ``stream.report`` could not be made;
    the consumer's tick loop goes on (a report's window starts afresh)."""

    NAME: ClassVar[str] = "stream.tick.failed"
    LEVEL: ClassVar[Level] = "error"
    TRACEBACK: ClassVar[bool] = True

    tenant: str
    consumer: str
    step: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamDrained(Event):
    """At shutdown, every consumer flushed (or was abandoned at the deadline)."""

    NAME: ClassVar[str] = "stream.drained"
    LEVEL: ClassVar[Level] = "info"

    seconds: float
    unacked: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorEvaluated(Event):
    """Per stream tenant, a quarter of a period after each report is due: what the rules saw."""

    NAME: ClassVar[str] = "monitor.evaluated"
    LEVEL: ClassVar[Level] = "debug"

    tenant: str
    verdict: str
    consumers: int
    instances: int
    messages: int
    avg_ingest_ms: float
    p95_ingest_ms: float | None
    queue_depth: int | None
    utilization: float
    breach_streak: int
    idle_streak: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorAlert(Event):
    """A rule was breached for ``breaches_before_alert`` consecutive evaluations (repeated every
    ``breaches_before_alert`` breaches while it lasts and nothing can be done)."""

    NAME: ClassVar[str] = "monitor.alert"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    rule: str
    observed: float
    threshold: float
    consumers: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorScaled(Event):
    """The monitor decided the tenant's consumer count (the cluster-wide total, ``from`` and
    ``to``) as ``decided_by``; each instance's ``stream.consumers.changed`` carries out its share."""

    NAME: ClassVar[str] = "monitor.scaled"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    from_: int
    to: int
    reason: str | None
    decided_by: str | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorShareWaiting(Event):
    """This instance's share grew, but the other live instances still run so many consumers
    that starting more now would exceed the decided total: it waits for them to shrink."""

    NAME: ClassVar[str] = "monitor.share.waiting"
    LEVEL: ClassVar[Level] = "debug"

    tenant: str
    share: int
    running: int
    others: int
    total: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorScaleSkipped(Event):
    """A change was wanted but not made: already at ``max_consumers``, in cooldown, stream
    stopped, ``autoscale = false``, daemon draining — the reason says which."""

    NAME: ClassVar[str] = "monitor.scale.skipped"
    LEVEL: ClassVar[Level] = "info"

    tenant: str
    consumers: int
    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorScaleFailed(Event):
    """The manager refused the change (e.g. bounds changed meanwhile, broker down)."""

    NAME: ClassVar[str] = "monitor.scale.failed"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    consumers: int
    target: int
    reason: str | None
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorReportInvalid(Event):
    """A report missing a field or with a wrong value, or whose ``window_end`` is too far ahead
    of the platform's clock or behind it; it is counted and ignored."""

    NAME: ClassVar[str] = "monitor.report.invalid"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    field: str
    reason: str | None
    source: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorReportRateLimited(Event):
    """A tenant posts reports faster than ``MYSIMBDP_HTTP__REPORTS_PER_S``; the excess is
    answered 429 and not stored; logged at most once a minute per tenant."""

    NAME: ClassVar[str] = "monitor.report.rate_limited"
    LEVEL: ClassVar[Level] = "warning"

    tenant: str
    refused: int
    reports_per_s: float
    burst: int


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorReportStoreFailed(Event):
    """Reports could not be written to ``mysimbdp.reports``; up to 10,000 are held and retried
    every second."""

    NAME: ClassVar[str] = "monitor.report.store_failed"
    LEVEL: ClassVar[Level] = "warning"

    reports: int
    held: int
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorFeedDropped(Event):
    """The monitor's feed queue was full and events were dropped (it only queues
    ``stream.report`` and ``stream.consumers.changed``)."""

    NAME: ClassVar[str] = "monitor.feed.dropped"
    LEVEL: ClassVar[Level] = "warning"

    events: int
    reason: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorFeedFailed(Event):
    """An unexpected error; the monitor goes on with the next event or evaluation."""

    NAME: ClassVar[str] = "monitor.feed.failed"
    LEVEL: ClassVar[Level] = "error"
    TRACEBACK: ClassVar[bool] = True

    tenant: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class MonitorEvaluationFailed(Event):
    """An unexpected error; the monitor goes on with the next event or evaluation."""

    NAME: ClassVar[str] = "monitor.evaluation_failed"
    LEVEL: ClassVar[Level] = "error"
    TRACEBACK: ClassVar[bool] = True

    tenant: str
    error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class EventsSubscriberFailed(Event):
    """A subscriber of the daemon's event bus (the monitor, the metrics, the statistics) raised
    on an event; the others got it all the same. Logged at most once a minute per subscriber,
    ``failures`` counting every failure since the last such event."""

    NAME: ClassVar[str] = "events.subscriber_failed"
    LEVEL: ClassVar[Level] = "error"

    subscriber: str
    event_name: str
    failures: int
    error: str


def _registry() -> dict[str, type[Event]]:
    found: dict[str, type[Event]] = {}
    for cls in Event.__subclasses__():
        if "__slots__" not in cls.__dict__:
            continue  # the class ``dataclass(slots=True)`` replaced
        assert cls.NAME and cls.NAME not in found, f"event {cls.NAME!r} is declared twice"
        found[cls.NAME] = cls
    return found


EVENTS: Mapping[str, type[Event]] = types.MappingProxyType(_registry())
