"""Guarantee 3: bad input never crashes the daemon or affects other tenants.

One daemon process (the suite's apps) serves two tenants: ``bad`` receives each input of
the corpus while ``good`` loads a correct file at the same moment. For every input the
expected outcome is asserted (rejected with its reason code, or loaded with exact counts of
documents and ``_rejects`` entries), ``/health`` must answer 200, and the good tenant's
records must all be there, once.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from mysimbdp.stream.topology import dead_name, queue_name
from tests.conftest import MANAGEMENT_URL
from tests.harness.daemon import Daemon
from tests.harness.publish import Publisher
from tests.harness.wait import await_until, wait_until
from tests.reliability.checker import tally
from tests.reliability.corpus import BAD_FILES, MAX_FILE_BYTES, SAMPLE_FILES, BadFile, good_rows
from tests.reliability.harness import suite_settings, write_tenant
from tests.reliability.results import record

GUARANTEE = "3. bad input"
TOKEN_BAD = "token-of-the-bad-tenant"
GOOD_ROWS = 300
GOOD_MESSAGES = 300
STREAM = {"app": "rel_echo", "min_consumers": 1, "max_consumers": 2, "prefetch": 100,
          "batch_max_messages": 50, "batch_max_wait_ms": 100}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str,
         amqp_url: str) -> Iterator[tuple[Daemon, str, str]]:
    """The daemon with tenants ``bad`` and ``good`` (unique ids), for the whole module."""
    base = Path(tmp_path_factory.mktemp("badinput"))
    settings = suite_settings(base, mongo_uri, amqp_url, batch={"stable_after_s": 1.0})
    suffix = uuid.uuid4().hex[:8]
    bad, good = f"bad{suffix}", f"good{suffix}"
    write_tenant(settings, bad, token=TOKEN_BAD, batch={
        "app": "rel_echo", "max_file_bytes": MAX_FILE_BYTES, "max_concurrent_files": 2,
        "formats": ["csv", "csv.gz", "jsonl", "jsonl.gz"], "max_staged_files": 50}, stream=STREAM)
    write_tenant(settings, good, batch={"app": "rel_echo", "max_concurrent_files": 2}, stream=STREAM)
    runner = Daemon(settings)
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


def _healthy(runner: Daemon) -> tuple[bool, dict[str, Any]]:
    status, body = runner.health()
    return runner.alive() and status == 200, body


def _check_good(db: MongoClient[dict[str, Any]], good: str, name: str, keys: list[str]) -> Any:
    entry = _outcome(db, good, name)
    assert entry["state"] == "committed", entry
    found = [d["key"] for d in db[f"tenant_{good}"]["records"].find({"file": name}, {"key": 1})]
    return tally(keys, found)


@pytest.mark.parametrize("bad_file", BAD_FILES + SAMPLE_FILES, ids=[b.id for b in BAD_FILES + SAMPLE_FILES])
def test_bad_file(site: tuple[Daemon, str, str], db: MongoClient[dict[str, Any]],
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


def test_symlink_out_of_staging_is_not_followed(site: tuple[Daemon, str, str],
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


def test_growing_file_is_loaded_once_complete(site: tuple[Daemon, str, str],
                                              db: MongoClient[dict[str, Any]], tmp_path: Path) -> None:
    """A file written slowly in place is picked up only when it stops growing."""
    runner, bad, good = site
    name = "growing.csv"
    rows = good_rows("growing", 60)
    path = runner.settings.staging_dir / bad / name
    path.parent.mkdir(parents=True, exist_ok=True)
    good_source, keys = _good_file(tmp_path, "g-growing")
    _drop(runner.settings.staging_dir / good, good_source)
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
    good_tally = _check_good(db, good, good_source.name, keys)
    healthy, health = _healthy(runner)
    loads = db["mysimbdp"]["files"].count_documents({"tenant": bad, "name": name})
    record(GUARANTEE, "a file that keeps growing while staged", "test_growing_file_is_loaded_once_complete",
           injected=1, bad_inputs=1, checked=len(rows) + len(keys), lost=t.lost + good_tally.lost,
           duplicated=t.duplicated + good_tally.duplicated,
           unexpected=t.unexpected + good_tally.unexpected, crashes=0 if healthy else 1,
           passed=entry["state"] == "committed" and loads == 1)
    assert healthy, health
    assert good_tally.ok, f"the other tenant was affected: {good_tally}"
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
async def test_upload_bad_name(site: tuple[Daemon, str, str], db: MongoClient[dict[str, Any]],
                               tmp_path: Path, label: str) -> None:
    runner, bad, good = site
    quoted = UPLOAD_NAMES[label]
    url = f"{runner.url}/tenants/{bad}/files/{quoted}"
    staging = runner.settings.staging_dir

    def written() -> set[Path]:  # the good tenant's folder changes as its file is loaded
        return {p for p in staging.rglob("*") if not p.is_relative_to(staging / good)}

    before = written()
    good_source, keys = _good_file(tmp_path, f"g-upload-{label}")
    _drop(staging / good, good_source)
    body = b"key,seq,v\nupload-1,1,x\n"
    async with aiohttp.ClientSession() as http, http.put(
            aiohttp.client.URL(url, encoded=True), data=body,
            headers={"Authorization": f"Bearer {TOKEN_BAD}"}) as resp:
        status = resp.status
        payload = await resp.json(content_type=None) if resp.content_length != 0 else {}
    after = written()
    good_tally = await asyncio.to_thread(_check_good, db, good, good_source.name, keys)
    healthy, health = _healthy(runner)
    # The route is {name:.+}, so every name reaches the handler and gets 400 bad_name, except
    # '..': the server normalises the path (/tenants/<id>/files/.. is /tenants/<id>), no route.
    refused = (status == 400 and payload.get("code") == "bad_name") or (label == "dot-dot" and status == 404)
    record(GUARANTEE, "upload names with '..', '/', NUL, control characters, over-long",
           "test_upload_bad_name", injected=1, bad_inputs=1, checked=len(keys), lost=good_tally.lost,
           duplicated=good_tally.duplicated, unexpected=good_tally.unexpected,
           crashes=0 if healthy else 1, passed=refused and after == before)
    assert healthy, health
    assert good_tally.ok, f"the other tenant was affected: {good_tally}"
    assert refused, (status, payload)
    if status == 400:
        assert payload["message"]
    assert after == before, f"something was written: {sorted(map(str, after - before))}"
    assert not any(urllib.parse.unquote(quoted).split("/")[-1] in p.name for p in staging.parent.rglob("*")
                   if p.name not in ("..", ""))


#: Stream messages that are no usable JSON body: (label, body, ``_rejects`` entries expected).
BAD_MESSAGES = [
    ("not-json", b"this is not JSON {", 1),
    ("empty", b"", 1),
    ("binary", bytes(range(256)) * 4, 1),
    ("number", b"42", 1),
    ("string", b'"just a string"', 1),
    ("null", b"null", 1),
    ("deep-array", b"[" * 100_000 + b"]" * 100_000, 1),
    ("deep-object", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, 1),
    ("array-of-scalars", b'[1, "two", null, [3]]', 4),
]


async def _publish_raw(url: str, exchange: str, routing_key: str,
                       messages: list[tuple[str, bytes]]) -> set[str]:
    """Publish ``(message_id, body)`` pairs with confirms; the ids the broker confirmed."""
    import aio_pika

    confirmed = set()
    connection = await aio_pika.connect(url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        ex = await channel.get_exchange(exchange, ensure=True)
        for message_id, body in messages:
            await ex.publish(aio_pika.Message(body, message_id=message_id,
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key, mandatory=True)
            confirmed.add(message_id)
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    return confirmed


async def _queue(runner: Daemon, name: str) -> dict[str, Any]:
    """A queue's management statistics in the daemon's vhost ({} if it is missing)."""
    from mysimbdp.stream.broker_admin import BrokerAdmin

    vhost = urllib.parse.unquote(urllib.parse.urlsplit(runner.settings.amqp_url).path.lstrip("/")) or "/"
    async with BrokerAdmin(MANAGEMENT_URL) as admin:
        return await admin.queue(vhost, name) or {}


async def test_bad_stream_messages(site: tuple[Daemon, str, str],
                                   db: MongoClient[dict[str, Any]]) -> None:
    """Unusable message bodies go to ``_rejects`` and are acknowledged; the other tenant streams on."""
    runner, bad, good = site
    exchange = runner.settings.stream.exchange
    bad_messages = [(f"{bad}-{label}-{n}", body) for n in range(2) for label, body, _ in BAD_MESSAGES]
    want = {f"{bad}-{label}-{n}": rejects for n in range(2) for label, _, rejects in BAD_MESSAGES}
    good_keys = [f"{good}-msg-{i:05d}" for i in range(GOOD_MESSAGES)]
    publisher = Publisher(runner.settings.amqp_url, exchange, good)
    try:
        _, confirmed = await asyncio.gather(
            publisher.publish(good_keys, rate=300.0),
            _publish_raw(runner.settings.amqp_url, exchange, bad, bad_messages))
    finally:
        await publisher.close()

    rejects_of_bad = db[f"tenant_{bad}"]["_rejects"]
    ids = sorted(want)

    def settled() -> list[dict[str, Any]] | None:
        found = list(rejects_of_bad.find({"message_id": {"$in": ids}}, {"message_id": 1, "kind": 1}))
        return found if len(found) >= sum(want.values()) else None

    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(wait_until, settled, 60, "the bad messages' rejects")
    good_records = db[f"tenant_{good}"]["records"]

    def good_found() -> list[str] | None:
        found = [d["key"] for d in good_records.find({"key": {"$in": good_keys}}, {"key": 1})]
        return found if len(set(found)) >= len(publisher.acknowledged) else None

    with contextlib.suppress(TimeoutError):
        await asyncio.to_thread(wait_until, good_found, 60, "the good tenant's messages")
    await asyncio.sleep(1.0)  # anything written twice would show by now
    found = [d["key"] for d in good_records.find({"key": {"$in": good_keys}}, {"key": 1})]
    good_tally = tally(publisher.acknowledged, found, publisher.indeterminate)
    rejects = list(rejects_of_bad.find({"message_id": {"$in": ids}}, {"message_id": 1, "kind": 1}))
    per_message = {i: sum(1 for r in rejects if r["message_id"] == i) for i in ids}
    documents = db[f"tenant_{bad}"]["records"].count_documents({"message_id": {"$in": ids}})

    async def acknowledged() -> bool:  # management statistics lag a few seconds behind
        queue = await _queue(runner, queue_name(bad))
        return queue.get("messages") == 0 and \
            (queue.get("message_stats") or {}).get("ack", 0) >= len(bad_messages)

    try:
        acked = bool(await await_until(acknowledged, 30, "the bad messages to be acknowledged", 0.5))
    except TimeoutError:
        acked = False
    dead = int((await _queue(runner, dead_name(bad))).get("messages", 0) or 0)
    healthy, health = _healthy(runner)
    outcome_ok = per_message == want and documents == 0 and acked and dead == 0 \
        and {r["kind"] for r in rejects} == {"malformed"}
    record(GUARANTEE, "stream messages: not JSON, empty, binary, a JSON scalar, nested 100,000 and "
           "5,000 deep, an array of non-objects", "test_bad_stream_messages",
           injected=len(bad_messages), bad_inputs=len(bad_messages), checked=good_tally.acknowledged,
           lost=good_tally.lost, duplicated=good_tally.duplicated, unexpected=good_tally.unexpected,
           crashes=0 if healthy else 1, passed=outcome_ok)
    assert healthy, f"/health: {health}\n{runner.log_tail()}"
    assert confirmed == set(want), "the broker did not confirm every bad message"
    assert len(publisher.acknowledged) == len(good_keys)
    assert good_tally.ok, f"the other tenant was affected: {good_tally}"
    assert per_message == want, {i: (n, want[i]) for i, n in per_message.items() if n != want[i]}
    assert {r["kind"] for r in rejects} == {"malformed"}, rejects
    assert documents == 0, "a bad message became a document"
    assert acked, "the bad messages were not all acknowledged (the queue did not empty)"
    assert dead == 0, "bad messages were dead-lettered instead of rejected"


def test_uploads_during_bad_input_keep_flowing(site: tuple[Daemon, str, str],
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
