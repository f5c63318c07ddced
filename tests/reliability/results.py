"""What the suite measured, gathered while it runs and written as JSON when it ends.

Tests call :func:`record` once per fault or bad input they checked; the session writes
:data:`RESULTS` to ``$MYSIMBDP_RELIABILITY_RESULTS`` (default ``var/reliability/results.json``)
and ``tests/reliability/report.py`` turns that file into the table at the end of
``docs/reliability.md``. Rows are recorded *before* the test asserts, so a failing check
still shows its counts.
"""

from __future__ import annotations

import json
import os
import platform
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["Row", "record", "note_report", "write_results", "full_run", "RESULTS", "FAILED_TESTS", "KNOWN_DEFECTS"]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    """One checked fault or input, under the guarantee it exercises."""

    guarantee: str
    fault: str
    test: str
    injected: int = 0  # faults injected (kills, restarts, bad inputs dropped, examples tried)
    checked: int = 0  # records or messages whose fate was counted
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    bad_inputs: int = 0
    crashes: int = 0  # daemon processes that died on their own, or /health not answering
    passed: bool = True
    note: str = ""


RESULTS: list[Row] = []
#: Names of the tests that failed, and of those expected to fail (known defects), this session.
FAILED_TESTS: set[str] = set()
KNOWN_DEFECTS: set[str] = set()
_lock = threading.Lock()


def full_run() -> bool:
    """True under ``make reliability`` (``MYSIMBDP_RELIABILITY=full``): more repetitions."""
    return os.environ.get("MYSIMBDP_RELIABILITY", "").lower() == "full"


def record(guarantee: str, fault: str, test: str, **counts: Any) -> Row:
    """Add one row; see :class:`Row` for the counts."""
    row = Row(guarantee, fault, test, **counts)
    row.passed = row.passed and row.lost == 0 and row.duplicated == 0 and row.unexpected == 0 \
        and row.crashes == 0
    with _lock:
        RESULTS.append(row)
    return row


def note_report(report: Any) -> None:
    """Remember a failed test (its rows are marked failed) or an expected failure (a known defect).

    ``tests/conftest.py`` calls this for every test report: a conftest's hooks only see the
    tests under its own folder, and rows are recorded outside ``tests/reliability/`` too
    (``tests/test_fuzz_*.py``).
    """
    name = report.nodeid.split("::")[-1].split("[")[0]
    if report.failed:
        FAILED_TESTS.add(name)
    elif hasattr(report, "wasxfail") and report.skipped:
        KNOWN_DEFECTS.add(name)


def write_results() -> Path | None:
    """Write :data:`RESULTS` to ``$MYSIMBDP_RELIABILITY_RESULTS`` (default
    ``var/reliability/results.json``), nothing when no reliability test ran; returns the path.

    Rows of the tests that failed are marked failed; those of tests expected to fail until a
    reported defect is fixed are marked ``known_defect``.
    """
    if not RESULTS:
        return None
    path = Path(os.environ.get("MYSIMBDP_RELIABILITY_RESULTS") or REPO / "var" / "reliability" / "results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in RESULTS:
        data = asdict(row)
        data["passed"] = row.passed and row.test not in FAILED_TESTS
        data["known_defect"] = not data["passed"] and row.test in KNOWN_DEFECTS
        rows.append(data)
    payload = {"mode": "full" if full_run() else "reduced", "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "python": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}, "
               f"{os.cpu_count()} cpu", "rows": rows}
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path
