"""Batch constraints checked before any parsing: names, formats, size, staged count, quota."""

from __future__ import annotations

import pytest

from mysimbdp.batch.constraints import REASON_CODES, Usage, check_file, check_name, detect_format
from mysimbdp.errors import FileRejected
from mysimbdp.tenants import BatchProfile

PROFILE = BatchProfile(app="x", formats=("csv", "jsonl.gz"), max_file_bytes=1000, max_staged_files=2,
                       storage_quota_bytes=5000)
FREE = Usage(staged_files=0, used_bytes=0)


@pytest.mark.parametrize(("name", "fmt"), [("a.csv", "csv"), ("A.CSV", "csv"), ("a.csv.gz", "csv.gz"),
                                           ("x.jsonl", "jsonl"), ("x.jsonl.gz", "jsonl.gz"), ("x.json", None),
                                           ("csv", None), ("a.gz", None)])
def test_detect_format(name: str, fmt: str | None) -> None:
    assert detect_format(name) == fmt


@pytest.mark.parametrize("name", ["", "..", "a/b.csv", "a\\b.csv", "..a.csv", ".hidden.csv", "x.csv.part",
                                  "tab\t.csv", "x" * 256 + ".csv"])
def test_bad_names(name: str) -> None:
    with pytest.raises(FileRejected) as err:
        check_name(name)
    assert err.value.code == "bad_name"


def test_good_file_returns_its_format() -> None:
    assert check_file(PROFILE, "a.csv", 1000, Usage(1, 4000)) == "csv"


@pytest.mark.parametrize(("name", "size", "usage", "code"), [
    ("a.xml", 10, FREE, "format"),
    ("a.jsonl", 10, FREE, "format"),  # jsonl.gz allowed, plain jsonl not
    ("a.csv", 1001, FREE, "too_big"),
    ("a.csv", 10, Usage(2, 0), "staging_full"),
    ("a.csv", 10, Usage(0, 4995), "over_quota"),
])
def test_violations(name: str, size: int, usage: Usage, code: str) -> None:
    with pytest.raises(FileRejected) as err:
        check_file(PROFILE, name, size, usage)
    assert err.value.code == code
    assert err.value.message and code in REASON_CODES
