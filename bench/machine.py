"""The machine a benchmark ran on: cores, memory, Python, the store and RabbitMQ versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from mysimbdp.errors import BrokerUnavailable
from mysimbdp.store.embedded import DEFAULT_CACHE_MIB
from mysimbdp.stream.broker_admin import BrokerAdmin

__all__ = ["describe_machine", "load_average"]

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine is shared: noise shows here)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


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


async def _store(uri: str, embedded: bool) -> dict[str, Any]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=3000)
    try:
        info = await client.admin.command("buildInfo")
    except PyMongoError as exc:
        return {"kind": "embedded NX-27017" if embedded else "MongoDB", "error": str(exc)[:200]}
    finally:
        await client.close()
    process = str(info.get("process") or "")
    is_nx = "nx_27017" in process or embedded
    return {
        "kind": (f"embedded NX-27017 (SQLite-backed, MongoDB wire protocol, {DEFAULT_CACHE_MIB} MiB page cache per database)"
                 if embedded else "NX-27017 (SQLite-backed, MongoDB wire protocol)") if is_nx else "MongoDB",
        "embedded": embedded,
        "version": info.get("version"),
        "package_version": _version("nx-27017") if is_nx else None,
        "process": process or None,
    }


async def _rabbitmq(management_url: str) -> dict[str, Any]:
    try:
        async with BrokerAdmin(management_url) as admin:
            overview = await admin.request("GET", "/overview")
    except BrokerUnavailable as exc:
        return {"error": str(exc)[:200]}
    return {"version": overview.get("rabbitmq_version"), "erlang": overview.get("erlang_version")}


async def describe_machine(mongo_uri: str, embedded_store: bool, management_url: str) -> dict[str, Any]:
    """Everything the docs print about where the figures come from."""
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_mb": _mem_total_mb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "store": await _store(mongo_uri, embedded_store),
        "rabbitmq": await _rabbitmq(management_url),
        "libraries": {name: _version(name) for name in ("pymongo", "aio-pika", "pyarrow", "orjson")},
        "mysimbdp": _version("mysimbdp"),
        "git_commit": (commit + ("+dirty" if dirty else "")) if commit else None,
        "load_average_at_start": load_average(),
    }
