"""Fill what the live feed did not deliver from the REST trades endpoint.

Two kinds of holes, one mechanism:

* **Start-up warm-up.** Windows need history: the volume z-score is undefined until five
  60 s baseline windows exist and the Isolation Forest scores nothing before its first model,
  so a cold start is blind for about six minutes. Before the WebSocket connects, the runner
  pulls ``[now − warmup_s, now)`` (or, after a restart, from the last stored trade of each
  ticker) and feeds it through the same log → processor → writer path as live data.
* **Disconnects.** Every interval the socket was down (a `Disconnect` record, taken when the
  client is connected again) is fetched after the reconnect, with a small margin on both
  sides; identity keys make the overlap with what the socket did deliver a no-op. The
  stretch between the end of the warm-up and the first connection is filled the same way.

A requested fill survives a crash: the list of unfilled intervals is a source position
(`PENDING_KEY`) committed with the disconnect record that asked for it — before any live trade
read after the reconnect, since the log is FIFO — and rewritten without the interval by the
fill's last frame, atomically with the fetched trades. A restarted run fills whatever is
still listed before it goes live.

Trades of all tickers are merged into one event-time order before they enter the log, so a
watermark advanced by one ticker's page never makes another ticker's history "too late".
Fetched trades arrive after live ones only for disconnects; within the features' late
allowance they are merged into the windows, beyond it they are stored but get no feature row
(see `process/features.py`).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from tradepulse.events import DeadLetter, Disconnect, Trade
from tradepulse.log.embedded import Frame
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.sources.polygon_rest import RestError, convert_results, fetch_trades
from tradepulse.validate import Decoded

SOURCE = "polygon-rest"
PENDING_KEY = "gapfill:pending"  # source position: JSON list of [from_ns, to_ns) not yet filled
# The disconnect record's times are our own clock around the reconnect; the provider's
# timestamps of the trades just before and after can sit on either side of them.
MARGIN_NS = 2 * NS_PER_S

Put = Callable[[Frame], Awaitable[None]]


@dataclass
class FillResult:
    trades: int
    dead_letters: int
    seconds: float


async def fetch_merged(
    client: httpx.AsyncClient,
    base_url: str,
    api_key: str,
    ranges: dict[str, tuple[int, int]],
) -> tuple[list[Trade], list[DeadLetter]]:
    """Every ticker's trades in its ``[from, to)`` range, fetched concurrently and merged
    into (timestamp, sequence_number) order."""

    async def one(ticker: str, lo: int, hi: int) -> tuple[list[Trade], list[DeadLetter]]:
        trades: list[Trade] = []
        dead: list[DeadLetter] = []
        async for page in fetch_trades(client, base_url, api_key, ticker, lo, hi):
            t, d = convert_results(ticker, page, now_ns(), SOURCE)
            trades.extend(t)
            dead.extend(d)
        return trades, dead

    parts = await asyncio.gather(*(one(t, lo, hi) for t, (lo, hi) in ranges.items() if hi > lo))
    merged = list(
        heapq.merge(*(p[0] for p in parts), key=lambda t: (t.timestamp, t.sequence_number))
    )
    return merged, [d for p in parts for d in p[1]]


async def feed(
    put: Put,
    trades: Sequence[Trade],
    dead: list[DeadLetter],
    size: int,
    position: tuple[str, str] | None = None,
) -> None:
    """Put `trades` on the log in frames of at most `size` events (the processor batches
    frames, so one giant frame would become one giant batch), `position` riding on the last,
    and return once that last frame is committed (the log is FIFO: so are all before it)."""
    frames = []
    for i in range(0, len(trades), size):
        piece = list(trades[i : i + size])
        decoded = Decoded(trades=piece, quotes=[], dead_letters=[], statuses=[])
        frames.append(Frame(recv_ts=now_ns(), decoded=decoded, source=SOURCE))
    if dead or not frames:
        decoded = Decoded(trades=[], quotes=[], dead_letters=dead, statuses=[])
        frames.append(Frame(recv_ts=now_ns(), decoded=decoded, source=SOURCE))
    frames[-1].position = position
    # Resolved by the writer once the batch holding the last frame is committed.
    done = frames[-1].committed = asyncio.get_running_loop().create_future()
    for f in frames:
        await put(f)
    await done


def encode_pending(spans: Sequence[tuple[int, int]]) -> str:
    return json.dumps([list(s) for s in spans])


def decode_pending(value: str | None) -> list[tuple[int, int]]:
    """The stored list of unfilled intervals; an unreadable value counts as none."""
    if not value:
        return []
    try:
        return [(int(a), int(b)) for a, b in json.loads(value)]
    except (ValueError, TypeError):
        return []


class GapFiller:
    """Pulls REST trades into the log: `fill` for a range now, `request` for a disconnect
    (handled in order by `run`, so fills never race each other)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        tickers: Sequence[str],
        put: Put,
        *,
        frame_events: int,
        out: Callable[[str], None],
        timeout_s: float = 30.0,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.tickers = list(tickers)
        self.put = put
        self.frame_events = max(1, frame_events)
        self.out = out
        self.timeout_s = timeout_s
        self.filled = 0  # trades put on the log, over every fill
        self.failures = 0
        self.pending: list[tuple[int, int]] = []  # requested, not yet filled: see PENDING_KEY
        self._requests: asyncio.Queue[tuple[Disconnect, tuple[int, int]]] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()

    async def fill(
        self, ranges: dict[str, tuple[int, int]], position: tuple[str, str] | None = None
    ) -> FillResult:
        began = time.monotonic()
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            trades, dead = await fetch_merged(client, self.base_url, self.api_key, ranges)
        await feed(self.put, trades, dead, self.frame_events, position)
        self.filled += len(trades)
        return FillResult(len(trades), len(dead), time.monotonic() - began)

    def request(self, d: Disconnect) -> tuple[str, str]:
        """Queue a fill of `d` (plus margins); returns the position to commit with the
        disconnect record, which lists the interval as pending until its fill commits."""
        span = (d.started_at - MARGIN_NS, d.ended_at + MARGIN_NS)
        self.pending.append(span)
        self._idle.clear()
        self._requests.put_nowait((d, span))
        return PENDING_KEY, encode_pending(self.pending)

    async def run(self) -> None:
        while True:
            d, span = await self._requests.get()
            try:
                rest = [p for p in self.pending if p != span]
                res = await self.fill(
                    dict.fromkeys(self.tickers, span), (PENDING_KEY, encode_pending(rest))
                )
                self.pending = [p for p in self.pending if p != span]
                self.out(
                    f"[tradepulse] gap of {(d.ended_at - d.started_at) / NS_PER_S:.1f} s "
                    f"({d.reason}) filled from REST: {res.trades:,} trades"
                )
            except (RestError, httpx.HTTPError) as exc:
                # Still listed as pending: the next start tries again; and the interval stays
                # in the disconnects table for `tradepulse backfill`.
                self.failures += 1
                self.out(f"[tradepulse] could not fill the gap from REST: {exc}")
            finally:
                if self._requests.empty():
                    self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every requested fill is done; False when `timeout_s` ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
