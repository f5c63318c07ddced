"""Streaming readers for staged files: CSV and JSON Lines, plain or gzip-compressed.

Every reader works in bounded memory whatever the file size: it yields chunks of at most
``chunk_size`` records (per-record path) or Arrow record batches of about ``block_size``
bytes (columnar CSV path). A malformed record never stops a file: it comes out as a
:class:`Malformed` item and the loader sends it to the tenant's ``_rejects`` collection.

Decompressed bytes count against the tenant's ``max_file_bytes`` and its storage quota:
:class:`LimitedReader` stops a gzip bomb at the limit with
:class:`~mysimbdp.errors.FileRejected` (``too_big``, or ``over_quota`` when the quota leaves
less). The daemon reads staged files only through their :class:`StagedFile` (the descriptor
opened at admission), never by path; a :class:`~pathlib.Path` is accepted for local files
(tests, the client's checks).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mysimbdp.batch.staged import StagedFile
from mysimbdp.errors import FileRejected

__all__ = [
    "Record", "Malformed", "LimitedReader", "open_stream", "sniff", "iter_records",
    "ArrowBatch", "iter_arrow_batches", "infer_csv_schema", "NULL_VALUES", "RAW_LIMIT",
    "use_lean_memory_pool", "Source",
]

#: What the readers read: a staged file's descriptor (the daemon) or a local path.
Source = StagedFile | Path

GZIP_MAGIC = b"\x1f\x8b"
SNIFF_BYTES = 64 * 1024
#: Raw records stored in ``_rejects`` are cut at this many characters.
RAW_LIMIT = 64 * 1024
#: Field values read as null by the columnar CSV path.
NULL_VALUES = ["", "NA", "N/A", "NaN", "NULL", "null", "None", "#N/A"]


@dataclass(slots=True)
class Record:
    """A parsed record and its 1-based number among the file's data records."""

    number: int
    value: dict[str, Any]


@dataclass(slots=True)
class Malformed:
    """A record the reader could not parse: its number, the reason and the raw text."""

    number: int
    reason: str
    raw: str


class LimitedReader(io.RawIOBase):
    """A binary stream that refuses to yield more than ``limit`` bytes (``too_big``), or more
    than ``quota`` bytes (``over_quota``: what the tenant's storage quota leaves).

    ``staged``: the file read, whose :attr:`StagedFile.content_bytes` follows the count.
    """

    def __init__(self, inner: IO[bytes], limit: int, quota: int | None = None,
                 staged: StagedFile | None = None) -> None:
        self._inner = inner
        self._limit = limit
        self._quota = quota if quota is not None and quota < limit else None
        self._staged = staged
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self._inner.read(len(view))
        n = len(data)
        self.consumed += n
        if self._staged is not None and self.consumed > self._staged.content_bytes:
            self._staged.content_bytes = self.consumed
        if self._quota is not None and self.consumed > self._quota:
            raise FileRejected("over_quota", f"the content is over the {self._quota} bytes left of the tenant's "
                               "storage quota once decompressed; the quota counts decompressed bytes",
                               left=self._quota)
        if self.consumed > self._limit:
            raise FileRejected("too_big", f"the content is over the limit of {self._limit} bytes once "
                               "decompressed; split the file or ask for a larger max_file_bytes",
                               limit=self._limit)
        view[:n] = data
        return n

    def close(self) -> None:
        self._inner.close()
        super().close()


def _open_raw(source: Source) -> IO[bytes]:
    """A new binary reader of the source's bytes, at offset 0."""
    if isinstance(source, StagedFile):
        return source.open_reader()
    return open(source, "rb")  # noqa: SIM115 - the caller closes it


def open_stream(source: Source, fmt: str, max_bytes: int, quota_bytes: int | None = None) -> io.BufferedReader:
    """The file's content as a buffered binary stream, decompressed for ``.gz`` formats.

    Reading past ``max_bytes`` of (decompressed) content raises ``FileRejected("too_big")``,
    past ``quota_bytes`` (when lower) ``FileRejected("over_quota")``. Each call is a new
    reader from the start of the content.
    """
    raw: Any = _open_raw(source)
    if fmt.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw, mode="rb")
    staged = source if isinstance(source, StagedFile) else None
    return io.BufferedReader(LimitedReader(raw, max_bytes, quota_bytes, staged), buffer_size=1024 * 1024)


def sniff(source: Source, fmt: str) -> None:
    """Check that the content looks like ``fmt`` before parsing; ``FileRejected("content")`` if not."""
    with _open_raw(source) as f:
        head = f.read(SNIFF_BYTES)
    if fmt.endswith(".gz"):
        if not head.startswith(GZIP_MAGIC):
            raise FileRejected("content", "the name ends in .gz but the content is not gzip-compressed")
        try:
            with _open_raw(source) as f, gzip.GzipFile(fileobj=f, mode="rb") as g:
                head = g.read(SNIFF_BYTES)
        except (OSError, EOFError, zlib.error) as exc:  # zlib.error: corrupt deflate data
            raise FileRejected("content", f"the gzip stream is corrupt: {exc}") from None
    elif head.startswith(GZIP_MAGIC):
        raise FileRejected("content", f"the content is gzip-compressed; name the file *.{fmt}.gz")
    if not head.strip():
        raise FileRejected("content", "the file is empty")
    if b"\0" in head:
        raise FileRejected("content", "the content is binary (NUL bytes), not text")
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(head)
    if text.count("\ufffd") > max(8, len(text) // 100):
        raise FileRejected("content", "the content is not UTF-8 text")
    text = text.lstrip("\ufeff \t\r\n")
    if fmt.startswith("jsonl") and not text.startswith("{"):
        raise FileRejected("content", "JSON Lines files hold one JSON object per line; the first line is not one")
    if fmt.startswith("csv") and text.startswith(("{", "[")):
        raise FileRejected("content", "the content looks like JSON, not CSV with a header row")


def iter_records(stream: IO[bytes], fmt: str, chunk_size: int) -> Iterator[list[Record | Malformed]]:
    """Parse ``stream`` record by record, yielding chunks of up to ``chunk_size`` items."""
    items = _iter_csv(stream) if fmt.startswith("csv") else _iter_jsonl(stream)
    chunk: list[Record | Malformed] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _iter_csv(stream: IO[bytes]) -> Iterator[Record | Malformed]:
    # surrogateescape keeps undecodable bytes so that only the rows holding them are rejected
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise FileRejected("content", f"the header row cannot be parsed: {exc}") from None
    width = len(header)
    number = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield Malformed(number, f"CSV syntax error near line {reader.line_num}: {exc}", "")
            continue
        number += 1
        if len(row) != width:
            if not row:  # a blank line is not a record
                number -= 1
                continue
            yield Malformed(number, f"expected {width} fields, found {len(row)}", _raw_csv(row))
            continue
        joined = "".join(row)
        if not joined.isascii() and _has_surrogates(joined):
            yield Malformed(number, "the record is not valid UTF-8", _raw_csv(row))
            continue
        yield Record(number, dict(zip(header, row, strict=True)))


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _raw_csv(row: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(row)
    return out.getvalue().rstrip("\r\n").encode("utf-8", "replace").decode("utf-8")[:RAW_LIMIT]


def _iter_jsonl(stream: IO[bytes]) -> Iterator[Record | Malformed]:
    number = 0
    first = True
    for line in stream:
        if first:
            line = line.removeprefix(codecs.BOM_UTF8)
            first = False
        if not line.strip():
            continue
        number += 1
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield Malformed(number, f"not valid JSON: {exc}", line.decode("utf-8", "replace").rstrip("\r\n")[:RAW_LIMIT])
            continue
        if not isinstance(value, dict):
            yield Malformed(number, f"expected a JSON object, found {type(value).__name__}",
                            line.decode("utf-8", "replace").rstrip("\r\n")[:RAW_LIMIT])
            continue
        yield Record(number, value)


# ---------------------------------------------------------------------------------------
# Columnar CSV path (Arrow)
# ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class ArrowBatch:
    """Typed rows of one batch, the rows refused while reading it, and their record numbers.

    Records are numbered as on the per-record path: 1-based among the file's data records,
    rows with the wrong number of fields included, blank lines not. ``first`` is the number
    of the batch's first row; ``numbers`` lists the number of every row when the file's
    skipped rows make them not consecutive (None: ``first``, ``first + 1``, ...). ``bad``
    lists ``(row index in the batch, reason, raw)`` for rows whose bytes are not UTF-8 or
    whose values do not fit the column types; ``malformed`` lists ``(record number, reason,
    raw text)`` of the rows that could not be parsed, e.g. with the wrong number of fields
    (number None if unknown).
    """

    first: int
    batch: pa.RecordBatch
    bad: list[tuple[int, str, dict[str, Any]]]
    malformed: list[tuple[int | None, str, str]]
    numbers: list[int] | None = None

    def number(self, index: int) -> int:
        """The record number of row ``index`` of the batch."""
        return self.first + index if self.numbers is None else self.numbers[index]

    def numbers_of(self, lo: int, n: int) -> list[int]:
        """The record numbers of rows ``lo .. lo + n - 1``."""
        if self.numbers is None:
            return list(range(self.first + lo, self.first + lo + n))
        return self.numbers[lo:lo + n]


class _Numbering:
    """Record numbers of the rows Arrow parsed, around the rows it skipped.

    Arrow reports a skipped row's ``number``: its row in the file, the header being row 1,
    blank lines not counted, a quoted value over several lines counted once; so ``number - 1``
    is that row's record number on the per-record path. The parsed rows take the numbers in
    between, in order: the same on every read of the file (a resumed load writes the same
    ``_id``s), whatever the block size.
    """

    def __init__(self) -> None:
        self.next = 1
        self.reported: list[tuple[int | None, str, str]] = []
        self.passed: set[int] = set()  # numbers of skipped rows handed out, past the last parsed row
        self._skipped: set[int] = set()

    def on_invalid(self, row: Any) -> str:
        number = row.number - 1 if isinstance(row.number, int) and row.number > 1 else None
        self.reported.append((number, f"expected {row.expected_columns} fields, found {row.actual_columns}",
                              str(row.text)[:RAW_LIMIT]))
        return "skip"

    def take(self, n: int) -> tuple[int, list[int] | None, list[tuple[int | None, str, str]]]:
        """``(first, numbers, malformed)`` for the next ``n`` parsed rows (see :class:`ArrowBatch`)."""
        malformed, self.reported = self.reported, []
        reported = {number for number, _, _ in malformed if number is not None and number >= self.next}
        self._skipped |= reported
        first = self.next
        numbers: list[int] | None = None
        if not self._skipped or min(self._skipped) >= first + n:
            self.next += n
        else:
            numbers = []
            k = first
            while len(numbers) < n:
                if k in self._skipped:
                    self._skipped.discard(k)
                else:
                    numbers.append(k)
                k += 1
            self.next = k
            first = numbers[0] if numbers else first
        self.passed = {k for k in self.passed | reported if k >= self.next}
        return first, numbers, malformed

    def handed_out(self, number: int) -> bool:
        """Whether record ``number`` was in a batch already (parsed, or skipped and reported)."""
        return number < self.next or number in self.passed


def use_lean_memory_pool() -> str:
    """Give Arrow the jemalloc allocator where it has one; the name of the allocator in use.

    On the flights loads, Arrow's default allocator (mimalloc) left the daemon's peak RSS
    some 40 MiB higher for the same work. ``ARROW_DEFAULT_MEMORY_POOL`` still decides when set.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        with contextlib.suppress(NotImplementedError):
            pa.set_memory_pool(pa.jemalloc_memory_pool())
    return str(pa.default_memory_pool().backend_name)


def infer_csv_schema(source: Source, fmt: str, max_bytes: int, block_size: int) -> pa.Schema:
    """Column types inferred from the first block; all-null and not-UTF-8 columns are strings.

    When Arrow cannot read the first block (a row over the block size, say), every column is
    a string, named by the header row as the per-record path reads it.
    """
    with open_stream(source, fmt, max_bytes) as stream:
        try:
            reader = pacsv.open_csv(stream, read_options=_read_options(block_size),
                                    parse_options=_parse_options(lambda row: "skip"))
            schema = reader.schema
        except pa.ArrowInvalid:
            schema = None
    if schema is None:
        with open_stream(source, fmt, max_bytes) as stream:
            header = _csv_header(stream)
        return pa.schema([pa.field(name, pa.string()) for name in header])
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_null(f.type) or pa.types.is_binary(f.type)
                               else f.type) for f in schema])


def _csv_header(stream: IO[bytes]) -> list[str]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        header = next(csv.reader(text, strict=True))
    except (StopIteration, csv.Error) as exc:
        raise FileRejected("content", f"the CSV header row cannot be read: {exc}") from None
    if _has_surrogates("".join(header)):
        raise FileRejected("content", "the CSV header row is not UTF-8 text")
    if len(set(header)) != len(header) or not all(header):
        raise FileRejected("content", "the CSV header row must name every column once")
    return header


def _read_options(block_size: int) -> pacsv.ReadOptions:
    # One thread: the event loop and the store need the other cores, and Arrow's parallel
    # reader keeps several blocks in flight (memory grows faster than the block size). It
    # also makes Arrow report the row number of each skipped row (see _Numbering).
    return pacsv.ReadOptions(block_size=block_size, use_threads=False)


def _parse_options(handler: Any) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=handler)


def iter_arrow_batches(stream: IO[bytes], schema: pa.Schema, block_size: int, batch_bytes: int | None = None,
                       reopen: Callable[[], IO[bytes]] | None = None) -> Iterator[ArrowBatch]:
    """Read ``stream`` block by block as bytes, check UTF-8 and cast each batch to ``schema``.

    Reading as bytes first means a row that is not UTF-8 or holds a value that does not fit
    its column's type rejects that row only (listed in :attr:`ArrowBatch.bad`), not the
    whole file. Blocks of ``block_size`` bytes are parsed (the reader's memory grows with
    it) and joined into batches of at least ``batch_bytes`` (default: one block), so that the
    per-batch costs of checking, wrangling and encoding are spread over many rows.

    Where Arrow cannot parse a block (a row larger than the block, a row with the wrong
    number of fields whose bytes are not UTF-8), the rest of the file is read record by record
    from ``reopen()`` (a new stream of the same content), as the per-record path reads it,
    into batches of the same shape: the row goes to ``malformed``, the file goes on. Without
    ``reopen`` the file is rejected (``content``).
    """
    numbering = _Numbering()
    convert = pacsv.ConvertOptions(column_types={n: pa.binary() for n in schema.names},
                                   strings_can_be_null=True, null_values=NULL_VALUES)
    text_schema = pa.schema([pa.field(n, pa.string()) for n in schema.names])
    failed: pa.ArrowInvalid | None = None
    try:
        reader = pacsv.open_csv(stream, read_options=_read_options(block_size),
                                parse_options=_parse_options(numbering.on_invalid), convert_options=convert)
    except pa.ArrowInvalid as exc:
        failed = exc
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0  # a running sum: a batch's nbytes walks all its buffers
    while failed is None:
        try:
            block = reader.read_next_batch()
        except StopIteration:
            block = None
        except pa.ArrowInvalid as exc:
            failed, block = exc, None
        if block is not None:
            pending.append(block)
            pending_bytes += block.nbytes
            if pending_bytes < (batch_bytes or 0):
                continue
        if pending:
            raw = _joined(pending)
            pending, pending_bytes = [], 0
            text, reasons = _as_text(raw, text_schema)
            typed, bad = _cast(text, schema, reasons)
            first, numbers, malformed = numbering.take(raw.num_rows)
            yield ArrowBatch(first, typed, bad, malformed, numbers)
        if block is None and failed is None:
            return
    if reopen is None:
        raise FileRejected("content", f"the CSV content cannot be read after record {numbering.next - 1}: "
                           f"{failed}") from None
    with reopen() as again:
        yield from _record_batches(again, schema, numbering, batch_bytes or block_size)


#: At most this many rows per batch when the file is read record by record.
_RECORD_BATCH_ROWS = 5000


def _record_batches(stream: IO[bytes], schema: pa.Schema, numbering: _Numbering,
                    batch_bytes: int) -> Iterator[ArrowBatch]:
    """The records not handed out yet, read by the per-record CSV reader, as :class:`ArrowBatch`."""
    names = schema.names
    nulls = set(NULL_VALUES)
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    malformed: list[tuple[int | None, str, str]] = []
    size = 0
    for item in _iter_csv(stream):
        if numbering.handed_out(item.number):
            continue
        if isinstance(item, Malformed):
            malformed.append((item.number, item.reason, item.raw))
            size += len(item.raw)
        else:
            rows.append(item.value)
            numbers.append(item.number)
            size += sum(len(v) for v in item.value.values())
        if len(rows) + len(malformed) >= _RECORD_BATCH_ROWS or size >= batch_bytes:
            yield _record_batch(rows, numbers, malformed, names, nulls, schema)
            rows, numbers, malformed, size = [], [], [], 0
    if rows or malformed:
        yield _record_batch(rows, numbers, malformed, names, nulls, schema)


def _record_batch(rows: list[dict[str, Any]], numbers: list[int], malformed: list[tuple[int | None, str, str]],
                  names: list[str], nulls: set[str], schema: pa.Schema) -> ArrowBatch:
    columns = [pa.array([None if (v := row.get(name)) in nulls else v for row in rows], pa.string())
               for name in names]
    text = pa.RecordBatch.from_arrays(columns, names=names)
    typed, bad = _cast(text, schema, {})
    first = numbers[0] if numbers else next((n for n, _, _ in malformed if n is not None), 1)
    return ArrowBatch(first, typed, bad, malformed, numbers)


def _joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch of the rows of ``batches`` (same schema), in order."""
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches).combine_chunks()
    return table.to_batches(max_chunksize=table.num_rows)[0]


def _as_text(raw: pa.RecordBatch, text_schema: pa.Schema) -> tuple[pa.RecordBatch, dict[int, str]]:
    """The binary batch as UTF-8 strings, and the rows (by index) holding bytes that are not UTF-8.

    Those rows' values are decoded with U+FFFD for the bad bytes (their raw record shows
    where); the rows themselves are refused.
    """
    try:
        return raw.cast(text_schema), {}
    except pa.ArrowInvalid:
        pass
    columns: list[Any] = []
    reasons: dict[int, str] = {}
    for column in raw.columns:
        try:
            columns.append(column.cast(pa.string()))
            continue
        except pa.ArrowInvalid:
            pass
        values: list[str | None] = []
        for i, value in enumerate(column.to_pylist()):
            if value is None:
                values.append(None)
                continue
            try:
                values.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(value.decode("utf-8", "replace"))
                reasons.setdefault(i, "the record is not valid UTF-8")
        columns.append(pa.array(values, pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=text_schema), reasons


def _cast(raw: pa.RecordBatch, schema: pa.Schema,
          reasons: dict[int, str]) -> tuple[pa.RecordBatch, list[tuple[int, str, dict[str, Any]]]]:
    """Cast a string batch to ``schema``; rows holding a value that does not fit become nulls + ``bad``.

    ``reasons`` holds rows already refused (by index), which keep their reason.
    """
    try:
        typed = raw.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        typed = _cast_by_value(raw, schema, reasons)
    return typed, [(i, reason, raw.slice(i, 1).to_pylist()[0]) for i, reason in sorted(reasons.items())]


def _cast_by_value(raw: pa.RecordBatch, schema: pa.Schema, reasons: dict[int, str]) -> pa.RecordBatch:
    columns: list[Any] = []
    for field in schema:
        col = raw.column(field.name)
        try:
            columns.append(pc.cast(col, field.type))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        values = []
        for i, value in enumerate(col.to_pylist()):
            try:
                values.append(pc.cast(pa.array([value], pa.string()), field.type)[0].as_py())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                values.append(None)
                reasons.setdefault(i, f"column {field.name!r}: {value!r} is not a valid {field.type}")
        columns.append(pa.array(values, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
