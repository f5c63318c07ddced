"""The event bus: one per daemon, delivering typed events in process.

A component emits through the :class:`Emitter` it was given (``events.emit(BatchFileCommitted(...))``).
The bus first hands the event to its writer (the JSON log: :func:`mysimbdp.logs.write_event`),
then to each subscriber in turn (the monitor, the metrics, the live statistics), synchronously,
in the emitting thread: subscribers must be quick and must not emit.

A subscriber that raises does not stop the others: its failures are counted
(:attr:`EventBus.failures`) and logged as ``events.subscriber_failed``, at most once a minute per
subscriber with the number of failures since the last time. Never silently.

Events reach a bus only through the emitters it hands out, one to each component of its daemon;
code used outside a daemon (a test, a benchmark, a command) emits through
:func:`mysimbdp.logs.log_only`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

from mysimbdp.events.catalog import Event, EventsSubscriberFailed

__all__ = ["EventBus", "Emitter", "Subscriber", "Writer", "FAILURE_LOG_EVERY_S"]

Subscriber = Callable[[Event], None]
Writer = Callable[[Event, str, bool], None]  # (event, component, with the current traceback)
FAILURE_LOG_EVERY_S = 60.0


class EventBus:
    """Delivers each event to the log writer, then to every subscriber."""

    def __init__(self, writer: Writer | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._writer = writer
        self._clock = clock
        self._subscribers: tuple[tuple[str, Subscriber], ...] = ()
        self._lock = threading.Lock()
        self.failures: Counter[str] = Counter()  # by subscriber, since the bus was made
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def subscribe(self, subscriber: Subscriber, name: str | None = None) -> None:
        """Hand every event from now on to ``subscriber`` (``name`` says who it is in the log)."""
        label = name or getattr(subscriber, "__qualname__", None) or type(subscriber).__name__
        with self._lock:
            self._subscribers = (*self._subscribers, (label, subscriber))

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop handing events to ``subscriber``; unknown ones are ignored."""
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s[1] != subscriber)

    def emitter(self, component: str) -> Emitter:
        """What a component emits through: its events are logged with ``component``."""
        return Emitter(self, component)

    def emit(self, event: Event, component: str, exc_info: bool = False) -> None:
        """Write ``event`` to the log, then deliver it to the subscribers."""
        if self._writer is not None:
            self._writer(event, component, exc_info)
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to the subscribers only (its line is written already)."""
        for name, subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception as exc:  # one subscriber's bug must not starve the others
                self._failed(name, event, exc)

    def _failed(self, name: str, event: Event, exc: Exception) -> None:
        now = self._clock()
        with self._lock:
            self.failures[name] += 1
            self._unlogged[name] += 1
            last = self._logged_at.get(name)
            if last is not None and now - last < FAILURE_LOG_EVERY_S:
                return
            self._logged_at[name] = now
            count, self._unlogged[name] = self._unlogged[name], 0
        if self._writer is not None:  # to the log only: a subscriber never hears of its own failure
            failed = EventsSubscriberFailed(subscriber=name, event_name=event.NAME, failures=count,
                                            error=f"{type(exc).__name__}: {exc}"[:300])
            self._writer(failed, "events", False)


class Emitter:
    """A component's way to emit: the bus and the component's name."""

    __slots__ = ("bus", "component")

    def __init__(self, bus: EventBus, component: str) -> None:
        self.bus = bus
        self.component = component

    def emit(self, event: Event, exc_info: bool = False) -> None:
        """Log ``event`` (with the current exception's traceback when ``exc_info`` or the
        event's ``TRACEBACK``) and deliver it to the subscribers."""
        self.bus.emit(event, self.component, exc_info or event.TRACEBACK)
