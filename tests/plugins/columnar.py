"""Test app ``columnar``: the columnar path only (declared columns, a table hook, a check).

Column ``n`` is declared ``int64``; the table hook adds ``twice`` (``2 * n``) and sends rows
with a negative ``n`` to ``_rejects`` through a ``_reject`` column; the check refuses
``n == 13``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from mysimbdp import BatchContext, hookimpl


@hookimpl
def mysimbdp_batch_columns(context: BatchContext) -> dict[str, pa.DataType]:
    return {"n": pa.int64()}


@hookimpl
def mysimbdp_batch_wrangle_table(table: pa.RecordBatch, context: BatchContext) -> pa.RecordBatch:
    n = table.column("n")
    negative = pc.less(n, pa.scalar(0, pa.int64()))
    reject = pc.if_else(negative, pa.scalar("n is negative"), pa.scalar(None, pa.string()))
    return pa.RecordBatch.from_arrays([n, pc.multiply(n, pa.scalar(2, pa.int64())), reject],
                                      names=["n", "twice", "_reject"])


@hookimpl
def mysimbdp_batch_check(document: dict[str, Any], context: BatchContext) -> str | None:
    return "13 is unlucky" if document.get("n") == 13 else None
