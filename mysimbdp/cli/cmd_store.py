"""``mysimbdp store uri``: the store's connection string; ``mysimbdp store check``: where
the configured store answers differently from MongoDB.

Runs the probes of :mod:`mysimbdp.store.probes` (scratch collections in the platform's
database, dropped afterwards) against ``--uri``, else ``MYSIMBDP_MONGO_URI``, else a
temporary embedded store started for the check (the same server as the daemon's, without
touching the daemon's data). The differences are information, not failures: the exit code is 0 once the probes
ran, 1 when the store could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from mysimbdp.errors import MysimbdpError
from mysimbdp.events import EventBus
from mysimbdp.store.mongo import PLATFORM_DB, URI_FILE, EmbeddedMongo, redact
from mysimbdp.store.probes import ProbeResult, run_probes

__all__ = ["register", "check", "uri"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("store", help="the platform's store: its connection string, where it differs from MongoDB",
                       description="`store check` asks the store the questions on which the embedded store "
                       "and MongoDB answer differently (README: 'The embedded store and MongoDB').")
    actions = p.add_subparsers(dest="store_action", required=True)
    check_p = actions.add_parser("check", help="run the probes against the configured store")
    check_p.add_argument("--uri", help="the store to probe (default: $MYSIMBDP_MONGO_URI, else a temporary "
                         "embedded store)")
    check_p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check_p.set_defaults(func=check)
    uri_p = actions.add_parser("uri", help="print the store's connection string, for pymongo or mongosh "
                               "(an operator's command: the embedded store has no password)")
    uri_p.add_argument("--show-password", action="store_true",
                       help="print MYSIMBDP_MONGO_URI's password too (hidden by default)")
    uri_p.set_defaults(func=uri)


def uri(args: argparse.Namespace) -> int:
    """``MYSIMBDP_MONGO_URI`` when set, else the embedded store's (written at its start)."""
    settings = args.settings_loader()
    if settings.mongo_uri:
        print(settings.mongo_uri if args.show_password else redact(settings.mongo_uri))
        return 0
    path = settings.var_dir / "store" / URI_FILE
    try:
        print(path.read_text(encoding="utf-8").strip())
    except OSError:
        raise MysimbdpError(f"no {path}: the embedded store has not run here yet; start mysimbdpd (make run), "
                            f"it listens on 127.0.0.1:{settings.store_port or '<a free port>'}") from None
    return 0


def check(args: argparse.Namespace) -> int:
    uri = args.uri or args.settings_loader().mongo_uri
    results, where = asyncio.run(_probe(uri))
    if args.json:
        print(json.dumps({"store": where, "probes": [r.as_dict() for r in results]}, indent=2))
        return 0
    print(f"store: {where}")
    rows = [("PROBE", "MONGODB", "THIS STORE", "")]
    rows += [(r.name, r.mongodb, r.store, "same" if r.same else "DIFFERS") for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    differing = sum(not r.same for r in results)
    print(f"{differing} of {len(results)} probes differ from MongoDB" if differing else
          f"all {len(results)} probes answer as MongoDB does")
    return 0


async def _probe(uri: str | None) -> tuple[list[ProbeResult], str]:
    if uri:
        return await _probe_at(uri), "the configured store"
    with tempfile.TemporaryDirectory(prefix="mysimbdp-store-check-") as scratch:
        # its start and stop are not this command's output: a bus that writes nothing
        server = EmbeddedMongo(Path(scratch) / "data", Path(scratch) / "store.log", events=EventBus().emitter("store"))
        try:
            await server.start()
        except (OSError, RuntimeError) as exc:
            raise MysimbdpError(f"the embedded store could not start for the check: {exc}") from None
        try:
            return await _probe_at(server.uri), "the embedded store (NX-27017), started for this check"
        finally:
            await server.stop()


async def _probe_at(uri: str) -> list[ProbeResult]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5000)
    try:
        await client.admin.command("ping")
        return await run_probes(client[PLATFORM_DB])  # type: ignore[arg-type]
    except PyMongoError as exc:
        raise MysimbdpError(f"cannot reach the store: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        await client.close()
