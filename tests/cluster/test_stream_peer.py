"""Ours and Quix Streams on the same input topic of the real broker (bench/stream_peer.py).

A few thousand trades: both sides must consume every one, commit exactly the feature rows an
offline run of the engine over the whole tape gives, agree row by row, and leave no topic
behind. No timing thresholds: the figures only have to be positive and consistent.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from tradepulse.bench.feed import record
from tradepulse.bench.stream_peer import run_stream_peers
from tradepulse.config import Settings
from tradepulse.log import kafka
from tradepulse.market_time import NS_PER_S, now_ns
from tradepulse.process.features import FeatureEngine, FeatureParams
from tradepulse.validate import decode_frame

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def test_ours_and_quix_compute_the_same_rows(cluster_settings: Settings, tmp_path: Path) -> None:
    rec = record(["AAPL", "MSFT", "NVDA"], 5000.0, seed=11, max_events=10_000, max_s=30.0)
    skew = int(cluster_settings.max_clock_skew_s * NS_PER_S)
    trades = [t for f in rec.frames for t in decode_frame(f, now_ns(), max_skew_ns=skew).trades]
    # The rows of one pass of the engine over the whole tape: both sides' rows must be these,
    # however each cut the input into batches or messages.
    offline = FeatureEngine(FeatureParams.from_settings(cluster_settings)).process(trades)
    expected_rows = sum(len(block) for block in offline)
    assert len(trades) > 2000 and expected_rows > 0

    lines: list[str] = []
    peers = run_stream_peers(cluster_settings, rec, tmp_path, max_s=60.0, echo=lines.append)
    print("\n".join(lines))
    ours, quix = peers.ours, peers.quix
    for side in (ours, quix):
        lost = peers.input_trades - side.events
        print(
            f"{side.name}: sent {peers.input_trades} trades, consumed {side.events} "
            f"(lost {lost}), rows {side.feature_rows} of {expected_rows} expected, "
            f"duplicated {peers.duplicate_rows}"
        )

    assert peers.input_trades == len(trades)
    assert peers.input_messages > 0
    assert ours.events == quix.events == len(trades)
    assert peers.complete
    assert ours.feature_rows == quix.feature_rows == expected_rows
    assert peers.compared_rows == expected_rows
    assert peers.rows_match
    assert peers.mismatched_rows == 0 and peers.duplicate_rows == 0
    assert peers.max_abs_diff <= 1e-6

    assert (ours.name, quix.name) == ("tradepulse", "quixstreams")
    assert ours.version and quix.version
    for side in (ours, quix):
        assert side.seconds > 0 and side.commits >= 1
        assert 0 < side.compute_s <= side.seconds
        assert side.events_per_s == pytest.approx(side.events / side.seconds)
    assert peers.ratio == pytest.approx(ours.events_per_s / quix.events_per_s)
    assert math.isfinite(peers.ratio) and peers.ratio > 0

    admin = AdminClient(kafka.client_config(cluster_settings))
    left = [t for t in admin.list_topics(timeout=30).topics if peers.namespace in t]
    assert peers.namespace and not left
    assert not list(tmp_path.iterdir())  # Quix's state directory is gone too
