"""Write the results table at the end of ``docs/reliability.md`` from the suite's results JSON.

Usage: ``python tests/reliability/report.py [RESULTS_JSON] [DOC]``. The table replaces what
lies between the markers ``<!-- reliability-table:start -->`` and ``<!-- ...:end -->``; it
is never typed by hand (``make reliability`` runs the suite, then this script).
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

__all__ = ["render", "update_doc", "main", "START", "END"]

REPO = Path(__file__).resolve().parents[2]
START = "<!-- reliability-table:start -->"
END = "<!-- reliability-table:end -->"
SUMMED = ("injected", "checked", "lost", "duplicated", "unexpected", "bad_inputs", "crashes")


def _aggregate(rows: list[dict[str, Any]]) -> OrderedDict[tuple[str, str], dict[str, Any]]:
    groups: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
    for row in rows:
        key = (row["guarantee"], row["fault"])
        group = groups.setdefault(key, {**{k: 0 for k in SUMMED}, "passed": True, "known": False})
        for k in SUMMED:
            group[k] += int(row.get(k, 0))
        group["passed"] = group["passed"] and bool(row.get("passed", False))
        group["known"] = group["known"] or bool(row.get("known_defect", False))
    return OrderedDict(sorted(groups.items(), key=lambda item: item[0][0].split(".")[0]))


def render(results: dict[str, Any]) -> str:
    """The markdown table (one line per guarantee and fault, then the totals)."""
    groups = _aggregate(results["rows"])
    totals = {k: sum(g[k] for g in groups.values()) for k in SUMMED}
    failed = sum(1 for g in groups.values() if not g["passed"] and not g["known"])
    known = sum(1 for g in groups.values() if not g["passed"] and g["known"])
    verdict = "**FAIL**" if failed else "pass" + (f" ({known} known defect{'s' * (known > 1)})" if known else "")
    rows = [[guarantee, fault, *(g[k] for k in SUMMED), "pass" if g["passed"] else
             "known defect (expected to fail)" if g["known"] else "**FAIL**"] for (guarantee, fault), g in groups.items()]
    rows.append(["**total**", f"{len(groups)} checks", *(totals[k] for k in SUMMED), verdict])
    return "\n".join([
        f"Run: {results['mode']} suite, {results['generated_at']}, Python {results['python']}, {results['machine']}.",
        "",
        "| guarantee | fault or input | faults injected | records checked | lost | duplicated "
        "| unexpected | bad inputs tried | daemon crashes | result |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)])


def update_doc(doc: Path, table: str) -> None:
    """Replace the table between the markers (appending the markers if missing)."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Read the results, rewrite the table; exit 1 if a check failed (known defects aside)."""
    args = sys.argv[1:] if argv is None else argv
    results_file = Path(args[0]) if args else REPO / "tests" / "reliability" / "results.json"
    doc = Path(args[1]) if len(args) > 1 else REPO / "docs" / "reliability.md"
    if not results_file.exists():
        print(f"report: {results_file} does not exist; run the suite first (make reliability)",
              file=sys.stderr)
        return 2
    results = json.loads(results_file.read_text(encoding="utf-8"))
    update_doc(doc, render(results))
    failed = [r for r in results["rows"] if not r.get("passed") and not r.get("known_defect")]
    print(f"report: {len(results['rows'])} rows from {results_file} written to {doc}"
          + (f"; {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
