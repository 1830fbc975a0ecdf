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

Training runs synchronously, with the compiled trainer of `iforest.py` (about 2 ms per forest
including the cut-off, against 140–370 ms for scikit-learn's `fit`): a background fit would
make the version that scores a given trade depend on thread timing, and determinism on replay
is the stronger requirement. scikit-learn's trainer stays selectable as the reference
(`AnomalyParams.trainer = "sklearn"`); the two grow different trees from the same seed but of
the same distribution, and their detection quality (AUC) is compared in the tests. The
cut-off `offset_` is computed as scikit-learn does: the contamination quantile of the training
rows' scores.

An anomaly is a score below the model's contamination cut-off (`offset_`), or below
`threshold` when one is configured.

`kind` names the feature that deviates most from the training window, by robust z
(|x − median| / (1.4826·MAD)), mapped through `KIND_BY_FEATURE`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from sklearn.ensemble import IsolationForest

from tradepulse.process.iforest import (
    features_major,
    grow_forest,
    max_depth_for,
    sibling_layout,
    walk,
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
        offset = float(np.percentile(_to_scores(train, denominator), 100.0 * contamination))
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
        xt = features_major(x)
        if self.denominator == 0:
            return _to_scores(np.zeros(xt.shape[1]), 0.0)  # no walk: every leaf is the root
        depths = walk(
            xt, self.roots, self.depth, self.left, self.feature, self.threshold, self.value
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


def robust_scale(x: F64) -> tuple[F64, F64]:
    """Per-feature median and 1.4826·MAD (floored so a constant feature does not divide by 0)."""
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0)
    floor = 1e-9 * np.maximum(np.abs(med), 1.0)
    return med, np.maximum(mad, floor)


def kinds(x: F64, med: F64, scale: F64) -> list[str]:
    """Kind per row: the `KIND_BY_FEATURE` of argmax |x − median| / scale."""
    idx = np.argmax(np.abs(x - med) / scale, axis=1)
    names = [KIND_BY_FEATURE[f] for f in FEATURES]
    return [names[i] for i in idx.tolist()]


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
        idx_parts: list[I64] = []
        score_parts: list[F64] = []
        thr_parts: list[F64] = []
        ver_parts: list[I64] = []
        kind_parts: list[str] = []
        a = 0
        while a < m:
            b = min(m, a + pr.retrain_every - st.count % pr.retrain_every)
            seg = x[a:b]
            model = st.model
            if score and model is not None:
                s = model.forest.score(seg)
                idx_parts.append(np.arange(a, b, dtype=np.int64))
                score_parts.append(s)
                thr_parts.append(np.full(b - a, model.threshold))
                ver_parts.append(np.full(b - a, model.version, dtype=np.int64))
                flagged = s < model.threshold
                if flagged.any():
                    fk = kinds(seg[flagged], model.med, model.scale)
                    it = iter(fk)
                    kind_parts.extend(next(it) if f else "" for f in flagged.tolist())
                else:
                    kind_parts.extend([""] * (b - a))
            self._absorb(st, seg)
            if st.count % pr.retrain_every == 0:
                self._train(ticker, st)
            a = b
        if not score_parts:
            return None
        sc = np.concatenate(score_parts)
        thr = np.concatenate(thr_parts)
        return Scored(
            ticker=ticker,
            index=np.concatenate(idx_parts),
            score=sc,
            threshold=thr,
            version=np.concatenate(ver_parts),
            is_anomaly=sc < thr,
            kind=kind_parts,
        )

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
