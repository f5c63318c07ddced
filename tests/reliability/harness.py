"""Helpers shared by the reliability tests: tenant profiles, waiting, health, reading back."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from mysimbdp import tenants
from mysimbdp.config import Settings
from mysimbdp.http.tokens import hash_token

__all__ = [
    "APPS", "write_tenant", "wait_until", "await_until", "get_health", "write_csv",
    "write_jsonl", "reject_keys", "document_keys", "file_entries",
]

#: The suite's own apps (``settings.extra_apps``), by name.
APPS = {
    "rel_echo": "tests.plugins.reliability_echo",
    "rel_raise": "tests.plugins.reliability_raise",
    "rel_hang": "tests.plugins.reliability_hang",
    "rel_slow": "tests.plugins.reliability_slow",
    "rel_spy": "tests.plugins.reliability_spy",
}


def write_tenant(settings: Settings, tenant: str, *, token: str | None = None,
                 batch: dict[str, Any] | None = None, stream: dict[str, Any] | None = None) -> Path:
    """Write ``<tenants_dir>/<tenant>.toml`` with the given sections; returns its path."""
    data: dict[str, Any] = {"id": tenant, "name": f"reliability {tenant}", "batch": batch, "stream": stream,
                            "token_sha256": hash_token(token) if token is not None else None}
    return tenants.write_profile(settings.tenants_dir, data)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        time.sleep(interval)


async def await_until(predicate: Callable[[], Awaitable[Any]], timeout: float, what: str,
                      interval: float = 0.2) -> Any:
    """Async :func:`wait_until`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f}s for {what}")
        await asyncio.sleep(interval)


def get_health(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """``GET /health``: status and body (status 0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=timeout) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def write_csv(path: Path, keys: Iterable[str], extra_columns: int = 2) -> int:
    """A CSV with header ``key,seq,v0..`` and one row per key; returns the row count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(",".join(["key", "seq", *[f"v{i}" for i in range(extra_columns)]]) + "\n")
        for n, key in enumerate(keys, 1):
            f.write(",".join([key, str(n), *[f"x{n * (i + 3)}" for i in range(extra_columns)]]) + "\n")
    return n


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """A JSON Lines file; returns the line count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record) for record in records]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def _raw_text(entry: dict[str, Any]) -> str:
    raw = entry.get("raw", entry.get("record", entry.get("body", "")))
    return raw if isinstance(raw, str) else json.dumps(raw, default=str)


def reject_keys(entries: Iterable[dict[str, Any]], keys: Iterable[str]) -> list[str]:
    """Which of ``keys`` each reject entry holds (one per entry that holds one)."""
    wanted = set(keys)
    found = []
    for entry in entries:
        for field in ("key", "message_id"):
            value = entry.get(field)
            if isinstance(value, str) and value in wanted:
                found.append(value)
                break
        else:
            text = _raw_text(entry)
            hits = [k for k in wanted if k in text]
            if hits:
                found.append(max(hits, key=len))
    return found


async def document_keys(collection: Any, field: str = "key") -> list[str]:
    """Every value of ``field`` in the collection, once per document."""
    return [str(doc[field]) async for doc in collection.find({}, {field: 1}) if field in doc]


async def file_entries(mongo: Any, tenant: str) -> list[dict[str, Any]]:
    """The tenant's file ledger entries, oldest first."""
    cursor = mongo["mysimbdp"]["files"].find({"tenant": tenant}).sort("staged_at", 1)
    return [doc async for doc in cursor]
