"""The checker and the report: they must see a loss, a duplicate and a stranger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.reliability.checker import tally
from tests.reliability.report import END, START, main, render


def test_clean_run_is_ok() -> None:
    t = tally(["a", "b", "c"], ["c", "b", "a"])
    assert t.ok and (t.lost, t.duplicated, t.unexpected) == (0, 0, 0)


def test_counts_lost_duplicated_unexpected() -> None:
    t = tally(["a", "b", "c"], ["a", "a", "a", "b", "zz"])
    assert (t.lost, t.duplicated, t.unexpected) == (1, 2, 1)
    assert t.examples["lost"] == ["c"] and t.examples["unexpected"] == ["zz"]
    assert not t.ok


def test_indeterminate_may_be_absent_or_present_once_but_never_twice() -> None:
    assert tally(["a"], ["a", "m"], indeterminate=["m", "n"]).ok
    twice = tally(["a"], ["a", "m", "m"], indeterminate=["m"])
    assert twice.duplicated == 1 and not twice.ok


def test_report_rewrites_only_the_table(tmp_path: Path) -> None:
    results = {"mode": "reduced", "generated_at": "now", "python": "3", "machine": "m", "rows": [
        {"guarantee": "g", "fault": "f", "test": "t", "injected": 2, "checked": 10, "lost": 0,
         "duplicated": 0, "unexpected": 0, "bad_inputs": 0, "crashes": 0, "passed": True},
        {"guarantee": "g", "fault": "f", "test": "t", "injected": 1, "checked": 5, "lost": 1,
         "duplicated": 0, "unexpected": 0, "bad_inputs": 0, "crashes": 0, "passed": False},
    ]}
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\ntext\n\n{START}\nold table\n{END}\n\nafter\n")
    assert main([str(source), str(doc)]) == 1  # a failed row fails the report
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Title") and text.endswith("after\n")
    assert "| g | f | 3 | 15 | 1 | 0 | 0 | 0 | 0 | **FAIL** |" in render(results)


def test_known_defects_are_shown_but_do_not_fail_the_report(tmp_path: Path) -> None:
    row = {"guarantee": "4. x", "fault": "f", "test": "t", "injected": 1, "checked": 0, "lost": 0,
           "duplicated": 0, "unexpected": 0, "bad_inputs": 0, "crashes": 0, "passed": False,
           "known_defect": True}
    results = {"mode": "full", "generated_at": "now", "python": "3", "machine": "m", "rows": [row]}
    table = render(results)
    assert "known defect (expected to fail)" in table and "pass (1 known defect)" in table
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    assert main([str(source), str(tmp_path / "doc.md")]) == 0


PROBE = '''
from tests.reliability.results import record


def test_probe_fails() -> None:
    record("9. probe", "a row whose test fails", "test_probe_fails")
    assert False, "fails on purpose"


def test_probe_passes() -> None:
    record("9. probe", "a row whose test passes", "test_probe_passes")
'''


def test_failed_test_outside_the_suite_folder_marks_its_row_failed(tmp_path: Path) -> None:
    """Rows come from tests/test_fuzz_*.py too: their failures must show in the results."""
    repo = Path(__file__).resolve().parents[2]
    # outside tests/reliability/ (as the fuzz files are), not named test_*: never collected
    probe = repo / "tests" / f"_probe_results_{uuid.uuid4().hex[:8]}.py"
    probe.write_text(PROBE, encoding="utf-8")
    results = tmp_path / "results.json"
    env = {**os.environ, "MYSIMBDP_RELIABILITY_RESULTS": str(results)}
    env.pop("MYSIMBDP_RELIABILITY", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(probe),
             "tests/reliability/test_checker.py::test_clean_run_is_ok"],
            cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the probe's failure, nothing else
    rows = {r["test"]: r for r in json.loads(results.read_text())["rows"]}
    assert rows["test_probe_fails"]["passed"] is False
    assert rows["test_probe_passes"]["passed"] is True
    assert "| 9. probe | a row whose test fails |" in render(json.loads(results.read_text()))
