"""The upload client (the *fetchdata* program of the reference design).

It runs on the tenant's machine: it asks the platform for the tenant's batch constraints,
checks every file locally with the same code the platform uses
(:mod:`mysimbdp.batch.constraints`), skips the files that would be refused (one line each,
saying why), uploads the rest a few at a time and, with ``wait``, follows each file until it
is committed or rejected. ``mysimbdp upload`` is its command line; see ``docs/upload.md``.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiohttp

from mysimbdp.batch.constraints import Usage, check_file, check_name
from mysimbdp.errors import FileRejected, MysimbdpError
from mysimbdp.tenants import BatchProfile

__all__ = [
    "DEFAULT_DIR", "DEFAULT_URL", "FetchError", "UploadOutcome", "UploadClient", "Progress",
    "read_token", "collect", "plan", "run", "summary",
]

DEFAULT_DIR = Path("client-input-directory")
DEFAULT_URL = "http://127.0.0.1:8080"
CHUNK_BYTES = 256 * 1024
FINAL_STATES = ("committed", "rejected")
#: Outcomes that make the command exit non-zero.
FAILED = ("skipped", "refused", "failed", "rejected", "timeout")
_RETRIES = 3


class FetchError(MysimbdpError):
    """The upload cannot start (no token, platform unreachable, tenant refused)."""


@dataclass
class UploadOutcome:
    """What happened to one local file."""

    path: Path
    size: int
    status: str = "pending"  # skipped | refused | failed | staged | committed | rejected | timeout
    code: str = ""
    detail: str = ""
    file_id: str | None = None
    entry: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def ok(self) -> bool:
        return self.status not in FAILED


# -- local side -----------------------------------------------------------------------------


def read_token(path: Path, err: TextIO = sys.stderr) -> str:
    """The token in ``path`` (surrounding whitespace removed); warns if others can read it."""
    try:
        info = path.stat()
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise FetchError(f"cannot read the token file {path}: {exc.strerror or exc}; "
                         "get a token with `mysimbdp tenants token <tenant>`") from None
    if not token:
        raise FetchError(f"the token file {path} is empty; put the tenant's token in it")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {path} can be read by other users; chmod 600 it", file=err)
    return token


def collect(paths: Sequence[Path]) -> tuple[list[UploadOutcome], list[UploadOutcome]]:
    """Local files to consider, and the ones skipped already (missing, not regular files).

    A directory contributes its regular files (not hidden ones, not subdirectories), sorted.
    """
    found: list[UploadOutcome] = []
    skipped: list[UploadOutcome] = []
    for path in paths:
        if path.is_dir():
            children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
            for child in children:
                if child.is_file() and not child.is_symlink():
                    found.append(UploadOutcome(child, child.stat().st_size))
            continue
        if not path.exists():
            skipped.append(UploadOutcome(path, 0, "skipped", "missing", "no such file or directory"))
        elif not path.is_file() or path.is_symlink():
            skipped.append(UploadOutcome(path, 0, "skipped", "not_regular",
                                   "not a regular file (symbolic links are not followed)"))
        else:
            found.append(UploadOutcome(path, path.stat().st_size))
    return found, skipped


def profile_of(constraints: dict[str, Any]) -> BatchProfile:
    """The tenant's constraints as the :class:`BatchProfile` the shared checks take."""
    return BatchProfile(app="-", formats=tuple(constraints["formats"]),
                        max_file_bytes=constraints["max_file_bytes"],
                        max_staged_files=constraints["max_staged_files"],
                        storage_quota_bytes=constraints["storage_quota_bytes"])


def plan(files: Iterable[UploadOutcome], constraints: dict[str, Any]) -> tuple[list[UploadOutcome], list[UploadOutcome]]:
    """Split ``files`` into those to upload and those skipped, checking what the platform checks.

    Every file planned counts against the tenant's free staging slots and quota, so the
    platform is not sent files it would refuse for lack of room.
    """
    profile = profile_of(constraints)
    usage = constraints.get("usage", {})
    staged = int(usage.get("staged_files", 0))
    used = int(usage.get("used_bytes", 0))
    names: set[str] = set()
    send: list[UploadOutcome] = []
    skip: list[UploadOutcome] = []
    for out in files:
        try:
            check_name(out.name)
            if out.name in names:
                raise FileRejected("exists", "another file of the same name is in this upload")
            check_file(profile, out.name, out.size, Usage(staged, used))
        except FileRejected as exc:
            out.status, out.code, out.detail = "skipped", exc.code, exc.message
            skip.append(out)
            continue
        names.add(out.name)
        staged += 1
        used += out.size
        send.append(out)
    return send, skip


class Progress:
    """One status line (files and bytes sent), redrawn in place; silent when not a terminal."""

    def __init__(self, stream: TextIO, files: int, total_bytes: int) -> None:
        self.stream = stream
        self.enabled = stream.isatty() and files > 0
        self.files, self.total = files, max(total_bytes, 1)
        self.done_files = 0
        self.sent = 0
        self._drawn = 0.0

    def add(self, n: int) -> None:
        self.sent += n
        self.draw()

    def file_done(self) -> None:
        self.done_files += 1
        if self.done_files >= self.files:  # every file sent: the bar goes, outcomes follow
            self.close()
            self.enabled = False
        else:
            self.draw(force=True)

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        width = 30
        filled = int(width * min(self.sent / self.total, 1.0))
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {_size(self.sent)}/{_size(self.total)}"
                          f"  {self.done_files}/{self.files} files ")
        self.stream.flush()

    def say(self, line: str) -> None:
        """Print ``line`` above the status line."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
        self.stream.write(line + "\n")
        self.draw(force=True)

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# -- the platform side ------------------------------------------------------------------------


class Refused(Exception):
    """The platform answered an error: ``status``, ``code``, ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class UploadClient:
    """The tenant's view of the platform's upload endpoints."""

    def __init__(self, session: aiohttp.ClientSession, url: str, tenant: str, token: str) -> None:
        self.session = session
        self.base = f"{url.rstrip('/')}/tenants/{quote(tenant, safe='')}"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def _json(self, resp: aiohttp.ClientResponse) -> dict[str, Any]:
        try:
            body = await resp.json(content_type=None)
        except (ValueError, aiohttp.ContentTypeError):
            body = {"code": "http", "message": (await resp.text())[:200] or resp.reason or ""}
        if resp.status >= 400:
            raise Refused(resp.status, str(body.get("code", "http")), str(body.get("message", "")))
        return dict(body)

    async def constraints(self) -> dict[str, Any]:
        """``GET /tenants/{id}/constraints``."""
        async with self.session.get(f"{self.base}/constraints", headers=self.headers) as resp:
            return await self._json(resp)

    async def upload(self, path: Path, name: str, size: int,
                     progress: Progress | None = None) -> dict[str, Any]:
        """``PUT /tenants/{id}/files/{name}`` with the file (``size`` bytes) streamed from disk."""
        headers = {**self.headers, "Content-Length": str(size),
                   "Content-Type": "application/octet-stream"}
        url = f"{self.base}/files/{quote(name, safe='')}"
        async with self.session.put(url, data=_read_chunks(path, size, progress), headers=headers,
                                    expect100=True) as resp:
            return await self._json(resp)

    async def file(self, file_id: str) -> dict[str, Any]:
        """``GET /tenants/{id}/files/{file_id}``."""
        async with self.session.get(f"{self.base}/files/{quote(file_id, safe='')}",
                                    headers=self.headers) as resp:
            return await self._json(resp)

    async def wait(self, file_id: str, timeout: float, poll_s: float = 0.5) -> dict[str, Any] | None:
        """Follow a file until it is committed or rejected; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            entry = await self.file(file_id)
            if entry.get("state") in FINAL_STATES:
                return entry
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(poll_s)


async def _read_chunks(path: Path, size: int, progress: Progress | None) -> AsyncIterator[bytes]:
    """The first ``size`` bytes of ``path`` (what Content-Length announced, even if it grew)."""
    left = size
    with path.open("rb") as f:  # noqa: ASYNC230 - each read is handed to a thread
        while left > 0 and (chunk := await asyncio.to_thread(f.read, min(CHUNK_BYTES, left))):
            left -= len(chunk)
            if progress is not None:
                progress.add(len(chunk))
            yield chunk


# -- the run ----------------------------------------------------------------------------------


async def _send(client: UploadClient, out: UploadOutcome, progress: Progress) -> None:
    """Upload one file, retrying when the platform is restarting or unreachable."""
    for attempt in range(_RETRIES + 1):
        try:
            body = await client.upload(out.path, out.name, out.size, progress)
        except Refused as exc:
            if exc.status == 503 and attempt < _RETRIES:
                await asyncio.sleep(2**attempt)
                continue
            out.status, out.code, out.detail = "refused", exc.code, f"{exc.status}: {exc.message}"
            progress.say(f"refused  {out.name}: {exc.code}: {exc.message}")
            return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if attempt < _RETRIES:
                await asyncio.sleep(2**attempt)
                continue
            out.status, out.code, out.detail = "failed", "connection", str(exc) or type(exc).__name__
            progress.say(f"failed   {out.name}: {out.detail}")
            return
        out.status, out.file_id, out.entry = "staged", body["id"], body
        progress.say(f"sent     {out.name} ({_size(out.size)}) as {body['id']}")
        return


async def _follow(client: UploadClient, out: UploadOutcome, timeout: float, progress: Progress) -> None:
    assert out.file_id is not None
    try:
        entry = await client.wait(out.file_id, timeout)
    except (TimeoutError, Refused, aiohttp.ClientError, OSError) as exc:
        out.status, out.code, out.detail = "failed", "connection", f"while waiting: {exc}"
        progress.say(f"failed   {out.name}: {out.detail}")
        return
    if entry is None:
        out.status, out.code, out.detail = "timeout", "timeout", f"not loaded within {timeout:g} s"
        progress.say(f"waiting  {out.name}: still not loaded after {timeout:g} s")
        return
    out.entry = entry
    out.status = str(entry["state"])
    if out.status == "rejected":
        out.code = str(entry.get("code") or "rejected")
        out.detail = str(entry.get("reason") or "see GET /tenants/{id}/files/{file id}")
        progress.say(f"rejected {out.name}: {out.code}: {out.detail}")
    else:
        out.detail = counts(entry)
        progress.say(f"loaded   {out.name}: {out.detail}")


#: Ledger count fields and how the client names them. A file's duplicates are the records an
#: interrupted attempt at loading it had already written (the load resumed): no data is lost.
_COUNTS = {"records_in": "records in", "records_written": "written", "records_rejected": "rejected",
           "duplicates": "already present from the interrupted attempt", "records_skipped": "skipped"}
#: counts said only when there are some
_IF_ANY = frozenset({"duplicates", "records_skipped"})


def counts(entry: dict[str, Any]) -> str:
    """The record counts a ledger entry carries, e.g. ``10 records in, 9 written, 1 rejected``."""
    parts = [f"{entry[k]:,} {label}" for k, label in _COUNTS.items()
             if isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool)
             and not (k in _IF_ANY and entry[k] == 0)]
    return ", ".join(parts) or str(entry.get("state", ""))


async def run(url: str, tenant: str, token: str, paths: Sequence[Path], *, jobs: int = 4,
              wait: bool = False, wait_timeout: float = 3600.0,
              stream: TextIO = sys.stdout) -> list[UploadOutcome]:
    """Check, upload and (optionally) follow ``paths``; every file's :class:`UploadOutcome`."""
    files, outcomes = collect(paths)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = UploadClient(session, url, tenant, token)
        try:
            constraints = await client.constraints()
        except Refused as exc:
            raise FetchError(f"the platform refused tenant {tenant!r}: {exc.message} ({exc.status})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(f"cannot reach the platform at {url}: {exc}") from None
        send, skipped = plan(files, constraints)
        outcomes += skipped
        for out in outcomes:
            print(f"skip     {out.path}: {out.code}: {out.detail}", file=stream)
        progress = Progress(stream, len(send), sum(o.size for o in send))
        gate = asyncio.Semaphore(max(1, jobs))

        async def one(out: UploadOutcome) -> None:
            async with gate:
                await _send(client, out, progress)
                progress.file_done()
            if wait and out.file_id is not None:
                await _follow(client, out, wait_timeout, progress)

        try:
            await asyncio.gather(*(one(o) for o in send))
        finally:
            progress.close()
        outcomes += send
    return outcomes


def summary(outcomes: Sequence[UploadOutcome]) -> str:
    """A table of every file: name, size, outcome, reason or counts."""
    rows = [("FILE", "BYTES", "OUTCOME", "DETAIL")]
    for o in outcomes:
        detail = f"{o.code}: {o.detail}" if o.code else o.detail or (o.file_id or "")
        rows.append((o.name or str(o.path), str(o.size), o.status, detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)), r[3]]).rstrip()
             for r in rows]
    bad = sum(1 for o in outcomes if not o.ok)
    lines.append(f"{len(outcomes) - bad} of {len(outcomes)} files ok, {bad} refused or failed")
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def default_paths(paths: Sequence[str]) -> list[Path]:
    """The given paths, or ``./client-input-directory/`` when none are."""
    if paths:
        return [Path(p) for p in paths]
    if not DEFAULT_DIR.is_dir():
        raise FetchError(f"no paths given and ./{DEFAULT_DIR}/ does not exist in {os.getcwd()}; "
                         "name the files or directories to upload")
    return [DEFAULT_DIR]
