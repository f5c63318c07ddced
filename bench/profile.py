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

from bench.results import Result

__all__ = ["summarise", "profiled"]

REPO = Path(__file__).resolve().parent.parent
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
    "read_frame_buffered (mysimbdp/apps/runner/frames.py)",  # a buffered reader's blocking read
    "write_frame (mysimbdp/apps/runner/frames.py)",
})
#: Where a leaf frame's code comes from, by the path ``_frame`` leaves (first match wins): the
#: profile's samples grouped by what the platform can change and what it cannot.
LIBRARIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("AMQP client (aio-pika, aiormq, pamqp)", ("aio_pika/", "aiormq/", "pamqp/")),
    ("MongoDB driver (pymongo, bson)", ("pymongo/", "bson/")),
    ("Arrow (pyarrow)", ("pyarrow/",)),
    ("event loop (asyncio, selectors)", ("asyncio/", "selectors.py")),
    ("the platform (mysimbdp)", ("mysimbdp/",)),
    ("tenant apps", ("mysimbdp_", "bench/apps.py")),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _py_spy() -> str | None:
    """The py-spy executable, installed with pip into this environment if missing."""
    local = Path(sys.executable).parent / "py-spy"
    if not local.exists() and not shutil.which("py-spy"):
        try:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True,
                           capture_output=True, timeout=300)
        except (OSError, subprocess.SubprocessError):
            return None
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame(text: str) -> str:
    """``func (file)`` with the line dropped and the file relative to site-packages or the repo."""
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip()
    path = m["file"]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            return f"{m['func']} ({path.split(marker, 1)[1].lstrip('/')})"
    try:
        path = str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        pass
    return f"{m['func']} ({path})"


def library(frame: str) -> str:
    """The :data:`LIBRARIES` group of a leaf frame (``other`` for the rest: the standard
    library, other packages)."""
    for name, markers in LIBRARIES:
        if any(marker in frame for marker in markers):
            return name
    return "other (standard library, other packages)"


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own samples ("self") and, for the platform's and the apps' code, by
    samples under them ("total"), in percent of all samples.

    ``raw`` is py-spy's ``--format raw`` output: one collapsed stack and its count per line.
    With ``--subprocesses`` each stack is rooted in ``process <pid>:"<command>"`` frames and
    the samples are also counted by process (the daemon, its app workers, any other child).
    """
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_process: Counter[str] = Counter()
    by_library: Counter[str] = Counter()
    samples = waiting = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        parts = [f for f in stack.split(";") if f]
        roots = [p for p in parts if p.startswith("process ")]
        frames = [_frame(f) for f in parts[len(roots):]]
        if not frames:
            continue
        if frames[-1] in WAITING:
            waiting += int(count_text)
            continue
        samples += int(count_text)
        process = ("daemon" if len(roots) < 2 else "app worker" if "mysimbdp.apps.runner.worker" in roots[-1]
                   else "other child")
        by_process[process] += int(count_text)
        by_library[f"{process}: {library(frames[-1])}"] += int(count_text)
        own[frames[-1]] += int(count_text)
        for name in set(frames):
            total[name] += int(count_text)

    def table(counter: Counter[str], platform_only: bool = False) -> list[dict[str, Any]]:
        rows = [(name, n) for name, n in counter.most_common() if not platform_only
                or "(mysimbdp/" in name or "(mysimbdp_" in name or "/mysimbdp_" in name]
        return [{"function": name, "pct": round(100.0 * n / samples, 1)} for name, n in rows[:top]]

    if not samples:
        return {"samples": 0, "waiting_samples": waiting, "self": [], "total": []}
    summary = {"samples": samples, "waiting_samples": waiting, "self": table(own), "total": table(total, True),
               "libraries": [{"library": name, "pct": round(100.0 * n / samples, 1)}
                             for name, n in by_library.most_common()]}
    if set(by_process) != {"daemon"}:
        summary["processes"] = [{"process": name, "pct": round(100.0 * n / samples, 1)}
                                for name, n in by_process.most_common()]
    return summary


async def profiled(result: Result, pid: int, out_dir: Path, work: Awaitable[Any], workload: str) -> Any:
    """Await ``work`` with py-spy sampling process ``pid`` and its children at 100 Hz and return
    its result; the summary goes to ``result.profile`` (or, when none could be taken, the
    reason to ``result.notes``)."""
    exe = _py_spy()
    if exe is None:
        result.notes.append("py-spy could not be installed (pip install py-spy): no profile")
        return await work
    output = out_dir / "profile.raw.txt"
    with open(output.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "100", "--nonblocking",
                                 "--output", str(output), "--subprocesses"], stdout=log, stderr=subprocess.STDOUT)
    try:
        value = await work
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if not output.exists():
        result.notes.append(f"py-spy wrote no profile (see {output.with_suffix('.log')}); is ptrace allowed here?")
        return value
    tool = "py-spy, sampling at 100 Hz, idle threads excluded, the daemon and its children"
    result.profile = {"tool": tool, "workload": workload, **summarise(output)}
    return value
