"""Structured logging: one JSON object per line, to stdout and to a rotated file.

Every event carries ``ts`` (ISO-8601 UTC), ``level``, ``event`` (a stable dotted name),
``component`` and, where one applies, ``tenant``. See ``docs/logging.md``.

One way in. Components emit typed events (:mod:`mysimbdp.events`) through the emitter of their
daemon's bus, whose writer is :func:`write_event`: the bus writes the line, then hands the event
to its subscribers, so they hear every event the log holds, whatever level the log is written
at. Code used outside a daemon emits through :func:`log_only`. Nothing here decides what the
platform does: the log configuration only says what is written where.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from mysimbdp.events import Emitter, Event, EventBus

__all__ = ["configure_logging", "write_event", "log_only", "EventDict"]

EventDict = MutableMapping[str, Any]

_handlers: list[logging.Handler] = []


def _lead_fields(logger: Any, method: str, event_dict: EventDict) -> EventDict:
    """Put ``ts``, ``level``, ``event``, ``component`` and ``tenant`` first: easier to read."""
    lead = {k: event_dict.pop(k) for k in ("ts", "level", "event", "component", "tenant") if k in event_dict}
    lead.update(event_dict)
    return lead


def _foreign(logger: Any, method: str, event_dict: EventDict) -> EventDict:
    """Libraries' own log records become ``lib.log`` events naming the library."""
    record = event_dict.get("_record")
    event_dict["message"] = event_dict.pop("event", "")
    event_dict["event"] = "lib.log"
    event_dict["component"] = record.name if record is not None else "lib"
    return event_dict


def _serialize(obj: Any, **kwargs: Any) -> str:
    return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
]


def configure_logging(level: str = "info", log_file: Path | None = None,
                      max_bytes: int = 50 * 1024 * 1024, backups: int = 5,
                      console: bool | None = None) -> None:
    """Configure structlog and the handlers. Idempotent: calling again replaces the handlers.

    ``console=None`` renders for humans when stdout is a terminal and JSON otherwise.
    """
    root = logging.getLogger("mysimbdp.events")
    libs = logging.getLogger()
    for handler in _handlers:
        root.removeHandler(handler)
        libs.removeHandler(handler)
        handler.close()
    _handlers.clear()
    root.setLevel(logging.DEBUG)
    root.propagate = False

    foreign = [*_SHARED, _foreign]
    json_formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    _lead_fields, structlog.processors.JSONRenderer(serializer=_serialize)],
        foreign_pre_chain=foreign,
    )
    if console is None:
        console = sys.stdout.isatty()
    stdout = logging.StreamHandler(sys.stdout)
    stdout.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.dev.ConsoleRenderer(colors=True)],
            foreign_pre_chain=foreign,
        ) if console else json_formatter
    )
    _handlers.append(stdout)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        rotating.setFormatter(json_formatter)
        _handlers.append(rotating)
    threshold = logging.getLevelNamesMapping()[level.upper()]
    for handler in _handlers:
        handler.setLevel(threshold)
        root.addHandler(handler)
        libs.addHandler(handler)
    # Libraries speak only when something is wrong; the platform logs its own view of it.
    libs.setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            *_SHARED,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        # the level decides what is written only: events reach the bus whatever it is
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: root,
        cache_logger_on_first_use=False,
    )


def write_event(event: Event, component: str, exc_info: bool = False, instance: str | None = None) -> None:
    """Write one typed event as a JSON line (the writer of every :class:`~mysimbdp.events.EventBus`);
    a daemon's bus adds its ``instance_id`` to every line."""
    extra: dict[str, Any] = {"exc_info": True} if exc_info else {}
    if instance is not None:
        extra["instance_id"] = instance
    getattr(_component_logger(component), event.LEVEL)(event.NAME, **event.fields(), **extra)


@functools.cache
def _component_logger(component: str) -> Any:
    # a lazy proxy: it follows configure_logging (and capture_logs) whenever it is called
    return structlog.get_logger(component=component)


def log_only(component: str) -> Emitter:
    """An emitter whose events are only written to the log (a bus without subscribers): for a
    component used outside a daemon (a test, a benchmark, a command)."""
    return EventBus(write_event).emitter(component)
