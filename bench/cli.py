"""``python -m bench [--only NAME ...] [--scale smoke|quick|full] [--quick] [--repeat N]``.

Runs the selected benchmarks against one store and one throw-away RabbitMQ vhost, writes
``<results-dir>/<name>.json`` for each and regenerates ``docs/benchmarks.md`` from the
results files (unless ``--no-report`` or a results folder other than ``bench/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import BenchEnv, describe_machine
from bench.loads import BenchSkipped
from bench.results import RESULTS_DIR, Result
from mysimbdp.logs import configure_logging

__all__ = ["main", "run_benchmarks", "Scale", "SCALES", "Session"]


@dataclass(frozen=True)
class Scale:
    """Sizes and durations of one kind of run (``smoke``, ``quick`` or ``full``)."""

    name: str
    repeat: int  # repetitions of each measurement (``--repeat`` overrides)
    flights_rows: int  # batch throughput and CPU: rows of flights.csv loaded
    small_bytes: int  # memory: the "100 MB" file, loaded at least small_repeat times
    large_bytes: int  # memory: the "1 GB" file, loaded large_repeat times (the longest load)
    large_repeat: int
    small_repeat: int
    progress_every_s: float  # memory: seconds between the large load's progress samples
    stream_messages: int  # stream throughput: weather messages published
    latency_rates: tuple[int, ...]  # offered loads (msg/s) for the latency runs, each latency_seconds long
    latency_seconds: float
    fairness_big_bytes: int  # tenant A's file; B's has fairness_small_rows and comes fairness_delay_s later
    fairness_small_rows: int
    fairness_delay_s: float
    scaling_rate_factor: float  # step load as a multiple of one consumer's capacity, for scaling_load_seconds
    scaling_load_seconds: float
    monitor_period_s: float  # the scaling tenant's report_interval_s (its cooldown is twice that)
    insert_one_rows: int  # the seeds' approach: rows written one insert_one each
    upload_bytes: int  # upload: the "300 MB" file sent over HTTP
    timeout_s: float  # longest wait for any one load
    repeat_of: Mapping[str, int] = field(default_factory=dict)  # fewer repetitions of the long ones


SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", 1, 2_000, 150_000, 600_000, 1, 1, 0.05, 1_000, (200,), 2.0, 3_000_000, 100, 0.5,
                   5.0, 2.0, 0.5, 300, 3_000_000, 120.0),
    "quick": Scale("quick", 2, 50_000, 5_000_000, 25_000_000, 1, 2, 1.0, 20_000, (1_000, 5_000), 8.0,
                   100_000_000, 1_000, 5.0, 5.0, 20.0, 2.0, 3_000, 30_000_000, 600.0),
    # The whole run takes under two hours on two cores: the embedded store takes about 6,000
    # indexed flights documents a second, so the 1 GB file (10.8 million rows) alone takes half
    # an hour; the long benchmarks run fewer times. The memory benchmark's 100 MB file (about 3
    # minutes) still runs small_repeat times: the 1 GB / 100 MB rate ratio needs its spread.
    "full": Scale("full", 3, 336_776, 100_000_000, 1_000_000_000, 1, 3, 3.0, 200_000, (1_000, 5_000), 20.0,
                  1_000_000_000, 1_000, 5.0, 5.0, 30.0, 2.0, 20_000, 300_000_000, 3600.0,
                  repeat_of={"memory": 1, "stream": 1, "scaling": 2}),
}


class Session:
    """What every benchmark receives: the servers, the scale, repetitions and shared results."""

    def __init__(self, env: BenchEnv, scale: Scale, repeat_override: int | None, machine: dict[str, Any],
                 quiet: bool = False) -> None:
        self.env, self.scale, self.repeat_override, self.machine, self.quiet = env, scale, repeat_override, machine, quiet
        self.memo: dict[str, Any] = {}
        self.repeat = 0  # the current benchmark's repetitions (set by run_one)

    def say(self, message: str) -> None:
        """A progress line on stderr."""
        if not self.quiet:
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    async def run_one(self, name: str) -> Result:
        """Run one benchmark; its failure is reported in its result, the others still run."""
        from bench.benchmarks import BENCHMARKS

        module = BENCHMARKS[name]
        self.repeat = self.repeat_override or self.scale.repeat_of.get(name, self.scale.repeat)
        args = [f"--only {name}", *([f"--scale {self.scale.name}"] if self.scale.name != "full" else []),
                *([f"--repeat {self.repeat_override}"] if self.repeat_override else [])]
        result = Result(name, module.TITLE, self.scale.name, self.repeat, f"make bench BENCH_ARGS='{' '.join(args)}'",
                        self.machine)
        t0, load_at_start = time.monotonic(), [round(x, 2) for x in os.getloadavg()]
        self.say(f"{name}: {module.TITLE}")
        try:
            await module.run(self, result)
        except BenchSkipped as exc:
            result.status, result.error = "skipped", str(exc)
        except Exception as exc:
            result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        result.seconds = round(time.monotonic() - t0, 1)
        result.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        result.machine = {**self.machine, "load_average_at_start": load_at_start,
                          "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
        return result


async def run_benchmarks(names: Sequence[str], scale: str = "full", repeat: int | None = None,
                         results_dir: Path = RESULTS_DIR, env: BenchEnv | None = None,
                         quiet: bool = False) -> list[Result]:
    """Run ``names`` and write their results files; the API the smoke tests use."""
    env = env or BenchEnv()
    async with env:
        session = Session(env, SCALES[scale], repeat, await describe_machine(env), quiet=quiet)
        results = []
        for name in names:
            result = await session.run_one(name)
            path = result.write(results_dir)
            session.say(f"{name}: {result.status} in {result.seconds:.0f}s -> {path}"
                        + (f": {result.error}" if result.error else ""))
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line; exit code 1 if any benchmark failed."""
    from bench.benchmarks import BENCHMARKS

    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only these (repeatable or comma-separated): {', '.join(BENCHMARKS)}")
    parser.add_argument("--skip", action="append", default=[], metavar="NAME", help="leave these out")
    parser.add_argument("--scale", choices=sorted(SCALES), default="full",
                        help="data sizes and durations (default: full; smoke is what the tests run)")
    parser.add_argument("--quick", action="store_const", const="quick", dest="scale",
                        help="same as --scale quick: small data, for development")
    parser.add_argument("--repeat", type=int, metavar="N", help="repetitions of each measurement (median reported)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where results files go")
    parser.add_argument("--no-report", action="store_true", help="do not regenerate docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the run's temporary folder, store data and vhost")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{name:12} {module.TITLE}" for name, module in BENCHMARKS.items()))
        return 0
    if args.repeat is not None and args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    only, skip = ([n.strip() for v in values for n in v.split(",") if n.strip()] for values in (args.only, args.skip))
    unknown = [n for n in only + skip if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = [n for n in BENCHMARKS if (not only or n in only) and n not in skip]
    configure_logging("warning", None, console=sys.stderr.isatty())
    results = asyncio.run(run_benchmarks(names, args.scale, args.repeat, args.results_dir.resolve(),
                                         BenchEnv(keep=args.keep)))
    if not args.no_report and args.results_dir.resolve() == RESULTS_DIR:
        from bench.report import write_report
        print(f"wrote {write_report()}", file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0
