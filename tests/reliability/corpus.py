"""The bad-input corpus: generated into a temporary folder, with the outcome each must have.

Large inputs (the 50 MB line, the gzip bomb, the 17 MB record) are generated, never
committed; ``tests/data/bad/`` holds only tiny hand-made samples, which are part of the
corpus too. Every item says what the platform must do with it: reject the file with a
reason code, or load it with an exact number of documents and ``_rejects`` entries.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BadFile", "BAD_FILES", "SAMPLE_FILES", "SAMPLES_DIR", "good_rows", "MAX_FILE_BYTES", "sample_files"]

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "data" / "bad"
#: The bad-input tenant's ``max_file_bytes``: big enough for the 50 MB line to be parsed.
MAX_FILE_BYTES = 64 * 1024 * 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class BadFile:
    """One bad file and its expected outcome.

    ``state`` is the ledger state the file must end in (``rejected`` or ``committed``), or
    ``ignored`` for a file the watcher must not load at all. ``code`` is the rejection's
    reason code; ``written`` and ``rejected`` the exact documents and ``_rejects`` entries
    of a committed file.
    """

    id: str
    name: str
    make: Callable[[Path], None]
    state: str
    code: str | None = None
    written: int | None = None
    rejected: int | None = None
    description: str = ""


def good_rows(prefix: str, n: int) -> list[str]:
    """``n`` CSV data rows ``key,seq,v`` with keys ``<prefix>-00001``..."""
    return [f"{prefix}-{i:05d},{i},value {i}" for i in range(1, n + 1)]


def _csv(path: Path, rows: list[str], header: str = "key,seq,v", newline: str = "\n") -> None:
    path.write_bytes((newline.join([header, *rows]) + newline).encode())


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _header_only(path: Path) -> None:
    path.write_bytes(b"key,seq,v\n")


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(7).randbytes(256 * 1024))


def _invalid_utf8(path: Path) -> None:
    rows = good_rows(path.stem, 30)
    body = ("key,seq,v\n" + "\n".join(rows[:15]) + "\n").encode()
    body += f"{path.stem}-bad,99,caf".encode() + b"\xff\xfe\xe9\n"
    body += ("\n".join(rows[15:]) + "\n").encode()
    path.write_bytes(body)


def _mixed_endings(path: Path) -> None:
    endings = ["\n", "\r\n", "\r"]
    body = "key,seq,v\r\n" + "".join(row + endings[i % 3] for i, row in enumerate(good_rows(path.stem, 30)))
    path.write_bytes(body.encode())


def _unbalanced_quote(path: Path) -> None:
    rows = good_rows(path.stem, 30)
    _csv(path, [*rows, f'{path.stem}-bad,31,"an opening quote that never closes'])


def _long_line(path: Path) -> None:
    """A 50 MB line (one field, no separator) after 30 good rows."""
    with open(path, "wb") as f:
        f.write(("key,seq,v\n" + "\n".join(good_rows(path.stem, 30)) + "\n").encode())
        f.write(f"{path.stem}-long,31,".encode())
        block = b"abcdefghij" * (MB // 10)
        for _ in range(50):
            f.write(block)
        f.write(b"\n")


def _corrupt_gzip(path: Path) -> None:
    data = bytearray(gzip.compress(("key,seq,v\n" + "\n".join(good_rows(path.stem, 3000))).encode()))
    rng = random.Random(11)
    for i in range(40, len(data) - 8, 97):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))


def _gzip_bomb(path: Path) -> None:
    """~80 KB of gzip expanding to 80 MB (past ``MAX_FILE_BYTES``): a valid start, then zeros.

    The first rows are valid so that the content sniff passes and the limit has to be
    enforced while the file is decompressed and parsed.
    """
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(("key,seq,v\n" + "\n".join(good_rows(path.stem, 100)) + "\n").encode())
        f.write(f"{path.stem}-bomb,101,".encode())
        block = b"0" * MB
        for _ in range(80):
            f.write(block)
        f.write(b"\n")


def _jsonl(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _good_json(prefix: str, n: int) -> list[str]:
    return [json.dumps({"key": f"{prefix}-{i:05d}", "seq": i}) for i in range(1, n + 1)]


def _invalid_jsonl(path: Path) -> None:
    lines = _good_json(path.stem, 30)
    lines[10:10] = ['{"key": "unterminated', "not json at all"]
    lines.insert(20, "[1, 2, 3]")
    _jsonl(path, lines)


def _huge_record(path: Path) -> None:
    """One record of 17 MB (over MongoDB's 16 MB document limit) among 30 good ones."""
    lines = _good_json(path.stem, 30)
    lines.insert(15, json.dumps({"key": f"{path.stem}-huge", "blob": "x" * (17 * MB)}))
    _jsonl(path, lines)


def _deep_nesting(path: Path) -> None:
    lines = _good_json(path.stem, 30)
    depth = 100_000
    lines.insert(5, '{"key": "' + path.stem + '-deep", "v": ' + "[" * depth + "]" * depth + "}")
    lines.insert(6, '{"key": "' + path.stem + '-deep2", "v": ' + '{"a":' * 5000 + "1" + "}" * 5000 + "}")
    _jsonl(path, lines)


def _wrong_format(path: Path) -> None:
    path.write_bytes(b"MZ\x90\x00 not a data file\n")


def _json_named_csv(path: Path) -> None:
    path.write_text('{"key": "a", "seq": 1}\n', encoding="utf-8")


BAD_FILES: list[BadFile] = [
    BadFile("empty", "empty.csv", _empty, "rejected", "content", description="empty file"),
    BadFile("header-only", "header_only.csv", _header_only, "committed", written=0, rejected=0,
            description="header row only: a valid file with no records"),
    BadFile("garbage", "garbage.csv", _garbage, "rejected", "content",
            description="256 KB of binary garbage named .csv"),
    BadFile("invalid-utf8", "invalid_utf8.csv", _invalid_utf8, "committed", written=30, rejected=1,
            description="one row with bytes that are not UTF-8"),
    BadFile("mixed-endings", "mixed_endings.csv", _mixed_endings, "committed", written=30, rejected=0,
            description="\\n, \\r\\n and \\r line endings mixed"),
    BadFile("unbalanced-quote", "unbalanced_quote.csv", _unbalanced_quote, "committed", written=30,
            rejected=1, description="a quote opened in the last row and never closed"),
    BadFile("long-line", "long_line.csv", _long_line, "committed", written=30, rejected=1,
            description="a single 50 MB line (one field) after 30 good rows"),
    BadFile("corrupt-gzip", "corrupt.csv.gz", _corrupt_gzip, "rejected", "content",
            description="a gzip file with corrupted bytes"),
    BadFile("gzip-bomb", "bomb.csv.gz", _gzip_bomb, "rejected", "too_big",
            description="80 KB of gzip expanding to 80 MB, past max_file_bytes"),
    BadFile("invalid-jsonl", "invalid_lines.jsonl", _invalid_jsonl, "committed", written=30, rejected=3,
            description="JSON Lines with two invalid lines and an array line"),
    BadFile("huge-record", "huge_record.jsonl", _huge_record, "committed", written=30, rejected=1,
            description="a 17 MB record, over MongoDB's 16 MB document limit"),
    BadFile("deep-nesting", "deep_nesting.jsonl", _deep_nesting, "committed", written=30, rejected=2,
            description="JSON nested 100,000 and 5,000 levels deep"),
    BadFile("wrong-format", "program.exe", _wrong_format, "rejected", "format",
            description="a format the tenant's profile does not allow"),
    BadFile("json-named-csv", "records.csv", _json_named_csv, "rejected", "content",
            description="JSON content named .csv"),
]


def _copier(source: Path) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        shutil.copyfile(source, path)
    return make


def sample_files() -> list[BadFile]:
    """The committed hand-made samples (``tests/data/bad/``) with the outcomes of ``outcomes.json``."""
    manifest = SAMPLES_DIR / "outcomes.json"
    if not manifest.is_file():
        return []
    found = []
    for name, spec in json.loads(manifest.read_text(encoding="utf-8")).items():
        source = SAMPLES_DIR / name
        assert source.is_file() and os.path.getsize(source) < 64 * 1024, f"{source}: missing or not tiny"
        found.append(BadFile(f"sample-{name}", name, _copier(source), spec["state"], spec.get("code"),
                             spec.get("written"), spec.get("rejected"), spec.get("what", name)))
    return found


SAMPLE_FILES = sample_files()
