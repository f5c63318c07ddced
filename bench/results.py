"""Result files: one JSON document per benchmark in ``bench/results/<name>.json``.

Every figure in ``docs/benchmarks.md`` comes from these files. A file holds the machine it
ran on, the command that reproduces it, the headline metrics (each with its target, if the
issue sets one, and whether it was met), the raw repetitions and, where taken, a profile.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tests.harness.stats import median, spread

__all__ = ["SCHEMA", "RESULTS_DIR", "Target", "Metric", "Result", "load_results", "metric_from_runs"]

SCHEMA = 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Target:
    """A target from the issue: ``value op threshold`` must hold (``op`` is ``>=`` or ``<=``)."""

    op: Literal[">=", "<="]
    value: float

    def met(self, observed: float | None) -> bool | None:
        """Whether ``observed`` reaches the target (None when there is no observation)."""
        if observed is None:
            return None
        return observed >= self.value if self.op == ">=" else observed <= self.value


def _round(value: float | None) -> float | None:
    """Four significant decimals are plenty for a noisy benchmark figure."""
    if value is None:
        return None
    return float(f"{value:.4g}") if abs(value) < 1e4 else round(value, 1)


@dataclass
class Metric:
    """One reported figure: a median over repetitions unless ``label`` says otherwise."""

    key: str
    label: str
    value: float | None
    unit: str = ""
    target: Target | None = None
    spread: dict[str, float | int] | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON form, with ``met`` computed from the target."""
        data = asdict(self)
        data["value"] = _round(self.value)
        if self.spread:
            data["spread"] = {k: _round(v) if k != "n" else v for k, v in self.spread.items()}
        data["met"] = self.target.met(self.value) if self.target else None
        return data


def metric_from_runs(key: str, label: str, values: list[float], unit: str = "",
                     target: Target | None = None, note: str = "") -> Metric:
    """A metric whose value is the median of ``values`` (one per repetition)."""
    return Metric(key, label, median(values), unit, target, spread(values), note)


@dataclass
class Result:
    """What one benchmark writes."""

    benchmark: str
    title: str
    scale: str
    repeat: int
    command: str
    machine: dict[str, Any]
    status: Literal["ok", "skipped", "failed"] = "ok"
    error: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    finished_at: str | None = None
    seconds: float | None = None
    metrics: list[Metric] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def add(self, metric: Metric) -> Metric:
        """Append ``metric`` and return it."""
        self.metrics.append(metric)
        return metric

    def figure(self, key: str) -> float | None:
        """The value of the metric ``key`` (None when absent)."""
        return next((m.value for m in self.metrics if m.key == key), None)

    def write(self, directory: Path) -> Path:
        """Write ``<directory>/<benchmark>.json`` atomically; returns the path."""
        data = {"schema": SCHEMA, **{k: v for k, v in asdict(self).items() if k != "metrics"}}
        data["metrics"] = [m.to_json() for m in self.metrics]
        order = ["schema", "benchmark", "title", "status", "error", "scale", "repeat", "command", "started_at",
                 "finished_at", "seconds", "machine", "settings", "metrics", "runs", "profile", "notes"]
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.benchmark}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({k: data[k] for k in order}, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def load_results(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Every results file in ``directory`` by benchmark name (unreadable files skipped)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA and "benchmark" in data:
            found[str(data["benchmark"])] = data
    return found
