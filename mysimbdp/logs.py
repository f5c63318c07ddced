"""Structured logging: one JSON object per line, to stdout and to a rotated file.

Every event carries ``ts`` (ISO-8601 UTC), ``level``, ``event`` (a stable dotted name),
``component`` and, where one applies, ``tenant``. Events are also handed to in-process
subscribers (the monitor, the metrics): the logs are the feed. See ``docs/logging.md``.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson
import structlog

__all__ = ["configure_logging", "get_logger", "subscribe", "unsubscribe", "EventDict"]

EventDict = MutableMapping[str, Any]
Subscriber = Callable[[dict[str, Any]], None]

_subscribers: list[Subscriber] = []
_handlers: list[logging.Handler] = []


def subscribe(callback: Subscriber) -> None:
    """Call ``callback`` with a copy of every log event at level info and above (and debug
    ones when the configured level is debug), whatever level is written to the outputs.

    Callbacks run synchronously inside the logging call: they must be quick and must not log.
    """
    _subscribers.append(callback)


def unsubscribe(callback: Subscriber) -> None:
    """Stop calling ``callback``; unknown callbacks are ignored."""
    if callback in _subscribers:
        _subscribers.remove(callback)


def _feed(logger: Any, method: str, event_dict: EventDict) -> EventDict:
    if _subscribers:
        snapshot = dict(event_dict)
        for callback in list(_subscribers):
            try:
                callback(snapshot)
            except Exception:  # a subscriber's bug must never break logging
                pass
    return event_dict


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
            _feed,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        # Info events always reach the feed (the monitor scales on them); the handlers apply
        # the configured level to what is written.
        wrapper_class=structlog.make_filtering_bound_logger(min(threshold, logging.INFO)),
        logger_factory=lambda *args: root,
        cache_logger_on_first_use=False,
    )


def get_logger(component: str, **bound: Any) -> Any:
    """A logger whose events carry ``component`` (and any other ``bound`` fields)."""
    # A lazy proxy: module-level loggers pick up the configuration made later by the CLI.
    return structlog.get_logger(component=component, **bound)
