"""The servers a benchmark run uses (one store, one throw-away RabbitMQ vhost) and the machine it runs on.

The store is an embedded NX-27017 started for the run (its own data dir and PID file under
the run's temporary folder) unless ``MYSIMBDP_BENCH_MONGO_URI`` names a real MongoDB. The
vhost is created for the run and deleted after it, with every RabbitMQ user the platform
provisioned in it. Platform and ceilings use the same servers, so ratios compare like with like.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from mysimbdp.errors import BrokerUnavailable
from mysimbdp.store.embedded import DEFAULT_TUNING
from mysimbdp.store.mongo import EmbeddedMongo
from mysimbdp.stream.broker_admin import BrokerAdmin
from tests.harness.daemon import cpu_seconds

__all__ = ["BenchEnv", "DATA_DIR", "describe_machine", "process_io"]

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = REPO / "bench" / "data"


class BenchEnv:
    """Async context manager: store, vhost, temporary folder and a store client for the run.

    ``data_dir`` caches the generated data files and holds the run's temporary folder (hard
    links into staging need one file system). A ``mongo_uri``/``amqp_url`` given (the smoke
    tests pass their session's) is used as it is; only the databases this run created are dropped.
    """

    def __init__(self, *, mongo_uri: str | None = None, amqp_url: str | None = None,
                 management_url: str | None = None, work_dir: Path | None = None,
                 data_dir: Path | None = None, keep: bool = False) -> None:
        self._given_mongo = mongo_uri or os.environ.get("MYSIMBDP_BENCH_MONGO_URI") or None
        self._given_amqp = amqp_url
        self.management_url = (management_url or os.environ.get("MYSIMBDP_BENCH_MANAGEMENT_URL")
                               or "http://guest:guest@127.0.0.1:15672")
        self._amqp_base = os.environ.get("MYSIMBDP_BENCH_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")
        self._work_parent = work_dir or DATA_DIR
        self.data_dir = data_dir or DATA_DIR
        self.keep = keep
        self.run_id = uuid.uuid4().hex[:8]
        self.root = Path()
        self.embedded: EmbeddedMongo | None = None
        self.vhost: str | None = None
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self._databases: set[str] = set()
        self._tenants: set[str] = set()

    @property
    def mongo_uri(self) -> str:
        """The store every party of the run talks to."""
        assert self._given_mongo or self.embedded is not None, "BenchEnv not entered"
        return self._given_mongo or self.embedded.uri  # type: ignore[union-attr]

    @property
    def amqp_url(self) -> str:
        """The AMQP URL of the run's vhost."""
        assert self._given_amqp or self.vhost is not None, "BenchEnv not entered"
        return self._given_amqp or f"{self._amqp_base}/{quote(self.vhost or '', safe='')}"

    def store_cpu(self) -> float | None:
        """CPU seconds of the embedded store process so far (None for a store not started here)."""
        pid = self.embedded.pid if self.embedded is not None else None
        try:
            return cpu_seconds(pid) if pid is not None else None
        except OSError:
            return None

    def store_io(self) -> dict[str, int] | None:
        """The embedded store process's I/O counters so far, from ``/proc/<pid>/io``:
        ``write_bytes`` and ``read_bytes`` (what it made the kernel write to, or read from, the
        storage layer), ``wchar`` and ``rchar`` (what it passed to write and read calls, page
        cache hits included). None for a store not started here."""
        pid = self.embedded.pid if self.embedded is not None else None
        if pid is None:
            return None
        try:
            return process_io(pid)
        except (OSError, KeyError, ValueError):
            return None

    def db(self, name: str) -> Any:
        """A database of the run's store; dropped when the run ends."""
        assert self.client is not None
        self._databases.add(name)
        return self.client[name]

    def new_tenant(self, prefix: str = "b") -> str:
        """A tenant id unique to this run (its database is dropped when the run ends)."""
        tenant = f"{prefix}{self.run_id}{uuid.uuid4().hex[:6]}"[:32]
        self._tenants.add(tenant)
        self._databases.add(f"tenant_{tenant}")
        return tenant

    def tmp(self, name: str) -> Path:
        """A fresh folder inside the run's temporary folder."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))

    async def drop(self, name: str) -> None:
        """Drop one database now (frees the disk after a large load)."""
        assert self.client is not None
        with contextlib.suppress(Exception):
            await self.client.drop_database(name)
        self._databases.discard(name)

    async def __aenter__(self) -> BenchEnv:
        self._work_parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"run-{self.run_id}-", dir=self._work_parent))
        try:
            if not self._given_mongo:
                self.embedded = EmbeddedMongo(self.root / "store" / "data", self.root / "store" / "store.log")
                await self.embedded.start()
            if not self._given_amqp:
                self.vhost = f"mysimbdp-bench-{self.run_id}"
                async with BrokerAdmin(self.management_url) as admin:
                    await admin.create_vhost(self.vhost)
                    await admin.set_permissions(self.vhost, "guest", ".*", ".*", ".*")
            self.client = AsyncMongoClient(self.mongo_uri, tz_aware=True)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            if not self.keep and self._given_mongo:
                for name in sorted(self._databases):
                    await self.drop(name)
            await self.client.close()
            self.client = None
        if self.embedded is not None:
            await self.embedded.stop()
        with contextlib.suppress(BrokerUnavailable):
            async with BrokerAdmin(self.management_url) as admin:
                if self.vhost is not None and not self.keep:
                    await admin.delete_vhost(self.vhost)
                # The platform provisions one RabbitMQ user per stream tenant; users are not
                # inside a vhost, so remove the ones of this run's tenants explicitly.
                for user in await admin.request("GET", "/users") or []:
                    if any(t in str(user.get("name", "")) for t in self._tenants):
                        await admin.delete_user(str(user["name"]))
        if not self.keep and self.root != Path() and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)


def process_io(pid: int) -> dict[str, int]:
    """``/proc/<pid>/io``: ``write_bytes`` and ``read_bytes`` (what the process made the kernel
    write to, or read from, storage), ``wchar`` and ``rchar`` (what it passed to write and read
    calls, page cache hits included)."""
    lines = Path(f"/proc/{pid}/io").read_text().splitlines()
    fields = {key.strip(): value for key, _, value in (line.partition(":") for line in lines)}
    return {key: int(fields[key]) for key in ("write_bytes", "wchar", "read_bytes", "rchar")}


def _proc_line(path: str, pattern: str) -> str | None:
    """The first group of ``pattern`` in a ``/proc`` file, or None."""
    try:
        found = re.search(pattern, Path(path).read_text(), re.MULTILINE)
    except OSError:
        return None
    return found[1].strip() if found else None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


async def _store(env: BenchEnv) -> dict[str, Any]:
    embedded = env.embedded is not None
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(env.mongo_uri, serverSelectionTimeoutMS=3000)
    try:
        info = await client.admin.command("buildInfo")
    except PyMongoError as exc:
        return {"kind": "embedded NX-27017" if embedded else "MongoDB", "error": str(exc)[:200]}
    finally:
        await client.close()
    process = str(info.get("process") or "")
    is_nx = "nx_27017" in process or embedded
    kind = ((f"embedded NX-27017 (SQLite-backed, MongoDB wire protocol, {DEFAULT_TUNING.cache_mib} MiB page cache per "
             "database)" if embedded else "NX-27017 (SQLite-backed, MongoDB wire protocol)") if is_nx else "MongoDB")
    return {"kind": kind, "embedded": embedded, "version": info.get("version"),
            "package_version": _version("nx-27017") if is_nx else None, "process": process or None}


async def _rabbitmq(management_url: str) -> dict[str, Any]:
    try:
        async with BrokerAdmin(management_url) as admin:
            overview = await admin.request("GET", "/overview")
    except BrokerUnavailable as exc:
        return {"error": str(exc)[:200]}
    return {"version": overview.get("rabbitmq_version"), "erlang": overview.get("erlang_version")}


async def describe_machine(env: BenchEnv) -> dict[str, Any]:
    """Everything the docs print about where the figures come from."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    memory = _proc_line("/proc/meminfo", r"^MemTotal:\s*(\d+)")
    return {
        "cores": os.cpu_count(),
        "cpu": _proc_line("/proc/cpuinfo", r"^model name\s*:(.*)$") or platform.processor() or None,
        "memory_mb": int(memory) // 1024 if memory else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "store": await _store(env),
        "rabbitmq": await _rabbitmq(env.management_url),
        "libraries": {name: _version(name) for name in ("pymongo", "aio-pika", "pyarrow", "orjson")},
        "mysimbdp": _version("mysimbdp"),
        "git_commit": (commit + ("+dirty" if dirty else "")) if commit else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
