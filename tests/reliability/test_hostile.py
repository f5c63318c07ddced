"""Guarantee 6: a hostile tenant gets nothing it is not owed and stops nobody.

One daemon process serves a hostile tenant (``evil``: its own app, ``tests/plugins/hostile.py``,
its own staging folder, token and broker user) beside a good one (``good``: the suite's
``rel_echo``). Each test performs one numbered attack of issue 14 as the issue describes it,
while the good tenant loads a file or streams messages, then records one row: the attack
failed or was refused with a clear reason (anything the attacker got counts as
*unexpected*), the good tenant's records were all loaded exactly once, and the daemon stayed
up. The mechanics of each attack are those of the unit-level tests
(``tests/test_hostile_apps.py``, ``tests/test_stream_hostile.py``, ``tests/test_http_hostile.py``);
here they run against a ``mysimbdpd`` child process, with the counting beside a second tenant.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson
import pytest
from pymongo import MongoClient

from mysimbdp.stream.broker_admin import BrokerAdmin
from mysimbdp.stream.topology import dead_name
from tests.conftest import ADMIN_TOKEN, MANAGEMENT_URL
from tests.harness.daemon import Daemon
from tests.harness.publish import Publisher
from tests.harness.wait import wait_until
from tests.reliability.checker import Tally, tally
from tests.reliability.corpus import good_rows
from tests.reliability.harness import APPS, suite_settings, write_tenant
from tests.reliability.results import record
from tests.test_http_hostile import closed
from tests.test_monitor import report_body

GUARANTEE = "6. a hostile tenant"
TOKEN_EVIL, TOKEN_GOOD = "token-of-the-hostile-tenant", "token-of-the-good-tenant"
QUOTA = 200_000
GOOD_ROWS = 300
GOOD_MESSAGES = 200
STREAM = {"min_consumers": 1, "max_consumers": 2, "prefetch": 100, "batch_max_messages": 50,
          "batch_max_wait_ms": 200}
EVIL_STREAM = {"app": "hostile", **STREAM, "delivery_limit": 2, "app_timeout_s": 3.0, "report_interval_s": 0.5}
EVIL_BATCH = {"app": "hostile", "max_concurrent_files": 1, "timeout_s": 20.0, "max_error_rate": 0.5,
              "storage_quota_bytes": QUOTA, "max_staged_files": 50}
Db = MongoClient[dict[str, Any]]


@dataclass
class Site:
    """The daemon, its tenants and what the fixture loaded first."""

    runner: Daemon
    evil: str
    good: str
    hang: str  # a hostile tenant whose files time out after 2 s
    suffix: str
    seed_archive: Path  # a good tenant's committed, archived file: what the attacker wants to read
    seed_keys: list[str]

    @property
    def settings(self) -> Any:
        return self.runner.settings

    def folder(self, tenant: str) -> Path:
        path = self.settings.staging_dir / tenant
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture(scope="module")
def db(mongo_uri: str) -> Iterator[Db]:
    client: Db = MongoClient(mongo_uri)
    yield client
    client.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str, amqp_url: str, db: Db) -> Iterator[Site]:
    base = Path(tmp_path_factory.mktemp("hostile"))
    settings = suite_settings(
        base, mongo_uri, amqp_url, extra_apps={**APPS, "hostile": "tests.plugins.hostile"},
        http={"header_timeout_s": 1.0, "body_timeout_s": 1.0, "reports_per_s": 2.0, "reports_burst": 10})
    # the child daemon takes [http] from its config file (the runner passes batch and stream only)
    (base / "config" / "mysimbdp.toml").write_text(
        "[http]\nheader_timeout_s = 1.0\nbody_timeout_s = 1.0\nreports_per_s = 2.0\nreports_burst = 10\n")
    suffix = uuid.uuid4().hex[:8]
    evil, good, hang = f"evil{suffix}", f"good{suffix}", f"hang{suffix}"
    write_tenant(settings, evil, token=TOKEN_EVIL, batch=EVIL_BATCH, stream=EVIL_STREAM)
    write_tenant(settings, good, token=TOKEN_GOOD, batch={"app": "rel_echo", "max_concurrent_files": 2},
                 stream={"app": "rel_echo", **STREAM})
    write_tenant(settings, hang, batch={**EVIL_BATCH, "timeout_s": 2.0, "max_concurrent_files": 3})
    for target in ("hang", "exit"):
        write_tenant(settings, f"t{suffix}-target-{target}", batch={**EVIL_BATCH, "timeout_s": 3.0})
    runner = Daemon(settings)
    runner.start()
    try:
        seed_keys = _drop_good(settings.staging_dir / good, "seed")
        seed = _outcome(db, good, "seed.csv")
        assert seed["state"] == "committed", seed
        yield Site(runner, evil, good, hang, suffix, Path(seed["archive_path"]), seed_keys)
    finally:
        runner.stop()


# -- helpers --------------------------------------------------------------------------------

def _drop(folder: Path, name: str, data: bytes) -> Path:
    """Write a complete file into a staging folder in one step (hidden name, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{name}.{uuid.uuid4().hex[:6]}.part"
    part.write_bytes(data)
    os.replace(part, folder / name)
    return folder / name


def _drop_good(folder: Path, name: str) -> list[str]:
    rows = good_rows(f"{folder.name}-{name}", GOOD_ROWS)
    _drop(folder, f"{name}.csv", ("key,seq,v\n" + "\n".join(rows) + "\n").encode())
    return [r.split(",", 1)[0] for r in rows]


def _attack_csv(rows: list[tuple[str, str, str]]) -> bytes:
    """The hostile app's input: each row names an attack, its argument and a key."""
    return ("attack,arg,key\n" + "".join(f"{a},{b},{k}\n" for a, b, k in rows)).encode()


def _outcome(db: Db, tenant: str, name: str, timeout: float = 60.0, **where: Any) -> dict[str, Any]:
    files = db["mysimbdp"]["files"]
    query = {"tenant": tenant, "name": name, "state": {"$in": ["committed", "rejected"]}, **where}
    return wait_until(lambda: files.find_one(query), timeout,  # type: ignore[no-any-return]
                      f"the outcome of {tenant}/{name}")


def _wait_state(db: Db, tenant: str, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
    files = db["mysimbdp"]["files"]
    return wait_until(lambda: files.find_one({"tenant": tenant, "name": name, "state": state}),  # type: ignore[no-any-return]
                      timeout, f"{tenant}/{name} to be {state}", interval=0.05)


def _good_file(site: Site, db: Db, name: str, keys: list[str]) -> Tally:
    entry = _outcome(db, site.good, f"{name}.csv")
    found = [d["key"] for d in db[f"tenant_{site.good}"]["records"].find({"file": f"{name}.csv"}, {"key": 1})]
    return tally(keys if entry["state"] == "committed" else [], found)


def _loot(db: Db, site: Site, tenant: str | None = None) -> Any:
    return db[f"tenant_{tenant or site.evil}"]["loot"]


def _healthy(site: Site) -> bool:
    return site.runner.alive() and site.runner.health()[0] == 200


def _row(site: Site, fault: str, test: str, good: Tally, *, got: int = 0, refused: bool = True,
         injected: int = 1, checked: int = 0, note: str = "") -> None:
    """Record the attack's row, then assert what it records (the row is written first)."""
    healthy = _healthy(site)
    record(GUARANTEE, fault, test, injected=injected, bad_inputs=injected, checked=good.acknowledged + checked,
           lost=good.lost, duplicated=good.duplicated, unexpected=good.unexpected + got,
           crashes=0 if healthy else 1, passed=refused, note=note)
    assert healthy, f"the daemon is down or /health failed\n{site.runner.log_tail()}"
    assert good.ok, f"the good tenant was affected: {good}"
    assert got == 0, f"the attacker got {got} thing(s) it must not have"
    assert refused, f"the attack was not refused as required: {note}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _health_ms(site: Site) -> float:
    t0 = time.monotonic()
    status, _ = site.runner.health(timeout=10)
    return (time.monotonic() - t0) * 1000 if status == 200 else float("inf")


async def _publish(site: Site, tenant: str, messages: list[aio_pika.Message]) -> None:
    """Publish prepared messages (bodies, headers, ids) with confirms."""
    connection = await aio_pika.connect(site.settings.amqp_url, timeout=10)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(site.settings.stream.exchange, ensure=False)
        for message in messages:
            await exchange.publish(message, tenant)
    finally:
        await connection.close()


def _msg(body: Any, message_id: str, **kw: Any) -> aio_pika.Message:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return aio_pika.Message(data, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **kw)


def _beside_stream(site: Site, db: Db, attack: Any) -> Tally:
    """Run ``attack`` (a coroutine) while the good tenant streams; tally the good messages."""
    keys = [f"{site.good}-m-{uuid.uuid4().hex[:6]}-{i:04d}" for i in range(GOOD_MESSAGES)]
    publisher = Publisher(site.settings.amqp_url, site.settings.stream.exchange, site.good)

    async def both() -> None:
        try:
            await asyncio.gather(publisher.publish(keys, rate=400.0, budget_s=60), attack)
        finally:
            await publisher.close()
    asyncio.run(both())
    records = db[f"tenant_{site.good}"]["records"]

    def found() -> list[str]:
        return [d["key"] for d in records.find({"key": {"$in": keys}}, {"key": 1})]
    try:
        wait_until(lambda: len(set(found())) >= len(publisher.acknowledged), 30, "the good tenant's messages")
    except TimeoutError:
        pass
    time.sleep(0.5)  # a second copy would show by now
    return tally(publisher.acknowledged, found(), publisher.indeterminate)


def _daemon_status(site: Site, field: str) -> int:
    """A field of ``/proc/<daemon>/status`` (``Threads``, ``VmRSS`` in kB)."""
    assert site.runner.proc is not None
    for line in Path(f"/proc/{site.runner.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# -- staging files: opened once (attacks 1-6) -----------------------------------------------

def _swap_after_staged(site: Site, db: Db, name: str, make_swap: Any) -> tuple[bytes, dict[str, Any], float]:
    """Keep the hostile tenant's one load slot busy (an app that sleeps 3 s), drop ``name``,
    wait until the ledger says ``staged``, then atomically replace the name with what
    ``make_swap(path)`` creates. Returns the original content, its outcome, and the slowest
    ``/health`` seen meanwhile (ms)."""
    folder = site.folder(site.evil)
    _drop(folder, f"busy-{name}", _attack_csv([("hang", "3", f"busy-{name}")]))
    _wait_state(db, site.evil, f"busy-{name}", "loading")
    original = _attack_csv([("none", "", f"{name}-{i}") for i in range(20)])
    path = _drop(folder, name, original)
    _wait_state(db, site.evil, name, "staged")
    tmp = folder / f".swap-{name}"
    make_swap(tmp)
    os.replace(tmp, path)
    slowest = max(_health_ms(site) for _ in range(5))
    entry = _outcome(db, site.evil, name, sha256=_sha(original))
    slowest = max(slowest, _health_ms(site))
    _outcome(db, site.evil, f"busy-{name}")
    return original, entry, slowest


def _original_loaded_once(db: Db, site: Site, name: str, entry: dict[str, Any], original: bytes) -> Tally:
    keys = [f"{name}-{i}" for i in range(20)]
    found = [d["key"] for d in _loot(db, site).find({"key": {"$in": keys}}, {"key": 1})]
    return tally(keys if entry["state"] == "committed" else [], found)


def test_1_symlink_swapped_in_after_admission(site: Site, db: Db) -> None:
    """Attack 1: the staged file is replaced by a link to another tenant's archived file."""
    keys = _drop_good(site.folder(site.good), "g-attack1")
    original, entry, _ = _swap_after_staged(
        site, db, "x1.csv", lambda tmp: os.symlink(site.seed_archive, tmp))
    time.sleep(1.5)  # a later scan looks at the link left in staging
    leaked = _loot(db, site).count_documents({"key": {"$in": site.seed_keys}})
    mine = _original_loaded_once(db, site, "x1.csv", entry, original)
    archived_ok = entry["state"] != "committed" or _sha(Path(entry["archive_path"]).read_bytes()) == _sha(original)
    target_intact = site.seed_archive.read_text(encoding="utf-8").startswith("key,seq,v")
    _row(site, "a staged file swapped for a symbolic link to another tenant's archive",
         "test_1_symlink_swapped_in_after_admission", _good_file(site, db, "g-attack1", keys),
         got=leaked + (not target_intact), checked=mine.acknowledged,
         refused=mine.ok and archived_ok, note=f"the file ended {entry['state']}, the link's target not read")


def test_2_fifo_swapped_in_freezes_nothing(site: Site, db: Db) -> None:
    """Attack 2: the same swap with a FIFO, which a blocking open on the event loop waited on."""
    keys = _drop_good(site.folder(site.good), "g-attack2")
    original, entry, slowest = _swap_after_staged(site, db, "x2.csv", lambda tmp: os.mkfifo(tmp))
    time.sleep(1.5)
    slowest = max(slowest, _health_ms(site))
    mine = _original_loaded_once(db, site, "x2.csv", entry, original)
    fifo = site.folder(site.evil) / "x2.csv"
    if fifo.exists() and not fifo.is_file():
        fifo.unlink()  # never left behind for a later test
    _row(site, "a staged file swapped for a FIFO", "test_2_fifo_swapped_in_freezes_nothing",
         _good_file(site, db, "g-attack2", keys), checked=mine.acknowledged,
         refused=mine.ok and slowest < 2000, note=f"slowest /health {slowest:.0f} ms")


def test_3_hard_link_to_another_tenants_archive(site: Site, db: Db) -> None:
    """Attack 3: a hard link in staging to the good tenant's archived file."""
    keys = _drop_good(site.folder(site.good), "g-attack3")
    link = site.folder(site.evil) / "h3.csv"
    before = _sha(site.seed_archive.read_bytes())
    os.link(site.seed_archive, link)
    entry = _outcome(db, site.evil, "h3.csv")
    leaked = _loot(db, site).count_documents({"key": {"$in": site.seed_keys}})
    # the rejected name is removed, not archived: the good tenant's file keeps its one name
    intact = site.seed_archive.is_file() and _sha(site.seed_archive.read_bytes()) == before \
        and site.seed_archive.stat().st_nlink == 1 and not link.exists()
    _row(site, "a hard link to another tenant's archived file", "test_3_hard_link_to_another_tenants_archive",
         _good_file(site, db, "g-attack3", keys), got=leaked + (not intact),
         refused=(entry["state"], entry.get("code")) == ("rejected", "hard_link"),
         note=f"{entry['state']} {entry.get('code')}")


def test_4_file_renamed_over_one_that_is_loading(site: Site, db: Db) -> None:
    """Attack 4: another file renamed over one that is loading (its app sleeps 2 s)."""
    keys = _drop_good(site.folder(site.good), "g-attack4")
    folder = site.folder(site.evil)
    first = _attack_csv([("hang", "2", "r4-0"), *[("none", "", f"r4-{i}") for i in range(1, 10)]])
    second = _attack_csv([("none", "", f"q4-{i}") for i in range(10)])
    _drop(folder, "r4.csv", first)
    _wait_state(db, site.evil, "r4.csv", "loading")
    _drop(folder, "r4.csv", second)
    entry = _outcome(db, site.evil, "r4.csv", sha256=_sha(first))
    later = _outcome(db, site.evil, "r4.csv", sha256=_sha(second))  # loaded as the new file it is
    archived = [Path(e["archive_path"]).read_bytes() for e in (entry, later) if e.get("archive_path")]
    want = [f"r4-{i}" for i in range(10)] * (entry["state"] == "committed") + \
        [f"q4-{i}" for i in range(10)] * (later["state"] == "committed")
    found = [d["key"] for d in _loot(db, site).find({"key": {"$regex": "^[rq]4-"}}, {"key": 1})]
    mine = tally(want, found)
    consistent = archived == [first, second] and entry["state"] == later["state"] == "committed"
    _row(site, "a file renamed over one that is loading", "test_4_file_renamed_over_one_that_is_loading",
         _good_file(site, db, "g-attack4", keys), checked=mine.acknowledged, refused=mine.ok and consistent,
         note="each content committed under its own sha256 and archived as it was loaded")


def test_5_tenant_file_named_like_a_reason_file(site: Site, db: Db) -> None:
    """Attack 5: a tenant's ``c5.csv.reason.json`` and a later rejected ``c5.csv``."""
    keys = _drop_good(site.folder(site.good), "g-attack5")
    mine = b"the tenant's own file, not a reason\n"
    _drop(site.folder(site.evil), "c5.csv.reason.json", mine)
    own = _outcome(db, site.evil, "c5.csv.reason.json")
    _drop(site.folder(site.evil), "c5.csv", b"")
    later = _outcome(db, site.evil, "c5.csv")
    own_kept = Path(own["archive_path"]).read_bytes() == mine
    reason_path = Path(later["archive_path"] + ".reason.json")
    reason = json.loads(reason_path.read_bytes()) if reason_path.is_file() else {}
    _row(site, "a tenant file named like the reason file of a later rejected file",
         "test_5_tenant_file_named_like_a_reason_file", _good_file(site, db, "g-attack5", keys),
         refused=own_kept and reason.get("code") == later.get("code") == "content"
         and reason_path != Path(own["archive_path"]),
         note=f"tenant's file at {Path(own['archive_path']).name}, reason at {reason_path.name}")


def test_6_gzip_counted_decompressed_against_the_quota(site: Site, db: Db) -> None:
    """Attack 6: a small ``.csv.gz`` expanding far past the tenant's storage quota."""
    keys = _drop_good(site.folder(site.good), "g-attack6")
    rows = [("none", "x" * 200, f"z6-{i:06d}") for i in range(10_000)]
    data = gzip.compress(_attack_csv(rows), compresslevel=9)
    _drop(site.folder(site.evil), "z6.csv.gz", data)
    entry = _outcome(db, site.evil, "z6.csv.gz")
    stored = _loot(db, site).count_documents({"key": {"$regex": "^z6-"}})
    _row(site, f"a {len(data) // 1024} KB .csv.gz expanding to 2.3 MB against a {QUOTA // 1000} KB quota",
         "test_6_gzip_counted_decompressed_against_the_quota", _good_file(site, db, "g-attack6", keys),
         got=stored, refused=entry["state"] == "rejected" and entry.get("code") in ("over_quota", "too_big"),
         note=f"{entry['state']} {entry.get('code')}")


# -- tenant app code (attacks 7-9) ----------------------------------------------------------

def test_7_app_reaches_no_secret_file_store_or_broker(site: Site, db: Db, mongo_uri: str) -> None:
    """Attack 7: the app reads the environment, the host's and other tenants' files, the
    daemon's log, and connects to the store and the broker; in batch and in stream."""
    keys = _drop_good(site.folder(site.good), "g-attack7")
    store = urllib.parse.urlsplit(mongo_uri)
    broker = urllib.parse.urlsplit(site.settings.amqp_url)
    assert site.runner.proc is not None
    tries = [("env", ""), ("read", "/etc/passwd"), ("read", str(site.settings.log_file)),
             ("read", str(site.seed_archive)), ("listdir", str(site.settings.staging_dir)),
             ("read", f"/proc/{site.runner.proc.pid}/environ"), ("connect", f"{store.hostname}:{store.port}"),
             ("connect", f"{broker.hostname}:{broker.port or 5672}"),
             ("write", str(site.folder(site.good) / "planted.csv")), ("exec", "id"), ("signal_parent", "")]
    _drop(site.folder(site.evil), "a7.csv", _attack_csv([(a, b, f"a7-{i}") for i, (a, b) in enumerate(tries)]))
    stream_tries = [{"attack": a, "arg": b, "key": f"s7-{i}"} for i, (a, b) in enumerate(tries)]

    async def attack() -> None:
        await _publish(site, site.evil, [_msg(body, body["key"]) for body in stream_tries])
    good_msgs = _beside_stream(site, db, attack())
    entry = _outcome(db, site.evil, "a7.csv")
    wait_until(lambda: _loot(db, site).count_documents({"key": {"$regex": "^s7-"}}) >= len(tries), 30,
               "every stream attack's answer")
    got = [(d["key"], d["attack"], d.get("got", "")) for d in _loot(db, site).find({"key": {"$regex": "^[as]7-"}})]
    secrets = ("MYSIMBDP", ADMIN_TOKEN, TOKEN_EVIL, TOKEN_GOOD, site.seed_keys[0])
    leaked = [g for g in got if (g[1] == "env" and any(s in g[2] for s in secrets))
              or (g[1] != "env" and not str(g[2]).startswith("refused:"))]
    planted = (site.folder(site.good) / "planted.csv").exists()
    good = _good_file(site, db, "g-attack7", keys)
    both = Tally(good.acknowledged + good_msgs.acknowledged, 0, good.found + good_msgs.found,
                 good.lost + good_msgs.lost, good.duplicated + good_msgs.duplicated,
                 good.unexpected + good_msgs.unexpected)
    _row(site, "an app reads the environment, host and tenant files, the log; connects to the store and broker",
         "test_7_app_reaches_no_secret_file_store_or_broker", both, got=len(leaked) + planted,
         injected=2 * len(tries), refused=entry["state"] == "committed" and len(got) == 2 * len(tries),
         note=f"{len(got)} answers, all refused but a clean environment; leaked: {leaked[:3]}")


def test_8_stream_app_exits_on_a_record(site: Site, db: Db) -> None:
    """Attack 8: ``SystemExit``, ``os._exit`` and ``KeyboardInterrupt`` from a stream app."""
    tag = uuid.uuid4().hex[:6]
    bodies: list[Any] = [{"attack": "none", "key": f"e8{tag}-{i}"} for i in range(20)]
    bodies[5] = {"attack": "exit", "key": f"e8{tag}-5"}
    bodies[9] = [{"attack": "none", "key": f"e8{tag}-9a"}, {"attack": "keyboard", "key": f"e8{tag}-9"}]
    bodies[12] = {"attack": "os_exit", "key": f"e8{tag}-12"}
    ids = [f"e8{tag}-{i}" for i in range(20)]

    async def attack() -> None:
        await _publish(site, site.evil, [_msg(b, i) for b, i in zip(bodies, ids, strict=True)])
    good = _beside_stream(site, db, attack())
    loot, rejects = _loot(db, site), db[f"tenant_{site.evil}"]["_rejects"]
    try:
        wait_until(lambda: loot.count_documents({"key": {"$regex": f"^e8{tag}-"}}) >= 18
                   and rejects.count_documents({"message_id": {"$in": ids}}) >= 3, 30, "18 documents and 3 rejects")
    except TimeoutError:
        pass
    written = loot.count_documents({"key": {"$regex": f"^e8{tag}-"}})
    rejected = {r["message_id"]: r["kind"] for r in rejects.find({"message_id": {"$in": ids}})}
    _row(site, "a stream app raises SystemExit, KeyboardInterrupt, calls os._exit", "test_8_stream_app_exits_on_a_record",
         good, injected=3, checked=20, refused=written == 18 and set(rejected) == set(ids[i] for i in (5, 9, 12)),
         note=f"{written} documents, rejects {sorted(rejected.values())}")


def test_8_target_hook_hangs_or_exits(site: Site, db: Db) -> None:
    """Attack 8: ``mysimbdp_batch_target`` hangs or raises ``SystemExit`` (it ran on the event loop)."""
    keys = _drop_good(site.folder(site.good), "g-attack8")
    hung, exits = f"t{site.suffix}-target-hang", f"t{site.suffix}-target-exit"
    for tenant in (hung, exits):
        _drop(site.folder(tenant), "t8.csv", _attack_csv([("none", "", "t8-0")]))
    time.sleep(0.5)
    slowest = max(_health_ms(site) for _ in range(5))
    outcomes = {t: _outcome(db, t, "t8.csv") for t in (hung, exits)}
    codes = {t.rsplit("-", 1)[1]: (e["state"], e.get("code")) for t, e in outcomes.items()}
    _row(site, "a target hook hangs, or raises SystemExit", "test_8_target_hook_hangs_or_exits",
         _good_file(site, db, "g-attack8", keys), injected=2,
         refused=codes == {"hang": ("rejected", "timeout"), "exit": ("rejected", "app_failed")} and slowest < 1000,
         note=f"{codes}, slowest /health {slowest:.0f} ms")


def test_9_hung_apps_leave_nothing_behind(site: Site, db: Db) -> None:
    """Attack 9: three files whose app hangs for good, each killed at its 2 s timeout."""
    keys = _drop_good(site.folder(site.good), "g-attack9")
    threads = _daemon_status(site, "Threads")
    for i in range(3):
        _drop(site.folder(site.hang), f"hang9-{i}.csv", _attack_csv([("hang", "3600", f"h9-{i}")]))
    outcomes = [_outcome(db, site.hang, f"hang9-{i}.csv") for i in range(3)]
    time.sleep(1.0)
    grown = _daemon_status(site, "Threads") - threads
    timeouts = sum((e["state"], e.get("code")) == ("rejected", "timeout") for e in outcomes)
    _row(site, "apps that hang for good, file after file", "test_9_hung_apps_leave_nothing_behind",
         _good_file(site, db, "g-attack9", keys), injected=3, refused=timeouts == 3 and grown <= 2,
         note=f"{timeouts} files rejected at the timeout; daemon threads {threads} -> {threads + grown}")


# -- stream (attacks 10-14) -----------------------------------------------------------------

def _evil_ids_written(db: Db, site: Site, ids: list[str], count: int, timeout: float = 30.0) -> int:
    loot = _loot(db, site)
    try:
        wait_until(lambda: loot.count_documents({"key": {"$in": ids}}) >= count, timeout, f"{count} documents")
    except TimeoutError:
        pass
    return int(loot.count_documents({"key": {"$in": ids}}))


async def _queue_depth(site: Site, name: str) -> int:
    vhost = urllib.parse.unquote(urllib.parse.urlsplit(site.settings.amqp_url).path.lstrip("/")) or "/"
    async with BrokerAdmin(MANAGEMENT_URL) as admin:
        return int(((await admin.queue(vhost, name)) or {}).get("messages", 0) or 0)


def test_10_a_header_out_of_range_fails_no_other_message(site: Site, db: Db) -> None:
    """Attack 10: one message with ``timestamp_ms = 10**17`` among 20 good ones."""
    tag = uuid.uuid4().hex[:6]
    ids = [f"h10{tag}-{i}" for i in range(21)]
    messages = [_msg({"attack": "none", "key": i}, i) for i in ids]
    messages[10] = _msg({"attack": "none", "key": ids[10]}, ids[10], headers={"timestamp_ms": 10**17})

    async def attack() -> None:
        await _publish(site, site.evil, messages)
    good = _beside_stream(site, db, attack())
    written = _evil_ids_written(db, site, ids, 21)
    dead = asyncio.run(_queue_depth(site, dead_name(site.evil)))
    _row(site, "one message with header timestamp_ms = 10**17 among 20 good ones",
         "test_10_a_header_out_of_range_fails_no_other_message", good, checked=21,
         refused=written == 21 and dead == 0, note=f"{written} of 21 written, {dead} dead-lettered")


def _log_events(site: Site, name: str, tenant: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(site.settings.log_file.parent.glob(site.settings.log_file.name + "*")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if f'"{name}"' in line and tenant in line:
                event = json.loads(line)
                if event.get("event") == name and event.get("tenant") == tenant:
                    found.append(event)
    return found


def test_11_a_future_publish_time_keeps_the_reports_coming(site: Site, db: Db) -> None:
    """Attack 11: a ``timestamp_ms`` an hour ahead (and one in 1970) on the hostile tenant's messages."""
    tag = uuid.uuid4().hex[:6]
    ids = [f"f11{tag}-future", f"f11{tag}-ancient"]
    future = int(time.time() * 1000) + 3_600_000

    async def attack() -> None:
        await _publish(site, site.evil, [_msg({"attack": "none", "key": ids[0]}, ids[0], headers={"timestamp_ms": future}),
                                         _msg({"attack": "none", "key": ids[1]}, ids[1], headers={"timestamp_ms": 1})])
    good = _beside_stream(site, db, attack())
    written = _evil_ids_written(db, site, ids, 2)
    before = len(_log_events(site, "stream.report", site.evil))
    try:
        wait_until(lambda: len(_log_events(site, "stream.report", site.evil)) >= before + 3, 15,
                   "three more reports of the hostile tenant")
    except TimeoutError:
        pass
    after = len(_log_events(site, "stream.report", site.evil)) - before
    failed = len(_log_events(site, "stream.tick.failed", site.evil))
    _row(site, "messages published an hour in the future and in 1970",
         "test_11_a_future_publish_time_keeps_the_reports_coming", good, checked=2,
         refused=written == 2 and after >= 3 and failed == 0,
         note=f"{after} reports in the next seconds, {failed} tick failures")


def _admin_get(site: Site, path: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(site.runner.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read() or b"{}")


def test_12_a_profile_edit_keeps_the_stream_running(site: Site, db: Db) -> None:
    """Attack 12: the tenant edits one key of its ``[stream]`` section (``prefetch``)."""
    tag = uuid.uuid4().hex[:6]
    write_tenant(site.settings, site.evil, token=TOKEN_EVIL, batch=EVIL_BATCH, stream={**EVIL_STREAM, "prefetch": 37})

    def edited() -> dict[str, Any] | None:
        status, body = _admin_get(site, f"/tenants/{site.evil}/stream")
        return body if status == 200 and body.get("prefetch") == 37 else None
    try:
        status: dict[str, Any] = wait_until(edited, 20, "the edit to take effect")
        time.sleep(1.0)
        status = _admin_get(site, f"/tenants/{site.evil}/stream")[1]
    except TimeoutError:
        status = _admin_get(site, f"/tenants/{site.evil}/stream")[1]
    ids = [f"p12{tag}-{i}" for i in range(5)]

    async def attack() -> None:
        await _publish(site, site.evil, [_msg({"attack": "none", "key": i}, i) for i in ids])
    good = _beside_stream(site, db, attack())
    written = _evil_ids_written(db, site, ids, len(ids), timeout=15)
    _row(site, "the tenant edits a key of its [stream] profile section",
         "test_12_a_profile_edit_keeps_the_stream_running", good, checked=len(ids),
         refused=status.get("state") == "running" and written == len(ids),
         note=f"stream {status.get('state')} after the edit, {written} of {len(ids)} later messages written")


def test_13_a_huge_message_is_rejected_unread(site: Site, db: Db) -> None:
    """Attack 13: a 2.4 MB message of 300k records, and 10,001 small records in one message."""
    tag = uuid.uuid4().hex[:6]
    big = orjson.dumps([{"n": i} for i in range(300_000)])
    many = orjson.dumps([{"attack": "none", "key": f"r13{tag}-{i}"} for i in range(10_001)])
    ids = [f"b13{tag}-big", f"b13{tag}-many", f"b13{tag}-after"]
    rss = _daemon_status(site, "VmRSS")

    async def attack() -> None:
        await _publish(site, site.evil, [_msg(big, ids[0]), _msg(many, ids[1]),
                                         _msg({"attack": "none", "key": ids[2]}, ids[2])])
    good = _beside_stream(site, db, attack())
    after = _evil_ids_written(db, site, [ids[2]], 1)
    rejects = db[f"tenant_{site.evil}"]["_rejects"]
    try:
        wait_until(lambda: rejects.count_documents({"message_id": {"$in": ids[:2]}}) >= 2, 20, "both rejects")
    except TimeoutError:
        pass
    kinds = {r["message_id"]: r["kind"] for r in rejects.find({"message_id": {"$in": ids[:2]}})}
    pieces = _loot(db, site).count_documents({"key": {"$regex": f"^r13{tag}-"}})
    grown_mb = (_daemon_status(site, "VmRSS") - rss) / 1024
    _row(site, f"a {len(big) / 1e6:.1f} MB message of 300,000 records; 10,001 records in one message",
         "test_13_a_huge_message_is_rejected_unread", good, got=pieces, injected=2, checked=1,
         refused=kinds == {ids[0]: "too_large", ids[1]: "too_many_records"} and after == 1 and grown_mb < 100,
         note=f"rejects {sorted(kinds.values())}, daemon RSS {grown_mb:+.0f} MB")


def test_14_a_message_id_equal_to_a_batch_id(site: Site, db: Db) -> None:
    """Attack 14: a stream ``message_id`` equal to a batch document's ``_id`` in the same collection."""
    _drop(site.folder(site.evil), "i14.csv", _attack_csv([("none", "", "i14-batch")]))
    entry = _outcome(db, site.evil, "i14.csv")
    batch_doc = _loot(db, site).find_one({"key": "i14-batch"}) or {}
    batch_id = str(batch_doc.get("_id", "missing"))

    async def attack() -> None:
        await _publish(site, site.evil, [_msg({"attack": "none", "key": "i14-stream"}, batch_id)])
    good = _beside_stream(site, db, attack())
    stream_written = _evil_ids_written(db, site, ["i14-stream"], 1)
    still = (_loot(db, site).find_one({"_id": batch_id}) or {}).get("key")
    _row(site, "a stream message_id equal to a batch document's _id", "test_14_a_message_id_equal_to_a_batch_id",
         good, got=int(still != "i14-batch"), checked=2,
         refused=entry["state"] == "committed" and stream_written == 1,
         note=f"batch document kept, stream document {'written' if stream_written else 'missing'} beside it")


# -- HTTP and resources (attacks 15-17) ------------------------------------------------------

async def _put(http: aiohttp.ClientSession, url: str, data: bytes, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.put(url, data=data, headers=headers) as resp:
        return resp.status


def test_15_anonymous_clients_learn_nothing_and_add_no_series(site: Site, db: Db) -> None:
    """Attack 15: ``/health`` and ``/metrics`` read without a token; PUTs with made-up tenant ids."""
    keys = _drop_good(site.folder(site.good), "g-attack15")
    made_up = [f"x{uuid.uuid4().hex[:12]}" for _ in range(100)]

    async def attack() -> tuple[str, str, list[int]]:
        async with aiohttp.ClientSession() as http:
            async with http.get(site.runner.url + "/health") as resp:
                health = await resp.text()
            statuses = await asyncio.gather(*(_put(http, f"{site.runner.url}/tenants/{t}/files/a.csv", b"n\n1\n",
                                                   None if i % 2 else "guess") for i, t in enumerate(made_up)))
            async with http.get(site.runner.url + "/metrics") as resp:
                metrics = await resp.text() if resp.status == 200 else ""
        return health, metrics, list(statuses)
    health, metrics, statuses = asyncio.run(attack())
    told = [t for t in (site.evil, site.good, "seed.csv") if t in health]
    series = [t for t in made_up if t in metrics]
    accepted = [s for s in statuses if s not in (401, 403, 404)]
    _row(site, "/health and /metrics read without a token; 100 PUTs naming made-up tenants",
         "test_15_anonymous_clients_learn_nothing_and_add_no_series", _good_file(site, db, "g-attack15", keys),
         got=len(told) + len(series) + len(accepted), injected=102,
         refused=list(json.loads(health)) == ["status"], note=f"/health told {told}, {len(series)} new series")


def test_16_stats_hidden_files_and_slow_clients_hold_back_nobody(site: Site, db: Db) -> None:
    """Attack 16: 12 concurrent stats requests during another tenant's upload, 20,000 hidden
    files in staging, 20 clients that never finish their headers."""
    for i in range(20_000):
        (site.folder(site.evil) / f".h{i:05d}").touch()
    rows = good_rows(f"{site.good}-up16", GOOD_ROWS)
    body = ("key,seq,v\n" + "\n".join(rows) + "\n").encode()
    port = urllib.parse.urlsplit(site.runner.url).port

    async def attack() -> tuple[int, float, float, int]:
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, writer in slow:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        async with aiohttp.ClientSession() as http:
            stats = [http.get(f"{site.runner.url}/tenants/{site.evil}/stats",
                              headers={"Authorization": f"Bearer {TOKEN_EVIL}"}) for _ in range(12)]
            t0 = time.monotonic()
            tasks = [asyncio.ensure_future(s) for s in stats]
            status = await _put(http, f"{site.runner.url}/tenants/{site.good}/files/up16.csv", body, TOKEN_GOOD)
            upload_ms = (time.monotonic() - t0) * 1000
            for resp in await asyncio.gather(*tasks):
                resp.release()
            t1 = time.monotonic()
            async with http.get(site.runner.url + "/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}):
                health_ms = (time.monotonic() - t1) * 1000
        await asyncio.sleep(3.0)  # header_timeout_s is 1 s here
        still_open = 0
        for reader, writer in slow:
            still_open += not await closed(reader, 0.5)
            writer.close()
        return status, upload_ms, health_ms, still_open
    try:
        status, upload_ms, health_ms, still_open = asyncio.run(attack())
    finally:
        for path in site.folder(site.evil).glob(".h*"):
            path.unlink()
    good = _good_file(site, db, "up16", [r.split(",", 1)[0] for r in rows])
    _row(site, "12 stats requests during another tenant's upload, 20,000 hidden files, 20 slow clients",
         "test_16_stats_hidden_files_and_slow_clients_hold_back_nobody", good, injected=3,
         refused=status in (200, 201, 202) and upload_ms < 2000 and health_ms < 1000 and still_open == 0,
         note=f"upload {upload_ms:.0f} ms, /health {health_ms:.0f} ms, {still_open} slow clients still connected")


def test_17_reports_and_profile_values_are_bounded(site: Site, db: Db) -> None:
    """Attack 17: reports far above the rate, a window ending in 9999, and profiles holding
    ``inf`` and ``report_interval_s = 0.001``."""
    keys = _drop_good(site.folder(site.good), "g-attack17")
    bad_profiles = {f"inf{site.suffix}": '[stream]\napp = "hostile"\nreport_interval_s = inf\n',
                    f"fast{site.suffix}": '[stream]\napp = "hostile"\nreport_interval_s = 0.001\n'}
    for tenant, text in bad_profiles.items():
        (site.settings.tenants_dir / f"{tenant}.toml").write_text(f'id = "{tenant}"\n{text}')

    async def attack() -> tuple[list[int], int]:
        headers = {"Authorization": f"Bearer {TOKEN_EVIL}"}
        async with aiohttp.ClientSession() as http:
            async def post(body: dict[str, Any]) -> int:
                async with http.post(site.runner.url + "/reports", json=body, headers=headers) as resp:
                    return resp.status
            forever = await post(report_body(site.evil, window_start="9999-12-31T23:59:49Z",
                                             window_end="9999-12-31T23:59:59Z"))
            statuses = await asyncio.gather(*(post(report_body(site.evil, instance=f"i{i}")) for i in range(200)))
        return list(statuses), forever
    try:
        statuses, forever = asyncio.run(attack())
        time.sleep(1.5)  # the registry rescans its folder
        loaded = [t for t in bad_profiles if _admin_get(site, f"/tenants/{t}/stream")[0] == 200]
    finally:
        for tenant in bad_profiles:
            (site.settings.tenants_dir / f"{tenant}.toml").unlink(missing_ok=True)
    accepted = statuses.count(202)
    _row(site, "200 reports at once, a window ending in 9999, profiles with inf and a 1 ms report interval",
         "test_17_reports_and_profile_values_are_bounded", _good_file(site, db, "g-attack17", keys),
         got=len(loaded) + (forever == 202), injected=204,
         refused=accepted <= 15 and set(statuses) <= {202, 429} and forever == 400,
         note=f"{accepted} of 200 reports accepted, the rest 429; year 9999 got {forever}")


# -- broker (attack 18) ---------------------------------------------------------------------

def test_18_provisioning_never_resets_another_installations_user(site: Site, db: Db) -> None:
    """Attack 18: a broker user of the same name made by someone else, then this installation
    onboards a tenant of that name and an operator provisions it with a password."""
    from mysimbdp.errors import BrokerUserConflict
    from mysimbdp.stream.provision import broker_user, provision_user

    tenant = f"u{site.suffix}"
    user = broker_user(tenant, site.settings.stream.user_prefix)

    async def attack() -> tuple[dict[str, Any], dict[str, Any], str]:
        async with BrokerAdmin(MANAGEMENT_URL) as admin:
            await admin.put_user(user, "their-password", ["someone-else"])
            theirs = await admin.user(user) or {}
        write_tenant(site.settings, tenant, stream={"app": "rel_echo", **STREAM})
        await asyncio.sleep(2.0)  # the daemon onboards the new tenant
        try:
            await provision_user(MANAGEMENT_URL, site.settings.amqp_url, site.settings.stream.exchange, tenant,
                                 password="our-password", user_prefix=site.settings.stream.user_prefix)
            outcome = "provisioned"
        except BrokerUserConflict as exc:
            outcome = f"refused: {exc}"
        async with BrokerAdmin(MANAGEMENT_URL) as admin:
            now = await admin.user(user) or {}
        return theirs, now, outcome
    try:
        keys = _drop_good(site.folder(site.good), "g-attack18")
        theirs, now, outcome = asyncio.run(attack())
    finally:
        (site.settings.tenants_dir / f"{tenant}.toml").unlink(missing_ok=True)

        async def cleanup() -> None:
            async with BrokerAdmin(MANAGEMENT_URL) as admin:
                await admin.delete_user(user)
        asyncio.run(cleanup())
    changed = now.get("password_hash") != theirs.get("password_hash") or now.get("tags") != theirs.get("tags")
    _row(site, "a same-named broker user made by another installation, then onboarded and provisioned",
         "test_18_provisioning_never_resets_another_installations_user", _good_file(site, db, "g-attack18", keys),
         got=int(changed), refused=outcome.startswith("refused:"), note=outcome[:120])
