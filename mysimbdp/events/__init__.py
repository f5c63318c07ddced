"""Typed events and the bus that delivers them (see :mod:`mysimbdp.events.catalog` and
:mod:`mysimbdp.events.bus`); ``docs/logging.md`` is their user-facing contract."""

from __future__ import annotations

from mysimbdp.events.bus import Emitter, EventBus, Subscriber
from mysimbdp.events.catalog import EVENTS, Event, event_class

__all__ = ["EVENTS", "Event", "EventBus", "Emitter", "Subscriber", "event_class"]
