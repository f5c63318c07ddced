"""(9) Scale-out: one workload with one ``mysimbdpd``, then with two on one store, broker and staging folder.

How it measures (printed in ``docs/benchmarks.md``): ``bench/methods/scaleout.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from bench.cli import Session
from bench.data import FLIGHTS_ROWS, DataFile, flights_slice, weather_repeated
from bench.env import BenchEnv
from bench.loads import (
    BATCH_SETTINGS,
    FLIGHTS_COLLECTION,
    STREAM_COLLECTION,
    BenchError,
    batch_profile,
    copy_indexes,
    event_time,
    insert_many_rate,
    keep_logs,
    read_documents,
    stream_profile,
)
from bench.results import Metric, Result, metric_from_runs
from mysimbdp.config import BatchSettings, load_settings
from mysimbdp.store.mongo import PLATFORM_DB
from mysimbdp.stream.records import document_id
from mysimbdp.tenants import write_profile
from tests.harness.daemon import CpuSample, Daemon, cpu_seconds
from tests.harness.publish import PublishTool
from tests.harness.stats import median
from tests.harness.wait import await_until, wait_documents

__all__ = ["NAME", "TITLE", "run", "Workload", "WORKLOADS", "SIZE_ENV", "Instance"]

NAME = "scaleout"
TITLE = "Scale-out: one daemon and two on one store and broker"
#: The instances of the two phases: phase 1 runs the first, phase 2 both.
INSTANCES = ("a", "b")
#: ``MYSIMBDP_CLUSTER__LEASE_S`` of every daemon: short, as a cluster that hands work over fast sets it.
LEASE_S = 10.0
#: The stream tenant: the stream benchmark's throughput settings, with the consumer count pinned
#: (min = max) so that the monitor's timing does not change the figure between phases, and
#: reports every 2 s so that the first scaling decision (which splits the count over the
#: instances) comes a few seconds after onboarding rather than half a minute.
TENANT_STREAM: dict[str, Any] = {"min_consumers": 2, "max_consumers": 2, "prefetch": 2000,
                                 "batch_max_messages": 1000, "batch_max_wait_ms": 50, "report_interval_s": 2.0}
WRITE_BATCH_SIZE = BatchSettings().write_batch_size
#: Multiplies the rows of every file and the messages of the stream (a float, default 1).
SIZE_ENV = "MYSIMBDP_BENCH_SCALEOUT_SIZE"
#: Warm-up: small files loaded before the clock until every batch tenant has WARM_WORKERS app
#: workers across the instances and each instance has one (at most WARM_ROUNDS rounds); their
#: rows come from the end of flights.csv, the measured files' from its start.
WARM_ROWS, WARM_WORKERS, WARM_ROUNDS = 200, 2, 6
_PARTIES = ("daemon", "workers", "store", "broker", "publisher", "bench", "other")


@dataclass(frozen=True)
class Workload:
    """What each phase ingests: ``tenants`` batch tenants with ``files`` files of ``rows``
    flights rows each (file ``k`` holds rows ``k*rows`` onwards), and ``messages`` weather
    readings published to one stream tenant, all at once."""

    tenants: int
    files: int
    rows: int
    messages: int

    @property
    def batch_records(self) -> int:
        """Rows in every tenant's files together."""
        return self.tenants * self.files * self.rows

    @property
    def records(self) -> int:
        """Batch rows and stream messages together."""
        return self.batch_records + self.messages

    def scaled(self, factor: float) -> Workload:
        """The same shape with ``factor`` times the rows per file and the messages."""
        return Workload(self.tenants, self.files, max(1, round(self.rows * factor)),
                        max(1, round(self.messages * factor)))


#: Per scale: the full one keeps three repetitions of both phases and the ceiling under ten minutes.
WORKLOADS = {"smoke": Workload(3, 4, 500, 600), "quick": Workload(3, 4, 2_500, 8_000),
             "full": Workload(4, 5, 5_000, 25_000)}
#: The rows at the end of flights.csv the warm-up files may use (each round loads at most
#: max(WARM_WORKERS, instances) files per tenant).
WARM_AREA = WARM_ROWS * WARM_ROUNDS * max(WARM_WORKERS, len(INSTANCES)) * max(w.tenants for w in WORKLOADS.values())


def workload(session: Session) -> Workload:
    """The scale's workload, times ``MYSIMBDP_BENCH_SCALEOUT_SIZE`` if set."""
    raw = os.environ.get(SIZE_ENV, "").strip()
    try:
        factor = float(raw) if raw else 1.0
    except ValueError:
        raise BenchError(f"{SIZE_ENV}={raw!r} is not a number; give a factor such as 0.5 or 2") from None
    found = WORKLOADS[session.scale.name].scaled(factor)
    if factor <= 0 or found.files * found.rows > FLIGHTS_ROWS - WARM_AREA:
        raise BenchError(f"{SIZE_ENV}={raw}: each tenant's {found.files} files of {found.rows} rows must fit in "
                         f"the first {FLIGHTS_ROWS - WARM_AREA:,} rows of flights.csv; choose a factor above 0 and smaller than that")
    return found


class Instance(Daemon):
    """One ``mysimbdpd`` of a phase: the phase's config and staging folders, its own var
    folder, instance id and HTTP port, the run's store and broker."""

    def __init__(self, env: BenchEnv, shared: Path, instance_id: str) -> None:
        self.env, self.instance_id = env, instance_id
        super().__init__(load_settings(
            shared / "config", staging_dir=shared / "staging", var_dir=shared / f"var-{instance_id}",
            instance_id=instance_id, cluster={"lease_s": LEASE_S}, mongo_uri=env.mongo_uri,
            amqp_url=env.amqp_url, admin_token="bench-admin-token", log_level="info",
            log_max_bytes=2 * 1024**3, drain_timeout_s=5.0, batch=BATCH_SETTINGS,
            stream={"management_url": env.management_url}))

    def keep_logs(self) -> None:
        """Copy the logs to ``<data>/failures/`` (the run's folder is removed at its end)."""
        keep_logs(self, self.env, f"{self.settings.var_dir.parent.name}-{self.instance_id}",
                  f"instance {self.instance_id}'s")

    def committed(self, tenants: set[str]) -> list[dict[str, Any]]:
        """This instance's ``batch.file.committed`` events of ``tenants``."""
        return [e for e in self.log.find("batch.file.committed") if e.get("tenant") in tenants]


@dataclass(frozen=True)
class Snapshot:
    """CPU seconds so far of every party, read at one moment."""

    at: float
    daemons: dict[str, CpuSample]
    store: float | None
    broker: float | None
    machine_busy: float
    bench: float
    processes: dict[int, tuple[int, float]]  # every process: pid -> (parent's pid, own CPU seconds)


def _broker_pids() -> list[int]:
    """The local RabbitMQ's Erlang VM (none when the broker runs elsewhere)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if Path(entry.path, "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
    return pids


def _machine_busy() -> float:
    """CPU seconds all cores spent not idle since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _self_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _processes() -> dict[int, tuple[int, float]]:
    """Every process's parent and own CPU seconds (``/proc/<pid>/stat``)."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return found


def _command(pid: int) -> str:
    """A short name for a process: its program's base name and first arguments."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    words = [Path(args[0].decode(errors="replace")).name, *(a.decode(errors="replace") for a in args[1:3])]
    return " ".join(w for w in words if w)[:60]


def _others(first: Snapshot, last: Snapshot, known: set[int]) -> list[dict[str, Any]]:
    """The three other programs that used the most CPU between the snapshots (on a shared
    machine: what *other* was), by command."""
    spent: dict[str, float] = {}
    for pid, (ppid, cpu) in last.processes.items():
        if pid not in known and ppid not in known and pid in first.processes:
            command = _command(pid)
            spent[command] = spent.get(command, 0.0) + cpu - first.processes[pid][1]
    top = sorted(spent.items(), key=lambda item: -item[1])[:3]
    return [{"command": c, "cpu_s": round(v, 2)} for c, v in top if v >= 0.05]


def snapshot(env: BenchEnv, daemons: Sequence[Instance]) -> Snapshot:
    """Read every party's CPU now (the broker's is None when its VM is not on this machine)."""
    broker_s: float | None = None
    with contextlib.suppress(OSError):
        broker = _broker_pids()
        broker_s = sum(cpu_seconds(pid) for pid in broker) if broker else None
    return Snapshot(time.time(), {d.instance_id: d.cpu() for d in daemons}, env.store_cpu(), broker_s,
                    _machine_busy(), _self_cpu(resource.RUSAGE_SELF), _processes())


def where(first: Snapshot, last: Snapshot, publisher: float, known: set[int]) -> dict[str, Any]:
    """CPU seconds of each party between two snapshots, and the rest of the machine's
    (``known``: the pids of the parties, whose children are theirs too)."""
    def delta(a: float | None, b: float | None) -> float | None:
        return b - a if a is not None and b is not None else None

    spent: dict[str, float | None] = {
        "daemon": sum((last.daemons[k] - first.daemons[k]).daemon for k in first.daemons),
        "workers": sum((last.daemons[k] - first.daemons[k]).workers for k in first.daemons),
        "store": delta(first.store, last.store), "broker": delta(first.broker, last.broker),
        "publisher": publisher, "bench": last.bench - first.bench}
    busy = last.machine_busy - first.machine_busy
    spent["other"] = max(0.0, busy - sum(v for v in spent.values() if v is not None))
    wall = last.at - first.at
    return {"wall_s": round(wall, 3), "machine_busy_s": round(busy, 3),
            "cpu_s": {k: None if v is None else round(v, 3) for k, v in spent.items()},
            "per_instance_cpu_s": {k: round((last.daemons[k] - first.daemons[k]).total, 3) for k in first.daemons},
            "other_programs": _others(first, last, known)}


def _stage(shared: Path, tenants: Sequence[str], files: Sequence[DataFile]) -> list[tuple[Path, Path]]:
    """Copy every file into its tenant's staging folder under a hidden name the watchers
    ignore; the (hidden, visible) pairs, renamed at once when the clock starts."""
    pairs = []
    for tenant in tenants:
        folder = shared / "staging" / tenant
        folder.mkdir(parents=True, exist_ok=True)
        for k, data in enumerate(files):
            name = f"part{k:02d}.csv"
            shutil.copyfile(data.path, folder / f".{name}.bench")
            pairs.append((folder / f".{name}.bench", folder / name))
    return pairs


def _consumers(daemon: Instance, stream: str) -> int:
    """The stream tenant's consumers the instance runs now (its last ``stream.consumers.changed``)."""
    changes = daemon.log.find("stream.consumers.changed", tenant=stream)
    return int(changes[-1].get("to") or 0) if changes else 0


async def _ready(daemons: Sequence[Instance], tenants: Sequence[str], stream: str, timeout: float) -> dict[str, Any]:
    """Every instance watches every batch tenant and declared the stream tenant's queue, and
    the tenant's consumers run; then up to ``timeout`` more for the cluster's consumers to
    settle within ``max_consumers`` (every instance onboards a new tenant with
    ``min_consumers`` until the first scaling decision splits the total). The consumers each
    instance runs as the clock starts, and whether they settled."""
    def check() -> bool:
        return all(all(d.log.first("batch.tenant.watching", tenant=t) for t in tenants)
                   and d.log.first("stream.topology.declared", tenant=stream) for d in daemons) \
            and any(d.log.first("stream.consumer.started", tenant=stream) for d in daemons)

    def settled() -> bool:
        return 0 < sum(_consumers(d, stream) for d in daemons) <= TENANT_STREAM["max_consumers"]

    alive = lambda: all(d.alive() for d in daemons)  # noqa: E731
    await await_until(check, timeout, "every instance to onboard the tenants", 0.1, alive,
                      f"; see {daemons[0].log.path} and beside it")
    onboarded = time.monotonic()
    try:
        await await_until(settled, timeout, "the stream's consumers to settle", 0.2, alive)
        waited = round(time.monotonic() - onboarded, 1)
        await asyncio.sleep(1.0)  # a share that grows does so just after another shrank
    except TimeoutError:
        waited = None  # measured as it is; the run records the consumers at the start
    return {"consumers_at_start": {d.instance_id: _consumers(d, stream) for d in daemons},
            "consumers_settled_after_s": waited}


def _workers(daemon: Instance, tenant: str, since: float = 0.0) -> int:
    """App workers the instance started for the tenant (since ``since``, seconds since the epoch)."""
    return sum(1 for e in daemon.log.find("runner.worker.started", tenant=tenant) if event_time(e) >= since)


async def _warm(daemons: Sequence[Instance], shared: Path, tenants: Sequence[str], data_dir: Path,
                timeout: float) -> int:
    """Load small files until the batch tenants' app workers run (see ``WARM_WORKERS``): the
    measured phase then shows steady work, not worker start-up; the warm-up files loaded."""
    def cold(tenant: str) -> bool:
        started = [_workers(d, tenant) for d in daemons]
        return sum(started) < WARM_WORKERS or min(started) < 1

    loaded = 0
    for _ in range(WARM_ROUNDS):
        lacking = [t for t in tenants if cold(t)]
        if not lacking:
            break
        names = set()
        for tenant in lacking:
            for _ in range(max(WARM_WORKERS, len(daemons))):
                loaded += 1
                data = flights_slice(WARM_ROWS, FLIGHTS_ROWS - loaded * WARM_ROWS, data_dir)
                names.add((tenant, f"warm{loaded:03d}.csv"))
                _drop(shared, tenant, data, f"warm{loaded:03d}.csv")
        await _settled(daemons, names, timeout, "the warm-up files")
    return loaded


def _drop(shared: Path, tenant: str, data: DataFile, name: str) -> None:
    folder = shared / "staging" / tenant
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data.path, folder / f".{name}.bench")
    os.rename(folder / f".{name}.bench", folder / name)


#: Outcomes of a file in an instance's log: ``batch.file.archived_late`` stands for a file the
#: ledger holds settled whose outcome event was never logged (the run reports it).
OUTCOMES = ("batch.file.committed", "batch.file.rejected", "batch.file.archived_late")


async def _settled(daemons: Sequence[Instance], files: set[tuple[str, str]], timeout: float, what: str) -> None:
    """Wait until each (tenant, file) has an outcome in some instance's log."""
    def outcomes() -> set[tuple[str, str]]:
        return {(e["tenant"], e["file"]) for d in daemons for e in d.log.find(OUTCOMES)}

    await await_until(lambda: files <= outcomes(), timeout, what, 0.1, lambda: all(d.alive() for d in daemons),
                      f"; see {daemons[0].log.path} and beside it")


async def _batch_done(env: BenchEnv, daemons: Sequence[Instance], files: set[tuple[str, str]],
                      timeout: float) -> float:
    """Wait until every measured file has an outcome; the last commit's time (the ledger's
    ``committed_at`` for a file whose commit event is missing)."""
    await _settled(daemons, files, timeout, f"{len(files)} files committed")
    found = {(e["tenant"], e["file"]): event_time(e) for d in daemons for e in d.log.find("batch.file.committed")
             if (e["tenant"], e["file"]) in files}
    assert env.client is not None
    for tenant, name in files - set(found):
        entry = await env.client[PLATFORM_DB]["files"].find_one(
            {"tenant": tenant, "name": name, "state": "committed"}, {"committed_at": 1})
        if entry is not None and entry.get("committed_at") is not None:
            found[(tenant, name)] = entry["committed_at"].replace(tzinfo=UTC).timestamp()
    return max(found.values(), default=time.time())


async def _ledger(env: BenchEnv, tenants: Sequence[str]) -> list[dict[str, Any]]:
    """The tenants' ledger entries."""
    assert env.client is not None
    fields = {"tenant": 1, "name": 1, "state": 1, "owner": 1, "archive_path": 1}
    return [doc async for doc in env.client[PLATFORM_DB]["files"].find({"tenant": {"$in": list(tenants)}}, fields)]


async def _check(env: BenchEnv, daemons: Sequence[Instance], tenants: Sequence[str], stream: str,
                 load: Workload) -> dict[str, Any]:
    """What each phase must show (``ok``): every record once, every file committed once (one
    committed ledger entry, one archived copy, nothing rejected, failed or rolled back) and,
    in a cluster, committed by every instance; and (``events_ok``) one ``batch.file.committed``
    event per file across the instances' logs."""
    names = {f"part{k:02d}.csv" for k in range(load.files)}
    expected = {(t, n) for t in tenants for n in names}
    commits = Counter((e["tenant"], e["file"]) for d in daemons for e in d.committed(set(tenants)) if e["file"] in names)
    bad = {name: sum(len([e for e in d.log.find(name) if e.get("tenant") in tenants]) for d in daemons)
           for name in ("batch.file.rejected", "batch.file.rolled_back", "batch.file.failed")}
    lease_lost = [(d.instance_id, e.get("file"), e.get("step")) for d in daemons
                  for e in d.log.find("batch.file.lease_lost") if e.get("tenant") in tenants]
    entries = await _ledger(env, tenants)
    committed = [e for e in entries if e.get("state") == "committed"]
    ledger = Counter((str(e["tenant"]), str(e.get("name"))) for e in committed if e.get("name") in names)
    warm = Counter(str(e["tenant"]) for e in committed if e.get("name") not in names)  # WARM_ROWS each
    owners = Counter(str(e.get("owner")) for e in committed if e.get("name") in names)
    archive_names = {str(e["archive_path"]): str(e.get("name")) for e in entries if e.get("archive_path")}
    archived = Counter((t, name) for d in daemons for t in tenants
                       for p in (d.settings.archive_dir / t / "done").glob("*")
                       if p.is_file() and (name := archive_names.get(str(p), p.name)) in names)
    documents = {t: await env.db(f"tenant_{t}")[FLIGHTS_COLLECTION].count_documents({}) for t in tenants}
    readings = await env.db(f"tenant_{stream}")[STREAM_COLLECTION].count_documents({})
    per_instance = {d.instance_id: owners.get(d.instance_id, 0) for d in daemons}
    checks = {
        "documents_equal_rows": all(n == load.files * load.rows + warm[t] * WARM_ROWS for t, n in documents.items()),
        "readings_equal_messages": readings == load.messages,
        "each_file_one_committed_ledger_entry": set(ledger) == expected and set(ledger.values()) == {1},
        "each_file_archived_once": set(archived) == expected and set(archived.values()) == {1},
        "no_rejected_failed_or_rolled_back": not any(bad.values()),
        "every_instance_committed_files": all(per_instance.values())}
    missing = sorted(f"{t[-6:]}/{n}" for t, n in expected - set(commits))
    return {"ok": all(checks.values()), "checks": checks, "documents": documents, "readings": readings,
            "events_ok": set(commits) == expected and set(commits.values()) == {1},
            "commit_events": sum(commits.values()), "files_without_commit_event": missing,
            "files": len(expected), "ledger_states": dict(Counter(str(e.get("state")) for e in entries)),
            "archived_copies": sum(archived.values()), "other_outcomes": bad, "lease_lost": lease_lost,
            "files_per_instance": per_instance,
            "commit_events_per_instance": {d.instance_id: len([e for e in d.committed(set(tenants))
                                                                if e["file"] in names]) for d in daemons}}


def _stream_share(daemons: Sequence[Instance], stream: str) -> dict[str, dict[str, int]]:
    """Messages each instance committed for the stream tenant, and its consumers at the end."""
    return {d.instance_id: {
        "messages": sum(int(e.get("messages") or 0) for e in d.log.find("stream.batch.committed", tenant=stream)),
        "consumers_started": len(d.log.find("stream.consumer.started", tenant=stream))} for d in daemons}


def _known(env: BenchEnv, daemons: Sequence[Instance]) -> set[int]:
    """The pids whose CPU the run counts by name: daemons, store, broker, this process."""
    store = env.embedded.pid if env.embedded is not None else None
    return {d.pid for d in daemons} | set(_broker_pids()) | {os.getpid()} | ({store} if store else set())


async def _measure(env: BenchEnv, daemons: Sequence[Instance], pairs: Sequence[tuple[Path, Path]], stream: str,
                   weather: DataFile, prefix: str, timeout: float) -> dict[str, Any]:
    """The clock starts as the staged files are renamed and the publish tool is launched, and
    stops when every file is committed and every reading is in the store; each party's CPU
    is read at both ends. Times are seconds since the epoch."""
    first, children0 = snapshot(env, daemons), _self_cpu(resource.RUSAGE_CHILDREN)
    publisher = PublishTool(env.amqp_url, stream, weather.path, prefix)
    t0 = time.time()
    for hidden, visible in pairs:
        os.rename(hidden, visible)
    await publisher.start()
    readings = env.db(f"tenant_{stream}")[STREAM_COLLECTION]
    batch_end, stream_end, summary = await asyncio.gather(
        _batch_done(env, daemons, {(p.parent.name, p.name) for _, p in pairs}, timeout),
        wait_documents(readings, weather.rows, timeout, lambda: all(d.alive() for d in daemons), interval=0.1),
        publisher.wait(timeout))
    last = snapshot(env, daemons)
    publisher_cpu = _self_cpu(resource.RUSAGE_CHILDREN) - children0  # only the publish tool was reaped meanwhile
    first_msg = await readings.find_one({"_id": document_id(f"{prefix}-0", None)}, {"received_at": 1})
    if first_msg is None:
        raise BenchError(f"the first message ({prefix}-0) is not in {stream}'s readings")
    # the stream's clock starts at its first message's publish stamp (the tool takes a moment to start)
    stream_start = min(max(first_msg["received_at"].timestamp(), t0), stream_end)
    return {"t0": t0, "batch_end": batch_end, "stream_start": stream_start, "stream_end": stream_end,
            "cpu": where(first, last, publisher_cpu, _known(env, daemons)), "publisher": summary}


async def _phase(session: Session, label: str, count: int, load: Workload, files: Sequence[DataFile],
                 weather: DataFile) -> dict[str, Any]:
    """Run the whole workload once with ``count`` instances (new tenants, so new databases, and
    new folders); the raw figures of the phase."""
    env, timeout = session.env, min(session.scale.timeout_s, 300.0)
    shared = env.tmp(f"scaleout-{label}")
    tenants = [env.new_tenant("so") for _ in range(load.tenants)]
    stream = env.new_tenant("ss")
    for profile in [*(batch_profile(t) for t in tenants), stream_profile(stream, stream=TENANT_STREAM)]:
        write_profile(shared / "config" / "tenants", profile)
    daemons = [Instance(env, shared, i) for i in INSTANCES[:count]]
    pairs = _stage(shared, tenants, files)
    session.say(f"{NAME}: {label}: {count} daemon(s); {len(pairs)} files of {load.rows:,} rows "
                f"({load.tenants} tenants) and {load.messages:,} messages")
    try:
        await asyncio.gather(*(asyncio.to_thread(d.start, 90.0, (200,)) for d in daemons))
        consumers = await _ready(daemons, tenants, stream, 60.0)
        warm = await _warm(daemons, shared, tenants, env.data_dir, timeout)
        m = await _measure(env, daemons, pairs, stream, weather, f"so{label}", timeout)
    except BaseException:
        for d in daemons:
            d.keep_logs()
        raise
    finally:
        await asyncio.gather(*(asyncio.to_thread(d.stop) for d in daemons))
    checked = await _check(env, daemons, tenants, stream, load)
    if not checked["ok"]:
        for d in daemons:
            d.keep_logs()
    t0, end, stream_s = m["t0"], max(m["batch_end"], m["stream_end"]), m["stream_end"] - m["stream_start"]
    return {"phase": label, "daemons": count, "instances": [d.instance_id for d in daemons],
            "tenants": tenants, "stream_tenant": stream, "records": load.records,
            "batch_records": load.batch_records, "messages": load.messages,
            "seconds": round(end - t0, 3), "batch_seconds": round(m["batch_end"] - t0, 3),
            "stream_seconds": round(stream_s, 3), "records_per_s": round(load.records / (end - t0), 1),
            "batch_records_per_s": round(load.batch_records / (m["batch_end"] - t0), 1),
            "stream_msgs_per_s": round(load.messages / max(stream_s, 1e-3), 1),
            **m["cpu"], **_per_record(m["cpu"], load), "stream_share": _stream_share(daemons, stream),
            **consumers, "warm_up_files": warm, "workers_started_while_measured": sum(
                _workers(d, t, t0) for d in daemons for t in [*tenants, stream]),
            "publisher": m["publisher"], **checked}


def _per_record(cpu: dict[str, Any], load: Workload) -> dict[str, Any]:
    """CPU microseconds per record (batch rows and messages together) of each party."""
    spent, wall = cpu["cpu_s"], cpu["wall_s"] or 1.0

    def us(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds / load.records * 1e6, 2)

    return {"cpu_us_per_record": us(spent["daemon"] + spent["workers"]), "daemon_cpu_us_per_record": us(spent["daemon"]),
            "worker_cpu_us_per_record": us(spent["workers"]), "store_cpu_us_per_record": us(spent["store"]),
            "broker_cpu_us_per_message": None if spent["broker"] is None
            else round(spent["broker"] / load.messages * 1e6, 2),
            "pct_of_a_core": {k: None if v is None else round(100.0 * v / wall, 1) for k, v in spent.items()}}


async def _ceiling(session: Session, run: dict[str, Any], i: int) -> dict[str, Any]:
    """The store's ``insert_many`` of the very documents the phase wrote (every tenant's
    flights, then the readings), one batch at a time into collections indexed like the
    platform's; the mix's records/s is all of them over the summed write times."""
    env = session.env
    target = env.db(f"bench_scaleout_ceiling_{env.run_id}_{i}")
    parts = [(f"tenant_{t}", FLIGHTS_COLLECTION, WRITE_BATCH_SIZE) for t in run["tenants"]]
    parts.append((f"tenant_{run['stream_tenant']}", STREAM_COLLECTION, TENANT_STREAM["batch_max_messages"]))
    session.say(f"{NAME}: ceiling {i + 1}/{session.repeat}: insert_many of the phase's documents")
    timings = []
    for k, (db, collection, batch) in enumerate(parts):
        source = env.db(db)[collection]
        documents = await read_documents(source)
        await copy_indexes(source, target[f"c{k}"])
        timings.append(await insert_many_rate(target[f"c{k}"], documents, batch, env.store_cpu))
    await env.drop(target.name)
    records, seconds = sum(t["records"] for t in timings), sum(t["seconds"] for t in timings)
    store = [t["store_cpu_share"] * t["seconds"] for t in timings if t["store_cpu_share"] is not None]
    return {"records": records, "seconds": round(seconds, 3), "rate": round(records / seconds, 1),
            "store_cpu_share": round(sum(store) / seconds, 3) if len(store) == len(timings) else None,
            "parts": timings}


async def run(session: Session, result: Result) -> None:
    """``repeat`` rounds of both phases (order alternating) and the store's ceiling."""
    env, load = session.env, workload(session)
    files = [flights_slice(load.rows, k * load.rows, env.data_dir) for k in range(load.files)]
    weather = weather_repeated(load.messages, env.data_dir)
    result.settings = {"tenants": load.tenants, "files_per_tenant": load.files, "rows_per_file": load.rows,
                       "messages": load.messages, "records_per_phase": load.records, "instances": list(INSTANCES),
                       "lease_s": LEASE_S, "stream_tenant": TENANT_STREAM, "daemon_batch_settings": BATCH_SETTINGS,
                       "size_factor": os.environ.get(SIZE_ENV) or 1}
    rounds: list[dict[str, Any]] = []
    for i in range(session.repeat):
        phases: dict[int, dict[str, Any]] = {}
        ceiling: dict[str, Any] = {}
        for count in ((1, 2) if i % 2 == 0 else (2, 1)):
            phases[count] = await _phase(session, f"{i + 1}{'ab'[count - 1]}", count, load, files, weather)
            p = phases[count]
            session.say(f"{NAME}:   {p['records_per_s']:,.0f} records/s (batch {p['batch_records_per_s']:,.0f}, "
                        f"stream {p['stream_msgs_per_s']:,.0f}), {p['cpu_us_per_record']} us daemon CPU/record, "
                        f"store {p['pct_of_a_core']['store']} % of a core, checks {'ok' if p['ok'] else 'FAILED'}")
            if not ceiling:
                ceiling = await _ceiling(session, p, i)
            for tenant in [*p["tenants"], p["stream_tenant"]]:
                await env.drop(f"tenant_{tenant}")
        rounds.append({"one": phases[1], "two": phases[2], "ceiling": ceiling})
    result.runs = rounds
    figures(result, rounds, session.machine.get("cores"))
    failed = [f"{p['phase']} ({p['daemons']} daemons): " + ", ".join(k for k, v in p["checks"].items() if not v)
              for r in rounds for p in (r["one"], r["two"]) if not p["ok"]]
    if failed:
        raise BenchError("the workload was not ingested exactly once: " + "; ".join(failed)
                         + " (the daemons' logs are kept under bench/data/failures/)")


def _ratio(values: Sequence[tuple[float | None, float | None]]) -> list[float]:
    return [a / b for a, b in values if a is not None and b]


def figures(result: Result, rounds: list[dict[str, Any]], cores: int | None) -> None:
    """Throughput of both phases and their ratio, against the store's ceiling; CPU per record;
    where the CPU went; and what that predicts where the store is not the bound."""
    one, two, ceil = [r["one"] for r in rounds], [r["two"] for r in rounds], [r["ceiling"] for r in rounds]
    rows: list[tuple[str, str, list[float], str, str]] = [
        ("records_per_s_1", "one daemon: records/s (files and stream together)", [p["records_per_s"] for p in one],
         "records/s", "all records of the phase over the time from the drop to the last record in the store"),
        ("records_per_s_2", "two daemons: records/s", [p["records_per_s"] for p in two], "records/s", ""),
        ("ratio", "two daemons / one daemon, records/s",
         _ratio([(b["records_per_s"], a["records_per_s"]) for a, b in zip(one, two, strict=True)]), "",
         "median of the per-repetition ratios"),
        ("ceiling_records_per_s", "ceiling: the store's insert_many of the same documents",
         [c["rate"] for c in ceil], "records/s", "the bound of both phases on this machine"),
        ("ceiling_ratio_1", "one daemon / ceiling", _ratio([(p["records_per_s"], c["rate"]) for p, c in zip(one, ceil, strict=True)]), "", ""),
        ("ceiling_ratio_2", "two daemons / ceiling", _ratio([(p["records_per_s"], c["rate"]) for p, c in zip(two, ceil, strict=True)]), "", ""),
        ("batch_records_per_s_1", "one daemon: files, records/s", [p["batch_records_per_s"] for p in one], "records/s", ""),
        ("batch_records_per_s_2", "two daemons: files, records/s", [p["batch_records_per_s"] for p in two], "records/s", ""),
        ("batch_ratio", "two / one, files", _ratio([(b["batch_records_per_s"], a["batch_records_per_s"])
                                                    for a, b in zip(one, two, strict=True)]), "", ""),
        ("stream_msgs_per_s_1", "one daemon: stream, msg/s", [p["stream_msgs_per_s"] for p in one], "msg/s", ""),
        ("stream_msgs_per_s_2", "two daemons: stream, msg/s", [p["stream_msgs_per_s"] for p in two], "msg/s", ""),
        ("stream_ratio", "two / one, stream", _ratio([(b["stream_msgs_per_s"], a["stream_msgs_per_s"])
                                                      for a, b in zip(one, two, strict=True)]), "", ""),
        ("store_cpu_pct_1", "store CPU, one daemon", [p["pct_of_a_core"]["store"] for p in one
                                                      if p["pct_of_a_core"]["store"] is not None], "% of a core", ""),
        ("store_cpu_pct_2", "store CPU, two daemons", [p["pct_of_a_core"]["store"] for p in two
                                                       if p["pct_of_a_core"]["store"] is not None], "% of a core", ""),
        ("store_cpu_ceiling_pct", "store CPU during the ceiling", [100.0 * c["store_cpu_share"] for c in ceil
                                                                   if c["store_cpu_share"] is not None], "% of a core", ""),
        ("cpu_us_per_record_1", "one daemon: daemon + worker CPU per record", [p["cpu_us_per_record"] for p in one], "µs",
         "user+sys of the daemons and their app workers over the phase, per record of the mix"),
        ("cpu_us_per_record_2", "two daemons: daemons + workers CPU per record", [p["cpu_us_per_record"] for p in two], "µs", ""),
        ("cpu_per_record_ratio", "two / one, daemon + worker CPU per record",
         _ratio([(b["cpu_us_per_record"], a["cpu_us_per_record"]) for a, b in zip(one, two, strict=True)]), "×",
         "above 1: what coordinating through the store (claims, leases, heartbeats) and a second idle daemon cost"),
        ("store_cpu_us_per_record_1", "one daemon: store CPU per record", [p["store_cpu_us_per_record"] for p in one
                                                                          if p["store_cpu_us_per_record"] is not None], "µs", ""),
        ("store_cpu_us_per_record_2", "two daemons: store CPU per record", [p["store_cpu_us_per_record"] for p in two
                                                                           if p["store_cpu_us_per_record"] is not None], "µs", ""),
    ]
    for key, label, values, unit, note in rows:
        result.add(metric_from_runs(key, label, values, unit, note=note))
    per_core = [1e6 / p["cpu_us_per_record"] for p in two if p["cpu_us_per_record"]]
    result.add(metric_from_runs("records_per_s_per_daemon_core", "predicted: records/s of this mix per daemon core "
                                "(1 / two daemons' CPU per record)", per_core, "records/s",
                                note="what each core given to a daemon adds, while the store keeps up"))
    _notes(result, one, two, cores)


def _mean_pct(phases: list[dict[str, Any]], party: str) -> float | None:
    return median([p["pct_of_a_core"][party] for p in phases if p["pct_of_a_core"][party] is not None])


def _notes(result: Result, one: list[dict[str, Any]], two: list[dict[str, Any]], cores: int | None) -> None:
    """Where the CPU went in each phase, the work each instance did, and the prediction."""
    for label, phases in (("one daemon", one), ("two daemons", two)):
        shares = ", ".join(f"{party} {pct:.0f} %" for party in _PARTIES
                           if (pct := _mean_pct(phases, party)) is not None)
        busy = median([100.0 * p["machine_busy_s"] / p["wall_s"] for p in phases if p["wall_s"]])
        result.notes.append(f"where the time goes, {label} (CPU of a core, medians): {shares}; the machine "
                            f"was {busy or 0:.0f} % of a core busy of {100 * (cores or 1)} %")
    last = two[-1]
    files = ", ".join(f"{k} {v}" for k, v in last["files_per_instance"].items())
    events = ", ".join(f"{k} {v}" for k, v in last["commit_events_per_instance"].items())
    msgs = ", ".join(f"{k} {v['messages']:,} (consumers: {last['consumers_at_start'].get(k)})"
                     for k, v in last["stream_share"].items())
    settle = [p["consumers_settled_after_s"] for p in two]
    msgs += (f"; the consumers settled within max_consumers {median([s for s in settle if s is not None]) or 0:.0f} s "
             f"after onboarding (median{'' if None not in settle else ', some never did'})")
    result.notes.append(f"work shared in the last two-daemon phase: files committed per instance {files} (ledger "
                        f"owner; `batch.file.committed` events: {events}); stream messages per instance {msgs}; "
                        "every phase checked: documents = rows, each file one committed ledger entry and one "
                        "archived copy, none rejected, failed or rolled back"
                        + ("" if all(p["ok"] for p in one + two) else " — **some checks failed**, see the runs"))
    silent = [f"{p['phase']}: {f}" for p in one + two for f in p["files_without_commit_event"]]
    if silent:
        result.notes.append(f"{len(silent)} file(s) committed in the ledger (and archived late) without a "
                            f"`batch.file.committed` event in any instance's log ({'; '.join(silent)}): their "
                            "commit time is the ledger's `committed_at`")
    lost = [f"{p['phase']}: {i} {f} ({step})" for p in one + two for i, f, step in p["lease_lost"]]
    if lost:
        held = all(p["ok"] for p in one + two if p["lease_lost"])
        result.notes.append(f"`batch.file.lease_lost` was logged {len(lost)} time(s) ({'; '.join(lost)}); "
                            + ("the phases' exactness checks passed all the same" if held
                               else "see the failed checks of those phases"))
    ratio, store1, store2, busy1, busy2 = (result.figure(k) for k in (
        "ratio", "store_cpu_us_per_record_1", "store_cpu_us_per_record_2", "store_cpu_pct_1", "store_cpu_pct_2"))
    if ratio and store1 and store2 and busy1 and busy2:
        result.notes.append(
            f"with the store the bound, records/s follow its CPU per record and how busy it was: it spent "
            f"{store1:.0f} µs per record serving one daemon and {store2:.0f} µs serving two (what a second "
            f"instance adds at the store per record: ledger claims, lease renewals, heartbeats, scaling "
            f"decisions), and was {busy1:.0f} % and {busy2:.0f} % of a core busy: together "
            f"{store1 / store2 * busy2 / busy1:.2f}, against the measured ratio of {ratio:.2f}")
    per_core, ceiling = result.figure("records_per_s_per_daemon_core"), result.figure("ceiling_records_per_s")
    if per_core and ceiling:
        result.notes.append(
            f"prediction for a cluster whose store is not the bound: each daemon core adds about {per_core:,.0f} "
            f"records/s of this mix, so N daemons of one core each ingest about N × {per_core:,.0f} records/s "
            f"while the store and the broker take it; this machine's store takes {ceiling:,.0f} records/s, so "
            f"here {ceiling / per_core:.2f} daemon cores already reach its ceiling"
            + (f"; at {store2:.0f} µs of store CPU per record, each daemon core's records need about "
               f"{per_core * store2 / 1e6:.1f} cores of this store (the embedded NX-27017; a MongoDB replica "
               "set's or sharded cluster's cost per record is its own, measured by pointing "
               "MYSIMBDP_BENCH_MONGO_URI at it)" if store2 else ""))
    result.add(Metric("checks_passed", "phases that passed every exactness check",
                      float(sum(p["ok"] for p in one + two)), f"of {len(one + two)}"))
    result.add(Metric("commit_events_passed", "phases with one `batch.file.committed` event per file",
                      float(sum(p["events_ok"] for p in one + two)), f"of {len(one + two)}"))
