"""The pure market generator: determinism, ordering, consistency, malformed events, truth."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from tradepulse.config import TICKER_RE
from tradepulse.ops.evaluate_news import load_truth
from tradepulse.sim import MALFORMED_KINDS, MarketGenerator, SimConfig
from tradepulse.sim.market import (
    EXCLUDED_CONDITIONS,
    NS_PER_MS,
    NS_PER_S,
    SEPARATION_NS,
    SPIKE_WINDOW_NS,
    Batch,
)
from tradepulse.sim.rest import TradeHistory, company_news_endpoint, trades_endpoint
from tradepulse.sim.truth import write_truth

START = 1_780_000_000 * NS_PER_S  # a fixed start keeps every run identical
TICK = 5 * NS_PER_MS


def run(cfg: SimConfig, seconds: float, tick_ns: int = TICK) -> tuple[MarketGenerator, Batch]:
    gen = MarketGenerator(cfg, START)
    out = Batch()
    t = START
    while t < START + int(seconds * NS_PER_S) and not gen.finished:
        t += tick_ns
        b = gen.advance(t)
        out.events += b.events
        out.trades += b.trades
        out.malformed += b.malformed
    return gen, out


def valid_event(ev: Any, now_ns: int) -> bool:
    """What the pipeline's validation accepts, restated independently of it."""
    if not isinstance(ev, dict) or ev.get("ev") not in ("T", "Q"):
        return False
    sym, t = ev.get("sym"), ev.get("t")
    if not isinstance(sym, str) or not TICKER_RE.match(sym):
        return False
    if not isinstance(t, int) or abs(t * NS_PER_MS - now_ns) > 86_400 * NS_PER_S:
        return False
    prices = ("p",) if ev["ev"] == "T" else ("bp", "ap")
    sizes = ("s",) if ev["ev"] == "T" else ("bs", "as")
    for k in prices:
        p = ev.get(k)
        if isinstance(p, bool) or not isinstance(p, int | float) or not math.isfinite(p) or p <= 0:
            return False
    for k in sizes:
        s = ev.get(k)
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            return False
    return isinstance(ev.get("q"), int)


def frame_valid(raw: str, now_ns: int) -> bool:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, list) and all(valid_event(e, now_ns) for e in data)


def cfg(**kw: Any) -> SimConfig:
    base: dict[str, Any] = {"tickers": ["AAPL", "MSFT", "ZZZ"], "rate": 2000.0, "profile": "flat"}
    base.update(kw)
    return SimConfig(**base)


def test_deterministic_for_a_seed() -> None:
    c = cfg(bad_rate=0.02, news_rate=5, anomaly_rate=5)
    _, a = run(c, 3)
    _, b = run(cfg(bad_rate=0.02, news_rate=5, anomaly_rate=5), 3)
    assert a.events == b.events
    assert [m.raw for m in a.malformed] == [m.raw for m in b.malformed]
    _, other = run(cfg(seed=8, bad_rate=0.02), 3)
    assert other.events != a.events


def test_sequence_numbers_increase_per_ticker_with_holes() -> None:
    _, out = run(cfg(), 5)
    last: dict[str, int] = {}
    gaps = 0
    for ev in out.events:
        prev = last.get(ev["sym"])
        if prev is not None:
            assert ev["q"] > prev
            gaps += ev["q"] - prev > 1
        last[ev["sym"]] = ev["q"]
    assert gaps > 0  # the real feed has holes; consumers must not treat them as losses


def test_timestamps_are_ms_not_after_generation_and_ordered() -> None:
    gen = MarketGenerator(cfg(), START)
    t = START
    for _ in range(200):
        t += TICK
        batch = gen.advance(t)
        for ev in batch.events:
            assert isinstance(ev["t"], int)
            assert START // NS_PER_MS <= ev["t"] <= t // NS_PER_MS
        for _sym, row in batch.trades:
            assert row[0] % NS_PER_MS == 0 and row[0] <= t


def test_quotes_bracket_trades_and_trades_look_real() -> None:
    _, out = run(cfg(anomaly_rate=20, news_rate=10), 10)
    quote: dict[str, tuple[float, float]] = {}
    trades = 0
    excluded = 0
    exchanges: set[int] = set()
    sizes = []
    for ev in out.events:
        if ev["ev"] == "Q":
            assert ev["bp"] < ev["ap"]
            quote[ev["sym"]] = (ev["bp"], ev["ap"])
            continue
        trades += 1
        bid, ask = quote[ev["sym"]]
        assert bid <= ev["p"] <= ask
        excluded += any(c in EXCLUDED_CONDITIONS for c in ev["c"])
        exchanges.add(ev["x"])
        sizes.append(ev["s"])
        if ev["x"] == 4:
            assert ev["trfi"] in (201, 202, 203) and ev["trft"] <= ev["t"]
        if ev["s"] < 100:
            assert 37 in ev["c"]  # odd lot
    assert trades > 1000
    assert 0.01 < excluded / trades < 0.06
    assert len(exchanges) >= 6
    assert max(sizes) > 20 * statistics.median(sizes)  # heavy tail
    assert sum(s % 100 == 0 for s in sizes) / len(sizes) > 0.3  # round lots dominate


def test_malformed_events_are_malformed_and_counted() -> None:
    gen, out = run(cfg(bad_rate=0.2), 3)
    assert out.malformed
    kinds = {m.kind for m in out.malformed}
    assert kinds == set(MALFORMED_KINDS)
    for m in out.malformed:
        assert not frame_valid(m.raw, START), m
    for ev in out.events:
        assert valid_event(ev, START + 3 * NS_PER_S), ev
    assert gen.malformed == len(out.malformed)
    assert sum(gen.malformed_by_kind.values()) == len(out.malformed)
    share = len(out.malformed) / (len(out.malformed) + len(out.events))
    assert 0.15 < share < 0.25


def test_truth_counts_add_up_and_count_limit_is_exact() -> None:
    gen, out = run(cfg(count=5000, bad_rate=0.01), 60)
    assert gen.finished
    assert len(out.events) + len(out.malformed) == 5000 == gen.total_events
    trades: defaultdict[str, int] = defaultdict(int)
    quotes: defaultdict[str, int] = defaultdict(int)
    for ev in out.events:
        (trades if ev["ev"] == "T" else quotes)[ev["sym"]] += 1
    assert dict(trades) == {k: v for k, v in gen.valid_trades.items() if v}
    assert dict(quotes) == {k: v for k, v in gen.valid_quotes.items() if v}
    assert gen.advance(START + 100 * NS_PER_S).events == []


def test_duration_stops_generation() -> None:
    gen, _ = run(cfg(duration_s=1.0), 5)
    assert gen.finished and gen.ended_ns == START + NS_PER_S


def test_profiles_stay_in_their_ranges() -> None:
    intraday = MarketGenerator(cfg(profile="intraday"), START)
    mults = [intraday.profile_mult(START + s * NS_PER_S) for s in range(0, 23_400, 60)]
    assert min(mults) > 0.49 and max(mults) <= 1.5
    assert max(mults) - min(mults) > 0.8
    opening = MarketGenerator(cfg(profile="market-open"), START)
    assert opening.profile_mult(START) == pytest.approx(1.0)
    assert 8 <= opening.profile_mult(START + 60 * NS_PER_S) <= 10
    assert 8 <= opening.profile_mult(START + 600 * NS_PER_S) <= 10


def test_price_jump_moves_the_quote() -> None:
    gen, out = run(cfg(tickers=["AAPL"], rate=400, anomaly_rate=6, news_rate=0), 60)
    jumps = [a for a in gen.anomalies if a.kind == "price_jump" and a.start_ns < gen.ended_ns]
    assert jumps
    for a in jumps:
        before = [e for e in out.events if e["ev"] == "Q" and e["t"] * NS_PER_MS < a.start_ns]
        after = [e for e in out.events if e["ev"] == "Q" and e["t"] * NS_PER_MS >= a.start_ns]
        if not before or not after:
            continue
        move = (after[0]["bp"] + after[0]["ap"]) / (before[-1]["bp"] + before[-1]["ap"]) - 1
        assert move * 100 == pytest.approx(a.magnitude, abs=0.5)
        assert a.sequence_number is not None


def _minute_volumes(events: list[dict[str, Any]], ticker: str) -> dict[int, int]:
    vol: dict[int, int] = defaultdict(int)
    for ev in events:
        if ev["ev"] == "T" and ev["sym"] == ticker:
            vol[ev["t"] // 60_000] += ev["s"]
    return vol


def test_news_spikes_lift_the_volume_zscore_and_calm_articles_stay_calm() -> None:
    # Sparse enough that the 20-minute baseline is mostly calm: with a volume window every
    # few minutes the baseline itself is spiky and no z-score can stand out (see the report).
    c = cfg(tickers=["AAPL"], rate=20, news_rate=0.12, anomaly_rate=0.1, news_spike_prob=0.5)
    gen, out = run(c, 150 * 60, tick_ns=250 * NS_PER_MS)
    vol = _minute_volumes(out.events, "AAPL")
    first = min(vol)
    zs = []
    for art in gen.articles():
        spike, window = gen.spike_truth(art, gen.ended_ns)
        minute = (window.start_ns if window else art.published_at) // (60 * NS_PER_S)
        if minute - 20 < first or art.published_at + SPIKE_WINDOW_NS > gen.ended_ns:
            continue
        if not spike:
            for w in gen.tickers["AAPL"].windows:
                assert not (
                    w.start_ns < art.published_at + SEPARATION_NS
                    and w.end_ns > art.published_at - SEPARATION_NS
                )
            continue
        assert window is not None
        assert abs(window.start_ns - art.published_at) <= 30 * NS_PER_S or window is not art.spike
        # Peak 60 s volume over the spike vs the 20 preceding minutes, on minute buckets
        # (a spike can straddle two of them, so take the larger).
        hist = [vol.get(m, 0) for m in range(minute - 20, minute)]
        peak = max(vol.get(minute, 0), vol.get(minute + 1, 0))
        sd = statistics.pstdev(hist) or 1.0
        zs.append((peak - statistics.mean(hist)) / sd)
    assert len(zs) >= 5
    assert statistics.median(zs) > 3


def test_articles_have_finnhub_shape_and_distinct_ids() -> None:
    gen, _ = run(cfg(news_rate=30, rate=200), 20)
    arts = gen.articles()
    assert len(arts) > 10
    assert len({a.id for a in arts}) == len(arts)
    tones = {a.tone for a in arts}
    assert len(tones) >= 3
    for a in arts:
        doc = a.to_finnhub()
        assert doc["related"] == a.ticker and doc["category"] == "company"
        assert doc["datetime"] * NS_PER_S == a.published_at
        assert doc["url"].startswith("https://") and doc["headline"] and doc["summary"]


def test_truth_files_match_the_generator(tmp_path: Path) -> None:
    c = cfg(news_rate=20, anomaly_rate=20, bad_rate=0.01, count=20_000)
    gen, out = run(c, 60)
    write_truth(tmp_path, c, gen, START, gen.ended_ns)
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert sum(summary["valid_trades"].values()) == sum(e["ev"] == "T" for e in out.events)
    assert sum(summary["valid_quotes"].values()) == sum(e["ev"] == "Q" for e in out.events)
    assert summary["malformed"] == len(out.malformed) == sum(summary["malformed_by_kind"].values())
    truth, bad = load_truth(tmp_path / "news.jsonl")
    assert bad == 0 and truth
    assert all(row["published_at"] <= gen.ended_ns for row in truth.values())
    anomalies = [
        orjson.loads(line)
        for line in (tmp_path / "anomalies.jsonl").read_bytes().split(b"\n")
        if line
    ]
    assert anomalies and {a["kind"] for a in anomalies} <= {
        "price_jump",
        "volume_burst",
        "news_spike",
    }
    seqs = {(sym, row[1]) for sym, row in out.trades}
    for a in anomalies:
        assert a["start_ns"] < gen.ended_ns
        if a["sequence_number"] is not None:
            assert (a["ticker"], a["sequence_number"]) in seqs


def test_config_rejects_bad_values() -> None:
    bad: list[dict[str, Any]] = [
        {"rate": 0},
        {"bad_rate": 1.5},
        {"profile": "weekly"},
        {"tickers": ["aapl$"]},
        {"tickers": []},
        {"count": 0},
        {"duration_s": -1},
        {"news_spike_prob": -0.1},
        {"rate": float("nan")},
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            cfg(**kw)


def test_trade_history_pages_in_both_orders() -> None:
    _, out = run(cfg(tickers=["AAPL"]), 3)
    hist = TradeHistory(1_000_000)
    hist.extend(out.trades)
    rows = [row for _, row in out.trades]
    lo, hi = rows[10][0], rows[-10][0]
    expected = [r for r in rows if lo <= r[0] < hi]
    for order in ("asc", "desc"):
        got: list[int] = []
        query = {
            "timestamp.gte": str(lo),
            "timestamp.lt": str(hi),
            "limit": "7",
            "order": order,
            "apiKey": "simulator",
        }
        while True:
            status, body = trades_endpoint(
                hist, "AAPL", query, {}, api_key="simulator", base_url="http://x"
            )
            assert status == 200 and body["status"] == "OK"
            got += [r["sequence_number"] for r in body["results"]]
            if "next_url" not in body:
                break
            # next_url carries the cursor, not the key: the client sends the key again.
            query = {"cursor": body["next_url"].split("cursor=")[1], "apiKey": "simulator"}
        want = [r[1] for r in expected]
        assert got == (want if order == "asc" else want[::-1])
    assert trades_endpoint(hist, "AAPL", {}, {}, api_key="k", base_url="")[0] == 401
    bad_key = trades_endpoint(hist, "AAPL", {"apiKey": "x"}, {}, api_key="k", base_url="")
    assert bad_key[0] == 401
    bearer = {"authorization": "Bearer k"}
    assert trades_endpoint(hist, "AAPL", {"limit": "0"}, bearer, api_key="k", base_url="")[0] == 400
    assert trades_endpoint(hist, "NOPE", {}, bearer, api_key="k", base_url="")[1]["results"] == []


def test_company_news_endpoint_filters_and_orders() -> None:
    gen, _ = run(cfg(news_rate=30, rate=200), 20)
    now = START + 20 * NS_PER_S
    q = {"symbol": "AAPL", "from": "2020-01-01", "to": "2099-01-01"}
    status, body = company_news_endpoint(gen.published, q, {"x-finnhub-token": "t"}, now)
    assert status == 200 and body
    assert all(item["datetime"] * NS_PER_S <= now for item in body)
    assert [i["datetime"] for i in body] == sorted((i["datetime"] for i in body), reverse=True)
    assert company_news_endpoint(gen.published, q, {}, now)[0] == 401
    assert company_news_endpoint(gen.published, {**q, "token": "t", "from": "x"}, {}, now)[0] == 422
    assert company_news_endpoint(gen.published, {"token": "t"}, {}, now)[0] == 422
    unknown = {**q, "symbol": "NOPE", "token": "t"}
    assert company_news_endpoint(gen.published, unknown, {}, now) == (200, [])


def test_cli_rejects_bad_values_with_exit_2() -> None:
    from typer.testing import CliRunner

    from tradepulse.cli import app

    runner = CliRunner()
    for args in (
        ["--rate", "-5"],
        ["--profile", "weekly"],
        ["--bad-rate", "2"],
        ["--tickers", "a$"],
    ):
        result = runner.invoke(app, ["sim", "--port", "0", *args])
        assert result.exit_code == 2, (args, result.output)


def test_history_is_calm_rest_only_and_outside_count() -> None:
    cfg = SimConfig(
        tickers=["AAPL", "MSFT"],
        rate=400.0,
        history_s=120.0,
        anomaly_rate=6.0,
        news_rate=6.0,
        bad_rate=0.05,
        count=2_000,
    )
    gen = MarketGenerator(cfg, START)
    hist = gen.advance_history()
    assert hist.trades and not hist.malformed
    assert all(START - 120 * NS_PER_S < row[0] <= START for _, row in hist.trades)
    assert gen.history_trades == gen.valid_trades
    assert sum(gen.history_trades.values()) == len(hist.trades)
    assert sum(gen.valid_quotes.values()) == 0  # history quotes are never sent
    assert not gen.finished and gen.advance_history().events == []  # only once
    # Anomalies and articles are planned from the live start on only.
    assert all(a.start_ns >= START for a in gen.anomalies)
    assert all(a.published_at >= START for a in gen.articles())
    t, live = START, 0
    while not gen.finished:
        t += TICK
        live += len(gen.advance(t))
    assert live == 2_000  # `count` counts what is sent live, not the history
    assert gen.anomalies and gen.malformed > 0
    # Same seed, same start: the same history (a restarted simulator serves the same trades).
    again = MarketGenerator(cfg, START).advance_history()
    assert again.trades == hist.trades
