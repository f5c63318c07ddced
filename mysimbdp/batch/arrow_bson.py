"""BSON documents straight from Arrow columns, without a Python dict per row.

The columnar path's hot spot was turning each row into a dict and pymongo encoding that
dict again. Here every column is encoded at once with Arrow compute kernels into the parts
of its BSON elements (type byte and key, value), one join per batch puts each row's parts
together, and each row becomes one ``RawBSONDocument`` that the driver sends as it is.

Costs kept low, measured on flights batches: number columns become binary arrays over their
own buffers (no copy, no cast); a column without nulls adds its type byte and key to the one
join as a constant, not by a join of its own; the documents, whose bytes are built here and
correct by construction, skip ``RawBSONDocument``'s per-document size check
(:func:`mysimbdp.compat.raw_document`, checked at import to give the same documents as the
checked constructor).

The output is byte-for-byte what pymongo writes for the equivalent dict (integers as int32
when they fit, else int64; timestamps as UTC milliseconds, truncated like pymongo; nulls as
BSON null). Columns of other types (lists, structs, decimals, dates...) are not handled:
:func:`encode_rows` returns None and the caller takes the per-row path.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TypeAlias

import pyarrow as pa
import pyarrow.compute as pc
from bson.raw_bson import RawBSONDocument

from mysimbdp.compat import raw_document

__all__ = ["encode_rows"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UNIT_PER_MS = {"s": None, "ms": 1, "us": 1_000, "ns": 1_000_000}
# BSON numbers are little-endian, as Arrow's buffers are on such a machine: their bytes are
# used as they are. Elsewhere every batch takes the per-row path.
_LITTLE_ENDIAN = sys.byteorder == "little"
# Typed scalars made once: a bare Python value given to a compute function is converted on
# every call, and that conversion looks for optional modules (dateutil) each time.
_NOTHING = pa.scalar(b"", pa.binary())
_TERMINATOR = pa.scalar(b"\x00", pa.binary())
_ONE, _FIVE = pa.scalar(1, pa.int32()), pa.scalar(5, pa.int32())
_I64 = {v: pa.scalar(v, pa.int64()) for v in (0, 1000, _INT32_MIN, _INT32_MAX, *(u for u in _UNIT_PER_MS.values() if u))}
_F64_ZERO, _FALSE = pa.scalar(0.0, pa.float64()), pa.scalar(False, pa.bool_())
_F64_NULL = pa.scalar(None, pa.float64())


def encode_rows(batch: pa.RecordBatch, ids: Sequence[str] | pa.Array) -> list[RawBSONDocument] | None:
    """One BSON document per row: ``{"_id": ids[i], <column>: <value>, ...}``; None if a type is not handled.

    ``ids`` are strings, as a list or as an Arrow string array.
    """
    n = batch.num_rows
    if n == 0:
        return []
    if not _LITTLE_ENDIAN:
        return None
    parts = _element("_id", ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string()))
    assert parts is not None
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if name == "_id" or "\0" in name:
            return None
        encoded = _element(name, column)
        if encoded is None:
            return None
        parts.extend(encoded)
    body = pc.binary_join_element_wise(*parts, _NOTHING)
    sizes = pc.cast(pc.add(pc.binary_length(body), _FIVE), pa.int32())
    docs = pc.binary_join_element_wise(_fixed(sizes), body, _TERMINATOR, _NOTHING)
    return [raw_document(raw) for raw in docs.to_pylist()]


Part: TypeAlias = "pa.Array | pa.Scalar"  # a part of a BSON element: per row, or the same for all rows


def _element(name: str, column: pa.Array) -> list[Part] | None:
    """The parts of the BSON element of every row of ``column`` (a null element where the
    value is null): a column without nulls gives its type byte and key as one scalar."""
    key = name.encode("utf-8") + b"\x00"
    kind = column.type
    if pa.types.is_null(kind):
        return [_nulls(key, len(column))]
    parts: list[Part]
    if pa.types.is_boolean(kind):
        parts = [_binary(b"\x08" + key), _fixed(pc.cast(column.fill_null(_FALSE), pa.uint8()))]
    elif pa.types.is_integer(kind):
        integers = _integers(key, column)
        if integers is None:
            return None
        parts = integers
    elif pa.types.is_floating(kind):
        column = pc.cast(column, pa.float64())
        if pc.any(pc.is_nan(column)).as_py():  # NaN means missing: stored as null, as by the per-row path
            column = pc.if_else(pc.is_nan(column), _F64_NULL, column)
        parts = [_binary(b"\x01" + key), _fixed(column.fill_null(_F64_ZERO))]
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.cast(column, pa.binary()).fill_null(_NOTHING)
        lengths = pc.cast(pc.add(pc.binary_length(text), _ONE), pa.int32())
        parts = [_binary(b"\x02" + key), _fixed(lengths), text, _TERMINATOR]
    elif pa.types.is_timestamp(kind):
        parts = [_binary(b"\x09" + key), _fixed(_millis(column))]
    else:
        return None
    if column.null_count == 0:
        return parts
    value = pc.binary_join_element_wise(*parts, _NOTHING)
    return [pc.if_else(column.is_valid(), value, _binary(b"\x0a" + key))]


def _integers(key: bytes, column: pa.Array) -> list[Part] | None:
    if pa.types.is_uint64(column.type):
        top = pc.max(column).as_py()
        if top is not None and top > 2**63 - 1:
            return None  # BSON has no unsigned 64-bit integers: the per-row path rejects such rows
    values = pc.cast(column, pa.int64()).fill_null(_I64[0])
    small = pc.and_(pc.greater_equal(values, _I64[_INT32_MIN]), pc.less_equal(values, _I64[_INT32_MAX]))
    int32 = _fixed(pc.cast(values, pa.int32(), safe=False))
    if pc.all(small).as_py():
        return [_binary(b"\x10" + key), int32]
    return [pc.if_else(small, _prefixed(b"\x10" + key, int32), _prefixed(b"\x12" + key, _fixed(values)))]


def _millis(column: pa.Array) -> pa.Array:
    """Timestamps as int64 milliseconds since the epoch, rounded down (as pymongo truncates)."""
    raw = pc.cast(pc.cast(column, pa.timestamp(column.type.unit)), pa.int64()).fill_null(_I64[0])
    per_ms = _UNIT_PER_MS[column.type.unit]
    if per_ms is None:
        return pc.multiply(raw, _I64[1000])
    if per_ms == 1:
        return raw
    quotient = pc.divide(raw, _I64[per_ms])  # integer division truncates towards zero: floor below 0
    inexact = pc.and_(pc.less(raw, _I64[0]), pc.not_equal(pc.multiply(quotient, _I64[per_ms]), raw))
    return pc.subtract(quotient, pc.cast(inexact, pa.int64()))


def _fixed(values: pa.Array) -> pa.Array:
    """Each value's little-endian bytes as a binary array over the values' own buffer
    (``values``: fixed width, no nulls)."""
    width = values.type.bit_width // 8
    n = len(values)
    data = values.buffers()[1].slice(values.offset * width, n * width)
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, _offsets(width, n), data])


_OFFSETS: dict[int, pa.Buffer] = {}


def _offsets(width: int, n: int) -> pa.Buffer:
    """The int32 offsets ``0, width, 2 * width, ...`` of ``n`` values (kept per width, grown as needed)."""
    buffer = _OFFSETS.get(width)
    if buffer is None or buffer.size < (n + 1) * 4:
        rows = max(n, 2 * (buffer.size // 4) if buffer is not None else 8192)
        buffer = _OFFSETS[width] = pa.array(range(0, (rows + 1) * width, width), pa.int32()).buffers()[1]
    return buffer.slice(0, (n + 1) * 4)


def _binary(value: bytes) -> pa.Scalar:
    return pa.scalar(value, pa.binary())


def _prefixed(prefix: bytes, values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(_binary(prefix), values, _NOTHING)


def _nulls(key: bytes, n: int) -> pa.Array:
    return pa.repeat(_binary(b"\x0a" + key), n)
