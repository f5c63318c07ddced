"""Streaming readers: CSV (BOM, quoted fields, malformed rows), JSON Lines, gzip, bombs, sniffing, Arrow."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pytest

from mysimbdp.batch.readers import (
    Malformed,
    Record,
    infer_csv_schema,
    iter_arrow_batches,
    iter_records,
    open_stream,
    sniff,
)
from mysimbdp.errors import FileRejected


def _items(path: Path, fmt: str, chunk: int = 1000, limit: int = 10**9) -> list[Record | Malformed]:
    with open_stream(path, fmt, limit) as stream:
        return [item for c in iter_records(stream, fmt, chunk) for item in c]


def test_csv_with_bom_quotes_and_newlines(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes('\ufeffid,text\n1,"hello, world"\n2,"two\nlines"\n3,"say ""hi"""\n'.encode())
    items = _items(path, "csv")
    assert [i.value for i in items if isinstance(i, Record)] == [
        {"id": "1", "text": "hello, world"}, {"id": "2", "text": "two\nlines"}, {"id": "3", "text": 'say "hi"'}]
    assert [i.number for i in items] == [1, 2, 3]


def test_csv_malformed_rows_and_invalid_utf8_are_items_not_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"a,b\n1,2\n3\n4,5,6\n\xff\xfe,7\n8,9\n")
    items = _items(path, "csv")
    kinds = [(type(i).__name__, i.number) for i in items]
    assert kinds == [("Record", 1), ("Malformed", 2), ("Malformed", 3), ("Malformed", 4), ("Record", 5)]
    assert "expected 2 fields, found 1" in items[1].reason  # type: ignore[union-attr]
    assert "not valid UTF-8" in items[3].reason  # type: ignore[union-attr]


def test_jsonl_objects_malformed_lines_and_chunks(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"i": i}) for i in range(5)] + ["{oops", "", "[1]", json.dumps({"i": 5})]
    path.write_text("\n".join(lines) + "\n")
    with open_stream(path, "jsonl", 10**6) as stream:
        chunks = list(iter_records(stream, "jsonl", 3))
    assert [len(c) for c in chunks] == [3, 3, 2]
    items = [i for c in chunks for i in c]
    assert [i.number for i in items] == list(range(1, 9)), "blank lines are not records"
    assert isinstance(items[5], Malformed) and "not valid JSON" in items[5].reason
    assert isinstance(items[6], Malformed) and "expected a JSON object" in items[6].reason


def test_gzip_is_read_streaming_and_a_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(b"n\n" + b"".join(b"%d\n" % i for i in range(50_000))))
    assert len(_items(path, "csv.gz")) == 50_000
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b'{"a": 0}\n' * 1_000_000))  # ~9 MB of content in a few kB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(FileRejected) as err:
        _items(bomb, "jsonl.gz", limit=1_000_000)
    assert err.value.code == "too_big"


@pytest.mark.parametrize(("name", "content", "fmt", "message"), [
    ("a.csv.gz", b"a,b\n1,2\n", "csv.gz", "not gzip"),
    ("a.csv", gzip.compress(b"a,b\n"), "csv", "gzip-compressed"),
    ("a.csv", b"", "csv", "empty"),
    ("a.csv", b"\x00\x01\x02binary", "csv", "binary"),
    ("a.jsonl", b"a,b\n1,2\n", "jsonl", "JSON object"),
    ("a.csv", b'{"a": 1}\n', "csv", "looks like JSON"),
])
def test_sniff_refuses_content_that_does_not_match_the_name(
        tmp_path: Path, name: str, content: bytes, fmt: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FileRejected) as err:
        sniff(path, fmt)
    assert err.value.code == "content" and message in err.value.message


def test_sniff_accepts_good_files(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes("\ufeffa,b\n1,2\n".encode())
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n'))
    sniff(tmp_path / "a.csv", "csv")
    sniff(tmp_path / "a.jsonl.gz", "jsonl.gz")


def test_arrow_batches_typed_with_bad_values_and_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("n,when,name\n1,2013-01-01T10:00:00Z,x\n2,NA,y\nthree,2013-01-02T00:00:00Z,z\n4,x,y,extra\n5,,w\n")
    schema = infer_csv_schema(path, "csv", 10**6, 1 << 20)
    assert schema.field("n").type == pa.string()  # 'three' in the first block: inferred as text
    forced = pa.schema([("n", pa.int64()), ("when", pa.timestamp("s", tz="UTC")), ("name", pa.string())])
    with open_stream(path, "csv", 10**6) as stream:
        [batch] = list(iter_arrow_batches(stream, forced, 1 << 20))
    assert batch.first == 1 and batch.batch.num_rows == 4
    assert batch.batch.column("n").to_pylist() == [1, 2, None, 5]
    assert batch.batch.column("when").null_count == 2
    assert [(i, raw["n"]) for i, _, raw in batch.bad] == [(2, "three")]
    assert "'three' is not a valid int64" in batch.bad[0][1]
    assert batch.malformed == [(4, "expected 3 fields, found 4", "4,x,y,extra")], "numbered as per record"
    assert batch.numbers == [1, 2, 3, 5]


def test_arrow_batches_are_bounded_by_the_block_size(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("n,s\n" + "".join(f"{i},{'x' * 50}\n" for i in range(20_000)))
    schema = infer_csv_schema(path, "csv", 10**7, 64 * 1024)
    with open_stream(path, "csv", 10**7) as stream:
        batches = list(iter_arrow_batches(stream, schema, 64 * 1024))
    assert len(batches) > 10 and max(b.batch.num_rows for b in batches) < 2000
    assert [b.first for b in batches[:2]] == [1, batches[0].batch.num_rows + 1]
    assert sum(b.batch.num_rows for b in batches) == 20_000


def test_blocks_join_into_batches_of_batch_bytes(tmp_path: Path) -> None:
    """Small parse blocks, larger batches: same rows in order, row numbers and bad rows of the file."""
    path = tmp_path / "a.csv"
    lines = [f"{'oops' if i in (150, 4_321) else i},{'x' * 50}\n" for i in range(20_000)]
    lines.insert(9_000, "1,2,3\n")  # malformed: a field too many
    path.write_text("n,s\n" + "".join(lines))
    schema = pa.schema([("n", pa.int64()), ("s", pa.string())])
    with open_stream(path, "csv", 10**7) as stream:
        small = list(iter_arrow_batches(stream, schema, 16 * 1024))
    with open_stream(path, "csv", 10**7) as stream:
        joined = list(iter_arrow_batches(stream, schema, 16 * 1024, batch_bytes=256 * 1024))
    assert 1 < len(joined) < len(small) / 4
    values = [v for b in joined for v in b.batch.column("n").to_pylist()]
    assert values == [v for b in small for v in b.batch.column("n").to_pylist()]
    assert len(values) == 20_000 and values[:3] == [0, 1, 2] and values[150] is None
    bad = [(b.number(i), raw["n"]) for b in joined for i, _, raw in b.bad]
    assert bad == [(151, "oops"), (4_322, "oops")]
    assert [m for b in joined for m in b.malformed] == [m for b in small for m in b.malformed]
    assert [number for b in joined for number, _, _ in b.malformed] == [9_001]
    numbers = [n for b in joined for n in b.numbers_of(0, b.batch.num_rows)]
    assert numbers == [n for b in small for n in b.numbers_of(0, b.batch.num_rows)]
    assert numbers == [n for n in range(1, 20_002) if n != 9_001]


def _columnar_numbers(path: Path, block: int) -> tuple[list[int], list[int | None], list[int]]:
    """Record numbers of the rows read, of the rows skipped and of the rows refused (columnar path)."""
    schema = pa.schema([(n, pa.string()) for n in ("a", "b")])
    with open_stream(path, "csv", 10**7) as stream:
        batches = list(iter_arrow_batches(stream, schema, block))
    return ([n for b in batches for n in b.numbers_of(0, b.batch.num_rows)],
            [n for b in batches for n, _, _ in b.malformed], [b.number(i) for b in batches for i, _, _ in b.bad])


@pytest.mark.parametrize("block", [256, 1 << 20])
def test_columnar_path_numbers_records_as_the_per_record_path(tmp_path: Path, block: int) -> None:
    """Skipped and refused rows keep the per-record path's numbers (blank lines and quoted
    newlines included), so both paths name a record alike and ``_id``s do not shift."""
    rows = []
    for i in range(1, 400):
        rows.append(b"%d\n" % i if i % 37 == 0 else b'%d,"two\nlines"\n' % i if i % 50 == 0 else b"%d,x\n" % i)
        if i % 61 == 0:
            rows.append(b"\n")
    rows[120] = b"120,\xff\xfe\n"
    path = tmp_path / "a.csv"
    path.write_bytes(b"a,b\n" + b"".join(rows))
    per_record = _items(path, "csv")
    good = [i.number for i in per_record if isinstance(i, Record)]
    wrong_width = [i.number for i in per_record if isinstance(i, Malformed) and "fields" in i.reason]
    not_utf8 = [i.number for i in per_record if isinstance(i, Malformed) and "UTF-8" in i.reason]
    assert len(wrong_width) == 10 and len(not_utf8) == 1
    read, skipped, refused = _columnar_numbers(path, block)
    assert skipped == wrong_width and refused == not_utf8
    assert sorted(set(read) - set(refused)) == good


def test_columnar_path_refuses_rows_that_are_not_utf8_and_reads_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"\xef\xbb\xbfn,name\n1,caf\xc3\xa9\n2,caf\xe9\n3,ok\n")
    schema = infer_csv_schema(path, "csv", 10**6, 1 << 20)
    assert schema.names == ["n", "name"] and schema.field("name").type == pa.string()
    with open_stream(path, "csv", 10**6) as stream:
        [batch] = list(iter_arrow_batches(stream, schema, 1 << 20))
    assert batch.batch.column("name").to_pylist() == ["caf\u00e9", "caf\ufffd", "ok"]
    assert [(i, reason, raw) for i, reason, raw in batch.bad] == [
        (1, "the record is not valid UTF-8", {"n": "2", "name": "caf\ufffd"})]


# Arrow cannot hand a row that is not UTF-8 to its invalid-row callback; it reports that
# as an exception it ignores (then stops parsing), which pytest shows as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_columnar_path_reads_on_record_by_record_where_arrow_cannot_parse(tmp_path: Path) -> None:
    """A row larger than the block and a short row whose bytes are not UTF-8 stop Arrow's parser:
    the rest of the file is read as the per-record path reads it, with the same numbers."""
    lines = [b"%d,x\n" % i for i in range(1, 3000)]
    lines[1000] = b"1001," + b"y" * 200_000 + b"\n"  # over the block size and the csv field limit
    lines[2000] = b"\xff\xfe\n"  # the wrong number of fields, and not UTF-8
    path = tmp_path / "a.csv"
    path.write_bytes(b"n,s\n" + b"".join(lines))
    per_record = _items(path, "csv")
    schema = pa.schema([("n", pa.int64()), ("s", pa.string())])
    with pytest.raises(FileRejected) as err, open_stream(path, "csv", 10**7) as stream:
        list(iter_arrow_batches(stream, schema, 64 * 1024))
    assert err.value.code == "content", "without a way to read the file again"
    with open_stream(path, "csv", 10**7) as stream:
        batches = list(iter_arrow_batches(stream, schema, 64 * 1024, 256 * 1024,
                                          reopen=lambda: open_stream(path, "csv", 10**7)))
    assert all(b.batch.schema == schema for b in batches)
    read = [(n, v) for b in batches for n, v in zip(b.numbers_of(0, b.batch.num_rows),
                                                     b.batch.column("n").to_pylist(), strict=True)]
    assert read == [(i.number, int(i.value["n"])) for i in per_record if isinstance(i, Record)]
    malformed = [(n, reason) for b in batches for n, reason, _ in b.malformed]
    assert malformed == [(i.number, i.reason) for i in per_record if isinstance(i, Malformed)]
    assert [n for n, _ in malformed] == [1001, 2001] and "field larger than field limit" in malformed[0][1]
    assert len(read) == 2997


# Arrow cannot hand a row that is not UTF-8 to its invalid-row callback; it reports that
# as an exception it ignores (then stops parsing), which pytest shows as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_schema_of_a_first_block_arrow_cannot_parse_is_strings(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b"n,s\n1,x\n\xff\n2,y\n")
    assert infer_csv_schema(path, "csv", 10**6, 1 << 20) == pa.schema([("n", pa.string()), ("s", pa.string())])
