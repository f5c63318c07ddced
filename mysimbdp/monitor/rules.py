"""The monitor's rule set, as pure logic: reports and counts in, alerts and a decision out.

Nothing here does I/O or looks at the clock: :func:`evaluate` is given everything it needs
(the latest report of each instance, the consumer count, the queue depth, ``now``) and the
tenant's :class:`RuleState`, which it updates. :class:`mysimbdp.monitor.scaling.Monitor` gathers
the inputs, runs it once per report period and carries out the decision. The rules are
documented in ``docs/monitoring.md``.

The rules, per tenant:

* **latency** — the messages of the period had a mean ``avg_ingest_ms`` above
  ``max_avg_ingest_ms``;
* **backlog** — the queue holds more than ``max_queue_depth`` messages.

The streaks count **reports**, not evaluations: an evaluation counts (and may decide) only
when some instance's latest report is newer than the one the previous counted evaluation
saw; otherwise its verdict is ``stale`` and nothing changes. A report is never counted twice,
however the monitor's timer falls against the consumers' reports.

A breach (either rule) in ``breaches_before_alert`` consecutive reports raises one alert per
breached rule and adds ``scale_up_step`` consumers, bounded by ``max_consumers``; if the
cooldown blocks it, the first new report after the cooldown that still breaches scales up.
While nothing can be done (at ``max_consumers``) the alert repeats every
``breaches_before_alert`` breaches. When the queue is empty and the consumers are idle (no
message at all: down to ``min_consumers``) or underused (still under ``idle_utilization``
busy with one consumer fewer: one fewer) in ``idle_reports_before_scale_down`` consecutive
reports, consumers are removed. After any change, no decision is taken for ``cooldown_s``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from mysimbdp.monitor.reports import Report
from mysimbdp.tenants import TenantProfile

__all__ = ["Limits", "Snapshot", "Alert", "Decision", "RuleState", "evaluate", "Verdict"]

Verdict = Literal["breach", "ok", "idle", "underused", "stale"]


@dataclass(frozen=True)
class Limits:
    """One tenant's thresholds and consumer bounds, from its profile's ``[monitor]`` and ``[stream]``
    (the defaults live in :mod:`mysimbdp.tenants`)."""

    max_avg_ingest_ms: float
    max_queue_depth: int
    breaches_before_alert: int
    cooldown_s: float
    idle_reports_before_scale_down: int
    scale_up_step: int
    idle_utilization: float
    min_consumers: int
    max_consumers: int

    @classmethod
    def of(cls, profile: TenantProfile) -> Limits | None:
        """The tenant's limits, or None when it has no ``[stream]`` section."""
        if profile.stream is None:
            return None
        m = profile.monitor
        return cls(m.max_avg_ingest_ms, m.max_queue_depth, m.breaches_before_alert, m.cooldown_s,
                   m.idle_reports_before_scale_down, m.scale_up_step, m.idle_utilization,
                   profile.stream.min_consumers, profile.stream.max_consumers)


@dataclass(frozen=True)
class Snapshot:
    """What one evaluation sees: the latest report of each live instance, consumers, queue depth."""

    reports: tuple[Report, ...]
    consumers: int
    queue_depth: int | None = None

    @property
    def messages(self) -> int:
        """Messages of every instance's latest window."""
        return sum(r.messages for r in self.reports)

    @property
    def avg_ingest_ms(self) -> float:
        """Mean ingest time over those messages (each instance weighted by its messages)."""
        n = self.messages
        return sum(r.avg_ingest_ms * r.messages for r in self.reports) / n if n else 0.0

    @property
    def p95_ingest_ms(self) -> float:
        """The worst instance's 95th percentile (an upper bound of the tenant's)."""
        return max((r.p95_ingest_ms for r in self.reports if r.messages), default=0.0)

    @property
    def backlog(self) -> int | None:
        """The queue depth: measured by the manager if known, else the largest any report saw."""
        if self.queue_depth is not None:
            return self.queue_depth
        return max((r.queue_depth for r in self.reports if r.queue_depth is not None), default=None)

    @property
    def utilization(self) -> float:
        """Share of the windows' time the instances spent processing (0 = idle, 1 = saturated)."""
        window_ms = sum(r.seconds for r in self.reports) * 1000.0
        busy_ms = sum(r.messages * r.avg_processing_ms for r in self.reports)
        return min(busy_ms / window_ms, 1.0) if window_ms > 0 else 0.0


@dataclass(frozen=True)
class Alert:
    """A breached rule: the ``monitor.alert`` event."""

    tenant: str
    rule: Literal["latency", "backlog"]
    observed: float
    threshold: float


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation.

    ``target`` is the consumer count to scale to (None: no change); ``reason`` says why in
    words an operator reads in the log; ``skipped`` says why a wanted change was not made.
    """

    tenant: str
    verdict: Verdict
    alerts: tuple[Alert, ...] = ()
    target: int | None = None
    reason: str = ""
    skipped: str | None = None


@dataclass
class RuleState:
    """What the rules remember between evaluations of one tenant."""

    breach_streak: int = 0
    idle_streak: int = 0
    last_change: float | None = None  # monotonic seconds of the last consumer change
    history: list[Verdict] = field(default_factory=list)
    #: ``window_end`` of each instance's report the last counted evaluation saw
    seen: dict[str, datetime] = field(default_factory=dict)

    def take_new_reports(self, snap: Snapshot) -> bool:
        """Whether ``snap`` holds a report newer than the last counted evaluation's (and remember it)."""
        new = any(r.window_end > self.seen[r.instance] if r.instance in self.seen else True
                  for r in snap.reports)
        if new:
            self.seen = {r.instance: r.window_end for r in snap.reports}
        return new

    def note_change(self, now: float) -> None:
        """A consumer change happened (by the monitor or an operator): start the cooldown."""
        self.last_change = now
        self.idle_streak = 0

    def cooldown_left(self, limits: Limits, now: float) -> float:
        """Seconds until decisions are allowed again (0 when allowed)."""
        if self.last_change is None:
            return 0.0
        return max(0.0, limits.cooldown_s - (now - self.last_change))


def evaluate(tenant: str, limits: Limits, snap: Snapshot, state: RuleState, now: float) -> Decision:
    """Apply the rules to one snapshot; updates ``state`` and returns the decision.

    A snapshot without a report newer than the last counted one is ``stale``: the streaks
    are kept as they are and nothing is decided, unless the manager's own measure of the
    queue is over ``max_queue_depth``. No consumer reports then (none left, at
    ``min_consumers = 0``, or all stuck), and the backlog alone is a breach, one per
    evaluation (evaluations follow the report schedule).
    """
    if state.take_new_reports(snap):
        alerts = tuple(_breaches(tenant, limits, snap))
        verdict = _verdict(limits, snap, alerts)
    else:
        alerts = tuple(_unreported_backlog(tenant, limits, snap))
        if not alerts:
            return Decision(tenant, "stale")
        verdict = "breach"
    state.history = [*state.history[-19:], verdict]
    if verdict == "breach":
        state.idle_streak = 0
        state.breach_streak += 1
        n = limits.breaches_before_alert
        if state.breach_streak < n:
            return Decision(tenant, verdict)
        # alert at the n-th breach and every n breaches after while nothing can be done
        alerting = (state.breach_streak - n) % n == 0
        return _scale_up(tenant, limits, snap, state, now, alerts, alerting)
    state.breach_streak = 0
    if verdict == "ok" or snap.consumers <= limits.min_consumers:
        state.idle_streak = 0
        return Decision(tenant, verdict)
    state.idle_streak += 1
    if state.idle_streak < limits.idle_reports_before_scale_down:
        return Decision(tenant, verdict)
    if state.cooldown_left(limits, now) > 0:
        return Decision(tenant, verdict)  # keep the streak: scale down once the cooldown ends
    state.idle_streak = 0
    return _scale_down(tenant, limits, snap, verdict)


def _breaches(tenant: str, limits: Limits, snap: Snapshot) -> Iterable[Alert]:
    if snap.messages and snap.avg_ingest_ms > limits.max_avg_ingest_ms:
        yield Alert(tenant, "latency", round(snap.avg_ingest_ms, 3), limits.max_avg_ingest_ms)
    backlog = snap.backlog
    if backlog is not None and backlog > limits.max_queue_depth:
        yield Alert(tenant, "backlog", backlog, limits.max_queue_depth)


def _unreported_backlog(tenant: str, limits: Limits, snap: Snapshot) -> Iterable[Alert]:
    """The backlog rule on the manager's measured depth only (the reports are old news)."""
    if snap.queue_depth is not None and snap.queue_depth > limits.max_queue_depth:
        yield Alert(tenant, "backlog", snap.queue_depth, limits.max_queue_depth)


def _verdict(limits: Limits, snap: Snapshot, alerts: tuple[Alert, ...]) -> Verdict:
    if alerts:
        return "breach"
    if snap.backlog:  # messages waiting (unknown depth counts as empty)
        return "ok"
    if snap.messages == 0:
        return "idle"
    if snap.consumers > 1:
        after = snap.utilization * snap.consumers / (snap.consumers - 1)
        if after < limits.idle_utilization:
            return "underused"
    return "ok"


def _describe(alerts: tuple[Alert, ...]) -> str:
    names = {"latency": "avg_ingest_ms", "backlog": "queue_depth"}
    limits = {"latency": "max_avg_ingest_ms", "backlog": "max_queue_depth"}
    return ", ".join(f"{a.rule} {names[a.rule]}={a.observed:g} > {limits[a.rule]}={a.threshold:g}"
                     for a in alerts)


def _scale_up(tenant: str, limits: Limits, snap: Snapshot, state: RuleState, now: float,
              alerts: tuple[Alert, ...], alerting: bool) -> Decision:
    """Scale up now, or say why not (the streak is kept: the next allowed evaluation acts)."""
    why = f"{_describe(alerts)} for {state.breach_streak} consecutive reports"
    shown = alerts if alerting else ()
    blocked = None
    left = state.cooldown_left(limits, now)
    if snap.consumers >= limits.max_consumers:
        blocked = f"already at max_consumers={limits.max_consumers}"
    elif left > 0:
        blocked = f"in cooldown for {left:.1f}s more (cooldown_s={limits.cooldown_s:g})"
    if blocked is not None:
        return Decision(tenant, "breach", shown, skipped=f"{why}; {blocked}" if alerting else None)
    state.breach_streak = 0
    target = min(snap.consumers + limits.scale_up_step, limits.max_consumers)
    return Decision(tenant, "breach", shown, target,
                    f"monitor scale-up: {why}; +{target - snap.consumers} consumer(s)")


def _scale_down(tenant: str, limits: Limits, snap: Snapshot, verdict: Verdict) -> Decision:
    n = limits.idle_reports_before_scale_down
    if verdict == "idle":
        target = limits.min_consumers
        why = f"idle for {n} consecutive reports (queue empty, no messages); down to min_consumers"
    else:
        target = max(snap.consumers - 1, limits.min_consumers, 1)
        busy = snap.utilization
        after = busy * snap.consumers / (snap.consumers - 1)
        why = (f"underused for {n} consecutive reports (queue empty, consumers {busy:.0%} busy, "
               f"{after:.0%} with one fewer < idle_utilization={limits.idle_utilization:g})")
    if target >= snap.consumers:
        return Decision(tenant, verdict)
    return Decision(tenant, verdict, target=target, reason=f"monitor scale-down: {why}")
