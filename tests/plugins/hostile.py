"""Test app ``hostile``: a tenant app that attacks the platform on command.

Each record (batch row or stream record) names an attack in its ``attack`` field and an
argument in ``arg``; the app tries it and stores what it got in the document's ``got``
(``"refused: <error>"`` when the attempt failed), so a test reads exactly what an attacker
would have learned. Attacks on the app's own process (exit, hang, memory) end the call.

The target hooks attack when the tenant id says so: ``...-target-hang`` sleeps an hour,
``...-target-exit`` raises ``SystemExit``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from mysimbdp import hookimpl
from mysimbdp.apps import BatchContext, MessageContext, Target


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(4096).decode("utf-8", "replace")


def _connect(address: str) -> str:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3):
        return "connected"


def _write(path: str) -> str:
    with open(path, "w") as f:
        f.write("pwned")
    return "written"


def _memory(mb: str) -> str:
    hog = bytearray(int(mb) * 1024 * 1024)
    return f"allocated {len(hog)}"


def _exec(command: str) -> str:
    return subprocess.run(["/bin/sh", "-c", command], capture_output=True, timeout=5, check=False).stdout.decode()


def _signal(pid: str) -> str:
    os.kill(int(pid) if pid else os.getppid(), signal.SIGKILL)
    return "signalled"


ATTACKS = {
    "env": lambda arg: repr(sorted(os.environ.items())),
    "read": _read,
    "listdir": lambda arg: repr(sorted(os.listdir(arg))),
    "connect": _connect,
    "write": _write,
    "exec": _exec,
    "signal_parent": _signal,
    "memory": _memory,
}


def _attack(record: dict[str, Any]) -> dict[str, Any]:
    attack, arg = str(record.get("attack", "")), str(record.get("arg", ""))
    if attack == "exit":
        raise SystemExit(3)
    if attack == "os_exit":
        os._exit(4)
    if attack == "hang":
        time.sleep(float(arg or 3600))
    if attack == "keyboard":
        raise KeyboardInterrupt
    fn = ATTACKS.get(attack)
    if fn is None:
        return {**record, "got": "nothing"}
    try:
        got = fn(arg)
    except BaseException as exc:  # the attacker reads the error
        got = f"refused: {type(exc).__name__}: {exc}"
    return {**record, "got": str(got)[:4000], "pid": os.getpid(), "python": sys.executable}


def _target(tenant: str) -> Target:
    if tenant.endswith("-target-hang"):
        time.sleep(3600)
    if tenant.endswith("-target-exit"):
        raise SystemExit(5)
    return Target("loot")


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    return _target(tenant)


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any] | None:
    return _attack(record)


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    return _target(tenant)


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    return _attack(record)
