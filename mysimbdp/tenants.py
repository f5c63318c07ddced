"""Tenant profiles (``<config>/tenants/<id>.toml``) and the registry that hot-reloads them.

Adding a profile onboards a tenant while the daemon runs, deleting it offboards the tenant
(its data stays), editing it applies the new limits. An invalid profile is reported with the
key and the reason; a tenant whose edited profile is invalid keeps its last valid profile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import watchfiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mysimbdp.errors import TenantProfileError
from mysimbdp.events import EventBus
from mysimbdp.events.catalog import (
    TenantAdded,
    TenantChanged,
    TenantInvalid,
    TenantListenerFailed,
    TenantReloadFailed,
    TenantRemoved,
)
from mysimbdp.store.contracts import Contract

__all__ = [
    "TENANT_ID_RE", "TenantProfile", "BatchProfile", "BatchRoute", "StreamProfile",
    "MonitorProfile", "load_profile", "load_profiles", "dumps_profile", "write_profile", "TenantRegistry", "TenantChange",
    "TenantDirectory", "folder_signature",
]

TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
Format = Literal["csv", "csv.gz", "jsonl", "jsonl.gz"]
FORMATS: tuple[Format, ...] = ("csv", "csv.gz", "jsonl", "jsonl.gz")
_CHANGE_EVENTS = {"added": TenantAdded, "changed": TenantChanged, "removed": TenantRemoved}


DAY_S = 86_400.0
#: The profile folder's notify thread wakes this often (each wake takes the GIL): a changed
#: profile is read within about half a second; and it returns to the loop at most this often.
WATCH_STEP_MS = 500
WATCH_TIMEOUT_MS = 60_000


class _ProfileSection(BaseModel):
    # every number finite: ``inf`` and ``nan`` are refused with the key named (TOML has both)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BatchRoute(_ProfileSection):
    """Files whose name matches ``pattern`` (a glob) go to ``app`` with their own limits."""

    pattern: str
    app: str
    max_concurrent_files: int = Field(1, ge=1, le=64)
    timeout_s: float = Field(3600.0, gt=0, le=DAY_S)
    contract: Contract | None = Field(None, description="the schema contract of these files (replaces the batch one)")


class BatchProfile(_ProfileSection):
    """The tenant's batch constraints (the service profile of the reference design)."""

    app: str
    formats: tuple[Format, ...] = FORMATS
    max_file_bytes: int = Field(100 * 1024 * 1024, ge=1)
    max_staged_files: int = Field(20, ge=1)
    max_concurrent_files: int = Field(2, ge=1, le=64)
    storage_quota_bytes: int = Field(10 * 1024**3, ge=1)
    max_error_rate: float = Field(0.10, ge=0.0, le=1.0)
    timeout_s: float = Field(3600.0, gt=0, le=DAY_S)
    routes: tuple[BatchRoute, ...] = ()
    contract: Contract | None = Field(None, description="the schema contract of the tenant's files")

    def contract_of(self, route: BatchRoute | None) -> tuple[str, Contract | None]:
        """The schema history's scope of a file of ``route`` (None: no route matched) and its contract."""
        if route is not None and route.contract is not None:
            return f"route:{route.pattern}", route.contract
        return "batch", self.contract


class StreamProfile(_ProfileSection):
    """The tenant's stream settings: app, consumer bounds and batching."""

    app: str
    apps: dict[str, str] = Field(default_factory=dict,
                                 description="routing-key type -> app, for keys <tenant>.<type>")
    min_consumers: int = Field(1, ge=0, le=64)
    max_consumers: int = Field(8, ge=1, le=64)
    prefetch: int = Field(500, ge=1, le=65535)
    batch_max_messages: int = Field(1000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(200, ge=1, le=60_000)
    delivery_limit: int = Field(5, ge=1, le=1000)
    min_quality: float = Field(0.0, ge=0.0, le=1.0)
    report_interval_s: float = Field(10.0, ge=0.5, le=3600,
                                     description="each consumer reports this often; at least 0.5 s")
    app_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_message_bytes: int = Field(1024 * 1024, ge=1, le=128 * 1024 * 1024,
                                   description="a larger message body is rejected without being decoded")
    max_records_per_message: int = Field(10_000, ge=1, le=1_000_000,
                                         description="a message holding more records is rejected whole")
    autostart: bool = True
    contract: Contract | None = Field(None, description="the schema contract of the stream's documents")

    @model_validator(mode="after")
    def _bounds(self) -> StreamProfile:
        if self.min_consumers > self.max_consumers:
            raise ValueError("min_consumers must not exceed max_consumers")
        return self


class MonitorProfile(_ProfileSection):
    """Thresholds that make the monitor scale the tenant's stream consumers."""

    max_avg_ingest_ms: float = Field(1000.0, gt=0, le=DAY_S * 1000)
    max_queue_depth: int = Field(5000, ge=0, le=10**12)
    breaches_before_alert: int = Field(2, ge=1, le=1000)
    cooldown_s: float = Field(15.0, ge=0, le=DAY_S)
    idle_reports_before_scale_down: int = Field(3, ge=1, le=1000)
    scale_up_step: int = Field(1, ge=1, le=64)
    idle_utilization: float = Field(0.5, gt=0.0, le=1.0)
    autoscale: bool = True


class TenantProfile(_ProfileSection):
    """One tenant: identity, token hash and the sections it uses."""

    id: str
    name: str = ""
    token_sha256: str | None = None
    runner: Literal["process", "thread"] = Field(
        "process", description="where the tenant's apps run: a confined worker process (default), or "
        "threads of the daemon for apps the operator trusts")
    batch: BatchProfile | None = None
    stream: StreamProfile | None = None
    monitor: MonitorProfile = Field(default_factory=MonitorProfile)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not TENANT_ID_RE.match(value):
            raise ValueError("must match [a-z0-9][a-z0-9_-]{0,31}")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be the 64 lowercase hex digits of a sha256")
        return value


def load_profile(path: Path) -> TenantProfile:
    """Read and validate one profile; raises :class:`TenantProfileError` naming the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TenantProfileError(str(path), "(file)", str(exc)) from None
    try:
        profile = TenantProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(file)"
        raise TenantProfileError(str(path), key, err["msg"]) from None
    if profile.id != path.stem:
        raise TenantProfileError(str(path), "id", f"is {profile.id!r} but the file is named {path.name!r}; they must match")
    return profile


def dumps_profile(data: Mapping[str, Any]) -> str:
    """Render a profile (as nested dicts) as TOML: top-level keys first, then one table per section.

    For tools and tests that onboard tenants; :func:`load_profile` reads it back.
    """
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    _dump_table("", data, lines, tables)
    while tables:
        name, table = tables.pop(0)
        lines += ["", f"[{name}]"]
        _dump_table(name, table, lines, tables)
    return "\n".join(lines) + "\n"


def _dump_table(prefix: str, table: Mapping[str, Any], lines: list[str],
                tables: list[tuple[str, Mapping[str, Any]]]) -> None:
    for key, value in table.items():
        if isinstance(value, Mapping):
            tables.append((f"{prefix}.{key}" if prefix else key, value))
        elif value is not None:
            lines.append(f"{key} = {_toml_value(value)}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_profile(directory: Path, data: Mapping[str, Any]) -> Path:
    """Write ``<directory>/<id>.toml`` atomically (the registry never sees half a profile)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{data['id']}.toml"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps_profile(data), encoding="utf-8")
    tmp.replace(path)
    return path


def folder_signature(directory: Path) -> frozenset[tuple[str, int, int, int]]:
    """``(name, inode, size, mtime_ns)`` of every profile file in ``directory``: the same
    signature twice means nothing was added, removed, replaced or rewritten in between."""
    try:
        with os.scandir(directory) as entries:
            return frozenset((e.name, st.st_ino, st.st_size, st.st_mtime_ns)
                             for e in entries if e.name.endswith(".toml") for st in (e.stat(),))
    except OSError:
        return frozenset()


def load_profiles(directory: Path) -> tuple[dict[str, TenantProfile], list[TenantProfileError]]:
    """Every valid profile in ``directory`` and the errors of the invalid ones."""
    profiles: dict[str, TenantProfile] = {}
    errors: list[TenantProfileError] = []
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
        try:
            profile = load_profile(path)
        except TenantProfileError as exc:
            errors.append(exc)
        else:
            profiles[profile.id] = profile
    return profiles, errors


@dataclass(frozen=True)
class TenantChange:
    """``added``, ``changed`` or ``removed``; ``old``/``new`` are the profiles before/after."""

    kind: Literal["added", "changed", "removed"]
    tenant: str
    old: TenantProfile | None
    new: TenantProfile | None


Listener = Callable[[TenantChange], Awaitable[None]]


class TenantDirectory(Protocol):
    """What components read of the tenant registry: the current profiles and their changes."""

    def __contains__(self, tenant: str) -> bool: ...

    def get(self, tenant: str) -> TenantProfile | None:
        """The tenant's current profile, or None."""
        ...

    def all(self) -> list[TenantProfile]:
        """Every current tenant, sorted by id."""
        ...

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` for every change from now on."""
        ...


class TenantRegistry:
    """The current tenants, reloaded when ``<config>/tenants/`` changes.

    Components subscribe with :meth:`add_listener`; each change is delivered to every
    listener in order of subscription (the daemon's start order: batch, then stream, then the
    monitor). :meth:`start` reads the folder for the first time, so listeners added before it
    hear every tenant as ``added``; nothing is replayed to a listener added later.
    """

    name = "tenants"

    def __init__(self, directory: Path, stop_event: asyncio.Event, rescan_interval_s: float = 5.0, *,
                 bus: EventBus) -> None:
        self.events = bus.emitter("tenants")
        self.directory = directory
        self._stop = stop_event
        self._rescan_interval = rescan_interval_s
        self._lock = asyncio.Lock()
        self._rescan_task: asyncio.Task[None] | None = None
        self._tenants: dict[str, TenantProfile] = {}
        self._errors: dict[str, TenantProfileError] = {}
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._signature: frozenset[tuple[str, int, int, int]] | None = None

    def __contains__(self, tenant: str) -> bool:
        return tenant in self._tenants

    def get(self, tenant: str) -> TenantProfile | None:
        """The tenant's current profile, or None."""
        return self._tenants.get(tenant)

    def all(self) -> list[TenantProfile]:
        """Every current tenant, sorted by id."""
        return [self._tenants[k] for k in sorted(self._tenants)]

    @property
    def errors(self) -> dict[str, TenantProfileError]:
        """Invalid profile files by path."""
        return dict(self._errors)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` for every change from now on (tenants loaded already are not replayed)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Load the profiles, notify listeners of every tenant, then watch for changes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        await self.reload()
        self._task = asyncio.create_task(self._watch(), name="tenants.watch")
        self._rescan_task = asyncio.create_task(self._rescan(), name="tenants.rescan")

    async def stop(self) -> None:
        """Stop watching."""
        tasks = [t for t in (self._task, self._rescan_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._rescan_task = None

    def health(self) -> dict[str, object]:
        """Tenants loaded and invalid profile files."""
        return {"up": True, "tenants": sorted(self._tenants),
                "invalid": {p: str(e) for p, e in self._errors.items()}}

    async def reload(self) -> list[TenantChange]:
        """Read the directory again and deliver the differences to the listeners."""
        async with self._lock:  # the watcher and the rescan must not interleave deliveries
            return await self._reload()

    async def _reload(self) -> list[TenantChange]:
        self._signature = folder_signature(self.directory)
        found, errors = load_profiles(self.directory)
        new_errors = {e.path: e for e in errors}
        for path, err in new_errors.items():
            if path not in self._errors or str(self._errors[path]) != str(err):
                self.events.emit(TenantInvalid(tenant=Path(path).stem, path=path, key=err.key, reason=err.problem))
        self._errors = new_errors
        # A tenant whose file exists but is now invalid keeps its last valid profile.
        invalid_ids = {Path(p).stem for p in new_errors}
        changes: list[TenantChange] = []
        for tid, old in list(self._tenants.items()):
            if tid not in found and tid not in invalid_ids:
                changes.append(TenantChange("removed", tid, old, None))
        for tid, new in found.items():
            previous = self._tenants.get(tid)
            if previous is None:
                changes.append(TenantChange("added", tid, None, new))
            elif previous != new:
                changes.append(TenantChange("changed", tid, previous, new))
        for change in changes:
            if change.new is None:
                self._tenants.pop(change.tenant, None)
            else:
                self._tenants[change.tenant] = change.new
            self.events.emit(_CHANGE_EVENTS[change.kind](tenant=change.tenant))
            await self._deliver(change)
        return changes

    async def _deliver(self, change: TenantChange) -> None:
        for listener in self._listeners:
            try:
                await listener(change)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.events.emit(TenantListenerFailed(tenant=change.tenant, change=change.kind, error=str(exc)),
                                 exc_info=True)

    async def _watch(self) -> None:
        async for _changes in watchfiles.awatch(self.directory, stop_event=self._stop, debounce=300,
                                                step=WATCH_STEP_MS, rust_timeout=WATCH_TIMEOUT_MS,
                                                recursive=False):
            await self._safe_reload()

    async def _rescan(self) -> None:
        """File events can be missed (e.g. while the watcher starts): look at the folder now and
        then, and read the profiles again when a file was added, removed or rewritten."""
        while not self._stop.is_set():
            await asyncio.sleep(self._rescan_interval)
            if folder_signature(self.directory) != self._signature:
                await self._safe_reload()

    async def _safe_reload(self) -> None:
        try:
            await self.reload()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let a reload bug stop the watcher
            self.events.emit(TenantReloadFailed(error=str(exc)))
