"""The monitor's rules as pure logic: reports in, alerts and decisions out."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from mysimbdp.monitor.reports import Report
from mysimbdp.monitor.rules import Limits, RuleState, Snapshot, evaluate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = Limits(max_avg_ingest_ms=1000, max_queue_depth=100, breaches_before_alert=2, cooldown_s=30,
                idle_reports_before_scale_down=3, scale_up_step=1, idle_utilization=0.5,
                min_consumers=1, max_consumers=3)


def report(instance: str = "c1", messages: int = 100, avg_ms: float = 50.0, processing_ms: float = 1.0,
           seconds: float = 10.0, depth: int | None = None) -> Report:
    return Report(tenant="acme", app="slow", instance=instance, window_start=T0,
                  window_end=T0 + timedelta(seconds=seconds), messages=messages, documents=messages,
                  bytes=messages * 10, rejected=0, avg_ingest_ms=avg_ms, p95_ingest_ms=avg_ms * 2,
                  avg_processing_ms=processing_ms, queue_depth=depth)


def at(snap: Snapshot, now: float) -> Snapshot:
    """``snap`` with its reports' windows ending at ``now`` (a new report of each instance)."""
    shift = timedelta(seconds=now)
    return Snapshot(tuple(r.model_copy(update={"window_start": r.window_start + shift,
                                               "window_end": r.window_end + shift}) for r in snap.reports),
                    snap.consumers, snap.queue_depth)


def run(snaps: list[Snapshot], state: RuleState | None = None, limits: Limits = LIMITS, start: float = 1000.0,
        step: float = 10.0) -> list:
    """Evaluate each snapshot in turn, one period apart, each with new reports."""
    state = state or RuleState()
    return [evaluate("acme", limits, at(s, start + i * step), state, start + i * step) for i, s in enumerate(snaps)]


def test_latency_breach_alerts_and_scales_up_after_n_consecutive_reports() -> None:
    slow = Snapshot((report(avg_ms=2500),), consumers=1, queue_depth=0)
    first, second = run([slow, slow])
    assert first.verdict == "breach" and first.alerts == () and first.target is None
    assert [a.rule for a in second.alerts] == ["latency"]
    assert second.alerts[0].observed == 2500 and second.alerts[0].threshold == 1000
    assert second.target == 2
    assert "avg_ingest_ms=2500 > max_avg_ingest_ms=1000" in second.reason
    assert "2 consecutive reports" in second.reason


def test_a_report_seen_again_is_not_counted_again() -> None:
    """The monitor's timer may come round before an instance's next report: that evaluation is
    ``stale`` and leaves the streak alone, so N breaches are N reports, not N evaluations."""
    state = RuleState()
    slow = Snapshot((report(avg_ms=2500),), consumers=1, queue_depth=0)
    first = evaluate("acme", LIMITS, at(slow, 10), state, 1000.0)
    again = evaluate("acme", LIMITS, at(slow, 10), state, 1010.0)  # the same report
    assert (first.verdict, again.verdict) == ("breach", "stale")
    assert again.target is None and not again.alerts and state.breach_streak == 1
    second = evaluate("acme", LIMITS, at(slow, 20), state, 1020.0)
    assert second.target == 2 and "2 consecutive reports" in second.reason


def test_one_new_report_of_any_instance_counts_once() -> None:
    state = RuleState()
    c1, c2 = report("c1", avg_ms=2500), report("c2", avg_ms=2500)
    assert evaluate("acme", LIMITS, Snapshot((c1,), 1), state, 1000.0).verdict == "breach"
    both = Snapshot((c1, c2), consumers=2)  # c2 is new, c1 the same as before
    assert evaluate("acme", LIMITS, both, state, 1010.0).target == 3
    assert state.breach_streak == 0  # the 2nd report: scaled up, the streak starts again
    assert evaluate("acme", LIMITS, both, state, 1020.0).verdict == "stale"


def test_idle_counts_reports_not_evaluations() -> None:
    state = RuleState()
    idle = Snapshot((report(messages=0),), consumers=3, queue_depth=0)
    verdicts = []
    for i, when in enumerate([10, 10, 20, 20, 20, 30]):  # 3 reports over 6 evaluations
        verdicts.append(evaluate("acme", LIMITS, at(idle, when), state, 1000.0 + i * 10))
    assert [d.verdict for d in verdicts] == ["idle", "stale", "idle", "stale", "stale", "idle"]
    assert [d.target for d in verdicts] == [None] * 5 + [1]
    assert "idle for 3 consecutive reports" in verdicts[-1].reason


def test_no_report_at_all_decides_nothing() -> None:
    snap = Snapshot((), consumers=3, queue_depth=0)
    assert {d.verdict for d in run([snap] * 5)} == {"stale"}


def test_a_backlog_with_no_consumer_reporting_still_scales_up() -> None:
    """At min_consumers = 0 (or with every consumer stuck) nobody reports; the manager's queue
    depth alone is a breach at each evaluation, and the tenant gets a consumer."""
    limits = dataclasses.replace(LIMITS, min_consumers=0)
    state = RuleState()
    snap = Snapshot((), consumers=0, queue_depth=10_000)
    first = evaluate("acme", limits, snap, state, 1000.0)
    second = evaluate("acme", limits, snap, state, 1010.0)
    assert (first.verdict, first.target) == ("breach", None)
    assert second.verdict == "breach" and second.target == 1
    assert [(a.rule, a.observed) for a in second.alerts] == [("backlog", 10_000)]
    # an empty or unmeasured queue without reports decides nothing
    assert evaluate("acme", limits, Snapshot((), consumers=0, queue_depth=0), RuleState(), 1.0).verdict == "stale"
    assert evaluate("acme", limits, Snapshot((), consumers=0), RuleState(), 1.0).verdict == "stale"


def test_a_good_report_resets_the_breach_streak() -> None:
    slow = Snapshot((report(avg_ms=2500),), consumers=1)
    fine = Snapshot((report(avg_ms=10, processing_ms=80),), consumers=1)
    decisions = run([slow, fine, slow])
    assert all(d.target is None and not d.alerts for d in decisions)


def test_backlog_breach_uses_the_managers_depth_before_the_reports() -> None:
    snap = Snapshot((report(depth=5),), consumers=1, queue_depth=500)
    d = run([snap, snap])[1]
    assert [(a.rule, a.observed) for a in d.alerts] == [("backlog", 500)]
    assert d.target == 2
    # without the manager's figure, the largest depth a report saw counts
    snap = Snapshot((report(depth=5), report("c2", depth=700)), consumers=2, queue_depth=None)
    assert run([snap, snap])[1].alerts[0].observed == 700


def test_latency_of_an_empty_window_is_not_a_breach() -> None:
    snap = Snapshot((report(messages=0, avg_ms=5000),), consumers=2, queue_depth=0)
    assert run([snap])[0].verdict == "idle"


def test_scale_up_is_bounded_by_max_consumers_and_says_so() -> None:
    snap = Snapshot((report(avg_ms=2500),), consumers=3)
    d = run([snap, snap])[1]
    assert d.alerts and d.target is None
    assert d.skipped is not None and "max_consumers=3" in d.skipped


def test_step_is_additive_and_capped() -> None:
    limits = Limits(**{**LIMITS.__dict__, "scale_up_step": 5, "max_consumers": 4})
    snap = Snapshot((report(avg_ms=2500),), consumers=2)
    assert run([snap, snap], limits=limits)[1].target == 4


def test_cooldown_defers_scaling_but_not_the_alert() -> None:
    state = RuleState()
    state.note_change(995.0)
    snap = Snapshot((report(avg_ms=2500),), consumers=1)
    d = run([snap, snap], state=state)[1]  # at t=1010, 15 s after the change (cooldown 30 s)
    assert d.alerts and d.target is None
    assert d.skipped is not None and "cooldown" in d.skipped
    later = run([snap], state=state, start=1040.0)[0]  # the streak was kept: act at once
    assert later.target == 2 and not later.alerts


def test_at_max_the_alert_repeats_every_n_breaches() -> None:
    snap = Snapshot((report(avg_ms=2500),), consumers=3)
    decisions = run([snap] * 6)
    assert [bool(d.alerts) for d in decisions] == [False, True, False, True, False, True]
    assert all(d.target is None for d in decisions)


def test_idle_scales_down_to_min_after_n_reports() -> None:
    idle = Snapshot((report(messages=0),), consumers=3, queue_depth=0)
    decisions = run([idle, idle, idle])
    assert [d.target for d in decisions] == [None, None, 1]
    assert "idle for 3 consecutive reports" in decisions[2].reason


def test_underused_scales_down_one_at_a_time() -> None:
    # 3 consumers, each 10 s window, 100 messages x 10 ms = 1 s busy: 10 % busy, 15 % with one fewer
    light = Snapshot(tuple(report(f"c{i}", processing_ms=10) for i in range(3)), consumers=3, queue_depth=0)
    decisions = run([light, light, light])
    assert decisions[2].verdict == "underused" and decisions[2].target == 2


def test_busy_consumers_are_not_underused() -> None:
    # 2 consumers, 100 messages x 40 ms = 4 s busy of 10 s each: 40 %, 80 % with one fewer
    busy = Snapshot(tuple(report(f"c{i}", processing_ms=40) for i in range(2)), consumers=2, queue_depth=0)
    assert {d.verdict for d in run([busy] * 4)} == {"ok"}


def test_waiting_messages_block_scale_down() -> None:
    snap = Snapshot((report(messages=0),), consumers=3, queue_depth=20)
    assert {d.target for d in run([snap] * 5)} == {None}


def test_idle_at_min_consumers_does_nothing() -> None:
    snap = Snapshot((report(messages=0),), consumers=1, queue_depth=0)
    assert {d.target for d in run([snap] * 5)} == {None}


def test_scale_down_waits_for_the_cooldown_then_happens() -> None:
    state = RuleState()
    state.note_change(1000.0)
    idle = Snapshot((report(messages=0),), consumers=2, queue_depth=0)
    decisions = run([idle] * 5, state=state, start=1005.0)  # t = 1005 .. 1045
    assert [d.target for d in decisions] == [None, None, None, 1, None]


def test_snapshot_aggregates_weighted_by_messages() -> None:
    snap = Snapshot((report("a", messages=100, avg_ms=100), report("b", messages=300, avg_ms=500)), consumers=2)
    assert snap.messages == 400
    assert snap.avg_ingest_ms == (100 * 100 + 300 * 500) / 400
    assert snap.p95_ingest_ms == 1000
