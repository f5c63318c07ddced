"""Guarantee 7: several daemons on one store, one broker and one staging folder load every
file exactly once, whatever happens to one of them.

Two ``mysimbdpd`` (instances ``a`` and ``b``, :class:`~tests.harness.cluster.Cluster`) share
a private store, the broker and the staging folder, with a 3 s lease:

1. 40 files of four tenants dropped at once: each is committed once (one ledger entry, one
   archive copy, one ``batch.file.committed``), every record is in the store once, and both
   instances loaded files;
2. one instance SIGKILLed while it loads several files: the survivor takes them over once
   their lease lapsed (never before) and the counts are exact;
3. one instance SIGSTOPped past its lease while it loads a file: the other takes the file
   over and commits it; after SIGCONT the paused one logs ``batch.file.lease_lost`` and
   neither commits, archives, rolls back nor moves the ledger entry (the fencing token);
4. (the stream proof is ``test_scaleout_stream.py``);
5. a rolling restart (SIGTERM, start again, one instance after the other) while files load
   and messages flow: nothing lost or duplicated, no file left behind.

Exactness is counted as in the other proofs: every row and message carries a unique key,
read back from the tenant's collection and ``_rejects`` (:func:`~tests.reliability.checker.tally`).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mysimbdp.config import Settings
from tests.harness.cluster import Cluster
from tests.harness.publish import Publisher, message_keys
from tests.harness.wait import wait_until
from tests.reliability.checker import Tally, tally
from tests.reliability.harness import suite_settings, write_csv, write_tenant
from tests.reliability.results import record

GUARANTEE = "7. several daemons, one store"
LEASE_S = 3.0
STREAM = {"app": "rel_echo", "min_consumers": 1, "max_consumers": 4, "prefetch": 200,
          "batch_max_messages": 100, "batch_max_wait_ms": 100, "delivery_limit": 50}
#: The cluster's store replaces it: the template settings need some URI.
_PLACEHOLDER_URI = "mongodb://127.0.0.1:1/"


# -- staging and checking ----------------------------------------------------------------------

def _template(tmp_path: Path, amqp_url: str, **overrides: Any) -> Settings:
    """The settings every instance shares (the staging folder and tenants' profiles in ``tmp_path``)."""
    return suite_settings(tmp_path, _PLACEHOLDER_URI, amqp_url, **overrides)


def _suffix() -> str:
    return uuid.uuid4().hex[:8]


def _keys(tenant: str, name: str, n: int) -> list[str]:
    return [f"{tenant}-{name}-{i:06d}" for i in range(n)]


@dataclass
class Drop:
    """Files written beside the staging folder (same file system), then renamed into it all at
    once. Not as hidden ``.part`` files inside it: a starting daemon removes those as stale
    uploads."""

    staging: Path
    files: dict[str, dict[str, list[str]]] = field(default_factory=lambda: defaultdict(dict))
    _pending: list[tuple[Path, Path]] = field(default_factory=list)

    def add(self, tenant: str, name: str, rows: int) -> None:
        """Write ``<staging>-incoming/<tenant>/<name>`` with ``rows`` unique keys."""
        keys = _keys(tenant, name.split(".")[0], rows)
        written = self.staging.with_name(self.staging.name + "-incoming") / tenant / name
        write_csv(written, keys)
        (self.staging / tenant).mkdir(parents=True, exist_ok=True)
        self.files[tenant][name] = keys
        self._pending.append((written, self.staging / tenant / name))

    def release(self) -> float:
        """Rename every file written since the last release into place; when that was."""
        for hidden, final in self._pending:
            os.replace(hidden, final)
        self._pending.clear()
        return time.time()

    @property
    def count(self) -> int:
        return sum(len(names) for names in self.files.values())

    @property
    def records(self) -> int:
        return sum(len(keys) for names in self.files.values() for keys in names.values())


def _settled(cluster: Cluster, files: dict[str, dict[str, list[str]]]) -> bool:
    """Every file has a ledger entry that is committed or rejected."""
    for tenant, names in files.items():
        done = {e["name"] for e in cluster.files.find({"tenant": tenant, "state": {"$in": ["committed", "rejected"]}},
                                                       {"name": 1})}
        if not set(names) <= done:
            return False
    return True


def _wait_settled(cluster: Cluster, drop: Drop, timeout: float) -> None:
    wait_until(lambda: _settled(cluster, drop.files), timeout, f"{drop.count} files committed",
               interval=0.3, where=cluster.where())


@dataclass
class Outcome:
    """What the cluster did with the dropped files: records counted and file-level problems."""

    tally: Tally
    problems: list[str]
    commits: Counter[str]  # instance -> batch.file.committed of these files

    @property
    def ok(self) -> bool:
        return self.tally.ok and not self.problems


def _check_files(cluster: Cluster, files: dict[str, dict[str, list[str]]], killed: bool = False) -> Outcome:
    """Per file: one ledger entry, committed; one archive copy; one ``batch.file.committed``
    across the instances (at most one when an instance was ``killed``: it may have died between
    the commit and its log line); nothing left in staging; every key once in the store."""
    problems: list[str] = []
    expected: list[str] = []
    found: list[str] = []
    commits: Counter[str] = Counter()
    for tenant, names in files.items():
        entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in cluster.ledger(tenant):
            entries[entry["name"]].append(entry)
        copies = cluster.archive_copies(tenant)
        events = Counter(e.get("file") for _, e in cluster.events("batch.file.committed", tenant=tenant))
        commits.update(i for i, _ in cluster.events("batch.file.committed", tenant=tenant))
        for name, keys in names.items():
            expected.extend(keys)
            states = [(e["state"], e.get("owner"), e.get("code")) for e in entries.pop(name, [])]
            if [s[0] for s in states] != ["committed"]:
                problems.append(f"{tenant}/{name}: ledger entries (state, owner, code) {states}")
            if copies.pop(name, 0) != 1 or events.pop(name, 0) not in ((0, 1) if killed else (1,)):
                problems.append(f"{tenant}/{name}: archive copies or commit events not 1 "
                                f"({[str(p) for p in cluster.archived(tenant) if name in p.name]})")
        problems += [f"{tenant}: unexpected ledger entries {sorted(entries)}"] if entries else []
        problems += [f"{tenant}: unexpected archive copies {dict(copies)}"] if +copies else []
        problems += [f"{tenant}: unexpected commit events {dict(events)}"] if +events else []
        problems += _spurious_lease_lost(cluster, tenant)
        left = sorted(p.name for p in (cluster.settings.staging_dir / tenant).iterdir() if not p.name.startswith("."))
        problems += [f"{tenant}: left in staging {left}"] if left else []
        found += [str(d["key"]) for d in cluster.records(tenant).find({}, {"key": 1})]
        found += [str(d.get("key", d.get("_id"))) for d in cluster.records(tenant, "_rejects").find({})]
    return Outcome(tally(expected, found), problems, commits)


def _spurious_lease_lost(cluster: Cluster, tenant: str) -> list[str]:
    """``batch.file.lease_lost`` logged by the instance that had committed that file before:
    the warning must mean another instance took the file over, not that this one finished it."""
    found = []
    for instance, lost in cluster.events("batch.file.lease_lost", tenant=tenant):
        committed = cluster[instance].log.find("batch.file.committed", ledger_id=lost.get("ledger_id"))
        if any(str(c["ts"]) <= str(lost["ts"]) for c in committed):
            found.append(f"{tenant}/{lost.get('file')}: {instance} logged batch.file.lease_lost (step "
                         f"{lost.get('step')}) at {lost['ts']}, after committing it itself at "
                         f"{', '.join(str(c['ts']) for c in committed)}")
    return found


def _record(fault: str, test: str, outcome: Outcome, *, injected: int, crashes: int, note: str,
            extra_checked: int = 0, stream: Tally | None = None) -> None:
    t = outcome.tally
    lost, dup, unexpected = t.lost, t.duplicated, t.unexpected
    if stream is not None:
        lost, dup, unexpected = lost + stream.lost, dup + stream.duplicated, unexpected + stream.unexpected
    problems = f"; {len(outcome.problems)} file problems: {outcome.problems[:3]}" if outcome.problems else ""
    record(GUARANTEE, fault, test, injected=injected, checked=t.acknowledged + extra_checked, lost=lost,
           duplicated=dup, unexpected=unexpected, crashes=crashes, passed=not outcome.problems,
           note=note + problems)


def _loading(cluster: Cluster, tenant: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
    query: dict[str, Any] = {"state": "loading"}
    if tenant is not None:
        query["tenant"] = tenant
    if owner is not None:
        query["owner"] = owner
    return list(cluster.files.find(query))


def _claimed(entry: dict[str, Any]) -> float:
    """When the entry's current claim was made (seconds since the epoch, the claimer's clock)."""
    return float(entry.get("claimed_epoch") or 0)


def _up(cluster: Cluster) -> list[str]:
    """The instances ``GET /instances`` lists as up."""
    return sorted(str(i["id"]) for i in cluster.instances()["instances"] if i.get("state") == "up")


def _write_profiles(cluster: Cluster, profiles: Iterable[tuple[str, dict[str, Any]]]) -> None:
    for tenant, batch in profiles:
        write_tenant(cluster.settings, tenant, batch=batch)


# -- 1. one staging folder, two daemons ------------------------------------------------------------

def test_two_daemons_share_one_staging_folder(tmp_path: Path, amqp_url: str, full: bool) -> None:
    suffix = _suffix()
    tenants = [f"sh{i}{suffix}" for i in range(4)]
    rows = 2000 if full else 300
    cluster = Cluster(tmp_path, _template(tmp_path, amqp_url, batch={"write_batch_size": 250}), lease_s=LEASE_S)
    _write_profiles(cluster, ((t, {"app": "rel_echo"}) for t in tenants))
    drop = Drop(cluster.settings.staging_dir)
    for n in range(40):
        drop.add(tenants[n % 4], f"part{n:02d}.csv", rows + n)
    with cluster:
        assert _up(cluster) == ["a", "b"], cluster.instances()
        started = drop.release()
        _wait_settled(cluster, drop, 180 if full else 90)
        seconds = time.time() - started
        time.sleep(1.0)  # an instance that would commit a file twice has had time to
        outcome = _check_files(cluster, drop.files)
        crashes = cluster.crashes()
    split = ", ".join(f"{i} {n}" for i, n in sorted(outcome.commits.items()))
    _record("two daemons, one staging folder: 40 files of 4 tenants dropped at once",
            "test_two_daemons_share_one_staging_folder", outcome, injected=0, crashes=crashes,
            note=f"files committed per instance: {split}; {seconds:.1f} s")
    assert outcome.ok, f"{outcome.tally}; {outcome.problems}"
    assert all(outcome.commits[i] >= 1 for i in cluster.ids), f"the work was not shared: {split}"
    assert sum(outcome.commits.values()) == 40
    assert crashes == 0


# -- 2. one daemon SIGKILLed mid-load: the survivor takes over after the lease ---------------------

def test_survivor_resumes_a_killed_daemons_files(tmp_path: Path, amqp_url: str, full: bool) -> None:
    suffix = _suffix()
    slow, bulk = f"ks{suffix}", f"kb{suffix}"
    cluster = Cluster(tmp_path, _template(tmp_path, amqp_url, batch={"write_batch_size": 25}), lease_s=LEASE_S)
    # rel_slow takes 50 ms a record: a 120-row file loads for 6 s, so the kill lands mid-load
    _write_profiles(cluster, [(slow, {"app": "rel_slow", "max_concurrent_files": 6}),
                              (bulk, {"app": "rel_echo", "max_concurrent_files": 2})])
    drop = Drop(cluster.settings.staging_dir)
    taken_over: list[str] = []
    problems: list[str] = []
    rounds = 3 if full else 1
    with cluster:
        for r in range(rounds):
            for n in range(6):
                drop.add(slow, f"r{r}slow{n}.csv", 120)
            for n in range(4):
                drop.add(bulk, f"r{r}bulk{n}.csv", 8000 if full else 2000)
            drop.release()

            def victim() -> str | None:
                owners = Counter(e.get("owner") for e in _loading(cluster, slow))
                best = owners.most_common(1)
                if best and best[0][1] >= 2 and cluster.records(slow).estimated_document_count() > 0:
                    return str(best[0][0])
                return None

            dead = str(wait_until(victim, 60, "an instance loading two files of the slow tenant",
                                  interval=0.05, where=cluster.where()))
            cluster.kill(dead)
            killed_at = time.time()
            orphans = _loading(cluster, owner=dead)  # the dead can change nothing more: read after
            survivor = next(i for i in cluster.ids if i != dead)
            _wait_settled(cluster, drop, 240 if full else 90)
            for old in orphans:
                new = cluster.files.find_one({"_id": old["_id"]}) or {}
                resumed = cluster[survivor].log.find("batch.file.resumed", ledger_id=old["_id"])
                if (new.get("state"), new.get("owner")) != ("committed", survivor) or not resumed:
                    problems.append(f"{old['name']}: {new.get('state')} by {new.get('owner')}, "
                                    f"{len(resumed)} batch.file.resumed by {survivor}")
                elif _claimed(new) <= float(old["lease_until"]) or new["lease"] <= old["lease"]:
                    problems.append(f"{old['name']}: taken over at {_claimed(new)} with token {new['lease']}, "
                                    f"within the dead owner's lease (until {old['lease_until']}, token {old['lease']})")
                else:
                    taken_over.append(f"{_claimed(new) - killed_at:.1f}")
            if len(orphans) < 2:
                problems.append(f"round {r}: the kill of {dead} left {len(orphans)} files loading, not several")
            cluster.start_instance(dead)  # the next round kills whichever holds more
        time.sleep(1.0)
        outcome = _check_files(cluster, drop.files, killed=True)
        crashes = cluster.crashes()
    outcome.problems.extend(problems)
    _record("two daemons, one SIGKILLed while loading several files; the survivor resumes them",
            "test_survivor_resumes_a_killed_daemons_files", outcome, injected=rounds, crashes=crashes,
            note=f"{len(taken_over)} files taken over, {', '.join(taken_over)} s after the kill (lease {LEASE_S:.0f} s)")
    assert not problems, problems
    assert outcome.ok, f"{outcome.tally}; {outcome.problems}"
    assert crashes == 0


# -- 3. one daemon paused past its lease: fenced off ----------------------------------------------

def _pause_round(cluster: Cluster, drop: Drop, tenant: str, name: str, rows: int, early: bool) -> list[str]:
    """Pause the owner of ``name`` mid-load until the other has taken the file over and
    committed it (``early``: only taken it over, so both load it at once), resume; what went wrong."""
    files, before = cluster.files, cluster.records(tenant).count_documents({})
    drop.add(tenant, name, rows)
    drop.release()

    def loading_with_documents() -> dict[str, Any] | None:
        entry = files.find_one({"tenant": tenant, "name": name, "state": "loading"})
        if entry and cluster.records(tenant).count_documents({}) >= before + 40:
            return entry  # type: ignore[no-any-return]
        return None

    entry = wait_until(loading_with_documents, 60, f"{name} loading with documents written", interval=0.05,
                       where=cluster.where())
    paused = str(entry["owner"])
    other = next(i for i in cluster.ids if i != paused)
    cluster.pause(paused)
    held = files.find_one({"_id": entry["_id"]}) or {}  # the paused one's last renewal
    def state() -> tuple[Any, Any]:
        now = files.find_one({"_id": entry["_id"]}) or {}
        return now.get("state"), now.get("owner")

    try:
        if early:
            wait_until(lambda: state() == ("loading", other), 60, f"{other} to take {name} over",
                       interval=0.05, where=cluster.where())
        wait_until(lambda: early or state()[0] == "committed", 60, f"{other} to take {name} over and commit it",
                   interval=0.2, where=cluster.where())
        before_cont = None if early else files.find_one({"_id": entry["_id"]})
    finally:
        cluster.resume(paused)
    problems = []
    try:
        lost = wait_until(lambda: cluster[paused].log.first("batch.file.lease_lost", ledger_id=entry["_id"]),
                          15, f"{paused} to log batch.file.lease_lost after SIGCONT", where=cluster.where())
    except TimeoutError as exc:
        lost, problems = {}, [str(exc)]
    wait_until(lambda: state()[0] == "committed", 60, f"{name} committed", interval=0.2, where=cluster.where())
    settled = files.find_one({"_id": entry["_id"]}) or {}
    in_archive = cluster.archived(tenant)
    time.sleep(2 * cluster.settings.cluster.renew_every_s)  # what the paused one would still do, it has done
    after = files.find_one({"_id": entry["_id"]}) or {}
    if after != settled or (before_cont is not None and before_cont != settled):
        problems.append(f"{name}: the ledger entry changed after {other} committed it: "
                        f"{[before_cont, settled, after]}")
    if settled.get("owner") != other or int(settled.get("lease") or 0) <= int(held.get("lease") or 0):
        problems.append(f"{name}: committed by {settled.get('owner')} with token {settled.get('lease')}, "
                        f"expected {other} with a token above the paused one's ({held.get('lease')})")
    if _claimed(settled) <= float(held.get("lease_until") or 0):
        problems.append(f"{name}: taken over at {_claimed(settled)}, within the lease ({held.get('lease_until')})")
    mine = cluster[paused].log.find(("batch.file.committed", "batch.file.rejected", "batch.file.rolled_back",
                                     "batch.file.archived_late"), file=name)
    if mine:
        problems.append(f"{name}: the paused instance {paused} logged {[e['event'] for e in mine]}")
    if lost and (lost.get("tenant") != tenant or lost.get("file") != name or lost.get("owner") not in (other, None)):
        problems.append(f"{name}: batch.file.lease_lost fields {lost}")
    if not cluster[other].log.find("batch.file.resumed", ledger_id=entry["_id"]):
        problems.append(f"{name}: {other} logged no batch.file.resumed")
    # paused for the whole load, the paused instance's heartbeat lapsed too (resumed early, it may not have yet)
    if not early and not cluster[other].log.find("cluster.instance.gone", instance=paused):
        problems.append(f"{other} did not log cluster.instance.gone for the paused {paused}")
    copies = [p for p in cluster.archived(tenant) if p.name.endswith(name)]
    if cluster.archived(tenant) != in_archive or [p.is_relative_to(cluster[other].settings.var_dir)
                                                  for p in copies] != [True]:
        problems.append(f"{name}: archived as {copies} after SIGCONT, {in_archive} at the commit")
    return problems


def test_paused_daemon_is_fenced_off(tmp_path: Path, amqp_url: str, full: bool) -> None:
    if not full:
        pytest.skip("about 17 s: part of make reliability only (make test stays near 10 minutes)")
    tenant = f"ps{_suffix()}"
    cluster = Cluster(tmp_path, _template(tmp_path, amqp_url, batch={"write_batch_size": 20}), lease_s=LEASE_S)
    _write_profiles(cluster, [(tenant, {"app": "rel_slow"})])  # 50 ms a record: 120 rows load for 6 s
    drop = Drop(cluster.settings.staging_dir)
    rounds = 4 if full else 1
    problems: list[str] = []
    with cluster:
        for r in range(rounds):  # resumed after the other committed the file, then while it loads it
            # (make test: only the second, where the paused one's commit meets the other's claim)
            early = r % 2 == 1 if full else True
            problems += _pause_round(cluster, drop, tenant, f"paused{r}.csv", 120, early=early)
        outcome = _check_files(cluster, drop.files)
        crashes = cluster.crashes()
        lease_lost = len(cluster.events("batch.file.lease_lost"))
    outcome.problems.extend(problems)
    _record("a daemon SIGSTOPped past its lease mid-load, the file taken over, then SIGCONT",
            "test_paused_daemon_is_fenced_off", outcome, injected=rounds, crashes=crashes,
            note=f"{lease_lost} batch.file.lease_lost; no commit, archive or ledger write by the paused instance")
    assert not problems, problems
    assert outcome.ok, f"{outcome.tally}; {outcome.problems}"
    assert crashes == 0


# -- 5. rolling restart while files load and messages flow -----------------------------------------

def _stream_found(cluster: Cluster, tenant: str) -> list[str]:
    docs = [str(d["key"]) for d in cluster.records(tenant).find({}, {"key": 1}) if "key" in d]
    rejects = [str(d["message_id"]) for d in cluster.records(tenant, "_rejects").find({}, {"message_id": 1})
               if "message_id" in d]
    return docs + rejects


async def _stream_settle(cluster: Cluster, tenant: str, want: int, timeout: float) -> list[str]:
    """Read back until every acknowledged message is there and nothing more arrives for 2 s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        found = await asyncio.to_thread(_stream_found, cluster, tenant)
        if len(found) != last:
            last, since = len(found), time.monotonic()
        if (len(set(found)) >= want and time.monotonic() - since > 2.0) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.3)


def _wait_loading(cluster: Cluster, instance: str, tenant: str, prefix: str) -> None:
    """Until ``instance`` loads a file of ``tenant`` named ``prefix*`` (one just dropped: it has
    seconds left, more than the drain)."""
    wait_until(lambda: [e for e in _loading(cluster, tenant, owner=instance) if str(e["name"]).startswith(prefix)],
               30, f"{instance} loading a file {tenant}/{prefix}*", 0.05, where=cluster.where())


def _handovers(cluster: Cluster, tenant: str) -> tuple[list[float], list[str]]:
    """For each file interrupted by a SIGTERM: seconds until an instance went on with it
    (``batch.file.resumed``; ``batch.file.loading`` when the stop came before its claim;
    ``batch.file.committed`` when another instance held it all along); the files nobody went on with."""
    resumed = [e for _, e in cluster.events(("batch.file.resumed", "batch.file.loading", "batch.file.committed"),
                                            tenant=tenant)]
    delays, never = [], []
    for instance, stopped in cluster.events("batch.file.interrupted", tenant=tenant):
        later = sorted(str(e["ts"]) for e in resumed if e.get("file") == stopped.get("file")
                       and str(e["ts"]) > str(stopped["ts"]))
        if later:
            delays.append(_seconds(later[0]) - _seconds(str(stopped["ts"])))
        else:
            never.append(f"{stopped.get('file')} (interrupted on {instance})")
    return delays, never


def _seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def test_rolling_restart_loses_nothing(tmp_path: Path, amqp_url: str, full: bool) -> None:
    if not full:
        pytest.skip("about 22 s: part of make reliability only (make test stays near 10 minutes)")
    suffix = _suffix()
    slow, bulk, stream = f"rs{suffix}", f"rb{suffix}", f"rm{suffix}"
    # a drain of 1 s cannot finish a slow file (5 s): each SIGTERM interrupts one and hands it over
    cluster = Cluster(tmp_path, _template(tmp_path, amqp_url, batch={"write_batch_size": 50}, drain_timeout_s=1.0),
                      lease_s=LEASE_S)
    # six slow files at once, more than one instance loads (max_concurrent_files 4 per instance):
    # each instance gets one to be stopped in the middle of
    # (and room for every wave of files in staging at once: max_staged_files)
    _write_profiles(cluster, [(slow, {"app": "rel_slow", "max_concurrent_files": 6, "max_staged_files": 100}),
                              (bulk, {"app": "rel_echo", "max_staged_files": 100})])
    write_tenant(cluster.settings, stream, stream=STREAM)
    drop = Drop(cluster.settings.staging_dir)
    cycles = 2 if full else 1
    restarts: list[str] = []
    exit_codes: list[int | None] = []
    await asyncio.to_thread(cluster.start)
    try:
        async def roll() -> None:
            for c in range(cycles):
                for instance in cluster.ids:
                    for n in range(6):
                        drop.add(slow, f"c{c}{instance}slow{n}.csv", 100)  # 5 s each: the SIGTERM lands mid-load
                    for n in range(4):
                        drop.add(bulk, f"c{c}{instance}bulk{n}.csv", 6000 if full else 1500)
                    drop.release()
                    await asyncio.to_thread(_wait_loading, cluster, instance, slow, f"c{c}{instance}slow")
                    began = time.monotonic()
                    exit_codes.append(await asyncio.to_thread(cluster.restart, instance))
                    restarts.append(f"{instance} {time.monotonic() - began:.1f} s")
                    await asyncio.sleep(1.0)

        keys = message_keys(stream, 4000 if full else 1200)
        publisher = Publisher(amqp_url, cluster.settings.stream.exchange, stream)
        try:
            await asyncio.gather(publisher.publish(keys, rate=150.0 if full else 100.0), roll())
        finally:
            await publisher.close()
        await asyncio.to_thread(_wait_settled, cluster, drop, 240 if full else 120)
        found = await _stream_settle(cluster, stream, len(publisher.acknowledged), 120)
        await asyncio.sleep(1.0)
        outcome = await asyncio.to_thread(_check_files, cluster, drop.files)
        stuck = [(e["tenant"], e["name"], e["state"]) for e in cluster.files.find({"state": {"$in": ["staged", "loading"]}})]
        up = await asyncio.to_thread(_up, cluster)
        delays, never = _handovers(cluster, slow)
        crashes = await asyncio.to_thread(cluster.crashes)
    finally:
        await asyncio.to_thread(cluster.close)
    messages = tally(publisher.acknowledged, found, publisher.indeterminate)
    outcome.problems += [f"stuck in the ledger: {stuck}"] if stuck else []
    outcome.problems += [f"exit codes after SIGTERM {exit_codes}"] if any(code != 0 for code in exit_codes) else []
    outcome.problems += [f"interrupted by a SIGTERM and never taken up again: {never}"] if never else []
    outcome.problems += [] if len(delays) + len(never) >= len(restarts) else [
        f"{len(delays) + len(never)} files interrupted by {len(restarts)} SIGTERMs: a stop did not land mid-load"]
    _record("rolling restart of both daemons (SIGTERM, start again) while files load and messages flow",
            "test_rolling_restart_loses_nothing", outcome, injected=len(restarts), crashes=crashes,
            extra_checked=messages.acknowledged, stream=messages,
            note=f"restarts {', '.join(restarts)}; {len(delays)} files interrupted and taken up again "
                 f"{', '.join(f'{d:.1f}' for d in delays)} s later (lease {LEASE_S:.0f} s); {drop.count} files, "
                 f"{messages.acknowledged} messages ({messages.indeterminate} indeterminate)")
    assert outcome.ok, f"{outcome.tally}; {outcome.problems}"
    assert messages.ok, messages
    assert up == ["a", "b"], up
    assert crashes == 0
