"""US equity market calendar on event time (America/New_York).

A trading day starts at 04:00 ET (pre-market) and the regular session runs 09:30–16:00 ET.
The trading day of an event is the ET calendar date of its timestamp; sequence numbers reset
each trading day, so a trade's identity is (ticker, trading_day, sequence_number).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

ET = ZoneInfo("America/New_York")
NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
_NS_PER_HOUR = 3600 * NS_PER_S


@lru_cache(maxsize=4096)
def _day_of_hour(hour_bucket: int) -> int:
    # DST switches on whole UTC hours, so every ns in one UTC hour shares an ET date.
    dt = datetime.fromtimestamp(hour_bucket * 3600, tz=UTC).astimezone(ET)
    return dt.year * 10000 + dt.month * 100 + dt.day


def trading_day(ts_ns: int) -> int:
    """ET calendar date of `ts_ns` as an int YYYYMMDD (e.g. 20261124)."""
    return _day_of_hour(ts_ns // _NS_PER_HOUR)


def day_iso(day: int) -> str:
    """20261124 -> '2026-11-24' (the Hive partition value)."""
    return f"{day // 10000:04d}-{day // 100 % 100:02d}-{day % 100:02d}"


@lru_cache(maxsize=1024)
def session_start_ns(day: int) -> int:
    """04:00 ET on trading day `day`, in ns: the start of the session VWAP's accumulation."""
    local = datetime(day // 10000, day // 100 % 100, day % 100, 4, 0, tzinfo=ET)
    return int(local.timestamp()) * NS_PER_S


def regular_open_ns(day: int) -> int:
    """09:30 ET on `day`, in ns."""
    return session_start_ns(day) + int(timedelta(hours=5, minutes=30).total_seconds()) * NS_PER_S


def regular_close_ns(day: int) -> int:
    """16:00 ET on `day`, in ns."""
    return session_start_ns(day) + 12 * 3600 * NS_PER_S


def now_ns() -> int:
    """Wall-clock time in ns (a function so tests can patch one place)."""
    import time

    return time.time_ns()
