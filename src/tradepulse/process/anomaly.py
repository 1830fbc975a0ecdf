"""Per-ticker Isolation Forest over the six features, scored in batches by a compiled tree walk.

Model: an Isolation Forest (100 trees, 256 samples per tree, contamination 0.01) fitted on the
ticker's last `train_window` feature vectors
``[price, size, volume_zscore, price_momentum, vwap_deviation, trade_frequency]``.
A new model is fitted after every `retrain_every`-th vector of the ticker's session, so model
version v is trained on the vectors up to number v·R and scores vectors v·R+1 … (v+1)·R. No
vector is scored before the first model (the first R vectors of each session are the
warm-up). Rows still `warming_up` (z-score or momentum undefined, reported as 0) are neither
scored nor trained on: they would teach the model that z = 0 is normal.

State is per (ticker, session) and the seed of version v is derived from (ticker, session, v),
so replaying a session — or warming a restarted processor with it — yields the same models and
the same scores, whatever the micro-batching.

Scores follow `IsolationForest.score_samples` (more negative = more anomalous): for each
vector, ``s = −2^(−E[h(x)] / c(ψ))`` with h the path length (leaf depth plus c(leaf size))
and c(ψ) the average path length of a ψ-sample tree. Instead of scikit-learn's per-tree Python
loop (about 12 ms per call), the trees live in flat arrays walked by a numba kernel with the
same float32 inputs and the same summation order, so for trees exported from scikit-learn
(`Forest.from_sklearn`) the scores are bit-identical (tested).

Training runs synchronously, with the compiled trainer of `iforest.py` (1.2–1.9 ms per retrain
on the 2-core bench machine, cut-off and medians included, against 140–370 ms for
scikit-learn's `fit`): a background fit would make the version that scores a given trade
depend on thread timing, and determinism on replay is the stronger requirement.
scikit-learn's trainer stays selectable as the reference (`AnomalyParams.trainer =
"sklearn"`); the two grow different trees from the same seed but of the same distribution, and
their detection quality (AUC) is compared in the tests. The cut-off `offset_` is computed as
scikit-learn does: the contamination quantile of the training rows' scores (`percentile`:
numpy's arithmetic without its ~60 µs of generic machinery).

An anomaly is a score below the model's contamination cut-off (`offset_`), or below
`threshold` when one is configured.

`retrain = False` never replaces a model once one exists (a fresh engine keeps version 1 for
the session): the benchmark's reference for what retraining costs the stream (`tradepulse
bench`, retraining on vs off), not a mode to run in.

`kind` names the feature that deviates most from the training window, by robust z
(|x − median| / (1.4826·MAD)), mapped through `KIND_BY_FEATURE`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numba
import numpy as np
import numpy.typing as npt
import orjson
from sklearn.ensemble import IsolationForest

from tradepulse.process.iforest import (
    features_major,
    grow_forest,
    max_depth_for,
    sibling_layout,
    walk_rows,
)
from tradepulse.store.base import DerivedTable

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]

FEATURES: tuple[str, ...] = (
    "price",
    "size",
    "volume_zscore",
    "price_momentum",
    "vwap_deviation",
    "trade_frequency",
)
Trainer = Literal["numba", "sklearn"]
# The compiled trainer by default; "sklearn" is the reference it is measured against.
DEFAULT_TRAINER: Trainer = "numba"

KIND_BY_FEATURE = {
    "price": "price_jump",
    "size": "large_trade",
    "volume_zscore": "volume_spike",
    "price_momentum": "price_jump",
    "vwap_deviation": "price_jump",
    "trade_frequency": "trade_burst",
}

# By feature index; index −1 (not flagged) picks the empty kind at the end.
_KIND_NAMES = (*(KIND_BY_FEATURE[f] for f in FEATURES), "")

ANOMALIES_TABLE = DerivedTable(
    name="anomalies",
    columns={
        "ticker": "TEXT",
        "timestamp": "INTEGER",
        "sequence_number": "INTEGER",
        "anomaly_score": "REAL",
        "threshold": "REAL",
        "kind": "TEXT",
        "model_version": "INTEGER",
        "features": "TEXT",
    },
    key=("ticker", "timestamp", "sequence_number"),
    mode="ignore",
    time_column="timestamp",
    cold=True,
)


@dataclass(frozen=True, slots=True)
class AnomalyParams:
    train_window: int = 1000
    retrain_every: int = 500
    contamination: float = 0.01
    threshold: float | None = None
    n_trees: int = 100
    max_samples: int = 256
    trainer: Trainer = DEFAULT_TRAINER
    retrain: bool = True  # False: a model, once fitted, is never replaced (see the module doc)

    @classmethod
    def from_settings(cls, settings: Any) -> AnomalyParams:
        return cls(
            train_window=settings.anomaly_train_window,
            retrain_every=settings.anomaly_retrain_every,
            contamination=settings.anomaly_contamination,
            threshold=settings.anomaly_threshold,
        )


# --- the compiled forest -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Forest:
    """A fitted isolation forest as flat node arrays in `iforest`'s layout: trees concatenated,
    `roots[t]` / `depth[t]` tree t's root and deepest leaf, a node's children at `left` and
    `left` + 1, rows with ``x[feature] ≤ threshold`` going left, a leaf its own left child.
    `value[node]` = depth(node) + c(n_node_samples[node]), the path length credited at a leaf
    (in scikit-learn's expression order); `denominator` = n_trees · c(max_samples).
    """

    roots: U32
    depth: I64
    left: U32
    feature: U32
    threshold: F64
    value: F64
    n_node_samples: I64
    denominator: float
    offset: float

    @classmethod
    def from_sklearn(cls, model: IsolationForest) -> Forest:
        roots, depths, lefts, rights, feature, threshold, value, counts = ([] for _ in range(8))
        base = 0
        trees = zip(
            model.estimators_,
            model._decision_path_lengths,
            model._average_path_length_per_tree,
            strict=True,
        )
        for est, depth, avg in trees:
            tree = est.tree_
            roots.append(base)
            depths.append(tree.max_depth)
            is_leaf = tree.children_left < 0
            lefts.append(np.where(is_leaf, -1, tree.children_left + base))
            rights.append(np.where(is_leaf, -1, tree.children_right + base))
            feature.append(np.where(is_leaf, 0, tree.feature))
            threshold.append(np.where(is_leaf, np.inf, tree.threshold))
            # Same expression and order as scikit-learn's per-tree depth term.
            value.append(depth + avg - 1.0)
            counts.append(tree.n_node_samples)
            base += tree.node_count
        old_left = np.concatenate(lefts).astype(np.int64)
        root_idx = np.asarray(roots, dtype=np.int64)
        new = sibling_layout(old_left, np.concatenate(rights).astype(np.int64), root_idx)
        # Scatter every per-node array to its new index; a leaf points at itself.
        left = np.empty(base, dtype=np.uint32)
        left[new] = np.where(old_left < 0, new, new[old_left])
        ms = float(model._max_samples)

        def moved(parts: list[Any], dtype: type) -> Any:
            out: npt.NDArray[Any] = np.empty(base, dtype=dtype)
            out[new] = np.concatenate(parts)
            return out

        return cls(
            roots=new[root_idx].astype(np.uint32),
            depth=np.asarray(depths, dtype=np.int64),
            left=left,
            feature=moved(feature, np.uint32),
            threshold=moved(threshold, np.float64),
            value=moved(value, np.float64),
            n_node_samples=moved(counts, np.int64),
            denominator=float(len(model.estimators_) * average_path_length(ms)),
            offset=float(model.offset_),
        )

    @classmethod
    def fit(
        cls, x: npt.ArrayLike, seed: int, *, n_trees: int, max_samples: int, contamination: float
    ) -> Forest:
        """Train with the compiled trainer (`iforest.grow_forest`); `offset` as scikit-learn's
        `offset_`: the `contamination` quantile of the training rows' own scores."""
        xt = features_major(x)
        if xt.ndim != 2 or xt.shape[1] == 0:
            raise ValueError(f"expected a non-empty 2-D matrix, got shape {xt.T.shape}")
        if not np.isfinite(xt).all():
            # scikit-learn's check_array refuses these too; the walk has no NaN convention.
            raise ValueError("training rows contain NaN, infinity or values beyond float32")
        psi = min(max_samples, xt.shape[1])
        roots, depth, left, feature, threshold, value, counts, train = grow_forest(
            xt, n_trees, psi, max_depth_for(psi), seed & 0x7FFFFFFFFFFFFFFF
        )
        denominator = float(n_trees * average_path_length(float(psi)))
        offset = percentile(_to_scores(train, denominator), 100.0 * contamination)
        return cls(
            roots=roots,
            depth=depth,
            left=left,
            feature=feature,
            threshold=threshold,
            value=value,
            n_node_samples=counts,
            denominator=denominator,
            offset=offset,
        )

    def score(self, x: npt.ArrayLike) -> F64:
        """`IsolationForest.score_samples` of the rows of `x` (cast to float32 as it does)."""
        rows = np.asarray(x)
        if rows.dtype != np.float64:
            # Straight to float32, as scikit-learn casts (via float64 could round twice).
            rows = features_major(rows).T
        if self.denominator == 0:
            return _to_scores(np.zeros(len(rows)), 0.0)  # no walk: every leaf is the root
        depths = walk_rows(
            np.ascontiguousarray(rows),
            self.roots,
            self.depth,
            self.left,
            self.feature,
            self.threshold,
            self.value,
        )
        return _to_scores(depths, self.denominator)


def _to_scores(depths: F64, denominator: float) -> F64:
    """scikit-learn's ``-2 ** (-depths / denominator)``, same operations in the same order."""
    if denominator == 0:
        return np.full(len(depths), -0.5)  # scikit-learn's value for a 1-sample forest
    return np.asarray(-(2 ** (-np.divide(depths, denominator))), dtype=np.float64)


def average_path_length(n: float) -> float:
    """c(n) = 2(ln(n − 1) + γ) − 2(n − 1)/n for n > 2; 1 for n = 2; 0 for n ≤ 1."""
    if n <= 1:
        return 0.0
    if n == 2:
        return 1.0
    return 2.0 * (math.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n


def model_seed(ticker: str, session: int, version: int) -> int:
    """A stable seed (not Python's salted hash) so a replay fits identical forests."""
    return zlib.crc32(f"{ticker}|{session}|{version}".encode()) & 0x7FFFFFFF


def fit_forest(x: F64, seed: int, params: AnomalyParams) -> Forest:
    if params.trainer == "numba":
        return Forest.fit(
            x,
            seed,
            n_trees=params.n_trees,
            max_samples=params.max_samples,
            contamination=params.contamination,
        )
    model = IsolationForest(
        n_estimators=params.n_trees,
        max_samples=min(params.max_samples, len(x)),
        contamination=params.contamination,
        random_state=seed,
    )
    model.fit(x)
    return Forest.from_sklearn(model)


def percentile(a: F64, q: float) -> float:
    """``np.percentile(a, q)`` of a 1-D array without NaN, by numpy's default ('linear')
    method with its exact arithmetic, minus its generic machinery (~60 µs a call): the model's
    cut-off must stay what scikit-learn's `offset_` would be, bit for bit."""
    n = len(a)
    virtual = (n - 1) * (q / 100)
    if virtual >= n - 1:
        return float(np.max(a))
    lo = math.floor(virtual)
    # numpy's gamma is taken against the integer index, its _lerp switches form at 0.5.
    gamma = virtual - lo
    part = np.partition(a, (lo, lo + 1))
    below, above = float(part[lo]), float(part[lo + 1])
    diff = above - below
    if gamma >= 0.5:
        return above - diff * (1 - gamma)
    return below + diff * gamma


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def _robust_scale(x: F64) -> tuple[F64, F64]:  # pragma: no cover - compiled
    n, d = x.shape
    med = np.empty(d)
    scale = np.empty(d)
    col = np.empty(n)
    for f in range(d):
        for i in range(n):
            col[i] = x[i, f]
        # numba's median: the middle value, or (a + b) / 2 of the two, as numpy's mean does.
        m = np.median(col)
        for i in range(n):
            col[i] = abs(x[i, f] - m)
        mad = 1.4826 * np.median(col)
        a = abs(m)
        floor = 1e-9 * (a if a > 1.0 else 1.0)
        med[f] = m
        scale[f] = mad if mad > floor else floor
    return med, scale


def robust_scale(x: F64) -> tuple[F64, F64]:
    """Per-feature median and 1.4826·MAD (floored so a constant feature does not divide by 0),
    of finite rows. Equal, bit for bit, to ``np.median`` over axis 0 of `x` and of
    ``|x − median|``; compiled because numpy's two calls over a 1000-row window cost ~0.1 ms
    a retrain."""
    return _robust_scale(np.ascontiguousarray(x, dtype=np.float64))  # type: ignore[no-any-return]


# --- the engine ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Model:
    version: int
    forest: Forest
    threshold: float
    med: F64
    scale: F64


class _TickerState:
    __slots__ = ("buf", "count", "model", "session")

    def __init__(self, session: int, window: int) -> None:
        self.session = session
        self.buf = np.zeros((window, len(FEATURES)))
        self.count = 0  # vectors seen this session; the ring slot of vector i is i % window
        self.model: _Model | None = None

    def window(self, size: int) -> F64:
        n = min(self.count, size)
        end = self.count % size
        if n < size:
            return self.buf[:n].copy()
        return np.concatenate((self.buf[end:], self.buf[:end]))


@dataclass(slots=True)
class Scored:
    """Scores of one ticker's scorable vectors of a batch (rows without a model omitted)."""

    ticker: str
    index: I64  # positions in the input arrays
    score: F64
    threshold: F64
    version: I64
    is_anomaly: npt.NDArray[np.bool_]
    kind: list[str]


class AnomalyEngine:
    def __init__(self, params: AnomalyParams | None = None) -> None:
        self.params = params or AnomalyParams()
        self.state: dict[str, _TickerState] = {}
        self.fits = 0

    def _train(self, ticker: str, st: _TickerState) -> None:
        pr = self.params
        version = st.count // pr.retrain_every
        x = st.window(pr.train_window)
        forest = fit_forest(x, model_seed(ticker, st.session, version), pr)
        med, scale = robust_scale(x)
        threshold = forest.offset if pr.threshold is None else pr.threshold
        st.model = _Model(version, forest, threshold, med, scale)
        self.fits += 1

    def update(self, ticker: str, session: int, x: F64, *, score: bool = True) -> Scored | None:
        """Score the vectors `x` (rows in tape order) and absorb them into the training window.

        Vectors are split at retrain points so each is scored by the model trained on the
        vectors before it, exactly as if they had arrived one at a time.
        """
        pr = self.params
        st = self.state.get(ticker)
        if st is None or st.session != session:
            if st is not None and session < st.session:
                return None  # a late row of a finished session: its model is gone
            st = _TickerState(session, pr.train_window)
            self.state[ticker] = st
        m = len(x)
        every = pr.retrain_every
        parts: list[tuple[int, F64, _Model]] = []
        a = 0
        while a < m:
            b = min(m, a + every - st.count % every)
            seg = x[a:b]
            model = st.model
            if score and model is not None:
                parts.append((a, model.forest.score(seg), model))
            self._absorb(st, seg)
            if st.count % every == 0 and (pr.retrain or st.model is None):
                self._train(ticker, st)
            a = b
        return _scored(ticker, x, parts) if parts else None

    def _absorb(self, st: _TickerState, seg: F64) -> None:
        size = self.params.train_window
        k = len(seg)
        if k >= size:
            seg = seg[-size:]
            st.count += k - size
            k = size
        start = st.count % size
        first = min(k, size - start)
        st.buf[start : start + first] = seg[:first]
        st.buf[: k - first] = seg[first:]
        st.count += k


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def _judge(
    x: F64, start: int, score: F64, threshold: float, version: int, med: F64, scale: F64
) -> tuple[I64, F64, I64, npt.NDArray[np.bool_], I64, int]:  # pragma: no cover - compiled
    """For the scores of rows ``x[start : start + len(score)]``: their index, threshold and
    version columns, the flags (score < threshold), each flagged row's kind as a feature
    index (−1 if not flagged) and the number flagged.

    The kind is ``np.argmax(np.abs(x − med) / scale)`` of the row with numpy's tie and NaN
    rules (first maximum; a NaN wins at once). One compiled pass instead of ~10 numpy calls,
    which on a 16-row micro-batch cost more than scoring it.
    """
    k = score.shape[0]
    d = x.shape[1]
    index = np.empty(k, dtype=np.int64)
    thr = np.empty(k)
    ver = np.empty(k, dtype=np.int64)
    flagged = np.empty(k, dtype=np.bool_)
    kind = np.empty(k, dtype=np.int64)
    n = 0
    for i in range(k):
        index[i] = start + i
        thr[i] = threshold
        ver[i] = version
        hit = score[i] < threshold
        flagged[i] = hit
        best = -1
        if hit:
            n += 1
            row = start + i
            best = 0
            top = abs(x[row, 0] - med[0]) / scale[0]
            if not np.isnan(top):
                for f in range(1, d):
                    v = abs(x[row, f] - med[f]) / scale[f]
                    if not v <= top:
                        top = v
                        best = f
                        if np.isnan(v):
                            break
        kind[i] = best
    return index, thr, ver, flagged, kind, n


def _scored(ticker: str, x: F64, parts: list[tuple[int, F64, _Model]]) -> Scored:
    """`Scored` of the scored segments (start in `x`, scores, model), one per model version."""
    rows = np.ascontiguousarray(x, dtype=np.float64)
    judged = [_judge(rows, a, s, m.threshold, m.version, m.med, m.scale) for a, s, m in parts]
    # A micro-batch rarely spans a retrain point: one segment, no concatenation.
    if len(parts) == 1:
        index, threshold, version, flagged, kind, n = judged[0]
        score = parts[0][1]
    else:
        index, threshold, version, flagged, kind = (
            np.concatenate([j[c] for j in judged]) for c in range(5)
        )
        score = np.concatenate([s for _, s, _ in parts])
        n = sum(j[5] for j in judged)
    names = [_KIND_NAMES[i] for i in kind.tolist()] if n else [""] * len(score)
    return Scored(
        ticker=ticker,
        index=index,
        score=score,
        threshold=threshold,
        version=version,
        is_anomaly=flagged,
        kind=names,
    )


def anomaly_rows(
    scored: Scored,
    timestamps: Sequence[int],
    sequence_numbers: Sequence[int],
    x: F64,
) -> list[dict[str, Any]]:
    """Rows of the anomalies table for the flagged vectors of `scored`."""
    out: list[dict[str, Any]] = []
    for j in np.flatnonzero(scored.is_anomaly).tolist():
        i = int(scored.index[j])
        feats = dict(zip(FEATURES, x[i].tolist(), strict=True))
        out.append(
            {
                "ticker": scored.ticker,
                "timestamp": int(timestamps[i]),
                "sequence_number": int(sequence_numbers[i]),
                "anomaly_score": float(scored.score[j]),
                "threshold": float(scored.threshold[j]),
                "kind": scored.kind[j],
                "model_version": int(scored.version[j]),
                "features": orjson.dumps(feats).decode(),
            }
        )
    return out
