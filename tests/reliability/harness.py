"""What the reliability tests share beyond :mod:`tests.harness`: the suite's apps and settings,
tenant profiles, input files."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mysimbdp import tenants
from mysimbdp.config import Settings, load_settings
from mysimbdp.http.tokens import hash_token
from tests.conftest import ADMIN_TOKEN, MANAGEMENT_URL

__all__ = ["APPS", "suite_settings", "write_tenant", "write_csv", "write_jsonl"]

#: The suite's own apps (``settings.extra_apps``), by name.
APPS = {name: f"tests.plugins.reliability_{name[4:]}" for name in
        ("rel_echo", "rel_raise", "rel_hang", "rel_slow", "rel_spy")}


def suite_settings(base: Path, mongo_uri: str, amqp_url: str, **overrides: Any) -> Settings:
    """Settings in ``base`` for a daemon running the suite's apps (as ``settings_factory`` does)."""
    batch = {"stable_after_s": 0.5, "rescan_interval_s": 0.5, **overrides.pop("batch", {})}
    stream = {"management_url": MANAGEMENT_URL, **overrides.pop("stream", {})}
    values: dict[str, Any] = dict(
        staging_dir=base / "staging", var_dir=base / "var", http_port=0, mongo_uri=mongo_uri,
        amqp_url=amqp_url, admin_token=ADMIN_TOKEN, drain_timeout_s=5.0, log_level="info",
        batch=batch, stream=stream, extra_apps=dict(APPS))
    values.update(overrides)
    (base / "config" / "tenants").mkdir(parents=True, exist_ok=True)
    return load_settings(base / "config", **values)


def write_tenant(settings: Settings, tenant: str, *, token: str | None = None,
                 batch: dict[str, Any] | None = None, stream: dict[str, Any] | None = None) -> Path:
    """Write ``<tenants_dir>/<tenant>.toml`` with the given sections; returns its path."""
    data: dict[str, Any] = {"id": tenant, "name": f"reliability {tenant}", "batch": batch, "stream": stream,
                            "token_sha256": hash_token(token) if token is not None else None}
    return tenants.write_profile(settings.tenants_dir, data)


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
    lines = [json.dumps(record) + "\n" for record in records]
    path.write_text("".join(lines), encoding="utf-8")
    return len(lines)
