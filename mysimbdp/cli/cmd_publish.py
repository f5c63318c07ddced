"""``mysimbdp publish``: a tenant publishes the records of a CSV or JSON Lines file as messages."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import BinaryIO, TextIO

from mysimbdp.client.publisher import publish_records, read_records
from mysimbdp.errors import MysimbdpError
from mysimbdp.stream.topology import routing_key
from mysimbdp.tenants import TENANT_ID_RE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("publish", help="publish the records of a CSV or JSON Lines file to a tenant's stream",
                       description="Publish one message per record (or --batch K records per message) with "
                                   "publisher confirms, then print a summary. See docs/stream.md.")
    p.add_argument("file", type=Path, help="a .csv or .jsonl file, optionally .gz")
    p.add_argument("--tenant", required=True, help="the tenant id (the routing key)")
    p.add_argument("--type", dest="type_", metavar="TYPE",
                   help="publish with routing key <tenant>.<TYPE> (routed to the app of that type)")
    p.add_argument("--amqp-url", help="the broker with the tenant's credentials (default: $MYSIMBDP_AMQP_URL)")
    p.add_argument("--exchange", help="default: the platform's ingest exchange (mysimbdp.ingest)")
    p.add_argument("--rate", type=float, help="at most N messages per second (default: as fast as confirmed)")
    p.add_argument("--batch", type=int, default=1, metavar="K", help="K records per message, as a JSON array")
    p.add_argument("--window", type=int, default=2000, help="messages in flight awaiting confirmation")
    p.add_argument("--id-prefix", help="message ids are <prefix>-<n>; repeat a prefix to republish idempotently")
    p.set_defaults(func=run)


class ProgressBar:
    """The publish tool's status line: how far the file is read, messages sent and confirmed,
    the confirmed rate. Redrawn in place on a terminal (standard error), silent elsewhere."""

    width = 30

    def __init__(self, path: Path, stream: TextIO) -> None:
        self.size = max(path.stat().st_size, 1)
        self.stream = stream
        self.file: BinaryIO | None = None

    def opened(self, file: BinaryIO) -> None:
        """``read_records``' ``on_open``: the file whose position measures the progress."""
        self.file = file

    def line(self, sent: int, confirmed: int, seconds: float) -> str:
        """The status line for these counts."""
        if self.file is None:  # not opened yet
            done = 0.0
        else:
            done = 1.0 if self.file.closed else min(self.file.tell() / self.size, 1.0)
        filled = int(self.width * done)
        rate = confirmed / seconds if seconds > 0 else 0.0
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {done:4.0%}  sent {sent:,}  "
                f"confirmed {confirmed:,}  {rate:,.0f} msg/s")

    def __call__(self, sent: int, confirmed: int, seconds: float) -> None:
        self.stream.write("\r\x1b[K" + self.line(sent, confirmed, seconds))
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    if not TENANT_ID_RE.match(args.tenant):
        raise MysimbdpError(f"invalid tenant id {args.tenant!r}: it must match {TENANT_ID_RE.pattern}")
    if args.batch < 1 or args.window < 1 or (args.rate is not None and args.rate <= 0):
        raise MysimbdpError("--batch and --window must be at least 1 and --rate above 0")
    if not args.file.is_file():
        raise MysimbdpError(f"{args.file}: no such file")
    settings = args.settings_loader()
    tty = sys.stderr.isatty()
    bar = ProgressBar(args.file, sys.stderr)
    result = asyncio.run(publish_records(
        args.amqp_url or settings.amqp_url, args.exchange or settings.stream.exchange,
        routing_key(args.tenant, args.type_), read_records(args.file, bar.opened), batch=args.batch,
        rate=args.rate, window=args.window, id_prefix=args.id_prefix, progress=bar if tty else None))
    if tty:
        print(file=sys.stderr)
    print(result.summary())
    return 0 if result.confirmed == result.sent else 1
