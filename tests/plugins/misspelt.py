"""Test app ``misspelt``: implements a hook that does not exist (the typo is the test)."""

from __future__ import annotations

from typing import Any

from mysimbdp import hookimpl


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any]) -> dict[str, Any]:
    return record


@hookimpl
def mysimbdp_batch_wrangel(record: dict[str, Any]) -> dict[str, Any]:
    return record
