"""The cluster backend's pure parts: namespaced names, message timestamps, merged batches and
what `tradepulse run --backend cluster` hands its children."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradepulse.cluster.names import table_prefix
from tradepulse.cluster.supervise import child_env
from tradepulse.config import ConfigError, load_settings
from tradepulse.events import News, Trade
from tradepulse.log import kafka
from tradepulse.log.transactional import group_id, member_id, merge_batches
from tradepulse.store.base import StoreBatch


def trade(ticker: str, ts: int, seq: int) -> Trade:
    return Trade(ticker=ticker, price=1.0, size=1, timestamp=ts, ingest_ts=ts, sequence_number=seq)


def test_the_empty_namespace_keeps_the_plain_names(clean_env: None) -> None:
    settings = load_settings()
    topics = kafka.Topics.of(settings)
    assert topics.inputs == (kafka.TRADES, kafka.QUOTES, kafka.NEWS)
    assert topics.outputs["market_sentiment"] == "market.sentiment"
    assert (group_id(settings), table_prefix(settings)) == ("tradepulse-processor", "tradepulse")


def test_a_namespace_prefixes_every_name(clean_env: None) -> None:
    settings = load_settings(cluster_namespace="blue")
    topics = kafka.Topics.of(settings)
    assert topics.all == (
        "blue.market.trades",
        "blue.market.quotes",
        "blue.market.news",
        "blue.market.features",
        "blue.market.bars",
        "blue.market.anomalies",
        "blue.market.sentiment",
    )
    assert topics.base("blue.market.trades") == kafka.TRADES
    assert topics.base("blue.market.features") == "blue.market.features"
    assert group_id(settings) == "blue.tradepulse-processor"
    assert member_id(settings, "p0") == "blue.tradepulse-processor-p0"
    assert table_prefix(settings) == "blue.tradepulse"


def test_a_namespace_with_a_separator_is_refused(clean_env: None) -> None:
    with pytest.raises(ConfigError, match="TRADEPULSE_CLUSTER_NAMESPACE"):
        load_settings(cluster_namespace="a.b")


def test_message_timestamps_use_each_kind_of_records_event_time() -> None:
    assert kafka.max_ts_ms([trade("A", 3_000_000, 1), trade("A", 7_000_000, 2)]) == 7
    news = News("1", "A", "h", "", "s", "u", published_at=9_000_000, ingest_ts=1)
    assert kafka.max_ts_ms([news]) == 9
    rows = [{"published_at": 5_000_000}, {"published_at": None}]
    assert kafka.max_ts_ms(rows, "published_at") == 5
    assert kafka.max_ts_ms([{"ticker": "A"}]) == 0  # none: the broker stamps it


def test_merged_batches_keep_every_part_in_order() -> None:
    a = StoreBatch(trades=[trade("A", 1, 1)], derived={"features": [{"ticker": "A"}]})
    b = StoreBatch(trades=[trade("B", 2, 1)], derived={"features": [{"ticker": "B"}], "x": []})
    merged = merge_batches([a, b])
    assert [t.ticker for t in merged.trades] == ["A", "B"]
    assert [r["ticker"] for r in merged.derived["features"]] == ["A", "B"]
    assert merge_batches([a]) is a


def test_children_get_what_the_parent_resolved(clean_env: None, tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "d", tickers="msft,aapl", port=8123, cluster_namespace="ns1"
    )
    env = child_env(settings)
    assert env["TRADEPULSE_DATA_DIR"] == str((tmp_path / "d").resolve())
    assert env["TRADEPULSE_TICKERS"] == "MSFT,AAPL"
    assert env["TRADEPULSE_PORT"] == "8123"
    assert env["TRADEPULSE_CLUSTER_NAMESPACE"] == "ns1"
    assert env["TRADEPULSE_BACKEND"] == "cluster"
