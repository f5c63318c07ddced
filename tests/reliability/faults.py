"""Processes the suite owns so that it can break them: a RabbitMQ node and a store server.

Other people's tests share the machine's RabbitMQ (port 5672) and the session's store, so
faults are never injected there: :class:`RabbitNode` starts a private RabbitMQ node (own
node name, ports, data and Erlang cookie) and :class:`StoreServer` a private NX-27017 (own
port and data dir). Both are stopped by whoever started them (fixtures, reverse order).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from mysimbdp.store.mongo import free_port
from tests.harness.store import StoreServer

__all__ = ["RabbitNode", "StoreServer", "rabbitmq_available", "kill_pid"]

_RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def _rabbit_tool(name: str) -> str | None:
    """The real RabbitMQ script (Debian's /usr/sbin wrappers switch user; we do not want that)."""
    direct = _RABBIT_BIN / name
    if direct.exists():
        return str(direct)
    return shutil.which(name)


def rabbitmq_available() -> bool:
    """Whether a RabbitMQ server can be started here."""
    return _rabbit_tool("rabbitmq-server") is not None and _rabbit_tool("rabbitmqctl") is not None


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to one process we started; a process already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class RabbitNode:
    """A private RabbitMQ node with the management plugin, for stop/start faults."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.node = f"mysimbdp-rel-{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.management_port = free_port()
        self._env: dict[str, str] = {}

    @property
    def amqp_url(self) -> str:
        """AMQP URL of the default vhost as guest (allowed from localhost)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote('/', safe='')}"

    @property
    def management_url(self) -> str:
        """The node's management API (credentials in the URL, as the settings expect)."""
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def _environment(self) -> dict[str, str]:
        if not self._env:
            self.base.mkdir(parents=True, exist_ok=True)
            cookie = self.base / ".erlang.cookie"
            if not cookie.exists():
                cookie.write_text(secrets.token_hex(16))
                cookie.chmod(0o400)
            plugins = self.base / "enabled_plugins"
            plugins.write_text("[rabbitmq_management].\n")
            env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
            env.update({
                "HOME": str(self.base),  # the Erlang cookie of this node and its CLI
                "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),  # absent: defaults
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.base / "advanced.config"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                    f"-rabbitmq_management tcp_config [{{port,{self.management_port}}}]",
            })
            self._env = env
        return self._env

    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n <node> ARGS``."""
        tool = _rabbit_tool("rabbitmqctl")
        assert tool is not None
        return subprocess.run([tool, "-n", self.node, *args], env=self._environment(), text=True,
                              capture_output=True, timeout=timeout, check=check)

    def start(self, timeout: float = 90.0) -> None:
        """Start the node detached and wait until RabbitMQ runs in it."""
        tool = _rabbit_tool("rabbitmq-server")
        assert tool is not None
        subprocess.run([tool, "-detached"], env=self._environment(), check=True, timeout=30,
                       capture_output=True)
        self.await_app(timeout)

    def await_app(self, timeout: float = 90.0) -> None:
        """Wait until the RabbitMQ application runs and accepts AMQP connections."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = self.ctl("await_startup", "--timeout", "30", check=False, timeout=40)
            if result.returncode == 0:
                return
            last = result.stderr[-500:]
            time.sleep(0.5)
        raise TimeoutError(f"RabbitMQ node {self.node} did not start: {last}; see {self.base / 'log'}")

    def stop_app(self) -> None:
        """Stop RabbitMQ inside the node (every connection is closed; the node stays up)."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start RabbitMQ in the node again and wait for it."""
        self.ctl("start_app")
        self.await_app()

    def beam_pid(self) -> int | None:
        """The node's Erlang VM, found by its node name in the process table."""
        short = self.node.split("@")[0].encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"beam.smp") and any(a.startswith(short + b"@") for a in argv):
                return int(cmdline.parent.name)
        return None

    def shutdown(self) -> None:
        """Stop the node for good (``rabbitmqctl stop``, else SIGKILL its VM)."""
        pid = self.beam_pid()
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout=60, check=False)
        if pid is not None:
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                kill_pid(pid)


