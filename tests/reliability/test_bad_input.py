"""Guarantee 3: bad input never crashes the daemon or affects other tenants.

One daemon process (the suite's apps) serves two tenants: ``bad`` receives each input of
the corpus while ``good`` loads a correct file at the same moment. For every input the
expected outcome is asserted (rejected with its reason code, or loaded with exact counts of
documents and ``_rejects`` entries), ``/health`` must answer 200, and the good tenant's
records must all be there, once.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import MongoClient

from mysimbdp.config import Settings
from tests.reliability.checker import tally
from tests.reliability.corpus import BAD_FILES, MAX_FILE_BYTES, SAMPLE_FILES, BadFile, good_rows
from tests.reliability.daemon_proc import DaemonRunner, suite_settings
from tests.reliability.harness import get_health, wait_until, write_tenant
from tests.reliability.results import record

GUARANTEE = "3. bad input"
TOKEN_BAD = "token-of-the-bad-tenant"
GOOD_ROWS = 300


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str,
         amqp_url: str) -> Iterator[tuple[DaemonRunner, str, str]]:
    """The daemon with tenants ``bad`` and ``good`` (unique ids), for the whole module."""
    base = Path(tmp_path_factory.mktemp("badinput"))
    settings = suite_settings(base, mongo_uri, amqp_url, batch={"stable_after_s": 1.0})
    suffix = uuid.uuid4().hex[:8]
    bad, good = f"bad{suffix}", f"good{suffix}"
    write_tenant(settings, bad, token=TOKEN_BAD, batch={
        "app": "rel_echo", "max_file_bytes": MAX_FILE_BYTES, "max_concurrent_files": 2,
        "formats": ["csv", "csv.gz", "jsonl", "jsonl.gz"], "max_staged_files": 50})
    write_tenant(settings, good, batch={"app": "rel_echo", "max_concurrent_files": 2})
    runner = DaemonRunner(settings)
    runner.start()
    try:
        yield runner, bad, good
    finally:
        runner.stop()


@pytest.fixture(scope="module")
def db(mongo_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """A synchronous client of the session's store."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri)
    yield client
    client.close()


def _drop(folder: Path, source: Path) -> Path:
    """Move a complete file into a staging folder in one step (as tenants are told to)."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / source.name
    os.replace(source, dest)
    return dest


def _good_file(tmp: Path, name: str) -> tuple[Path, list[str]]:
    rows = good_rows(name, GOOD_ROWS)
    path = tmp / f"{name}.csv"
    path.write_text("key,seq,v\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path, [r.split(",", 1)[0] for r in rows]


def _outcome(db: MongoClient[dict[str, Any]], tenant: str, name: str,
             timeout: float = 90.0) -> dict[str, Any]:
    files = db["mysimbdp"]["files"]

    def done() -> dict[str, Any] | None:
        return files.find_one({"tenant": tenant, "name": name, "state": {"$in": ["committed", "rejected"]}})

    return wait_until(done, timeout, f"the outcome of {tenant}/{name}")  # type: ignore[no-any-return]


def _healthy(runner: DaemonRunner) -> tuple[bool, dict[str, Any]]:
    status, body = get_health(runner.url)
    return runner.alive() and status == 200, body


def _check_good(db: MongoClient[dict[str, Any]], good: str, name: str, keys: list[str]) -> Any:
    entry = _outcome(db, good, name)
    assert entry["state"] == "committed", entry
    found = [d["key"] for d in db[f"tenant_{good}"]["records"].find({"file": name}, {"key": 1})]
    return tally(keys, found)


@pytest.mark.parametrize("bad_file", BAD_FILES + SAMPLE_FILES, ids=[b.id for b in BAD_FILES + SAMPLE_FILES])
def test_bad_file(site: tuple[DaemonRunner, str, str], db: MongoClient[dict[str, Any]],
                  tmp_path: Path, bad_file: BadFile) -> None:
    runner, bad, good = site
    settings: Settings = runner.settings
    source = tmp_path / bad_file.name
    bad_file.make(source)
    good_source, keys = _good_file(tmp_path, f"g-{bad_file.id}")
    _drop(settings.staging_dir / bad, source)
    _drop(settings.staging_dir / good, good_source)

    entry = _outcome(db, bad, bad_file.name)
    good_tally = _check_good(db, good, good_source.name, keys)
    healthy, health = _healthy(runner)
    written = db[f"tenant_{bad}"]["records"].count_documents({"file": bad_file.name})
    rejects = db[f"tenant_{bad}"]["_rejects"].count_documents({"file": bad_file.name})
    record(GUARANTEE, bad_file.description, "test_bad_file", injected=1, bad_inputs=1,
           checked=len(keys), lost=good_tally.lost, duplicated=good_tally.duplicated,
           unexpected=good_tally.unexpected, crashes=0 if healthy else 1,
           passed=entry["state"] == bad_file.state)

    assert healthy, f"/health: {health}\n{runner.log_tail()}"
    assert good_tally.ok, f"the other tenant was affected: {good_tally}"
    assert entry["state"] == bad_file.state, entry
    if bad_file.state == "rejected":
        assert entry["code"] == bad_file.code, entry
        assert written == 0, "a rejected file leaves no documents behind"
        reason = Path(entry["archive_path"] + ".reason.json")
        assert reason.is_file(), f"no reason file beside {entry['archive_path']}"
    else:
        assert (written, rejects) == (bad_file.written, bad_file.rejected), entry
        assert entry.get("records_written") == bad_file.written, entry


def test_symlink_out_of_staging_is_not_followed(site: tuple[DaemonRunner, str, str],
                                                db: MongoClient[dict[str, Any]], tmp_path: Path) -> None:
    runner, bad, good = site
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("key,seq,v\nsecret-1,1,do not load\n", encoding="utf-8")
    folder = runner.settings.staging_dir / bad
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "link.csv").symlink_to(secret)
    good_source, keys = _good_file(tmp_path, "g-symlink")
    _drop(runner.settings.staging_dir / good, good_source)

    entry = _outcome(db, bad, "link.csv")
    good_tally = _check_good(db, good, good_source.name, keys)
    healthy, health = _healthy(runner)
    leaked = db[f"tenant_{bad}"]["records"].count_documents({"key": "secret-1"})
    record(GUARANTEE, "a symbolic link in staging pointing outside it", "test_symlink_out_of_staging_is_not_followed",
           injected=1, bad_inputs=1, checked=len(keys), lost=good_tally.lost + leaked,
           duplicated=good_tally.duplicated, unexpected=good_tally.unexpected, crashes=0 if healthy else 1)

    assert healthy, health
    assert good_tally.ok, good_tally
    assert (entry["state"], entry["code"]) == ("rejected", "not_regular"), entry
    assert leaked == 0, "the link's target was loaded"
    assert secret.read_text(encoding="utf-8").startswith("key,seq,v"), "the link's target was touched"
    assert not (folder / "link.csv").exists() and not (folder / "link.csv").is_symlink()


def test_growing_file_is_loaded_once_complete(site: tuple[DaemonRunner, str, str],
                                              db: MongoClient[dict[str, Any]], tmp_path: Path) -> None:
    """A file written slowly in place is picked up only when it stops growing."""
    runner, bad, good = site
    name = "growing.csv"
    rows = good_rows("growing", 60)
    path = runner.settings.staging_dir / bad / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("key,seq,v\n")
        f.flush()
        for row in rows:  # 60 appends, 0.05 s apart: well inside stable_after_s (1 s)
            f.write(row + "\n")
            f.flush()
            time.sleep(0.05)
    entry = _outcome(db, bad, name)
    found = [d["key"] for d in db[f"tenant_{bad}"]["records"].find({"file": name}, {"key": 1})]
    t = tally([r.split(",", 1)[0] for r in rows], found)
    healthy, health = _healthy(runner)
    loads = db["mysimbdp"]["files"].count_documents({"tenant": bad, "name": name})
    record(GUARANTEE, "a file that keeps growing while staged", "test_growing_file_is_loaded_once_complete",
           injected=1, bad_inputs=1, checked=len(rows), lost=t.lost, duplicated=t.duplicated,
           unexpected=t.unexpected, crashes=0 if healthy else 1)
    assert healthy, health
    assert entry["state"] == "committed", entry
    assert t.ok, t
    assert loads == 1, "the file was picked up more than once"


UPLOAD_NAMES = {
    "dot-dot": "..",
    "dot-dot-in-name": "..%2F..%2Fescape.csv",
    "slash": "sub%2Fdir.csv",
    "raw-slash": "sub/dir.csv",
    "nul": "nul%00byte.csv",
    "over-long": "n" * 300 + ".csv",
    "leading-dot": ".hidden.csv",
    "backslash": "back%5Cslash.csv",
    "control": "tab%09name.csv",
}


@pytest.mark.parametrize("label", list(UPLOAD_NAMES))
async def test_upload_bad_name(site: tuple[DaemonRunner, str, str], label: str) -> None:
    runner, bad, _good = site
    quoted = UPLOAD_NAMES[label]
    url = f"{runner.url}/tenants/{bad}/files/{quoted}"
    staging = runner.settings.staging_dir
    before = {p for p in staging.rglob("*")}
    body = b"key,seq,v\nupload-1,1,x\n"
    async with aiohttp.ClientSession() as http, http.put(
            aiohttp.client.URL(url, encoded=True), data=body,
            headers={"Authorization": f"Bearer {TOKEN_BAD}"}) as resp:
        status = resp.status
        payload = await resp.json(content_type=None) if resp.content_length != 0 else {}
    after = {p for p in staging.rglob("*")}
    healthy, health = _healthy(runner)
    record(GUARANTEE, "upload names with '..', '/', NUL, control characters, over-long",
           "test_upload_bad_name", injected=1, bad_inputs=1, crashes=0 if healthy else 1,
           passed=status in (400, 404))
    assert healthy, health
    # a name that never reaches the route (".." resolved by the client) is a 404: also refused
    assert status in (400, 404), (status, payload)
    if status == 400:
        assert payload["code"] == "bad_name", payload
        assert payload["message"]
    assert after == before, f"something was written: {sorted(map(str, after - before))}"
    assert not any(urllib.parse.unquote(quoted).split("/")[-1] in p.name for p in staging.parent.rglob("*")
                   if p.name not in ("..", ""))


def test_uploads_during_bad_input_keep_flowing(site: tuple[DaemonRunner, str, str],
                                               db: MongoClient[dict[str, Any]], tmp_path: Path) -> None:
    """A burst of every corpus file at once (dropped together) while the good tenant loads."""
    runner, bad, good = site
    # big inputs are tried one by one above; header-only has fixed content (a duplicate here)
    picked = [b for b in BAD_FILES if b.id not in ("long-line", "gzip-bomb", "huge-record", "header-only")]
    sources = []
    for bf in picked:
        src = tmp_path / "burst" / ("burst-" + bf.name)
        src.parent.mkdir(exist_ok=True)
        bf.make(src)
        sources.append((bf, src))
    good_source, keys = _good_file(tmp_path, "g-burst")
    threads = [threading.Thread(target=_drop, args=(runner.settings.staging_dir / bad, s)) for _, s in sources]
    for t in threads:
        t.start()
    _drop(runner.settings.staging_dir / good, good_source)
    for t in threads:
        t.join()
    outcomes = {bf.id: _outcome(db, bad, src.name) for bf, src in sources}
    good_tally = _check_good(db, good, good_source.name, keys)
    healthy, health = _healthy(runner)
    wrong = {k: (e["state"], e.get("code")) for k, e in outcomes.items()
             if e["state"] != next(b.state for b in picked if b.id == k)}
    record(GUARANTEE, "every small bad input at once", "test_uploads_during_bad_input_keep_flowing",
           injected=len(sources), bad_inputs=len(sources), checked=len(keys), lost=good_tally.lost,
           duplicated=good_tally.duplicated, unexpected=good_tally.unexpected,
           crashes=0 if healthy else 1, passed=not wrong)
    assert healthy, health
    assert good_tally.ok, good_tally
    assert not wrong, wrong
    shutil.rmtree(tmp_path / "burst", ignore_errors=True)
