"""BSON straight from Arrow columns: byte-for-byte what pymongo writes for the same dict."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import bson
import pyarrow as pa
import pytest
from bson.codec_options import CodecOptions, DatetimeConversion
from hypothesis import given, settings
from hypothesis import strategies as st

from mysimbdp.batch.arrow_bson import encode_rows


def _expected(batch: pa.RecordBatch, ids: list[str]) -> list[bytes]:
    return [bson.encode({"_id": i, **row}) for i, row in zip(ids, batch.to_pylist(), strict=True)]


def test_every_handled_type_matches_pymongo() -> None:
    batch = pa.RecordBatch.from_pydict({
        "int64": pa.array([1, None, 2**40, -5], pa.int64()),
        "int8": pa.array([1, 2, None, -4], pa.int8()),
        "text": pa.array(["a", None, "héllo ☃", ""]),
        "real": pa.array([1.5, None, float("inf"), -0.0]),
        "flag": pa.array([True, False, None, True]),
        "when": pa.array([datetime(2013, 1, 1, 5, 15, 0, 123999, tzinfo=UTC), None,
                          datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=UTC),
                          datetime(2020, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        "secs": pa.array([0, 1, None, 1_700_000_000], pa.timestamp("s")),
        "nothing": pa.array([None] * 4, pa.null()),
    })
    ids = [f"f:{n}" for n in range(4)]
    docs = encode_rows(batch, ids)
    assert docs is not None
    assert [d.raw for d in docs] == _expected(batch, ids)


def test_nan_is_stored_as_null_as_the_per_row_path_does() -> None:
    """NaN means "missing": the columnar path writes null where the per-row path
    (:func:`mysimbdp.store.writes.without_nan`) does, the same bytes."""
    batch = pa.RecordBatch.from_pydict({"real": pa.array([1.5, float("nan"), None, -float("nan")]),
                                        "f32": pa.array([float("nan"), 2.0, 3.0, 4.0], pa.float32())})
    ids = [f"f:{n}" for n in range(4)]
    docs = encode_rows(batch, ids)
    assert docs is not None
    assert [bson.decode(d.raw) for d in docs] == [
        {"_id": "f:0", "real": 1.5, "f32": None}, {"_id": "f:1", "real": None, "f32": 2.0},
        {"_id": "f:2", "real": None, "f32": 3.0}, {"_id": "f:3", "real": None, "f32": 4.0}]


@pytest.mark.parametrize("column", [
    pa.array([[1], [2]], pa.list_(pa.int64())),
    pa.array([1, 2**64 - 1], pa.uint64()),  # BSON has no unsigned 64-bit integers
    pa.array([datetime(2020, 1, 1).date()] * 2, pa.date32()),
], ids=["list", "uint64", "date"])
def test_unhandled_types_fall_back(column: pa.Array) -> None:
    assert encode_rows(pa.RecordBatch.from_arrays([column], names=["c"]), ["a", "b"]) is None


def test_empty_batch() -> None:
    assert encode_rows(pa.RecordBatch.from_pydict({"a": pa.array([], pa.int64())}), []) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                          st.one_of(st.none(), st.text()),
                          st.one_of(st.none(), st.floats(allow_nan=False)),
                          st.one_of(st.none(), st.booleans())), min_size=1, max_size=30))
def test_random_rows_match_pymongo(rows: list[tuple[Any, ...]]) -> None:
    ints, texts, floats, flags = (list(c) for c in zip(*rows, strict=True))
    batch = pa.RecordBatch.from_pydict({"i": pa.array(ints, pa.int64()), "t": pa.array(texts, pa.string()),
                                        "f": pa.array(floats, pa.float64()), "b": pa.array(flags, pa.bool_())})
    ids = [str(n) for n in range(len(rows))]
    docs = encode_rows(batch, ids)
    assert docs is not None
    assert [d.raw for d in docs] == _expected(batch, ids)


def test_a_slice_of_a_batch_encodes_its_own_rows() -> None:
    """Arrow slices share their parent's buffers at an offset: only the slice's values count."""
    batch = pa.RecordBatch.from_pydict({
        "n": pa.array(range(10), pa.int64()),
        "f": pa.array([i / 4 for i in range(10)], pa.float32()),
        "b": pa.array([i % 3 == 0 for i in range(10)]),
        "t": pa.array([i * 1_000_001 for i in range(10)], pa.timestamp("us")),
    }).slice(3, 5)
    ids = [f"s:{n}" for n in range(5)]
    docs = encode_rows(batch, ids)
    assert docs is not None
    assert [d.raw for d in docs] == _expected(batch, ids)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamps_become_milliseconds_rounded_down(unit: str) -> None:
    """As pymongo does with a datetime's microseconds: floor, also before 1970."""
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    values = [-1, -per_second - 1, 0, 1, per_second * 86_400 + 7, -(per_second * 3_000_000_000 // 7)]
    batch = pa.RecordBatch.from_pydict({"t": pa.array(values, pa.timestamp(unit, tz="UTC"))})
    docs = encode_rows(batch, [str(n) for n in range(len(values))])
    assert docs is not None
    as_ms = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_MS)
    assert [int(bson.decode(d.raw, as_ms)["t"]) for d in docs] == [v * 1000 // per_second for v in values]


def test_unsigned_values_past_int32_become_int64() -> None:
    batch = pa.RecordBatch.from_pydict({"u": pa.array([1, 2**31, 2**32 - 1, None], pa.uint32())})
    ids = ["a", "b", "c", "d"]
    docs = encode_rows(batch, ids)
    assert docs is not None
    assert [d.raw for d in docs] == _expected(batch, ids)


def test_documents_skip_the_per_document_check_with_this_pymongo() -> None:
    """The unchecked documents work with the installed pymongo (else a slower fallback is used)."""
    from bson.raw_bson import RawBSONDocument

    from mysimbdp import compat

    assert compat.RAW_DOCUMENTS_UNCHECKED
    docs = encode_rows(pa.RecordBatch.from_pydict({"n": pa.array([1, None], pa.int64())}), ["a", "b"])
    assert docs is not None and all(isinstance(d, RawBSONDocument) for d in docs)
    assert [dict(d) for d in docs] == [{"_id": "a", "n": 1}, {"_id": "b", "n": None}]
