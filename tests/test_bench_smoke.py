"""A smoke run of every benchmark on tiny data: the harness works and writes well-formed results.

Speed is not asserted (that is what ``make bench`` is for); the shape of each results file is,
and that ``docs/benchmarks.md`` can be rendered from them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.benchmarks import BENCHMARKS
from bench.benchmarks.memory import Progress
from bench.cli import run_benchmarks
from bench.env import BenchEnv
from bench.profile import summarise
from bench.report import render
from bench.results import SCHEMA, load_results
from tests.conftest import MANAGEMENT_URL
from tests.harness.daemon import platform_cpu
from tests.harness.stats import percentile

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
    data = json.loads(path.read_text())
    key_metrics = {m["key"]: m for m in data["metrics"]}
    expected = {"batch": "ratio", "cpu": "cpu_us_per_record", "memory": "peak_rss_large_mb",
                "stream": "ratio", "fairness": "ratio", "scaling": "first_scale_up_s", "insert_one": "factor",
                "upload": "mb_per_s", "scaleout": "ratio", "console": "cpu_us_per_item", "drain": "ratio",
                "peers": "ratio_pandas", "store": "platform_docs_per_s"}[name]
    assert key_metrics[expected]["value"] is not None and key_metrics[expected]["value"] > 0
    CHECKS.get(name, lambda data, metrics: None)(data, key_metrics)


def _check_memory(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """The large load's progress, tenth by tenth; the rate ratio with the spread of its pairings."""
    assert metrics["peak_rss_large_mb"]["target"] == {"op": "<=", "value": 150e6 / 2**20}
    assert metrics["rate_ratio"]["spread"]["n"] == data["settings"]["small"]["repeat"]
    large = data["runs"][-1]
    tenths = large["tenths"]
    assert [t["tenth"] for t in tenths] == list(range(1, 11))
    assert tenths[-1]["documents_at_end"] == large["records"]
    assert all(t["daemon_cpu_us_per_record"] >= 0 for t in tenths)
    assert metrics["daemon_cpu_us_first_tenth_large"]["value"] is not None


def _check_upload(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """Every upload answered 201 with the file's hash; the growth has its target."""
    assert all(r["status"] == 201 and r["sha256_matches"] and r["bytes"] == data["settings"]["bytes"]
               for r in data["runs"])
    assert all(r["rss_samples"] >= 1 and r["rss_peak_mb"] > 0 for r in data["runs"])
    assert metrics["rss_growth_mb"]["target"] == {"op": "<=", "value": 16.0}


def _check_batch_runners(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """Both runners loaded in every repetition; only the worker runner has worker CPU."""
    for run in data["runs"]:
        assert run["process"]["load"]["runner"] == "process" and run["thread"]["load"]["runner"] == "thread"
        # the first file starts the tenant's worker: that costs the worker CPU, the thread runner none
        assert run["process"]["first_file"]["worker_cpu_seconds"] > 0
        assert run["thread"]["first_file"]["worker_cpu_seconds"] <= 0.05
        assert run["thread"]["load"]["worker_cpu_seconds"] <= 0.05
        for pair in (run["process"], run["thread"]):
            load = pair["load"]
            assert load["cpu_seconds"] == pytest.approx(load["daemon_cpu_seconds"] + load["worker_cpu_seconds"],
                                                        abs=0.002)


def _check_batch(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    assert metrics["runner_ratio"]["target"] == {"op": ">=", "value": 0.9}
    assert metrics["thread_records_per_s"]["value"] > 0
    _check_batch_runners(data, metrics)


def _check_cpu(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    assert metrics["cpu_us_per_record"]["target"] == {"op": "<=", "value": 10.0}
    for key in ("daemon_cpu_us_per_record", "worker_cpu_us_per_record", "thread_cpu_us_per_record",
                "worker_cost_us_per_record", "thread_records_per_s"):
        assert metrics[key]["value"] is not None
    assert metrics["idle_cpu_pct"]["target"] == {"op": "<=", "value": 0.2}
    assert metrics["idle_cpu_pct"]["value"] == pytest.approx(
        metrics["idle_loop_pct"]["value"] + metrics["idle_threads_pct"]["value"], abs=0.01)
    assert metrics["idle_us_per_record"]["value"] is not None and data["settings"]["idle_seconds"] > 0
    _check_batch_runners(data, metrics)


def _check_stream(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """CPU per message of both runners, against the figure before workers."""
    assert metrics["before_workers_cpu_us_per_message"]["value"] == 105.8
    for key in ("cpu_us_per_message", "daemon_cpu_us_per_message", "worker_cpu_us_per_message",
                "thread_cpu_us_per_message", "thread_msgs_per_s", "cpu_vs_before_workers"):
        assert metrics[key]["value"] is not None and metrics[key]["value"] > 0, key
    for run in data["runs"]:
        assert run["platform"]["runner"] == "process" and run["platform_thread"]["runner"] == "thread"
        assert run["platform"]["worker_cpu_us_per_message"] > 0
        assert run["platform_thread"]["worker_cpu_us_per_message"] * run["platform_thread"]["messages"] <= 0.05e6


def _check_peers(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """Every loader wrote every row in each repetition, into collections indexed alike; both
    ratios have their target; the peers' versions are recorded."""
    loaders = ("pandas", "pymongoarrow", "mysimbdp")
    for key in [f"{loader}_records_per_s" for loader in loaders] + [f"cpu_us_per_record_{x}" for x in loaders]:
        assert metrics[key]["value"] is not None and metrics[key]["value"] > 0, key
    for peer in ("pandas", "pymongoarrow"):
        assert metrics[f"ratio_{peer}"]["target"] == {"op": ">=", "value": 1.0}
        assert data["settings"]["peers_versions"][peer]
    rows = data["settings"]["rows"]
    for run in data["runs"]:
        assert sorted(run["order"]) == sorted(loaders)
        assert all(run[x]["rows"] == rows and run[x]["seconds"] > 0 for x in loaders)
        assert run["mysimbdp"]["indexes"] == run["pandas"]["indexes"] == run["pymongoarrow"]["indexes"]
        assert len(run["mysimbdp"]["indexes"]) == 2
    assert set(data["runs"][0]["first_row_documents"]) == set(loaders)


def _check_store(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """Every tuning wrote every document in each repetition, each into a database with its own
    page size; every figure of each is there, and each candidate's ratios to the platform's."""
    tunings = data["settings"]["tunings"]
    assert set(tunings) == {"platform", "checkpoint10k", "pages2k"}
    assert tunings["platform"]["wal_autocheckpoint"] == 1000 and tunings["checkpoint10k"]["wal_autocheckpoint"] == 10_000
    for config in tunings:
        for key in ("docs_per_s", "store_cpu_us_per_doc", "wchar_per_doc", "disk_bytes_per_doc", "query_s", "scan_s"):
            assert metrics[f"{config}_{key}"]["value"] is not None and metrics[f"{config}_{key}"]["value"] > 0, key
        assert metrics[f"{config}_write_bytes_per_doc"]["value"] is not None
    for config in ("checkpoint10k", "pages2k"):
        for key in ("docs_per_s", "write_bytes_per_doc", "query_s"):
            assert metrics[f"ratio_{config}_{key}"]["value"] is not None
    rows = data["settings"]["rows"]
    for run in data["runs"]:
        assert sorted(run["order"]) == sorted(tunings)
        for config, tuning in tunings.items():
            assert run[config]["documents"] == rows and run[config]["scan_s"] > 0
            assert run[config]["page_size_on_disk"] == tuning["page_size"]
            assert 0 < run[config]["query_documents"] < rows
    assert len([n for n in data["notes"] if "documents at" in n]) == 3


def _check_drain(data: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> None:
    """The bare consumer's own CPU is measured, and the profiled drain says where the platform's goes."""
    assert metrics["bare_cpu_us_per_message"]["value"] > 0 and metrics["bare_cpu_us_per_message_50"]["value"] > 0
    profile = data.get("profile") or {}
    assert profile.get("libraries") or any("py-spy" in n for n in data["notes"])


CHECKS = {"batch": _check_batch, "drain": _check_drain, "cpu": _check_cpu, "memory": _check_memory, "stream": _check_stream,
          "upload": _check_upload, "peers": _check_peers, "store": _check_store}


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
    assert summary["libraries"] == [{"library": "daemon: the platform (mysimbdp)", "pct": 75.0},
                                    {"library": "daemon: other (standard library, other packages)", "pct": 25.0}]


def test_profile_summary_counts_samples_by_process(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    daemon = 'process 10:"python mysimbdpd"'
    worker = 'process 11:"python -I -m mysimbdp.apps.runner.worker 5 8"'
    raw.write_text(f"{daemon};main (a.py:1);work (mysimbdp/batch/loader.py:5) 30\n"
                   f"{daemon};{worker};serve (mysimbdp/apps/runner/worker.py:1);wrangle (mysimbdp_flights/batch.py:2) 10\n"
                   f"{daemon};{worker};serve (mysimbdp/apps/runner/worker.py:1);_read_exact (mysimbdp/apps/runner/frames.py:9) 50\n")
    summary = summarise(raw)
    assert summary["samples"] == 40 and summary["waiting_samples"] == 50
    assert summary["processes"] == [{"process": "daemon", "pct": 75.0}, {"process": "app worker", "pct": 25.0}]
    assert {row["function"] for row in summary["self"]} == {"work (mysimbdp/batch/loader.py)",
                                                          "wrangle (mysimbdp_flights/batch.py)"}


def test_platform_cpu_counts_a_child_once_alive_exited_and_reaped() -> None:
    before = platform_cpu(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass"])
    try:
        while child.poll() is None:  # poll reaps it at the end: alive, then exited, then reaped
            alive = platform_cpu(os.getpid())
            assert alive.live_workers >= 1
    finally:
        child.wait()
    after = platform_cpu(os.getpid()) - before
    assert 0.25 <= after.workers <= 0.6
    assert after.total == pytest.approx(after.daemon + after.workers)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None


def test_progress_tenths_interpolate_between_samples() -> None:
    progress = Progress(None, None, 1.0)  # type: ignore[arg-type]
    # 2 s of hashing before the first write, then 1,000 documents in 10 s; the store's CPU
    # per document doubles halfway, the daemon's stays at 100 µs.
    progress.samples = [
        {"t": 0.0, "count": 0, "store": 0.0, "daemon": 0.0},
        {"t": 2.0, "count": 0, "store": 0.0, "daemon": 2.0},
        {"t": 7.0, "count": 500, "store": 0.05, "daemon": 2.05},
        {"t": 12.0, "count": 1000, "store": 0.15, "daemon": 2.1},
    ]
    tenths = progress.tenths(1000)
    assert [t["documents_at_end"] for t in tenths] == list(range(100, 1001, 100))
    assert tenths[0]["seconds"] == 1.0 and tenths[0]["records_per_s"] == 100.0  # the hashing is in no tenth
    assert tenths[0]["store_cpu_us_per_record"] == 100.0 and tenths[-1]["store_cpu_us_per_record"] == 200.0
    assert {t["daemon_cpu_us_per_record"] for t in tenths} == {100.0}
