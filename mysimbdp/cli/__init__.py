"""Command-line entry points: ``mysimbdpd`` (the daemon) and ``mysimbdp`` (tenants' and operators' tool).

``mysimbdp`` subcommands live in :mod:`mysimbdp.cli`, one module each (``cmd_<name>.py``), every module
having ``register(subparsers)``. Configuration and input errors print one line and exit
non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from mysimbdp import __version__
from mysimbdp.config import Settings, load_settings
from mysimbdp.errors import ConfigError, MysimbdpError

__all__ = ["daemon_main", "main", "build_parser"]

EXIT_CONFIG = 2


def _settings_or_exit(config_dir: str | None) -> Settings:
    try:
        return load_settings(config_dir)
    except ConfigError as exc:
        print(f"mysimbdp: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def daemon_main(argv: Sequence[str] | None = None) -> None:
    """``mysimbdpd``: run the daemon in the foreground until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="mysimbdpd", description="Run the mysimbdp ingestion daemon.")
    parser.add_argument("--config-dir", help="platform config and tenant profiles (default: $MYSIMBDP_CONFIG_DIR or ./config)")
    parser.add_argument("--version", action="version", version=f"mysimbdp {__version__}")
    args = parser.parse_args(argv)
    settings = _settings_or_exit(args.config_dir)

    from mysimbdp.daemon import Daemon
    from mysimbdp.logs import configure_logging

    configure_logging(settings.log_level, settings.log_file, settings.log_max_bytes, settings.log_backups)
    try:
        asyncio.run(_run_daemon(Daemon, settings))
    except MysimbdpError as exc:
        print(f"mysimbdpd: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        raise SystemExit(130) from None
    _exit_despite_stuck_threads()


def _exit_despite_stuck_threads(grace_s: float = 2.0) -> None:
    """A tenant app stuck in an endless loop keeps its worker thread alive, and Python would
    wait for it forever at exit. Give threads a moment, then exit without them."""
    import logging
    import os
    import threading
    import time

    deadline = time.monotonic() + grace_s
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if stuck:
        from mysimbdp.events.catalog import DaemonThreadsAbandoned
        from mysimbdp.logs import log_only

        log_only("daemon").emit(DaemonThreadsAbandoned(threads=stuck))
        logging.shutdown()
        os._exit(0)


#: Net allocations of container objects between two collections of the youngest generation
#: (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Spare the daemon most of the cyclic garbage collector's scans.

    Everything made so far (modules, the tenant apps, settings) lives as long as the process:
    ``gc.freeze()`` takes it out of every later scan. Ingestion makes thousands of
    short-lived objects per batch (encoded documents, messages), freed by reference counting
    as soon as the batch is written: with the default threshold each batch set off dozens of
    collections of the young generations and, every few batches, a full one over all the
    daemon's objects, some 12 % of the daemon's CPU on a flights load (docs/architecture.md).
    """
    import gc

    gc.collect()  # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def _run_daemon(daemon_cls: type, settings: Settings) -> None:
    daemon = daemon_cls(settings)
    _tune_gc()
    await daemon.run()


def build_parser() -> argparse.ArgumentParser:
    """The ``mysimbdp`` parser with every subcommand module registered."""
    parser = argparse.ArgumentParser(prog="mysimbdp", description="mysimbdp: tenants' and operators' tool.")
    parser.add_argument("--config-dir", help="platform config and tenant profiles (default: $MYSIMBDP_CONFIG_DIR or ./config)")
    parser.add_argument("--version", action="version", version=f"mysimbdp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("cmd_"):
            continue  # a helper of the commands (admin.py), not a command
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``mysimbdp COMMAND ...``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(EXIT_CONFIG)
    args.settings_loader = lambda: _settings_or_exit(args.config_dir)
    try:
        code = args.func(args)
    except MysimbdpError as exc:
        print(f"mysimbdp: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
