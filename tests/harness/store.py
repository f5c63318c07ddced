"""A private NX-27017 for tests that own their store (to SIGKILL it, or to share it among
daemons they start): started as a child process, waited for until it answers ``ping``."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mysimbdp.store.mongo import EmbeddedMongo
from tests.harness.wait import wait_until

__all__ = ["StoreServer", "wait_for_ping"]


def wait_for_ping(uri: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None,
                  log_file: Path | None = None) -> None:
    """Wait until the store at ``uri`` answers ``ping``; fail early if ``proc`` (its server) exits."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=500)

    def answers() -> bool:
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False

    try:
        wait_until(answers, timeout, f"the store at {uri} to answer ping", 0.1,
                   alive=None if proc is None else lambda: proc.poll() is None, where=f"; see {log_file}")
    finally:
        client.close()


class StoreServer:
    """A private NX-27017 that can be SIGKILLed and started again on the same port and data."""

    def __init__(self, base: Path) -> None:
        self.server = EmbeddedMongo(base / "data", base / "store.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """The URI the daemon and the checks use."""
        return self.server.uri

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait for ``ping``."""
        self.server.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.server.pid_file.unlink()  # left by a SIGKILLed predecessor
        self.proc = subprocess.Popen(self.server.command(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_ping(self.uri, timeout, self.proc, self.server.log_file)

    def kill(self) -> None:
        """SIGKILL the server (no chance to flush or say goodbye)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Terminate the server (teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
