"""What every benchmark receives: the servers, the scale, repetitions and shared results."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import BenchEnv

__all__ = ["Scale", "SCALES", "Session", "BenchSkipped", "BenchError"]


class BenchSkipped(Exception):
    """The benchmark cannot run here (e.g. the pipeline it measures is not installed)."""


class BenchError(Exception):
    """The platform did not do what the benchmark needs; the message says what and where to look."""


@dataclass(frozen=True)
class Scale:
    """Sizes and durations of one kind of run (``smoke``, ``quick`` or ``full``)."""

    name: str
    repeat: int  # repetitions of each measurement (``--repeat`` overrides)
    flights_rows: int  # batch throughput and CPU: rows of flights.csv loaded
    small_bytes: int  # memory and scale: the "100 MB" file
    large_bytes: int  # memory and scale: the "1 GB" file
    large_repeat: int  # repetitions of the large load (the longest of all)
    small_repeat: int  # at least this many loads of the small file (the rate ratio's spread)
    progress_every_s: float  # memory: seconds between the large load's progress samples
    stream_messages: int  # stream throughput: weather messages published
    latency_rates: tuple[int, ...]  # offered loads (msg/s) for the latency runs
    latency_seconds: float  # how long each offered load lasts
    fairness_big_bytes: int  # tenant A's file
    fairness_small_rows: int  # tenant B's file
    fairness_delay_s: float  # B drops its file this long after A
    scaling_rate_factor: float  # step load as a multiple of one consumer's capacity
    scaling_load_seconds: float  # how long the step load lasts
    monitor_period_s: float  # the scaling tenant's report_interval_s (its cooldown is twice that)
    insert_one_rows: int  # the seeds' approach: rows written one insert_one each
    upload_bytes: int  # upload: the "300 MB" file sent over HTTP
    timeout_s: float  # longest wait for any one load
    repeat_of: Mapping[str, int] = field(default_factory=dict)  # fewer repetitions of the long ones


SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", repeat=1, flights_rows=2_000, small_bytes=150_000, large_bytes=600_000,
                   large_repeat=1, small_repeat=1, progress_every_s=0.05, stream_messages=1_000,
                   latency_rates=(200,), latency_seconds=2.0, fairness_big_bytes=3_000_000,
                   fairness_small_rows=100, fairness_delay_s=0.5, scaling_rate_factor=5.0,
                   scaling_load_seconds=2.0, monitor_period_s=0.5, insert_one_rows=300,
                   upload_bytes=3_000_000, timeout_s=120.0),
    "quick": Scale("quick", repeat=2, flights_rows=50_000, small_bytes=5_000_000, large_bytes=25_000_000,
                   large_repeat=1, small_repeat=2, progress_every_s=1.0, stream_messages=20_000,
                   latency_rates=(1_000, 5_000), latency_seconds=8.0, fairness_big_bytes=100_000_000,
                   fairness_small_rows=1_000, fairness_delay_s=5.0, scaling_rate_factor=5.0,
                   scaling_load_seconds=20.0, monitor_period_s=2.0, insert_one_rows=3_000,
                   upload_bytes=30_000_000, timeout_s=600.0),
    "full": Scale("full", repeat=3, flights_rows=336_776, small_bytes=100_000_000,
                  large_bytes=1_000_000_000, large_repeat=1, small_repeat=3, progress_every_s=3.0,
                  stream_messages=200_000, latency_rates=(1_000, 5_000), latency_seconds=20.0,
                  fairness_big_bytes=1_000_000_000, fairness_small_rows=1_000, fairness_delay_s=5.0,
                  scaling_rate_factor=5.0, scaling_load_seconds=30.0, monitor_period_s=2.0,
                  insert_one_rows=20_000, upload_bytes=300_000_000, timeout_s=3600.0,
                  # The whole run must stay under an hour on two cores: the embedded store takes
                  # about 6,000 indexed flights documents a second, so the 1 GB file (10.8 million
                  # rows) alone takes half an hour; the long benchmarks run fewer times. The
                  # memory benchmark's 100 MB file (about 3 minutes) still runs small_repeat
                  # times: the 1 GB / 100 MB rate ratio needs the small file's spread.
                  repeat_of={"memory": 1, "stream": 1, "scaling": 2}),
}


@dataclass
class Session:
    """One ``python -m bench`` invocation."""

    env: BenchEnv
    scale: Scale
    repeat_override: int | None
    results_dir: Path
    machine: dict[str, Any]
    memo: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False
    repeat: int = 0  # the current benchmark's repetitions (set by :meth:`begin`)

    def begin(self, benchmark: str) -> None:
        """Set :attr:`repeat` for ``benchmark``: ``--repeat``, else the scale's own choice."""
        self.repeat = self.repeat_override or self.scale.repeat_of.get(benchmark, self.scale.repeat)

    def command(self, benchmark: str) -> str:
        """The command that reproduces ``benchmark``'s results file."""
        args = [f"--only {benchmark}"]
        if self.scale.name != "full":
            args.append(f"--scale {self.scale.name}")
        if self.repeat_override:
            args.append(f"--repeat {self.repeat_override}")
        return f"make bench BENCH_ARGS='{' '.join(args)}'"

    def say(self, message: str) -> None:
        """A progress line on stderr."""
        if not self.quiet:
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
