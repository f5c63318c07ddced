"""Profiles of the daemon with py-spy: sampled stacks while it loads, summarised as top costs.

py-spy samples the daemon from outside (no code change, little overhead). It is installed
into the virtualenv on first use (``pip install py-spy``); without it the benchmark still
runs and says the profile is missing.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

__all__ = ["py_spy", "Sampler", "summarise", "profiled"]

REPO = Path(__file__).resolve().parent.parent


def py_spy() -> str | None:
    """The py-spy executable, installed with pip into this environment if missing."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    found = shutil.which("py-spy")
    if found:
        return found
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True,
                       capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    return str(local) if local.exists() else shutil.which("py-spy")


class Sampler:
    """py-spy attached to a running process from :meth:`start` to :meth:`stop`."""

    def __init__(self, executable: str, pid: int, output: Path, rate: int = 100, subprocesses: bool = False) -> None:
        self.command = [executable, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                        "--nonblocking", "--output", str(output), *(["--subprocesses"] if subprocesses else [])]
        self.output = output
        self.log = output.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Begin sampling."""
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop sampling (SIGINT makes py-spy write its output); whether the output exists."""
        proc, self._proc = self._proc, None
        if proc is None:
            return False
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return self.output.exists()


#: Leaf frames of threads that wait rather than work: py-spy cannot always tell a thread
#: blocked in native code (the event loop in epoll, watchfiles' notify thread) from a busy
#: one. Their samples are counted apart as ``waiting`` and left out of the percentages.
WAITING = frozenset({
    "EpollSelector.select (selectors.py)",
    "WorkerThread.run (anyio/_backends/_asyncio.py)",
    "_worker (concurrent/futures/thread.py)",
    "wait (threading.py)",
    # blocking os.read/os.write on the pipes to an app worker: the daemon waiting for the
    # worker's answer or for it to take a request, an idle worker waiting for the next one
    # (the copies themselves cost ~0.3 ms of CPU per 640 KB round trip in a probe)
    "_read_exact (mysimbdp/apps/runner/frames.py)",
    "write_frame (mysimbdp/apps/runner/frames.py)",
})
#: ``--subprocesses`` roots each stack in ``process <pid>:"<command line>"`` frames.
_PROCESS = "process "
WORKER_COMMAND = "mysimbdp.apps.runner.worker"

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1].lstrip("/")
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return path


def _frame(text: str) -> str:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip()
    return f"{m['func']} ({_short(m['file'])})"


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own samples ("self") and, for the platform's and the apps' code, by
    samples under them ("total"), in percent of all samples.

    ``raw`` is py-spy's ``--format raw`` output: one collapsed stack and its count per line.
    Functions are identified by name and file (line numbers merged). With ``--subprocesses``,
    the samples are also counted by process ("processes": the daemon, its app workers,
    any other child).
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_process: Counter[str] = Counter()
    samples = waiting = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = [f for f in stack.split(";") if f]
        roots = []
        while parts and parts[0].startswith(_PROCESS):
            roots.append(parts.pop(0))
        process = "daemon" if len(roots) < 2 else "app worker" if WORKER_COMMAND in roots[-1] else "other child"
        frames = [_frame(f) for f in parts]
        if not frames:
            continue
        if frames[-1] in WAITING:
            waiting += count
            continue
        samples += count
        by_process[process] += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count

    def table(counter: Counter[str], keep: Any = None) -> list[dict[str, Any]]:
        rows = [(name, n) for name, n in counter.most_common() if keep is None or keep(name)]
        return [{"function": name, "pct": round(100.0 * n / samples, 1)} for name, n in rows[:top]]

    def platform(name: str) -> bool:  # the platform's and the apps' own code
        return "(mysimbdp/" in name or "(mysimbdp_" in name or "/mysimbdp_" in name

    if not samples:
        return {"samples": 0, "waiting_samples": waiting, "self": [], "total": []}
    summary = {"samples": samples, "waiting_samples": waiting, "self": table(own), "total": table(total, platform)}
    if set(by_process) != {"daemon"}:
        summary["processes"] = [{"process": name, "pct": round(100.0 * n / samples, 1)}
                                for name, n in by_process.most_common()]
    return summary


async def profiled(pid: int, out_dir: Path, work: Awaitable[Any], workload: str,
                   subprocesses: bool = False) -> tuple[Any, dict[str, Any] | str]:
    """Await ``work`` with py-spy sampling process ``pid`` (and its children, with
    ``subprocesses``); returns its result and the summary (or, when no profile could be
    taken, the reason as a string)."""
    exe = py_spy()
    if exe is None:
        return await work, "py-spy could not be installed (pip install py-spy): no profile"
    sampler = Sampler(exe, pid, out_dir / "profile.raw.txt", subprocesses=subprocesses)
    sampler.start()
    try:
        value = await work
    finally:
        written = sampler.stop()
    if not written:
        return value, f"py-spy wrote no profile (see {sampler.log}); is ptrace allowed here?"
    tool = "py-spy, sampling at 100 Hz, idle threads excluded" + (", the daemon and its children" if subprocesses else "")
    return value, {"tool": tool, "workload": workload, **summarise(sampler.output)}
