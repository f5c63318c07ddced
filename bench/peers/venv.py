"""The peers' own virtualenv, ``bench/data/peers-venv`` (git-ignored), apart from the platform's.

pymongoarrow pins a pyarrow older than the platform's, so the tools benchmark ``peers``
compares the platform with are installed on first use with ``python -m venv`` and ``pip
install`` of exactly the ``peers`` extra of ``pyproject.toml`` (mysimbdp itself is not
installed there). A stamp file records the requirements and the Python it was built with;
the virtualenv is rebuilt only when it is missing or either changed.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.env import DATA_DIR, REPO
from bench.loads import BenchError, BenchSkipped

__all__ = ["PEERS_VENV", "LOAD_SCRIPT", "DISTRIBUTIONS", "requirements", "ensure_venv", "versions"]

PEERS_VENV = DATA_DIR / "peers-venv"
#: The script each peer's load runs (in the peers' virtualenv, ``python -I``).
LOAD_SCRIPT = Path(__file__).resolve().parent / "load.py"
#: Whose versions the results record.
DISTRIBUTIONS = ("pandas", "pymongoarrow", "pyarrow", "pymongo", "numpy")
STAMP = ".mysimbdp-peers.json"
INSTALL_TIMEOUT_S = 1800.0


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The ``peers`` extra of ``pyproject.toml``, as written there."""
    with open(pyproject, "rb") as f:
        return [str(r) for r in tomllib.load(f)["project"]["optional-dependencies"]["peers"]]


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _read_stamp(venv: Path) -> Any:
    try:
        return json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return None


async def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    """Exit code and output (stdout and stderr together) of ``argv``."""
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"no answer within {timeout:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace")


async def ensure_venv(say: Callable[[str], None], venv: Path = PEERS_VENV) -> tuple[Path, float | None]:
    """The peers' Python, and the seconds its virtualenv took to build (None when an existing
    one was reused). Raises :class:`BenchSkipped` with pip's last words when it cannot be
    built (no package index reachable, say)."""
    reqs = requirements()
    wanted = {"requirements": reqs, "python": ".".join(map(str, sys.version_info[:3]))}
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)  # another run may be building it
        if _read_stamp(venv) == wanted and _python(venv).exists():
            return _python(venv), None
        say(f"peers: building the peers' virtualenv {venv} ({', '.join(reqs)}); once")
        t0 = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        for what, argv in (("python -m venv", [sys.executable, "-m", "venv", str(venv)]),
                           ("pip install", [str(_python(venv)), "-m", "pip", "install", "--quiet", *reqs])):
            code, out = await _run(argv, INSTALL_TIMEOUT_S)
            if code != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = " ".join(out.strip().splitlines()[-3:])[-400:]
                raise BenchSkipped(f"the peers' virtualenv could not be built ({what} {' '.join(reqs)} "
                                   f"exited {code}: {tail}); it needs a package index with those")
        (venv / STAMP).write_text(json.dumps(wanted))
        return _python(venv), round(time.monotonic() - t0, 1)


async def versions(python: Path) -> dict[str, str | None]:
    """The versions of :data:`DISTRIBUTIONS` installed in the peers' virtualenv."""
    code = ("import importlib.metadata as m, json\n"
            "def v(d):\n"
            "    try:\n        return m.version(d)\n"
            "    except m.PackageNotFoundError:\n        return None\n"
            f"print(json.dumps({{d: v(d) for d in {list(DISTRIBUTIONS)!r}}}))")
    status, out = await _run([str(python), "-I", "-c", code], 60.0)
    if status != 0:
        raise BenchError(f"the peers' virtualenv {python.parent.parent} does not answer ({out.strip()[-300:]}); "
                         "remove it and the next run builds it again")
    found: dict[str, str | None] = json.loads(out.strip().splitlines()[-1])
    return found
