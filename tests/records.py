"""Record builders shared by the store tests (SQLite and DynamoDB must see the same inputs).

Times count from `t0` in whole seconds per sequence number unless given; prices and sizes are
derived from the sequence number so assertions can recompute them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tradepulse.events import News, Quote, Trade
from tradepulse.market_time import NS_PER_S


@dataclass(frozen=True)
class Records:
    t0: int
    price_offset: float = 0.0  # a non-integer offset exercises float round trips

    def _ts(self, seq: int, ts: int | None) -> int:
        return self.t0 + seq * NS_PER_S if ts is None else ts

    def trade(self, seq: int, ticker: str = "AAPL", ts: int | None = None, **kw: Any) -> Trade:
        ts = self._ts(seq, ts)
        fields: dict[str, Any] = {
            "price": 100.0 + seq + self.price_offset,
            "size": 10 * seq,
            "exchange": 4,
            "conditions": (12, 37),
            "trade_id": f"t{seq}",
        }
        fields.update(kw)
        return Trade(
            ticker=ticker, timestamp=ts, ingest_ts=ts + 1000, sequence_number=seq, **fields
        )

    def quote(self, seq: int, ticker: str = "AAPL", ts: int | None = None) -> Quote:
        ts = self._ts(seq, ts)
        return Quote(ticker, 99.0 + seq, 1, 101.0 + seq, 2, ts, ts + 5, seq, 1, 2, 3, (1,))

    def news(self, article_id: str, ticker: str = "AAPL", published: int | None = None) -> News:
        p = self.t0 if published is None else published
        return News(article_id, ticker, f"h{article_id}", "s", "src", "u", p, p + 1)
