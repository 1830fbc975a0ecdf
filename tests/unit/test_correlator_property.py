"""Property: whatever order the two streams arrive in, every article is emitted exactly once
and its join equals a brute-force scan of the whole z-score series."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradepulse.process.correlator import Correlator, correlation_strength

pytestmark = pytest.mark.unit

S = 1_000_000_000
T0 = 1_700_000_000 * S
W = 60 * S


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    n_points = draw(st.integers(1, 120))
    # Times on a 10 s lattice so that equal stamps, batch cuts between them and points exactly
    # on a window edge (published ± 60 s) are common.
    lattice = st.integers(0, 40).map(lambda k: 10 * k)
    times = sorted(draw(st.lists(lattice, min_size=n_points, max_size=n_points)))
    zs = draw(
        st.lists(
            st.sampled_from([0.0, 1.9, 2.0, 2.0001, 2.5, 3.0, 4.5, 7.0]),
            min_size=n_points,
            max_size=n_points,
        )
    )
    n_articles = draw(st.integers(1, 15))
    articles = [
        {
            "ticker": "AAPL",
            "article_id": str(i),
            "headline": "h",
            "summary": "",
            "source": "s",
            "url": "",
            "published_at": T0 + draw(lattice) * S,
            "sentiment": draw(st.sampled_from([-0.7, -0.5, -0.2, 0.0, 0.19, 0.2, 0.5, 0.9])),
            "summary_sentiment": None,
            "label": "neutral",
        }
        for i in range(n_articles)
    ]
    # Interleave: z batches (in time order, as the features stage emits them) and articles
    # (arriving at a random batch, i.e. possibly long after their window closed).
    cuts = sorted(draw(st.lists(st.integers(0, n_points), max_size=20)))
    arrival = [draw(st.integers(0, len(cuts) + 1)) for _ in articles]
    return {"t": times, "z": zs, "articles": articles, "cuts": cuts, "arrival": arrival}


def brute_force(t: list[int], z: list[float], article: dict[str, Any]) -> tuple[Any, Any, str]:
    p = article["published_at"]
    best: tuple[float, int] | None = None
    for ti, zi in zip(t, z, strict=True):
        tn = T0 + ti * S
        if p - W <= tn <= p + W and zi > 2.0 and (best is None or zi > best[0]):
            best = (zi, tn)
    if best is None:
        return None, None, "none"
    return best[0], (best[1] - p) / 1e9, correlation_strength(article["sentiment"], best[0])


@settings(max_examples=150, deadline=None)
@given(scenario())
def test_any_arrival_order_gives_the_brute_force_join_exactly_once(sc: dict[str, Any]) -> None:
    c = Correlator(history_s=5000.0)
    t = np.array([T0 + s * S for s in sc["t"]], dtype=np.int64)
    z = np.array(sc["z"], dtype=np.float64)
    bounds = [0, *sc["cuts"], len(t)]
    emitted: list[dict[str, Any]] = []
    for step in range(len(bounds)):
        c.add_articles(
            [a for a, when in zip(sc["articles"], sc["arrival"], strict=True) if when == step]
        )
        if step + 1 < len(bounds):
            lo, hi = bounds[step], bounds[step + 1]
            c.add_zscores("AAPL", t[lo:hi], z[lo:hi])
            watermark = int(t[hi - 1]) if hi > 0 else 0
        emitted += c.finalize(watermark)
    # Trading goes on long enough for every window to close.
    c.add_articles(
        [a for a, when in zip(sc["articles"], sc["arrival"], strict=True) if when > len(bounds) - 1]
    )
    emitted += c.finalize(T0 + 2000 * S)

    ids = [r["article_id"] for r in emitted]
    assert sorted(ids) == sorted(a["article_id"] for a in sc["articles"])
    by_id = {r["article_id"]: r for r in emitted}
    for a in sc["articles"]:
        max_z, offset, strength = brute_force(sc["t"], sc["z"], a)
        r = by_id[a["article_id"]]
        assert r["correlation_strength"] == strength
        assert r["max_zscore"] == max_z
        if offset is not None:
            assert r["zscore_offset_s"] == pytest.approx(offset)
        else:
            assert r["zscore_offset_s"] is None
