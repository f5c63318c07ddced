"""``python -m bench [--only NAME ...] [--scale smoke|quick|full] [--quick] [--repeat N]``.

Runs the selected benchmarks against one store and one throw-away RabbitMQ vhost, writes
``<results-dir>/<name>.json`` for each and regenerates ``docs/benchmarks.md`` from the
results files (unless ``--no-report`` or a results folder other than ``bench/results``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.benchmarks import BENCHMARKS
from bench.env import BenchEnv
from bench.machine import describe_machine, load_average
from bench.results import RESULTS_DIR, Result
from bench.session import SCALES, BenchSkipped, Session
from mysimbdp.logs import configure_logging

__all__ = ["main", "build_parser", "run_benchmarks"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench``."""
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
    return parser


def _selected(only: list[str], skip: list[str]) -> list[str]:
    def names(values: list[str]) -> list[str]:
        out = [n.strip() for v in values for n in v.split(",") if n.strip()]
        unknown = [n for n in out if n not in BENCHMARKS]
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return out

    chosen = names(only) or list(BENCHMARKS)
    dropped = set(names(skip))
    return [n for n in BENCHMARKS if n in chosen and n not in dropped]


async def _run_one(session: Session, name: str) -> Result:
    module = BENCHMARKS[name]
    session.begin(name)
    result = Result(name, module.TITLE, session.scale.name, session.repeat, session.command(name), session.machine)
    t0 = time.monotonic()
    load_at_start = load_average()
    session.say(f"{name}: {module.TITLE}")
    try:
        await module.run(session, result)
    except BenchSkipped as exc:
        result.status, result.error = "skipped", str(exc)
        session.say(f"{name}: skipped: {exc}")
    except Exception as exc:  # one benchmark's failure is reported; the others still run
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        session.say(f"{name}: FAILED: {result.error}")
    result.seconds = round(time.monotonic() - t0, 1)
    result.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    result.machine = {**session.machine, "load_average_at_start": load_at_start,
                      "load_average_at_end": load_average()}
    return result


async def run_benchmarks(names: Sequence[str], scale: str = "full", repeat: int | None = None,
                         results_dir: Path = RESULTS_DIR, env: BenchEnv | None = None,
                         quiet: bool = False) -> list[Result]:
    """Run ``names`` and write their results files; the API the smoke tests use."""
    env = env or BenchEnv()
    preset = SCALES[scale]
    async with env:
        machine = await describe_machine(env.mongo_uri, env.embedded_store, env.management_url)
        session = Session(env, preset, repeat, results_dir, machine, quiet=quiet)
        results = []
        for name in names:
            result = await _run_one(session, name)
            path = result.write(results_dir)
            session.say(f"{name}: {result.status} in {result.seconds:.0f}s -> {path}")
            results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line; exit code 1 if any benchmark failed."""
    args = build_parser().parse_args(argv)
    if args.list:
        for name, module in BENCHMARKS.items():
            print(f"{name:12} {module.TITLE}")
        return 0
    if args.repeat is not None and args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    names = _selected(args.only, args.skip)
    configure_logging("warning", None, console=sys.stderr.isatty())
    results = asyncio.run(run_benchmarks(names, args.scale, args.repeat, args.results_dir.resolve(),
                                         BenchEnv(keep=args.keep)))
    if not args.no_report and args.results_dir.resolve() == RESULTS_DIR:
        from bench.report import write_report
        print(f"wrote {write_report()}", file=sys.stderr)
    return 1 if any(r.status == "failed" for r in results) else 0
