"""(8) Upload: a 300 MB file sent over HTTP, with the daemon's memory flat meanwhile.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/upload.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.cli import Session
from bench.data import DataFile, flights_sized
from bench.loads import BATCH_SETTINGS, BenchDaemon, BenchError, PeakSampler, batch_profile
from bench.results import Result, Target, metric_from_runs
from mysimbdp.http.tokens import hash_token
from tests.harness.daemon import status_mb
from tests.harness.wait import await_until

__all__ = ["NAME", "TITLE", "run", "GROWTH_TARGET", "CHUNK_BYTES"]

NAME = "upload"
TITLE = "Upload: a 300 MB file over HTTP, memory flat"
GROWTH_TARGET = Target("<=", 16.0)
CHUNK_BYTES = 1024 * 1024  # what the client reads from disk and hands to aiohttp at once
SAMPLE_EVERY_S = 0.1


async def _chunks(path: Path, size: int) -> AsyncIterator[bytes]:
    """``size`` bytes of ``path``, read in a thread one chunk at a time."""
    left = size
    with path.open("rb") as f:
        while left > 0 and (chunk := await asyncio.to_thread(f.read, min(CHUNK_BYTES, left))):
            left -= len(chunk)
            yield chunk


async def _check_constraints(daemon: BenchDaemon, tenant: str, token: str, data: DataFile) -> None:
    """``GET /tenants/{id}/constraints`` with the tenant's token (as ``mysimbdp upload`` does): the file must be allowed."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http, \
            http.get(f"{daemon.url}/tenants/{tenant}/constraints", headers={"Authorization": f"Bearer {token}"}) as resp:
        constraints = await resp.json(content_type=None)
    if resp.status != 200 or int(constraints["max_file_bytes"]) < data.bytes:
        raise BenchError(f"GET constraints answered {resp.status}: {constraints}; the file has {data.bytes} bytes")


async def _put(daemon: BenchDaemon, tenant: str, token: str, data: DataFile, name: str,
               timeout: float) -> tuple[int, dict[str, Any], float]:
    """Upload ``data`` as ``name``; the status, the JSON body and the seconds it took."""
    headers = {"Authorization": f"Bearer {token}", "Content-Length": str(data.bytes),
               "Content-Type": "application/octet-stream"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        t0 = time.perf_counter()
        async with http.put(f"{daemon.url}/tenants/{tenant}/files/{quote(name, safe='')}",
                            data=_chunks(data.path, data.bytes), headers=headers, expect100=True) as resp:
            return resp.status, await resp.json(content_type=None), time.perf_counter() - t0


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def _repetition(session: Session, data: DataFile, sha256: str, i: int) -> dict[str, Any]:
    env, tenant, token, name = session.env, session.env.new_tenant("up"), secrets.token_urlsafe(32), f"upload-{i}.csv"
    profile = {**batch_profile(tenant), "token_sha256": hash_token(token)}
    # killed at the end: the load of the uploaded file is not what this benchmark measures
    async with BenchDaemon(env, "upload", tenants=[profile], batch=BATCH_SETTINGS, kill=True) as daemon:
        pid = daemon.pid
        await _check_constraints(daemon, tenant, token, data)
        before, anon_before = status_mb(pid, "VmRSS"), status_mb(pid, "RssAnon")
        async with PeakSampler(lambda: status_mb(pid, "VmRSS"), SAMPLE_EVERY_S) as rss, \
                PeakSampler(lambda: status_mb(pid, "RssAnon"), SAMPLE_EVERY_S) as anon:
            status, body, seconds = await _put(daemon, tenant, token, data, name, session.scale.timeout_s)
        if status != 201:
            raise BenchError(f"the upload answered {status}: {body}; see {daemon.log.path}")
        if body.get("sha256") != sha256 or body.get("bytes") != data.bytes:
            raise BenchError(f"the platform stored {body.get('bytes')} bytes with sha256 {body.get('sha256')}, "
                             f"not the file's {data.bytes} bytes with sha256 {sha256}")
        await await_until(lambda: daemon.log.first("batch.file.loading", ledger_id=body["id"]), session.scale.timeout_s,
                          f"the watcher to take {name}", 0.02, daemon.alive)
    await env.drop(f"tenant_{tenant}")
    shutil.rmtree(daemon.base, ignore_errors=True)  # the staged copy of the file
    peak = rss.peak if rss.peak is not None else before
    return {"tenant": tenant, "bytes": data.bytes, "seconds": round(seconds, 3),
            "mb_per_s": round(data.bytes / 1e6 / seconds, 1) if seconds > 0 else None,
            "status": status, "file_id": body["id"], "sha256_matches": True,
            "rss_before_mb": round(before, 1), "rss_peak_mb": round(peak, 1),
            "rss_growth_mb": round(peak - before, 1), "rss_samples": rss.samples,
            "anon_before_mb": round(anon_before, 1),
            "anon_peak_mb": round(anon.peak, 1) if anon.peak is not None else None}


async def run(session: Session, result: Result) -> None:
    """``repeat`` uploads of the file, each to a fresh daemon."""
    session.say(f"{NAME}: generating the {session.scale.upload_bytes / 1e6:g} MB file (cached in bench/data)")
    data = flights_sized(session.scale.upload_bytes, session.env.data_dir)
    sha256 = await asyncio.to_thread(_sha256, data.path)
    runs = []
    for i in range(session.repeat):
        session.say(f"{NAME}: upload {i + 1}/{session.repeat} of {data.bytes / 1e6:.0f} MB")
        runs.append(await _repetition(session, data, sha256, i))
    result.settings = {"file": data.path.name, "bytes": data.bytes, "client_chunk_bytes": CHUNK_BYTES,
                       "rss_sample_every_s": SAMPLE_EVERY_S, "daemon_batch_settings": BATCH_SETTINGS,
                       "tenant_profile": batch_profile("<id>")["batch"]}
    for key, label, target, note in [
            ("mb_per_s", "upload rate, request to 201", None, ""),
            ("rss_before_mb", "daemon RSS before the upload", None, ""),
            ("rss_peak_mb", "daemon RSS, peak during the upload", None, ""),
            ("rss_growth_mb", "daemon RSS growth (peak - before)", GROWTH_TARGET,
             f"VmRSS sampled every {SAMPLE_EVERY_S:g} s; the target, 16 MiB, is a few 1 MiB buffers and not the file: "
             "the body is streamed to disk")]:
        result.add(metric_from_runs(key, label, [r[key] for r in runs], "MB/s" if key == "mb_per_s" else "MiB",
                                    target, note))
    result.runs = runs
    growth = result.figure("rss_growth_mb")
    if growth is not None and not GROWTH_TARGET.met(growth):
        anon = [r["anon_peak_mb"] - r["anon_before_mb"] for r in runs if r["anon_peak_mb"] is not None]
        text = f"target missed: the daemon's RSS grew by {growth:.1f} MiB during the upload"
        if anon:
            text += f"; its anonymous memory by {max(anon):.1f} MiB at most (the rest are file-backed pages)"
        result.notes.append(text)
