"""Isolation Forest training compiled with numba: the same trees, statistically, as scikit-learn's.

scikit-learn fits each of its 100 `ExtraTreeRegressor`s through the generic tree builder (a
criterion on random targets, sample weights, Python-level bagging), 140–370 ms per forest;
this kernel grows the same kind of forest, and scores its training rows for the cut-off, in
about 2 ms, which is what makes synchronous retraining affordable on the hot path.

Algorithm (Liu, Ting & Zhou 2008, as scikit-learn implements it with ``max_features=1``):

* each tree sees ψ = min(max_samples, n) rows drawn without replacement;
* at a node, features are drawn uniformly without replacement until one is not constant over
  the node's rows (``max − min > 1e-7``, scikit-learn's FEATURE_THRESHOLD); if none is, the node
  is a leaf (this also covers a node of identical rows);
* the threshold is uniform in [min, max) of that feature over the node's rows (a draw landing on
  max is moved to min, as scikit-learn does, so both children are non-empty); rows with
  ``x ≤ threshold`` go left;
* a node is a leaf at depth ceil(log2 ψ) or with ≤ 1 row.

Rows are cast to float32 before training, as scikit-learn does, so thresholds lie between
float32 values and the scoring walk (float32 inputs against float64 thresholds) routes training
rows exactly as they were partitioned.

Node layout, shared with `walk` and produced from scikit-learn's trees by `sibling_layout`:
trees concatenated, `roots[t]` the root of tree t and `depth[t]` its deepest leaf; a node's
children are adjacent (right = `left` + 1), so a step is ``node = left[node] + (x[feature] >
threshold)`` with no load that waits on the comparison; a leaf is its own left child with
threshold +inf, so every row can take exactly `depth[t]` steps without testing for leaves.
`value[node]` = (depth + 1) + c(n_node_samples) − 1, scikit-learn's path-length term in its
own expression order. (A NaN would go left where scikit-learn's ``x ≤ t`` sends it right;
scikit-learn refuses NaN input altogether, and so does `Forest.fit`.)

The random stream is SplitMix64, one stream per tree derived from the model seed. It is plain
integer arithmetic, so which rows, features and thresholds a forest picks depends only on
(rows, seed, parameters), not on numpy's or numba's random implementations, which keeps
replays identical across upgrades. The trees are not the ones
scikit-learn would grow for the same seed (its stream is its own), only drawn from the same
distribution; detection quality is compared in the tests.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]

FEATURE_THRESHOLD = 1e-7  # scikit-learn's tolerance for "constant in this node"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _next(state: npt.NDArray[np.uint64]) -> np.uint64:  # pragma: no cover - compiled
    z = state[0] + _GOLDEN
    state[0] = z
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return np.uint64(z ^ (z >> np.uint64(31)))


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _uniform(state: npt.NDArray[np.uint64]) -> float:  # pragma: no cover - compiled
    return float(_next(state) >> np.uint64(11)) * _TO_UNIT


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _below(state: npt.NDArray[np.uint64], k: int) -> int:  # pragma: no cover - compiled
    # Lemire's multiply-shift on the top 32 bits: bias ≤ k/2^32, immaterial for a window.
    return int(((_next(state) >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32))


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _step(
    xt: F64, left: U32, feature: U32, threshold: F64, node: int, j: int
) -> int:  # pragma: no cover - compiled
    return left[node] + np.uint32(xt[feature[node], j] > threshold[node])  # type: ignore[no-any-return]


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _walk_tree(
    xt: F64,
    cols: I64,
    n: int,
    root: int,
    steps: int,
    left: U32,
    feature: U32,
    threshold: F64,
    value: F64,
    out: F64,
) -> None:  # pragma: no cover - compiled
    # Walks the columns `cols` of `xt`, or its first `n` columns when `cols` is empty (the
    # indirection costs ~10 %). One walk is a chain of dependent loads; eight independent
    # chains keep the core busy (about 3× faster than one row at a time).
    direct = cols.shape[0] == 0
    if not direct:
        n = cols.shape[0]
    k = 0
    while k + 8 <= n:
        if direct:
            j0, j1, j2, j3, j4, j5, j6, j7 = k, k + 1, k + 2, k + 3, k + 4, k + 5, k + 6, k + 7
        else:
            j0, j1, j2, j3 = cols[k], cols[k + 1], cols[k + 2], cols[k + 3]
            j4, j5, j6, j7 = cols[k + 4], cols[k + 5], cols[k + 6], cols[k + 7]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = root
        for _ in range(steps):
            a0 = _step(xt, left, feature, threshold, a0, j0)
            a1 = _step(xt, left, feature, threshold, a1, j1)
            a2 = _step(xt, left, feature, threshold, a2, j2)
            a3 = _step(xt, left, feature, threshold, a3, j3)
            a4 = _step(xt, left, feature, threshold, a4, j4)
            a5 = _step(xt, left, feature, threshold, a5, j5)
            a6 = _step(xt, left, feature, threshold, a6, j6)
            a7 = _step(xt, left, feature, threshold, a7, j7)
        out[j0] += value[a0]
        out[j1] += value[a1]
        out[j2] += value[a2]
        out[j3] += value[a3]
        out[j4] += value[a4]
        out[j5] += value[a5]
        out[j6] += value[a6]
        out[j7] += value[a7]
        k += 8
    while k < n:
        j0 = k if direct else cols[k]
        a0 = root
        for _ in range(steps):
            a0 = _step(xt, left, feature, threshold, a0, j0)
        out[j0] += value[a0]
        k += 1


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def walk(
    xt: F64, roots: U32, depth: I64, left: U32, feature: U32, threshold: F64, value: F64
) -> F64:  # pragma: no cover - compiled
    """Σ over trees of the leaf `value` reached by each column of `xt` (features × rows)."""
    # Trees outer, rows inner: one tree's nodes stay in L1 across the batch, and each row's sum
    # is built tree by tree in scikit-learn's order (bit-identical totals).
    n = xt.shape[1]
    out = np.zeros(n)
    every = np.empty(0, dtype=np.int64)
    for t in range(roots.shape[0]):
        _walk_tree(xt, every, n, roots[t], depth[t], left, feature, threshold, value, out)
    return out


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def grow_forest(
    xt: F64, n_trees: int, psi: int, max_depth: int, seed: int
) -> tuple[U32, I64, U32, U32, F64, F64, I64, F64]:  # pragma: no cover - compiled
    """Grow `n_trees` isolation trees on `psi`-row subsamples of `xt` (features × rows,
    float64 holding float32 values, C order).

    Returns (roots, depth, left, feature, threshold, value, n_node_samples) in the module's
    layout, then the training rows' path-length sums — what `walk` would return for `xt`,
    bit for bit — so the contamination cut-off needs no second pass: a sampled row's leaf is
    known once its tree is grown, only the others are walked, while the tree is in cache.
    """
    d, n = xt.shape
    cap = n_trees * (2 * psi - 1)  # a binary tree with ≤ ψ leaves
    roots = np.empty(n_trees, dtype=np.uint32)
    depths = np.zeros(n_trees, dtype=np.int64)
    left = np.empty(cap, dtype=np.uint32)
    feature = np.empty(cap, dtype=np.uint32)
    threshold = np.empty(cap, dtype=np.float64)
    value = np.empty(cap, dtype=np.float64)
    count = np.empty(cap, dtype=np.int64)
    train = np.zeros(n)

    # c(k) for every node size a tree can have, so a leaf costs a lookup, not a log.
    c = np.zeros(psi + 1)
    for k in range(2, psi + 1):
        if k == 2:
            c[k] = 1.0
        else:
            c[k] = 2.0 * (math.log(k - 1.0) + np.euler_gamma) - 2.0 * (k - 1.0) / k

    perm = np.arange(n)
    rows = np.empty(psi, dtype=np.int64)
    spill = np.empty(psi, dtype=np.int64)
    feats = np.empty(d, dtype=np.int64)
    # Depth-first stack of (start, end, depth, node); one pending sibling per level.
    stack = np.empty((max_depth + 2, 4), dtype=np.int64)
    state = np.empty(1, dtype=np.uint64)
    free = 0
    for t in range(n_trees):
        # Independent stream per tree: seed and tree index mixed through SplitMix64.
        state[0] = np.uint64(seed) * _GOLDEN + np.uint64(t)
        state[0] = _next(state)
        # Partial Fisher–Yates: perm[:ψ] is a uniform ψ-subset, perm[ψ:] the rows left out.
        # `perm` carries over between trees, which keeps every subset equally likely.
        for i in range(psi):
            j = i + _below(state, n - i)
            tmp = perm[i]
            perm[i] = perm[j]
            perm[j] = tmp
            rows[i] = perm[i]
        roots[t] = free
        stack[0, 0] = 0
        stack[0, 1] = psi
        stack[0, 2] = 0
        stack[0, 3] = free
        free += 1
        top = 1
        while top > 0:
            top -= 1
            start = stack[top, 0]
            end = stack[top, 1]
            depth = stack[top, 2]
            me = stack[top, 3]
            size = end - start
            count[me] = size
            value[me] = (depth + 1.0) + c[size] - 1.0
            if depth > depths[t]:
                depths[t] = depth
            f = -1
            lo = 0.0
            hi = 0.0
            if depth < max_depth and size > 1:
                # Draw features without replacement until one varies over the node's rows.
                for k in range(d):
                    feats[k] = k
                remaining = d
                while remaining > 0:
                    j = _below(state, remaining)
                    cand = feats[j]
                    col = xt[cand]
                    lo = col[rows[start]]
                    hi = lo
                    for i in range(start + 1, end):
                        v = col[rows[i]]
                        lo = min(lo, v)
                        hi = max(hi, v)
                    if hi > lo + FEATURE_THRESHOLD:
                        f = cand
                        break
                    remaining -= 1
                    feats[j] = feats[remaining]
                    feats[remaining] = cand
            if f < 0:
                left[me] = me
                feature[me] = 0
                threshold[me] = np.inf
                v = value[me]
                for i in range(start, end):
                    train[rows[i]] += v
                continue
            thr = (hi - lo) * _uniform(state) + lo
            if thr == hi:
                thr = lo
            # Stable branchless partition (x ≤ thr first): a random split mispredicts half
            # its branches.
            col = xt[f]
            nl = 0
            nr = 0
            for i in range(start, end):
                r = rows[i]
                go = int(col[r] > thr)
                rows[start + nl] = r
                spill[nr] = r
                nl += 1 - go
                nr += go
            for i in range(nr):
                rows[start + nl + i] = spill[i]
            left[me] = free
            feature[me] = f
            threshold[me] = thr
            # Right pushed first so the left subtree is grown first.
            stack[top, 0] = start + nl
            stack[top, 1] = end
            stack[top, 2] = depth + 1
            stack[top, 3] = free + 1
            top += 1
            stack[top, 0] = start
            stack[top, 1] = start + nl
            stack[top, 2] = depth + 1
            stack[top, 3] = free
            top += 1
            free += 2
        _walk_tree(xt, perm[psi:], 0, roots[t], depths[t], left, feature, threshold, value, train)
    return (
        roots,
        depths,
        left[:free].copy(),
        feature[:free].copy(),
        threshold[:free].copy(),
        value[:free].copy(),
        count[:free].copy(),
        train,
    )


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def sibling_layout(
    children_left: I64, children_right: I64, roots: I64
) -> I64:  # pragma: no cover - compiled
    """New index of every node of concatenated scikit-learn trees (children as global
    indices, −1 at leaves) such that each node's two children are adjacent."""
    m = children_left.shape[0]
    new = np.empty(m, dtype=np.int64)
    todo = np.empty(m, dtype=np.int64)
    free = 0
    for r in range(roots.shape[0]):
        new[roots[r]] = free
        free += 1
        todo[0] = roots[r]
        top = 1
        while top > 0:
            top -= 1
            a = todo[top]
            lc = children_left[a]
            if lc < 0:
                continue
            new[lc] = free
            new[children_right[a]] = free + 1
            free += 2
            todo[top] = children_right[a]
            todo[top + 1] = lc
            top += 2
    return new


def features_major(x: npt.ArrayLike) -> F64:
    """Rows cast to float32 (scikit-learn's tree dtype), laid out features × rows in float64
    so the kernels read one feature of consecutive rows contiguously without converting."""
    # Beyond float32 becomes ±inf, as scikit-learn's cast does; `Forest.fit` then refuses it.
    with np.errstate(over="ignore"):
        x32 = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x32.T, dtype=np.float64)


def max_depth_for(psi: int) -> int:
    """scikit-learn's depth limit: ceil(log2 ψ) (the average tree height), at least 1."""
    return int(np.ceil(np.log2(max(psi, 2))))
