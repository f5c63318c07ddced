"""One scaling decision per tenant across the instances sharing a store and a broker.

Of the daemons consuming one tenant's queue, one decides its consumer count: the monitor of
the instance holding the lease ``scale:<tenant>`` (:class:`mysimbdp.cluster.leases.Leases`;
taken over when its holder stops renewing it, given up at once when it drains). It
evaluates the rules on every instance's latest reports (``mysimbdp.reports``) and the queue
depth, and publishes the cluster-wide total in ``mysimbdp.scaling``::

    {_id: tenant, state: "running" | "stopped", total, shares: [{instance, consumers}],
     decided_by, reason, at, version, running: [{instance, consumers}], rev}

``shares`` splits ``total`` over the live instances that serve the tenant (:func:`split`):
those with an entry in ``running``, where every instance following the tenant writes what it
runs at each evaluation (so a daemon configured without the tenant, or one of another
cluster's tests, never gets a share it would not run). ``rev`` is the compare-and-swap counter
of ``running``. Both are lists, not maps keyed by instance id: an id may hold a dot, which a
field name should not. A document with ``running`` only (no ``state``) is no decision yet.

Every instance, holder or not, follows the decision on each evaluation tick
(:meth:`ClusterScaling.follow`): it stops when the state is ``stopped``, shrinks to its share
at once, and grows only as far as the other live instances leave room under ``total``
(:func:`admissible`, from the larger of each one's heartbeat count and its entry in
``running``, written with a compare-and-swap): while shares move (an instance joins or goes)
the cluster never runs more than the total, and the total never exceeds ``max_consumers``.
Operators set the total (``stream scale``) and the state (``stream start``/``stop``) through
the same document. See ``docs/monitoring.md``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from mysimbdp.events import EventBus
from mysimbdp.events.catalog import MonitorScaleFailed, MonitorShareWaiting
from mysimbdp.monitor.ports import InstanceDirectory, LeaseHolder, PlatformStore, StreamControl
from mysimbdp.monitor.reports import Report, report_from_event

__all__ = ["ClusterScaling", "ScaleDecision", "split", "admissible", "COLLECTION", "LEASE_PREFIX",
           "MAX_INSTANCES", "MAX_PEER_REPORTS", "State"]

COLLECTION = "scaling"
LEASE_PREFIX = "scale:"
MAX_INSTANCES = 1000  # instances a decision is shared among (the registry lists as many)
MAX_PEER_REPORTS = 2000  # stored reports read per evaluation
REPORTS = "reports"  # where the monitors store every report (mysimbdp.monitor.scaling)
RESHARED = "instances changed ("  # how a re-shared decision's reason begins
CAS_TRIES = 3  # attempts at writing this instance's running count against concurrent writers
State = Literal["running", "stopped"]


def split(total: int, instances: Sequence[str]) -> dict[str, int]:
    """``total`` consumers over ``instances`` (sorted by id): each gets ``total // n``, the first
    ``total % n`` one more. Every instance sees the same split from the same live list."""
    ids = sorted(set(instances))[:MAX_INSTANCES]
    if not ids:
        return {}
    base, extra = divmod(max(0, total), len(ids))
    return {instance: base + (1 if i < extra else 0) for i, instance in enumerate(ids)}


def admissible(share: int, running: int, others: int, total: int) -> int:
    """How many consumers an instance running ``running`` may run now toward ``share``.

    Shrinking is always allowed; growing only as far as ``total`` minus what the other
    instances run (``others``), never below what it runs already.
    """
    if share <= running:
        return share
    return max(running, min(share, total - others))


def _pairs(value: object) -> dict[str, int]:
    """``[{instance, consumers}]`` as stored -> ``{instance: consumers}`` (odd entries skipped)."""
    out: dict[str, int] = {}
    if isinstance(value, list):
        for item in value[:MAX_INSTANCES]:
            if isinstance(item, Mapping) and isinstance(item.get("instance"), str):
                n = item.get("consumers")
                out[item["instance"]] = n if isinstance(n, int) and not isinstance(n, bool) else 0
    return out


def _as_pairs(counts: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{"instance": i, "consumers": n} for i, n in sorted(counts.items())]


@dataclass(frozen=True)
class ScaleDecision:
    """A tenant's published decision, as read from ``mysimbdp.scaling``."""

    tenant: str
    state: State
    total: int
    shares: dict[str, int]
    decided_by: str | None
    reason: str
    at: float
    version: int
    running: dict[str, int] = field(default_factory=dict)
    rev: int = 0

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ScaleDecision:
        """Read a stored decision (lenient: a field missing or odd reads as none)."""
        total = doc.get("total")
        return cls(tenant=str(doc["_id"]), state="stopped" if doc.get("state") == "stopped" else "running",
                   total=total if isinstance(total, int) and not isinstance(total, bool) else 0,
                   shares=_pairs(doc.get("shares")), decided_by=_str(doc.get("decided_by")),
                   reason=str(doc.get("reason") or ""), at=float(doc.get("at") or 0.0),
                   version=int(doc.get("version") or 0), running=_pairs(doc.get("running")),
                   rev=int(doc.get("rev") or 0))

    def share_of(self, instance: str) -> int:
        """The instance's share (0 when the decision left it out: it joined since)."""
        return 0 if self.state == "stopped" else self.shares.get(instance, 0)

    def view(self) -> dict[str, Any]:
        """The decision as ``stream status`` shows it."""
        return {"state": self.state, "total": self.total, "shares": dict(sorted(self.shares.items())),
                "decided_by": self.decided_by, "reason": self.reason,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)) if self.at else None,
                "version": self.version}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


class ClusterScaling:
    """This instance's part in the tenants' scaling decisions: lead (hold the lease), publish,
    follow (run its share). Held by the monitor; the operator endpoints use it too."""

    def __init__(self, *, store: PlatformStore, leases: LeaseHolder, instances: InstanceDirectory,
                 stream: StreamControl, bus: EventBus, stopping: asyncio.Event) -> None:
        self.store = store
        self.leases = leases
        self.instances = instances
        self.stream = stream
        self.events = bus.emitter("monitor")
        self._stopping = stopping
        self._held: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def id(self) -> str:
        """This instance's id."""
        return self.instances.id

    @property
    def collection(self) -> Any:
        """``mysimbdp.scaling``."""
        return self.store.platform_db[COLLECTION]

    def _lock(self, tenant: str) -> asyncio.Lock:
        return self._locks.setdefault(tenant, asyncio.Lock())

    # ---- leading ---------------------------------------------------------------------------

    async def lead(self, tenant: str) -> bool:
        """Take or renew the tenant's scale lease; True if this instance decides for it now."""
        name = LEASE_PREFIX + tenant
        if self._stopping.is_set():
            return False
        held = await self.leases.hold(name)
        (self._held.add if held else self._held.discard)(name)
        return held

    async def release_all(self) -> None:
        """Give up every scale lease this instance holds (at drain): another decides at once."""
        held, self._held = sorted(self._held), set()
        for name in held:
            await self.leases.release(name)

    async def deciding(self, tenant: str) -> str | None:
        """The instance deciding for ``tenant`` now (None when the lease lapsed)."""
        return await self.leases.holder_of(LEASE_PREFIX + tenant)

    # ---- reading the cluster ---------------------------------------------------------------

    async def decision(self, tenant: str) -> ScaleDecision | None:
        """The tenant's published decision, if any (the instances' ``running`` alone is none)."""
        doc = await self.collection.find_one({"_id": tenant})
        return ScaleDecision.from_doc(doc) if doc is not None and "state" in doc else None

    async def members(self, tenant: str) -> list[str]:
        """The live instances serving ``tenant`` (an entry in ``running``), this one among them."""
        doc = await self.collection.find_one({"_id": tenant}) or {}
        live = set((await self.instances.live_ids())[:MAX_INSTANCES])
        return sorted({i for i in _pairs(doc.get("running")) if i in live} | {self.id})

    async def peers(self) -> dict[str, dict[str, Any]]:
        """The other live instances' heartbeat documents, by id (at most :data:`MAX_INSTANCES`)."""
        docs = (await self.instances.live())[:MAX_INSTANCES]
        return {str(d["_id"]): d for d in docs if str(d["_id"]) != self.id}

    @staticmethod
    def reported(peers: Mapping[str, Mapping[str, Any]], tenant: str) -> dict[str, int]:
        """Each peer's consumers of ``tenant`` as its last heartbeat said."""
        out = {}
        for instance, doc in peers.items():
            consumers = doc.get("consumers")
            n = consumers.get(tenant, 0) if isinstance(consumers, Mapping) else 0
            out[instance] = n if isinstance(n, int) and not isinstance(n, bool) else 0
        return out

    async def peer_reports(self, tenant: str, horizon_s: float, peers: Sequence[str]) -> list[Report]:
        """The latest stored report of each consumer of the live ``peers`` received within
        ``horizon_s``, its ``instance`` prefixed with the daemon's id (two daemons both run a
        ``<tenant>-c1``). This instance's own reports are the monitor's, in memory."""
        if not peers:
            return []
        since = time.time() - horizon_s
        cursor = self.store.platform_db[REPORTS].find(
            {"tenant": tenant, "received_s": {"$gte": since}}).sort("received_s", DESCENDING).limit(MAX_PEER_REPORTS)
        live, latest = set(peers), {}
        async for doc in cursor:
            daemon = doc.get("daemon")
            if daemon not in live or daemon == self.id:
                continue
            key = f"{daemon}/{doc.get('instance')}"
            if key in latest:
                continue
            try:
                report = report_from_event(doc)
            except ValueError:  # a stored report of an older version: not counted
                continue
            latest[key] = report.model_copy(update={"instance": key})
        return list(latest.values())

    # ---- deciding --------------------------------------------------------------------------

    async def publish(self, tenant: str, total: int, reason: str, state: State = "running") -> ScaleDecision:
        """Write the tenant's decision: ``total`` shared among the live instances."""
        shares = split(total if state == "running" else 0, await self.members(tenant))
        doc = {"state": state, "total": total, "shares": _as_pairs(shares), "decided_by": self.id,
               "reason": reason[:500], "at": time.time()}
        await self.collection.update_one({"_id": tenant}, {"$set": doc, "$inc": {"version": 1, "rev": 1}},
                                         upsert=True)
        found = await self.decision(tenant)
        if found is None:  # written a moment ago: only a store that lost it answers this
            raise RuntimeError(f"the scaling decision of tenant {tenant!r} was not found after writing it")
        return found

    async def reshare(self, tenant: str, decision: ScaleDecision, low: int, high: int) -> ScaleDecision:
        """Publish the decision again when the live instances differ from its shares (one
        joined or went), or its total is outside the profile's ``[low, high]`` now (the
        profile was edited): the leader's duty on each evaluation."""
        if decision.state != "running":
            return decision
        live = await self.members(tenant)
        total = min(max(decision.total, low), high)
        if sorted(decision.shares) == live and total == decision.total:
            return decision
        joined, gone = sorted(set(live) - set(decision.shares)), sorted(set(decision.shares) - set(live))
        why = "; ".join(part for part in (f"joined: {', '.join(joined)}" if joined else "",
                                          f"gone: {', '.join(gone)}" if gone else "",
                                          f"bounds [{low}, {high}]" if total != decision.total else "") if part)
        reason = decision.reason
        if reason.startswith(RESHARED):  # say why the total is what it is, not every earlier move
            reason = reason.partition("); ")[2]
        return await self.publish(tenant, total, f"{RESHARED}{why}); {reason}"[:500])

    async def set_total(self, tenant: str, total: int, reason: str,
                        unless_stopped: bool = False) -> tuple[int, int, ScaleDecision]:
        """Publish ``total`` (state running) and run this instance's share at once; ``(from, to,
        decision)`` of this instance's consumers. ``unless_stopped`` (the monitor's scaling):
        leave a decision that is ``stopped`` as it is, so that a stop made since the monitor
        looked is not undone by it."""
        async with self._lock(tenant):
            current = await self.decision(tenant) if unless_stopped else None
            if current is not None and current.state == "stopped":
                n = self.stream.consumer_count(tenant)
                return n, n, current
            decision = await self.publish(tenant, total, reason)
            before, after = await self._apply(decision)
        return before, after, decision

    async def set_state(self, tenant: str, state: State, total: int, reason: str) -> tuple[int, int, ScaleDecision]:
        """Start (``total`` consumers) or stop the tenant's stream on every instance; this one at once."""
        async with self._lock(tenant):
            decision = await self.publish(tenant, total, reason, state)
            before, after = await self._apply(decision)
        return before, after, decision

    # ---- following -------------------------------------------------------------------------

    async def follow(self, tenant: str) -> tuple[int, int] | None:
        """Run this instance's share of the tenant's decision (None: there is none yet)."""
        if self._stopping.is_set():
            return None
        async with self._lock(tenant):
            decision = await self.decision(tenant)
            if decision is None:  # nothing decided yet: say that this instance serves the tenant
                await self._note_running(tenant, self.stream.consumer_count(tenant))
                return None
            try:
                return await self._apply(decision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # tenant gone, broker down, app not loadable: next tick again
                n = self.stream.consumer_count(tenant)
                self.events.emit(MonitorScaleFailed(tenant=tenant, consumers=n, target=decision.share_of(self.id),
                                                    reason=decision.reason, error=str(exc)[:300]))
                return None

    async def admit(self, tenant: str, wanted: int) -> int:
        """How many of ``wanted`` consumers this instance may start as the tenant's stream comes
        up here (onboarding, a profile change, the broker back): at most its share of the
        decision (before any, all of them), and only into room the others leave under the total
        (before any decision, under ``max_consumers``), so instances coming up together never
        take the cluster past it. Without the store: all of them, as a lone daemon would."""
        try:
            async with self._lock(tenant):
                decision = await self.decision(tenant)
                high = self.stream.bounds(tenant)[1]
                running = self.stream.consumer_count(tenant)
                share = wanted if decision is None else decision.share_of(self.id)
                return await self._reserve(tenant, min(wanted, share, high), running, high)
        except asyncio.CancelledError:
            raise
        except Exception:  # the store unreachable: the stream starts as it would alone
            return wanted

    async def _apply(self, decision: ScaleDecision) -> tuple[int, int]:
        tenant, stream, by = decision.tenant, self.stream, decision.decided_by
        before = stream.consumer_count(tenant)
        if self._stopping.is_set():
            return before, before
        if decision.state == "stopped":
            if stream.is_running(tenant):
                await stream.stop_tenant(tenant, decision.reason, decided_by=by)
            await self._note_running(tenant, 0)
            return before, 0
        share = min(decision.share_of(self.id), stream.bounds(tenant)[1])
        if not stream.is_running(tenant):
            await stream.start_tenant(tenant, decision.reason, count=0, decided_by=by)
        if share <= before:
            if share < before:
                await stream.scale(tenant, share, decision.reason, decided_by=by, share=True)
            await self._note_running(tenant, share)
            return before, share
        allowed = await self._reserve(tenant, share, before, stream.bounds(tenant)[1])
        if allowed > before:
            await stream.scale(tenant, allowed, decision.reason, decided_by=by, share=True)
        after = stream.consumer_count(tenant)
        if after != allowed:  # fewer started than reserved (broker trouble): say what runs
            await self._note_running(tenant, after)
        return before, after

    async def _reserve(self, tenant: str, share: int, running: int, high: int) -> int:
        """Write this instance's new count into ``running`` if the others leave room for it
        under the total (and ``high``, the profile's ``max_consumers`` now; before any
        decision, under ``high``); the count it may run (compare-and-swap on ``rev``: a
        concurrent writer makes it retry)."""
        for _ in range(CAS_TRIES):
            doc = await self.collection.find_one({"_id": tenant})
            if doc is None:  # the first instance to serve the tenant
                allowed = min(share, high)
                try:
                    await self.collection.insert_one({"_id": tenant, "running": _as_pairs({self.id: allowed}),
                                                      "rev": 1})
                    return allowed
                except DuplicateKeyError:  # another instance wrote first: read it again
                    continue
            decision = ScaleDecision.from_doc(doc)
            peers = await self.peers()
            heard = self.reported(peers, tenant)
            others = sum(max(heard.get(i, 0), decision.running.get(i, 0)) for i in peers)
            total = min(decision.total, high) if "state" in doc else high
            allowed = admissible(share, running, others, total)
            if allowed < share:
                self.events.emit(MonitorShareWaiting(tenant=tenant, share=share, running=running,
                                                     others=others, total=total))
            counts = {i: n for i, n in decision.running.items() if i in peers}
            counts[self.id] = allowed
            result = await self.collection.update_one(
                {"_id": tenant, "rev": decision.rev}, {"$set": {"running": _as_pairs(counts)}, "$inc": {"rev": 1}})
            if result.modified_count:
                return allowed
        return running

    async def _note_running(self, tenant: str, count: int) -> None:
        """Say what this instance runs now (after shrinking, or unchanged: no check needed);
        the entry also makes it one of the instances the tenant's total is shared among."""
        for _ in range(CAS_TRIES):
            doc = await self.collection.find_one({"_id": tenant})
            if doc is None:
                try:
                    await self.collection.insert_one({"_id": tenant, "running": _as_pairs({self.id: count}), "rev": 1})
                    return
                except DuplicateKeyError:  # another instance wrote first: read it again
                    continue
            running = _pairs(doc.get("running"))
            if running.get(self.id) == count:
                return
            result = await self.collection.update_one(
                {"_id": tenant, "rev": int(doc.get("rev") or 0)},
                {"$set": {"running": _as_pairs({**running, self.id: count})}, "$inc": {"rev": 1}})
            if result.modified_count:
                return

    async def leave(self, tenant: str) -> None:
        """This instance no longer serves ``tenant`` (offboarded here): take its entry out, so
        the next decision shares the total among the others."""
        for _ in range(CAS_TRIES):
            doc = await self.collection.find_one({"_id": tenant})
            running = _pairs(doc.get("running")) if doc is not None else {}
            if doc is None or self.id not in running:
                return
            running.pop(self.id)
            result = await self.collection.update_one(
                {"_id": tenant, "rev": int(doc.get("rev") or 0)},
                {"$set": {"running": _as_pairs(running)}, "$inc": {"rev": 1}})
            if result.modified_count:
                return
