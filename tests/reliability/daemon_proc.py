"""A ``mysimbdpd`` child process the suite can SIGKILL and restart with the same settings."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mysimbdp.config import Settings, load_settings
from mysimbdp.store.client import free_port
from tests.conftest import ADMIN_TOKEN, MANAGEMENT_URL, daemon_env, wait_health

__all__ = ["DaemonRunner", "suite_settings"]


def suite_settings(base: Path, mongo_uri: str, amqp_url: str, **overrides: Any) -> Settings:
    """Settings in ``base`` for a daemon running the suite's apps (as ``settings_factory`` does)."""
    from tests.reliability.harness import APPS

    batch = {"stable_after_s": 0.5, "rescan_interval_s": 0.5, **overrides.pop("batch", {})}
    stream = {"management_url": MANAGEMENT_URL, **overrides.pop("stream", {})}
    values: dict[str, Any] = dict(
        staging_dir=base / "staging", var_dir=base / "var", http_port=0, mongo_uri=mongo_uri,
        amqp_url=amqp_url, admin_token=ADMIN_TOKEN, drain_timeout_s=5.0, log_level="info",
        batch=batch, stream=stream, extra_apps=dict(APPS),
    )
    values.update(overrides)
    (base / "config" / "tenants").mkdir(parents=True, exist_ok=True)
    return load_settings(base / "config", **values)


@dataclass
class DaemonRunner:
    """Starts ``mysimbdpd`` with fixed settings; :meth:`kill` and :meth:`start` again at will.

    ``crashes`` counts processes found dead that the suite did not kill.
    """

    settings: Settings
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    starts: int = 0
    kills: int = 0
    crashes: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self, timeout: float = 60.0) -> None:
        """Start a new process (on a new free port) and wait until ``/health`` answers.

        Refuses while the previous process runs: two daemons on one staging folder would race.
        """
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the daemon is still running: kill() or stop() it first")
        port = free_port()
        env = daemon_env(self.settings, port)
        self.settings.var_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.settings.var_dir / f"stdout-{self.starts}.log"
        self.logs.append(log_path)
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from mysimbdp.cli import daemon_main; daemon_main()"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.settings.var_dir.parent)
        self.starts += 1
        self.url = f"http://127.0.0.1:{port}"
        try:
            wait_health(self.url, self.proc, timeout=timeout)
        except BaseException:
            self.kill()  # never leave a half-started daemon behind
            raise

    def alive(self) -> bool:
        """Whether the process runs; a process that died on its own counts as a crash."""
        if self.proc is None:
            return False
        if self.proc.poll() is not None:
            self.crashes += 1
            self.proc = None
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the daemon (its embedded children die with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
            self.kills += 1
        elif self.proc is not None:
            self.crashes += 1
        self.proc = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 30 s): the fixtures' teardown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        """The end of the current process's output, for assertion messages."""
        if not self.logs or not self.logs[-1].exists():
            return ""
        return "\n".join(self.logs[-1].read_text(errors="replace").splitlines()[-lines:])
