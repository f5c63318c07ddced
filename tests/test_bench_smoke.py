"""A smoke run of every benchmark on tiny data: the harness works and writes well-formed results.

Speed is not asserted (that is what ``make bench`` is for); the shape of each results file is,
and that ``docs/benchmarks.md`` can be rendered from them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from bench.benchmarks import BENCHMARKS
from bench.cli import run_benchmarks
from bench.env import BenchEnv
from bench.profile import summarise
from bench.report import render
from bench.results import SCHEMA, load_results
from bench.stats import percentile
from tests.conftest import MANAGEMENT_URL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One data cache for the module (the tiny files are generated once) and a results folder."""
    base = tmp_path_factory.mktemp("bench")
    return {"data": base / "data", "work": base / "work", "results": base / "results"}


def _check_shape(data: dict[str, Any], name: str) -> None:
    assert data["schema"] == SCHEMA
    assert data["benchmark"] == name
    assert data["status"] == "ok", data.get("error")
    assert data["scale"] == "smoke" and data["repeat"] == 1
    assert data["command"].startswith("make bench BENCH_ARGS=") and f"--only {name}" in data["command"]
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["memory_mb"] > 0 and machine["python"]
    assert machine["store"]["kind"] and machine["rabbitmq"].get("version")
    assert data["metrics"], "a benchmark reports at least one figure"
    for metric in data["metrics"]:
        assert {"key", "label", "value", "unit", "target", "spread", "met"} <= metric.keys()
        if metric["target"] is not None:
            assert metric["target"]["op"] in (">=", "<=")
            assert metric["met"] in (True, False, None)
    assert data["runs"], "the raw repetitions are kept"


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_smoke(name: str, bench_dirs: dict[str, Path], mongo_uri: str, amqp_url: str) -> None:
    env = BenchEnv(mongo_uri=mongo_uri, amqp_url=amqp_url, management_url=MANAGEMENT_URL,
                   work_dir=bench_dirs["work"], data_dir=bench_dirs["data"])
    results = asyncio.run(run_benchmarks([name], "smoke", results_dir=bench_dirs["results"], env=env, quiet=True))
    assert [r.status for r in results] == ["ok"], results[0].error
    path = bench_dirs["results"] / f"{name}.json"
    _check_shape(json.loads(path.read_text()), name)
    key_metrics = {m["key"]: m for m in json.loads(path.read_text())["metrics"]}
    expected = {"batch": "ratio", "cpu": "cpu_us_per_record", "memory": "peak_rss_large_mb",
                "stream": "ratio", "fairness": "ratio", "scaling": "first_scale_up_s", "insert_one": "factor"}[name]
    assert key_metrics[expected]["value"] is not None and key_metrics[expected]["value"] > 0


def test_report_renders_every_results_file(bench_dirs: dict[str, Path]) -> None:
    results = load_results(bench_dirs["results"])
    if not results:
        pytest.skip("no smoke results in this session (run the whole module)")
    page = render(results)
    assert "do not edit by hand" in page
    for name, data in results.items():
        assert f'<a id="{name}"></a>' in page
        assert data["command"] in page


def test_profile_summary_leaves_waiting_threads_out(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text("main (a.py:1);work (mysimbdp/batch/loader.py:5) 30\n"
                   "main (a.py:1);work (mysimbdp/batch/loader.py:7);dumps (json.py:3) 10\n"
                   "main (a.py:1);select (selectors.py:1) 60\n".replace(
                       "select (selectors.py:1)", "EpollSelector.select (selectors.py:9)"))
    summary = summarise(raw)
    assert summary["samples"] == 40 and summary["waiting_samples"] == 60
    own = {row["function"]: row["pct"] for row in summary["self"]}
    assert own == {"work (mysimbdp/batch/loader.py)": 75.0, "dumps (json.py)": 25.0}
    assert summary["total"][0] == {"function": "work (mysimbdp/batch/loader.py)", "pct": 100.0}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None
