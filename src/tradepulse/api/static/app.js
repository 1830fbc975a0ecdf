// TradePulse dashboard: REST for the initial state of the selected ticker, then live updates
// from the /stream Server-Sent Events. The stream is read with fetch() rather than EventSource
// so the X-API-Key header can be sent when the server requires keys.
"use strict";

(function () {
  const MAX_POINTS = 3000;          // per ticker, per series
  const MAX_FEED = 50;
  const KEY_STORE = "tradepulse.apiKey";
  const state = {
    tickers: [],
    selected: null,
    series: new Map(),   // ticker -> {price: [], vwap: [], z: [], markers: [], last: {}}
    apiKey: localStorage.getItem(KEY_STORE) || "",
  };

  const $ = (id) => document.getElementById(id);
  const fmt = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" :
    Number(x).toLocaleString(undefined, { minimumFractionDigits: d, maximumFractionDigits: d }));
  const fmtInt = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString());
  const nsToSec = (ns) => Math.floor(Number(ns) / 1e9);
  const timeOf = (ns) => new Date(Number(ns) / 1e6).toLocaleTimeString();

  // ---- charts ---------------------------------------------------------------------------
  const LC = window.LightweightCharts;
  const chartOpts = (height) => ({
    height,
    layout: { background: { color: "transparent" }, textColor: "#8b949e", fontSize: 11 },
    grid: { vertLines: { color: "#1c222b" }, horzLines: { color: "#1c222b" } },
    rightPriceScale: { borderColor: "#262d36" },
    timeScale: { borderColor: "#262d36", timeVisible: true, secondsVisible: true },
    crosshair: { mode: LC.CrosshairMode.Normal },
  });
  const priceEl = $("price-chart");
  const zEl = $("z-chart");
  const priceChart = LC.createChart(priceEl, chartOpts(priceEl.clientHeight));
  const priceSeries = priceChart.addLineSeries({ color: "#4f9dff", lineWidth: 2, title: "price" });
  const vwapSeries = priceChart.addLineSeries({ color: "#f5b342", lineWidth: 2, lineStyle: 0, title: "VWAP" });
  const zChart = LC.createChart(zEl, chartOpts(zEl.clientHeight));
  const zSeries = zChart.addHistogramSeries({
    color: "#4f9dff",
    priceFormat: { type: "price", precision: 2, minMove: 0.01 },
    // Always keep the 2.0 and 3.0 bands in view, whatever the data's own range.
    autoscaleInfoProvider: (original) => {
      const r = original();
      const lo = Math.min(r ? r.priceRange.minValue : 0, -1);
      const hi = Math.max(r ? r.priceRange.maxValue : 0, 3.5);
      return { priceRange: { minValue: lo, maxValue: hi } };
    },
  });
  for (const [v, color] of [[2, "#f0883e"], [3, "#f85149"]]) {
    zSeries.createPriceLine({ price: v, color, lineWidth: 1, lineStyle: 2, axisLabelVisible: true, title: "" });
  }
  // Keep the two time axes aligned.
  priceChart.timeScale().subscribeVisibleLogicalRangeChange((r) => r && zChart.timeScale().setVisibleLogicalRange(r));
  new ResizeObserver(() => {
    priceChart.applyOptions({ width: priceEl.clientWidth });
    zChart.applyOptions({ width: zEl.clientWidth });
  }).observe(priceEl);

  function seriesOf(ticker) {
    let s = state.series.get(ticker);
    if (!s) {
      s = { price: [], vwap: [], z: [], markers: [], last: {}, first: null };
      state.series.set(ticker, s);
    }
    return s;
  }

  // Append or replace the point of the same second (the chart needs strictly rising times).
  function push(arr, time, value) {
    if (value === null || value === undefined) return null;
    const point = { time, value };
    if (arr.length && arr[arr.length - 1].time === time) arr[arr.length - 1] = point;
    else if (arr.length && arr[arr.length - 1].time > time) return null;
    else arr.push(point);
    if (arr.length > MAX_POINTS) arr.splice(0, arr.length - MAX_POINTS);
    return point;
  }

  function zColor(z) {
    const a = Math.abs(z);
    return a >= 3 ? "#f85149" : a >= 2 ? "#f0883e" : "#4f9dff";
  }

  function redraw() {
    const s = seriesOf(state.selected);
    priceSeries.setData(s.price);
    vwapSeries.setData(s.vwap);
    zSeries.setData(s.z.map((p) => ({ ...p, color: zColor(p.value) })));
    drawMarkers(s);
    priceEl.dataset.points = String(s.price.length);
    priceChart.timeScale().scrollToRealTime();
  }

  function drawMarkers(s) {
    const first = s.price.length ? s.price[0].time : Infinity;
    const visible = s.markers.filter((m) => m.time >= first).sort((a, b) => a.time - b.time);
    priceSeries.setMarkers(visible);
  }

  // ---- panels ---------------------------------------------------------------------------
  function renderQuote() {
    const s = seriesOf(state.selected);
    const q = s.last;
    $("q-ticker").textContent = state.selected || "–";
    $("q-price").textContent = fmt(q.price);
    $("q-time").textContent = q.timestamp_ns ? timeOf(q.timestamp_ns) : "";
    const change = s.first !== null && q.price !== undefined ? q.price - s.first : null;
    const ch = $("q-change");
    ch.textContent = change === null ? "" : `${change >= 0 ? "+" : ""}${fmt(change)} (${fmt((100 * change) / s.first)}%)`;
    ch.className = "change " + (change === null ? "" : change >= 0 ? "up" : "down");
    $("q-vwap").textContent = fmt(q.vwap);
    $("q-volume").textContent = fmtInt(q.volume);
    $("q-bidask").textContent = q.bid !== undefined && q.bid !== null ? `${fmt(q.bid)} / ${fmt(q.ask)}` : "–";
    $("q-z").textContent = q.warming_up ? "warming up" : fmt(q.volume_zscore);
    $("q-mom").textContent = q.price_momentum === undefined || q.price_momentum === null ? "–" : `${fmt(100 * q.price_momentum, 3)}%`;
    $("q-freq").textContent = fmt(q.trade_frequency, 1);
  }

  function sentimentClass(x) {
    if (x === null || x === undefined) return "sent-neu";
    return x >= 0.05 ? "sent-pos" : x <= -0.05 ? "sent-neg" : "sent-neu";
  }

  function newsItem(a, fresh) {
    const li = document.createElement("li");
    if (fresh) li.className = "new";
    const link = document.createElement(a.url ? "a" : "span");
    link.className = "headline";
    link.textContent = a.headline;
    if (a.url && /^https?:\/\//.test(a.url)) { link.href = a.url; link.target = "_blank"; link.rel = "noopener noreferrer"; }
    const meta = document.createElement("div");
    meta.className = "meta";
    const chip = (cls, text, title) => {
      const c = document.createElement("span");
      c.className = "chip " + cls; c.textContent = text; if (title) c.title = title; return c;
    };
    meta.append(
      chip(sentimentClass(a.sentiment), `${a.label || "sentiment"} ${fmt(a.sentiment)}`, "VADER compound −1..+1"),
      chip("str-" + a.correlation_strength, a.correlation_strength,
        a.max_zscore !== null ? `max z ${fmt(a.max_zscore)} at ${fmt(a.zscore_offset_s, 0)} s` : "no volume spike within ±60 s"),
      document.createTextNode(`${a.source || ""} · ${timeOf(a.published_at_ns)}`),
    );
    li.append(link, meta);
    return li;
  }

  function anomalyItem(a, fresh) {
    const li = document.createElement("li");
    if (fresh) li.className = "new";
    const f = a.features || {};
    li.innerHTML = "";
    const head = document.createElement("div");
    head.className = "headline";
    head.textContent = `${timeOf(a.timestamp_ns)} · score ${fmt(a.anomaly_score, 3)}`;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `${a.type} · price ${fmt(f.price)} · z ${fmt(f.volume_zscore)} · mom ${fmt(f.price_momentum, 4)}`;
    li.append(head, meta);
    return li;
  }

  function fillFeed(el, items, make, emptyText) {
    el.replaceChildren();
    if (!items.length) {
      const li = document.createElement("li"); li.className = "empty"; li.textContent = emptyText; el.append(li);
      return;
    }
    for (const it of items.slice(0, MAX_FEED)) el.append(make(it, false));
  }

  function prependFeed(el, node) {
    const empty = el.querySelector(".empty");
    if (empty) empty.remove();
    el.prepend(node);
    while (el.children.length > MAX_FEED) el.lastChild.remove();
  }

  function renderHealth(h) {
    const pill = $("health-status");
    pill.textContent = h.status;
    pill.className = "pill pill-" + h.status;
    pill.title = (h.reasons || []).join("; ");
    $("h-eps").textContent = fmt(h.events_per_s, 0);
    $("h-lag").textContent = fmtInt(h.consumer_lag);
    $("h-p99").textContent = fmt(h.dynamo_latency_p99, 1);
  }

  // ---- data ----------------------------------------------------------------------------
  function headers() {
    return state.apiKey ? { "X-API-Key": state.apiKey } : {};
  }

  async function askKey() {
    const dlg = $("key-dialog");
    dlg.showModal();
    await new Promise((ok) => dlg.addEventListener("close", ok, { once: true }));
    state.apiKey = $("key-input").value.trim();
    localStorage.setItem(KEY_STORE, state.apiKey);
  }

  async function getJSON(path) {
    const r = await fetch(path, { headers: headers() });
    if (r.status === 401) { await askKey(); return getJSON(path); }
    if (!r.ok) return null;
    return r.json();
  }

  async function loadTicker(ticker) {
    const s = seriesOf(ticker);
    const [quote, agg, anomalies, news] = await Promise.all([
      getJSON(`/quotes/${ticker}`),
      getJSON(`/aggregations/${ticker}`),
      getJSON(`/anomalies/${ticker}?hours=24`),
      getJSON(`/sentiment/${ticker}?hours=24`),
    ]);
    if (quote) {
      Object.assign(s.last, quote);
      if (s.first === null) s.first = quote.price;
      push(s.price, nsToSec(quote.timestamp_ns), quote.price);
    }
    if (agg) {
      Object.assign(s.last, { vwap: agg.vwap, volume_zscore: agg.volume_zscore, price_momentum: agg.price_momentum, warming_up: agg.warming_up });
      push(s.vwap, nsToSec(agg.timestamp_ns), agg.vwap);
    }
    if (anomalies) {
      s.markers = anomalies.anomalies.map(markerOf);
      if (ticker === state.selected) fillFeed($("anomalies"), anomalies.anomalies, anomalyItem, "No anomalies in the last 24 h.");
    }
    if (news && ticker === state.selected) fillFeed($("news"), news.articles, newsItem, "No headlines in the last 24 h.");
    if (ticker === state.selected) { redraw(); renderQuote(); }
  }

  function markerOf(a) {
    return { time: nsToSec(a.timestamp_ns), position: "aboveBar", color: "#f85149", shape: "arrowDown", text: "A" };
  }

  function select(ticker) {
    state.selected = ticker;
    for (const b of $("tickers").children) b.setAttribute("aria-pressed", String(b.dataset.ticker === ticker));
    history.replaceState(null, "", `#${ticker}`);
    redraw();
    renderQuote();
    loadTicker(ticker);
  }

  function setTickers(list) {
    state.tickers = list;
    const nav = $("tickers");
    nav.replaceChildren();
    for (const t of list) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = t; b.dataset.ticker = t;
      b.addEventListener("click", () => select(t));
      nav.append(b);
    }
    const wanted = location.hash.slice(1).toUpperCase();
    select(list.includes(wanted) ? wanted : state.selected && list.includes(state.selected) ? state.selected : list[0]);
  }

  function onMessage(kind, data) {
    if (kind === "hello") { setTickers(data.tickers); return; }
    if (kind === "health") { renderHealth(data); return; }
    const t = data.ticker;
    if (!t) return;
    const s = seriesOf(t);
    const mine = t === state.selected;
    if (kind === "quote") {
      Object.assign(s.last, { price: data.price, timestamp_ns: data.timestamp_ns, size: data.size });
      if (s.first === null) s.first = data.price;
      const p = push(s.price, nsToSec(data.timestamp_ns), data.price);
      if (mine && p) { priceSeries.update(p); priceEl.dataset.points = String(s.price.length); }
    } else if (kind === "features") {
      Object.assign(s.last, {
        vwap: data.vwap, volume_zscore: data.volume_zscore, price_momentum: data.price_momentum,
        trade_frequency: data.trade_frequency, warming_up: data.warming_up,
      });
      const time = nsToSec(data.timestamp_ns);
      const v = push(s.vwap, time, data.vwap);
      const z = push(s.z, time, data.volume_zscore);
      if (mine && v) vwapSeries.update(v);
      if (mine && z) zSeries.update({ ...z, color: zColor(z.value) });
    } else if (kind === "anomaly") {
      s.markers.push(markerOf(data));
      if (mine) { drawMarkers(s); prependFeed($("anomalies"), anomalyItem(data, true)); }
    } else if (kind === "news") {
      if (mine) prependFeed($("news"), newsItem(data, true));
    }
    if (mine && (kind === "quote" || kind === "features")) scheduleQuote();
  }

  let quotePending = false;
  function scheduleQuote() {
    if (quotePending) return;
    quotePending = true;
    requestAnimationFrame(() => { quotePending = false; renderQuote(); });
  }

  // Parse a text/event-stream body: frames separated by a blank line, "event:" and "data:".
  async function stream() {
    for (;;) {
      try {
        const r = await fetch("/stream", { headers: headers(), cache: "no-store" });
        if (r.status === 401) { await askKey(); continue; }
        if (!r.ok || !r.body) throw new Error(`stream ${r.status}`);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            let kind = "message", data = "";
            for (const line of frame.split("\n")) {
              if (line.startsWith("event: ")) kind = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (data) {
              try { onMessage(kind, JSON.parse(data)); } catch (e) { console.error(e); }
            }
          }
        }
      } catch (e) {
        console.warn("stream interrupted", e);
      }
      $("health-status").textContent = "reconnecting";
      $("health-status").className = "pill pill-unknown";
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }

  window.tradepulse = { state, select };
  stream();
})();
