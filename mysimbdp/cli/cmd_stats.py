"""``mysimbdp stats``: ingestion statistics from the JSON log, per tenant and for the platform."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mysimbdp.monitor import stats

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "stats", help="statistics from the JSON log: files, records, throughput, stream latency, scaling",
        description="Read the daemon's JSON log (rotated files included) and print, per tenant and for "
                    "the whole platform: files committed and rejected (by reason), records, bytes, "
                    "throughput, load times, stream messages and latency, alerts and scaling decisions.")
    p.add_argument("--log", type=Path, metavar="PATH",
                   help="the log file (default: <var>/log/mysimbdp.jsonl of the settings); "
                        "PATH.1 ... PATH.N are read too")
    p.add_argument("--tenant", metavar="T", help="only this tenant")
    p.add_argument("--since", metavar="ISO", help="only events at or after this time (UTC unless a zone is given)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        since = stats.parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"mysimbdp stats: {exc}", file=sys.stderr)
        return 2
    log = args.log if args.log is not None else args.settings_loader().log_file
    if not stats.log_files(log):
        print(f"mysimbdp stats: no log at {log}: pass --log PATH or set MYSIMBDP_VAR_DIR", file=sys.stderr)
        return 1
    result = stats.compute_from_log(log, args.tenant, since)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(stats.render_text(result))
    return 0
