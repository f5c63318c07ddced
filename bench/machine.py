"""The machine a benchmark ran on: cores, memory, Python, the store and RabbitMQ versions."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from bench.env import BenchEnv
from mysimbdp.errors import BrokerUnavailable
from mysimbdp.store.embedded import DEFAULT_CACHE_MIB
from mysimbdp.stream.broker_admin import BrokerAdmin

__all__ = ["describe_machine"]

REPO = Path(__file__).resolve().parent.parent


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
    kind = ((f"embedded NX-27017 (SQLite-backed, MongoDB wire protocol, {DEFAULT_CACHE_MIB} MiB page cache per "
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
