"""Property tests of the batch readers: any input yields records or recorded rejects, never an
unhandled exception, and memory stays bounded whatever the input.

Part of guarantee 5 of ``docs/reliability.md``. The number of examples grows under
``make reliability`` (``MYSIMBDP_RELIABILITY=full``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mysimbdp.batch.readers import (
    LimitedReader,
    Malformed,
    Record,
    infer_csv_schema,
    iter_arrow_batches,
    iter_records,
    sniff,
)
from mysimbdp.errors import FileRejected
from tests.reliability.results import full_run, record

EXAMPLES = 1000 if full_run() else 100
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not full_run(),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
GUARANTEE = "5. parsers under fuzzing"
LIMIT = 1024 * 1024
tried: dict[tuple[str, str], int] = {}


def _stream(data: bytes, limit: int = LIMIT) -> io.BufferedReader:
    return io.BufferedReader(LimitedReader(io.BytesIO(data), limit))


def _read_all(data: bytes, fmt: str) -> list[Record | Malformed]:
    items: list[Record | Malformed] = []
    for chunk in iter_records(_stream(data), fmt, 50):
        assert 0 < len(chunk) <= 50
        items.extend(chunk)
    return items


def _check_numbers(items: list[Record | Malformed]) -> None:
    numbers = [i.number for i in items]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    for item in items:
        assert isinstance(item, Record | Malformed)
        if isinstance(item, Record):
            assert isinstance(item.value, dict)
        else:
            assert item.reason


def _count(label: str) -> None:
    key = (label, sys._getframe(1).f_code.co_name)  # the test's name marks its rows if it fails
    tried[key] = tried.get(key, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for name, n in sorted(tried.items()):
        label, test = name
        record(GUARANTEE, label, test, injected=n, bad_inputs=n)


# -- anything at all -------------------------------------------------------------------------

@FUZZ
@given(data=st.binary(max_size=4096), fmt=st.sampled_from(["csv", "jsonl"]))
def test_any_bytes_give_records_or_a_reject(data: bytes, fmt: str) -> None:
    _count(f"any bytes through the {'CSV' if fmt == 'csv' else 'JSON Lines'} reader")
    try:
        items = _read_all(data, fmt)
    except FileRejected as exc:
        assert exc.code in ("content", "too_big"), exc
        return
    _check_numbers(items)


@FUZZ
@given(data=st.binary(max_size=4096), fmt=st.sampled_from(["csv", "jsonl", "csv.gz", "jsonl.gz"]))
def test_sniff_accepts_or_rejects_with_content(data: bytes, fmt: str) -> None:
    _count("any bytes through the content sniff")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.{fmt}"
        path.write_bytes(data)
        try:
            sniff(path, fmt)
        except FileRejected as exc:
            assert exc.code == "content", exc


@FUZZ
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\ufeff"), max_size=2000))
def test_any_text_gives_records_or_a_reject(text: str) -> None:
    _count("any UTF-8 text through both readers")
    for fmt in ("csv", "jsonl"):
        try:
            _check_numbers(_read_all(text.encode(), fmt))
        except FileRejected as exc:
            assert exc.code == "content", exc


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see the docstring
@FUZZ
@given(data=st.binary(max_size=4096))
def test_arrow_csv_path_gives_batches_or_a_reject(data: bytes) -> None:
    """The columnar path raises FileRejected, ArrowInvalid or UnicodeDecodeError (a header that
    is not UTF-8); the loader's worker-thread guard turns the last two into a ``content``
    rejection. Never a crash, a hang or anything else. (A row that is not UTF-8 makes Arrow's
    invalid-row callback fail inside Arrow, which ignores it: a warning, not an error.)"""
    _count("any bytes through the columnar (Arrow) CSV reader")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(data)
        try:
            schema = infer_csv_schema(path, "csv", LIMIT, 4096)
            for batch in iter_arrow_batches(_stream(data), schema, 4096):
                assert batch.batch.schema == schema
        except (FileRejected, pa.ArrowInvalid, UnicodeDecodeError):
            pass


# -- valid input comes back exactly ----------------------------------------------------------

_field = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\ufeff\x00"), max_size=30)


@FUZZ
@given(width=st.integers(1, 6), rows=st.lists(st.lists(_field, min_size=6, max_size=6), max_size=30),
       newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_valid_csv_round_trips(width: int, rows: list[list[str]], newline: str, bom: bool) -> None:
    _count("generated CSV (quotes, separators, newlines in fields) read back exactly")
    header = [f"c{i}" for i in range(width)]
    out = io.StringIO()
    # with a "\n" terminator the csv module would leave a lone "\r" unquoted: quote everything
    quoting = csv.QUOTE_ALL if newline == "\n" else csv.QUOTE_MINIMAL
    writer = csv.writer(out, lineterminator=newline, quoting=quoting)
    writer.writerow(header)
    body = [r[:width] for r in rows]
    writer.writerows(body)
    data = (("\ufeff" if bom else "") + out.getvalue()).encode()
    items = _read_all(data, "csv")
    assert [i.value for i in items if isinstance(i, Record)] == [dict(zip(header, r, strict=True)) for r in body]
    assert not [i for i in items if isinstance(i, Malformed)]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | _field,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_field, inner, max_size=4),
    max_leaves=20)


@FUZZ
@given(records=st.lists(st.dictionaries(_field, _json, max_size=5), max_size=20),
       newline=st.sampled_from(["\n", "\r\n"]))
def test_valid_jsonl_round_trips(records: list[dict[str, Any]], newline: str) -> None:
    _count("generated JSON Lines read back exactly")
    data = "".join(json.dumps(r) + newline for r in records).encode()
    items = _read_all(data, "jsonl")
    assert [i.value for i in items if isinstance(i, Record)] == records
    assert not [i for i in items if isinstance(i, Malformed)]


# -- bounded memory --------------------------------------------------------------------------

class _Endless(io.RawIOBase):
    """An endless stream repeating ``pattern`` (a file that never ends)."""

    def __init__(self, pattern: bytes) -> None:
        self._source = itertools.cycle([pattern])
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        while len(self._buffer) < len(view):
            self._buffer += next(self._source)
        n = len(view)
        view[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n


@pytest.mark.parametrize("fmt,head,pattern", [
    ("csv", b"a,b\n", b"1,2\n"),
    ("csv", b"a,b\n", b"x" * 4096),  # one endless field
    ("csv", b"a,b\n", b'"' + b"q" * 4096),  # an endless quoted field
    ("jsonl", b"", b'{"a": 1}\n'),
    ("jsonl", b"", b"[" * 4096),  # one endless line
])
def test_endless_input_stops_at_the_limit_in_bounded_memory(fmt: str, head: bytes, pattern: bytes) -> None:
    _count("endless inputs (rows, one field, one line) stopped at the size limit")
    limit = 512 * 1024
    endless = io.BufferedReader(LimitedReader(io.BufferedReader(_Chain(head, _Endless(pattern))), limit))
    tracemalloc.start()
    try:
        with pytest.raises(FileRejected) as info:
            for _chunk in iter_records(endless, fmt, 1000):
                pass
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == "too_big"
    # chunks of 1000 records, or one line up to the limit: a few times the limit at most
    assert peak < 8 * limit, f"peak {peak} bytes for a {limit}-byte limit"


class _Chain(io.RawIOBase):
    """``head`` then ``rest``."""

    def __init__(self, head: bytes, rest: io.RawIOBase) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        return self._rest.readinto(buffer)  # type: ignore[no-any-return]
