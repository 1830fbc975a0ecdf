"""The ±60 s news × volume-spike join, its strength classes and its exactly-once output."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tradepulse.process.correlator import Correlator, correlation_strength, window_max

pytestmark = pytest.mark.unit

S = 1_000_000_000
T0 = 1_700_000_000 * S  # an arbitrary event-time origin


def article(
    article_id: str,
    published_s: float,
    sentiment: float = 0.6,
    ticker: str = "AAPL",
) -> dict[str, Any]:
    return {
        "ticker": ticker,
        "article_id": article_id,
        "headline": f"headline {article_id}",
        "summary": "",
        "source": "wire",
        "url": f"https://example.invalid/{article_id}",
        "published_at": T0 + int(published_s * S),
        "ingest_ts": T0 + int(published_s * S) + 5 * S,
        "sentiment": sentiment,
        "summary_sentiment": None,
        "label": "bullish" if sentiment >= 0.05 else "bearish" if sentiment <= -0.05 else "neutral",
    }


def series(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Points as (times ns, z) arrays, sorted by time like a real per-ticker feed."""
    points = sorted(points, key=lambda p: p[0])
    t = np.array([T0 + int(s * S) for s, _ in points], dtype=np.int64)
    z = np.array([v for _, v in points], dtype=np.float64)
    return t, z


def background(start_s: float, end_s: float, step_s: float = 1.0) -> list[tuple[float, float]]:
    """Quiet z-scores (0.1) every `step_s` seconds."""
    n = int((end_s - start_s) / step_s) + 1
    return [(start_s + i * step_s, 0.1) for i in range(n)]


def run_join(
    points: list[tuple[float, float]], articles: list[dict[str, Any]], watermark_s: float = 400.0
) -> dict[str, dict[str, Any]]:
    c = Correlator()
    c.add_zscores("AAPL", *series(points))
    c.add_articles(articles)
    out = c.finalize(T0 + int(watermark_s * S), now_ns=123)
    return {r["article_id"]: r for r in out}


# --- correlation_strength: every boundary on and just off the line --------------------------

EPS = 1e-9


@pytest.mark.parametrize(
    ("sentiment", "max_z", "expected"),
    [
        # the spike threshold: z exactly 2.0 is not a spike
        (0.9, 2.0, "none"),
        (0.9, 2.0 - EPS, "none"),
        (0.9, 2.0 + EPS, "moderate"),
        (0.9, None, "none"),
        (0.9, float("nan"), "none"),
        # moderate sentiment boundary 0.2 (with a spike that is not strong)
        (0.2, 2.5, "moderate"),
        (-0.2, 2.5, "moderate"),
        (0.2 - EPS, 2.5, "weak"),
        (-(0.2 - EPS), 2.5, "weak"),
        (0.0, 2.5, "weak"),
        # strong boundaries: |s| 0.5 and z 3.0
        (0.5, 3.0, "strong"),
        (-0.5, 3.0, "strong"),
        (0.5 - EPS, 3.0, "moderate"),
        (0.5, 3.0 - EPS, "moderate"),
        (0.5, 3.0 + EPS, "strong"),
        (0.2 - EPS, 3.0, "weak"),
        (0.2, 3.0 - EPS, "moderate"),
        # big z cannot rescue weak sentiment
        (0.1, 50.0, "weak"),
    ],
)
def test_correlation_strength_boundaries(
    sentiment: float, max_z: float | None, expected: str
) -> None:
    assert correlation_strength(sentiment, max_z) == expected


def test_window_max_is_inclusive_and_picks_earliest_on_ties() -> None:
    t = np.array([0, 10, 20, 30], dtype=np.int64)
    z = np.array([5.0, 3.0, 5.0, 9.0], dtype=np.float64)
    assert window_max(t, z, 10, 10) == (5.0, 0)
    assert window_max(t, z, 20, 10) == (9.0, 30)
    assert window_max(t, z, 100, 10) is None


# --- the join on hand-made series ------------------------------------------------------------


def test_article_before_spike() -> None:
    pts = [*background(0, 300), (130.0, 3.5)]
    rows = run_join(pts, [article("a", 100.0, 0.7)])
    r = rows["a"]
    assert r["max_zscore"] == pytest.approx(3.5)
    assert r["zscore_offset_s"] == pytest.approx(30.0)
    assert r["correlation_strength"] == "strong"
    assert r["processed_at"] == 123


def test_spike_before_article() -> None:
    pts = [*background(0, 300), (70.0, 2.4)]
    rows = run_join(pts, [article("a", 100.0, -0.3)])
    r = rows["a"]
    assert r["max_zscore"] == pytest.approx(2.4)
    assert r["zscore_offset_s"] == pytest.approx(-30.0)
    assert r["correlation_strength"] == "moderate"


def test_window_edges_60s_in_61s_out() -> None:
    pts = [*background(0, 300), (40.0, 4.0), (161.0, 4.0)]
    rows = run_join(pts, [article("in", 100.0), article("out", 222.0)])
    assert rows["in"]["correlation_strength"] == "strong"
    assert rows["in"]["zscore_offset_s"] == pytest.approx(-60.0)
    # 161 is 61 s before 222: outside
    assert rows["out"]["correlation_strength"] == "none"
    assert rows["out"]["max_zscore"] is None
    assert rows["out"]["zscore_offset_s"] is None


def test_spike_61s_after_is_none() -> None:
    pts = [*background(0, 300), (161.0, 6.0)]
    rows = run_join(pts, [article("a", 100.0)])
    assert rows["a"]["correlation_strength"] == "none"


def test_several_spikes_max_wins() -> None:
    pts = [*background(0, 300), (60.0, 2.5), (110.0, 4.2), (150.0, 3.1), (165.0, 9.0)]
    rows = run_join(pts, [article("a", 100.0, 0.1)])
    r = rows["a"]
    assert r["max_zscore"] == pytest.approx(4.2)
    assert r["zscore_offset_s"] == pytest.approx(10.0)
    assert r["correlation_strength"] == "weak"


def test_z_exactly_threshold_is_not_a_spike_in_the_join() -> None:
    pts = [*background(0, 300), (100.0, 2.0)]
    rows = run_join(pts, [article("a", 100.0, 0.9)])
    assert rows["a"]["correlation_strength"] == "none"


def test_other_tickers_spikes_do_not_leak() -> None:
    c = Correlator()
    c.add_zscores("MSFT", *series([(100.0, 8.0)]))
    c.add_zscores("AAPL", *series(background(0, 300)))
    c.add_articles([article("a", 100.0)])
    (r,) = c.finalize(T0 + 400 * S)
    assert r["correlation_strength"] == "none"


def test_nan_and_inf_zscores_are_ignored() -> None:
    pts = [*background(0, 300), (100.0, float("nan")), (101.0, float("inf"))]
    rows = run_join(pts, [article("a", 100.0)])
    assert rows["a"]["correlation_strength"] == "none"


def test_out_of_order_batches_are_sorted() -> None:
    c = Correlator()
    c.add_zscores("AAPL", *series([(150.0, 3.3), (200.0, 0.0)]))
    c.add_zscores("AAPL", *series([(90.0, 5.0), (10.0, 0.0)]))
    c.add_articles([article("a", 100.0)])
    (r,) = c.finalize(T0 + 400 * S)
    assert r["max_zscore"] == pytest.approx(5.0)
    assert r["zscore_offset_s"] == pytest.approx(-10.0)


# --- event-time finalisation, exactly once ------------------------------------------------


def test_finalize_waits_for_window_close_then_emits_once() -> None:
    c = Correlator()
    c.add_articles([article("a", 100.0)])
    c.add_zscores("AAPL", *series(background(0, 120)))
    assert c.finalize(T0 + 120 * S) == []  # window [40, 160] still open
    assert c.finalize(T0 + 160 * S) == []  # more points stamped 160 may still come
    c.add_zscores("AAPL", *series([(160.0, 3.2)]))  # the spike arrives after the article
    out = c.finalize(T0 + 160 * S + 1)
    assert [r["article_id"] for r in out] == ["a"]
    assert out[0]["correlation_strength"] == "strong"
    assert c.finalize(T0 + 500 * S) == []
    # The poller may deliver the same article again: still not emitted twice.
    c.add_articles([article("a", 100.0)])
    assert c.finalize(T0 + 600 * S) == []


def test_ticker_coverage_closes_window_before_global_watermark() -> None:
    c = Correlator(lateness_s=30.0)
    c.add_articles([article("a", 100.0)])
    c.add_zscores("AAPL", *series(background(0, 160)))
    assert c.finalize(T0 + 170 * S) == []  # 170 − 30 lateness < 160, ticker seen to 160
    c.add_zscores("AAPL", *series([(160.5, 0.1)]))
    assert len(c.finalize(T0 + 170 * S)) == 1


def test_points_stamped_at_the_watermark_can_still_join() -> None:
    c = Correlator()
    c.add_articles([article("a", 100.0)])
    c.add_zscores("AAPL", *series([*background(0, 159), (160.0, 0.1)]))
    assert c.finalize(T0 + 160 * S) == []
    c.add_zscores("AAPL", *series([(160.0, 4.0), (161.0, 0.1)]))  # same stamp, next batch
    (r,) = c.finalize(T0 + 161 * S)
    assert r["max_zscore"] == pytest.approx(4.0)


def test_late_article_joins_against_history() -> None:
    c = Correlator()
    c.add_zscores("AAPL", *series([*background(0, 400), (95.0, 3.9)]))
    assert c.finalize(T0 + 400 * S) == []
    # Arrives 300 s after it was published: window closed long ago, spikes are still kept.
    c.add_articles([article("late", 100.0, -0.8)])
    (r,) = c.finalize(T0 + 400 * S)
    assert r["correlation_strength"] == "strong"
    assert r["zscore_offset_s"] == pytest.approx(-5.0)


def test_history_is_bounded() -> None:
    c = Correlator(window_s=60.0, history_s=200.0, max_points=50)
    spikes = [(float(s), 2.5) for s in range(0, 1000)]
    for i in range(0, 1000, 100):
        c.add_zscores("AAPL", *series(spikes[i : i + 100]))
        c.finalize(T0 + (i + 100) * S)
    assert c.history_points("AAPL") <= 50
    # Only spike points are kept: quiet points only move coverage.
    c2 = Correlator()
    c2.add_zscores("AAPL", *series(background(0, 1000)))
    assert c2.history_points("AAPL") == 0


def test_output_order_is_deterministic() -> None:
    pts = background(0, 400)
    arts = [article("b", 120.0), article("a", 120.0), article("c", 50.0)]
    out = Correlator()
    out.add_zscores("AAPL", *series(pts))
    out.add_articles(arts)
    ids = [r["article_id"] for r in out.finalize(T0 + 400 * S)]
    assert ids == ["c", "a", "b"]


def test_record_has_every_column() -> None:
    from tradepulse.process.correlator import SENTIMENT_TABLE

    (r,) = run_join(background(0, 300), [article("a", 100.0)]).values()
    assert set(SENTIMENT_TABLE.columns) == set(r)


# --- restart: snapshot / restore -------------------------------------------------------------


def test_snapshot_restore_neither_loses_nor_duplicates() -> None:
    arts = [article("a", 100.0), article("b", 300.0, 0.3), article("c", 500.0)]
    pts = [*background(0, 700), (110.0, 3.4), (290.0, 2.6), (560.0, 2.2)]
    t, z = series(pts)

    ref = Correlator()
    ref.add_zscores("AAPL", t, z)
    ref.add_articles(arts)
    expected = {r["article_id"]: r for r in ref.finalize(T0 + 800 * S, now_ns=1)}

    first = Correlator()
    cut = int(np.searchsorted(t, T0 + 350 * S))
    first.add_zscores("AAPL", t[:cut], z[:cut])
    first.add_articles(arts[:2])
    emitted = first.finalize(T0 + 350 * S, now_ns=1)  # "a" is out, "b" is pending
    assert [r["article_id"] for r in emitted] == ["a"]
    snap = first.snapshot()

    second = Correlator()
    second.restore(snap)
    # After a restart the log replays from the last committed position: "b" arrives again.
    second.add_articles(arts)
    second.add_zscores("AAPL", t[cut:], z[cut:])
    emitted += second.finalize(T0 + 800 * S, now_ns=1)
    ids = [r["article_id"] for r in emitted]
    assert sorted(ids) == ["a", "b", "c"]
    assert {r["article_id"]: r for r in emitted} == expected


def test_restore_rejects_unknown_version() -> None:
    with pytest.raises(ValueError):
        Correlator().restore(b'{"version": 99}')


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        Correlator(window_s=0)
    with pytest.raises(ValueError):
        Correlator(window_s=60, history_s=100)
    with pytest.raises(ValueError):
        Correlator().add_zscores("AAPL", [1, 2], [1.0])


def _partial_count() -> float:
    from tradepulse.ops.metrics import REGISTRY

    return REGISTRY.get_sample_value("tradepulse_news_partial_join_total") or 0.0


def test_partial_coverage_is_counted() -> None:
    c = Correlator(window_s=60.0, history_s=200.0)
    c.add_zscores("AAPL", *series(background(50, 1000)))
    before = _partial_count()
    # Window [40, 160] starts before the first z-score seen (50): partial.
    c.add_articles([article("early", 100.0)])
    assert len(c.finalize(T0 + 1000 * S)) == 1
    assert _partial_count() == before + 1
    # Fully covered and inside the kept history (1000 − 200 = 800): not partial.
    c.add_articles([article("ok", 900.0)])
    c.finalize(T0 + 1000 * S)
    assert _partial_count() == before + 1
    # Published long ago: its window is older than the kept history.
    c.add_articles([article("old", 500.0)])
    c.finalize(T0 + 1000 * S)
    assert _partial_count() == before + 2
