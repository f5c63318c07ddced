"""Test batch app ``batch_plain``: keeps records as they are (``n`` as an int), skips, rejects, checks."""

from __future__ import annotations

from typing import Any

from mysimbdp import Reject, hookimpl
from mysimbdp.apps import BatchContext, Target


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    return Target("items")


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any] | None:
    if record.get("skip") == "yes":
        return None
    if record.get("bad") == "yes":
        raise Reject("bad is yes")
    return {**record, "n": int(record["n"]), "file": context.file}


@hookimpl
def mysimbdp_batch_check(document: dict[str, Any], context: BatchContext) -> str | None:
    return "n must not be negative" if document["n"] < 0 else None
