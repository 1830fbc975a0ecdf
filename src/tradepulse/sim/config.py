"""Simulator configuration: one dataclass, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tradepulse.config import TICKER_RE

Profile = Literal["flat", "intraday", "market-open"]
PROFILES: tuple[str, ...] = ("flat", "intraday", "market-open")
MAX_HISTORY_S = 6 * 3600.0  # the REST history is held in memory


@dataclass
class SimConfig:
    """What the simulator generates and where it listens.

    `rate` is the base number of events per second (trades and quotes together, summed over
    all tickers) before the profile's multiplier and injected volume spikes. `anomaly_rate` and
    `news_rate` are per ticker per minute. `count` counts every event sent, malformed included.
    `history_s` > 0 makes the market trade for that long before the live start, calmly (no
    anomalies, articles or malformed events); those trades are served by the REST trades
    endpoint only, so a client can warm its windows and models up from them.
    """

    tickers: list[str]
    rate: float
    seed: int = 7
    bad_rate: float = 0.0
    profile: Profile = "intraday"
    truth_dir: Path | None = None
    duration_s: float | None = None
    count: int | None = None
    anomaly_rate: float = 0.5
    jump_pct: float = 3.0
    burst_mult: float = 10.0
    news_rate: float = 0.5
    news_spike_prob: float = 0.5
    history_s: float = 0.0
    api_key: str = "simulator"
    host: str = "127.0.0.1"
    port: int = 0

    def __post_init__(self) -> None:
        self.tickers = [t.strip().upper() for t in self.tickers if t.strip()]
        self.tickers = list(dict.fromkeys(self.tickers))
        if not self.tickers:
            raise ValueError("at least one ticker is required")
        bad = [t for t in self.tickers if not TICKER_RE.match(t)]
        if bad:
            raise ValueError(f"not ticker symbols: {', '.join(bad)}")
        _positive("rate", self.rate)
        _fraction("bad_rate", self.bad_rate)
        _fraction("news_spike_prob", self.news_spike_prob)
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)} (got {self.profile!r})")
        if self.duration_s is not None:
            _positive("duration_s", self.duration_s)
        if self.count is not None and (isinstance(self.count, bool) or self.count < 1):
            raise ValueError(f"count must be a positive integer (got {self.count!r})")
        _non_negative("anomaly_rate", self.anomaly_rate)
        _non_negative("news_rate", self.news_rate)
        _positive("jump_pct", self.jump_pct)
        if self.jump_pct >= 50:
            raise ValueError(f"jump_pct must be below 50 (got {self.jump_pct})")
        _positive("burst_mult", self.burst_mult)
        _non_negative("history_s", self.history_s)
        if self.history_s > MAX_HISTORY_S:
            raise ValueError(
                f"history_s must be at most {MAX_HISTORY_S:.0f} (got {self.history_s})"
            )
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535 (got {self.port})")
        if self.truth_dir is not None:
            self.truth_dir = Path(self.truth_dir)


def _finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number (got {value!r})")


def _positive(name: str, value: float) -> None:
    _finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be positive (got {value})")


def _non_negative(name: str, value: float) -> None:
    _finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must not be negative (got {value})")


def _fraction(name: str, value: float) -> None:
    _finite(name, value)
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be within 0..1 (got {value})")
