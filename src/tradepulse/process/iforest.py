"""Isolation Forest training compiled with numba: the same trees, statistically, as scikit-learn's.

scikit-learn fits each of its 100 `ExtraTreeRegressor`s through the generic tree builder (a
criterion on random targets, sample weights, Python-level bagging), 140–370 ms per forest;
this kernel grows the same kind of forest, and scores its training rows for the cut-off, in
1.1–1.8 ms (1000 rows, 100 trees of 256 on the 2-core bench machine; about 45 % of it walking
the rows each tree did not sample), which is what makes synchronous retraining affordable on
the hot path.

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


# Kernel style, for speed (measured, not guessed): numba compiles `int()`, `min()` and `max()`
# on scalars as out-of-line calls, so the hot loops cast with np.int64 and compare explicitly;
# and a signed index costs a negative-index fix-up on every access, so the hot loops index
# with unsigned integers.


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _mix(z: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    """SplitMix64's output function; the stream is ``_mix(state += golden)``."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return np.uint64(z ^ (z >> np.uint64(31)))


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _below(r: np.uint64, k: int) -> np.int64:  # pragma: no cover - compiled
    # Lemire's multiply-shift on the top 32 bits: bias ≤ k/2^32, immaterial for a window.
    return np.int64(((r >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32))


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _unit(r: np.uint64) -> float:  # pragma: no cover - compiled
    return float(r >> np.uint64(11)) * _TO_UNIT


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _walk_tree(
    xt: F64,
    root: int,
    steps: int,
    left: U32,
    feature: U32,
    threshold: F64,
    value: F64,
    node: U32,
    out: F64,
) -> None:  # pragma: no cover - compiled
    """Add to `out[j]` the leaf value one tree gives column j of `xt`; `node` is scratch."""
    # Level by level over all rows rather than row by row: the rows' steps are independent,
    # so the core overlaps them without the register pressure (and spills) of interleaving
    # a few rows' chains by hand; the root's split is loaded once.
    m = np.uint64(xt.shape[1])
    if steps == 0:  # a single-leaf tree
        v = value[root]
        for k in range(m):
            out[k] += v
        return
    f = feature[root]
    t = threshold[root]
    first = left[root]
    for k in range(m):
        node[k] = first + np.uint32(xt[f, k] > t)
    for _ in range(steps - 1):
        for k in range(m):
            a = node[k]
            node[k] = left[a] + np.uint32(xt[feature[a], k] > threshold[a])
    for k in range(m):
        out[k] += value[node[k]]


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _walk_tree_cols(
    xt: F64,
    cols: I64,
    root: int,
    steps: int,
    left: U32,
    feature: U32,
    threshold: F64,
    value: F64,
    node: U32,
    out: F64,
) -> None:  # pragma: no cover - compiled
    """`_walk_tree` of the columns `cols` of `xt` only. A separate copy: one kernel serving
    both, with the indirection behind a flag, cost a scoring call ~4 µs (of ~16 for 16 rows)."""
    m = np.uint64(cols.shape[0])
    if steps == 0:
        v = value[root]
        for k in range(m):
            out[np.uint64(cols[k])] += v
        return
    f = feature[root]
    t = threshold[root]
    first = left[root]
    for k in range(m):
        node[k] = first + np.uint32(xt[f, np.uint64(cols[k])] > t)
    for _ in range(steps - 1):
        for k in range(m):
            a = node[k]
            node[k] = left[a] + np.uint32(xt[feature[a], np.uint64(cols[k])] > threshold[a])
    for k in range(m):
        out[np.uint64(cols[k])] += value[node[k]]


@numba.njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _walk_forest(
    xt: F64, roots: U32, depth: I64, left: U32, feature: U32, threshold: F64, value: F64
) -> F64:  # pragma: no cover - compiled
    # Trees outer, rows inner: one tree's nodes stay in L1 across the batch, and each row's sum
    # is built tree by tree in scikit-learn's order (bit-identical totals).
    n = xt.shape[1]
    out = np.zeros(n)
    node = np.empty(n, dtype=np.uint32)
    for t in range(roots.shape[0]):
        _walk_tree(xt, roots[t], depth[t], left, feature, threshold, value, node, out)
    return out


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def walk(
    xt: F64, roots: U32, depth: I64, left: U32, feature: U32, threshold: F64, value: F64
) -> F64:  # pragma: no cover - compiled
    """Σ over trees of the leaf `value` reached by each column of `xt` (features × rows)."""
    return _walk_forest(xt, roots, depth, left, feature, threshold, value)  # type: ignore[no-any-return]


@numba.njit(cache=True, nogil=True)  # type: ignore[misc]
def walk_rows(
    x: F64, roots: U32, depth: I64, left: U32, feature: U32, threshold: F64, value: F64
) -> F64:  # pragma: no cover - compiled
    """`walk` of the rows of `x` (rows × features, float64 as given): rounded to float32 and
    laid out features × rows here, which for a micro-batch costs less than the numpy calls of
    `features_major` (the cast is IEEE round-to-nearest either way, overflow to ±inf)."""
    m, d = x.shape
    xt = np.empty((d, m))
    for j in range(m):
        for f in range(d):
            xt[f, j] = np.float64(np.float32(x[j, f]))
    return _walk_forest(xt, roots, depth, left, feature, threshold, value)  # type: ignore[no-any-return]


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
    rows = np.empty(psi, dtype=np.uint32)
    spill = np.empty(psi, dtype=np.uint32)
    feats = np.empty(d, dtype=np.int64)
    node = np.empty(n, dtype=np.uint32)
    # Depth-first stack of (start, end, depth, node); one pending sibling per level.
    stack = np.empty((max_depth + 2, 4), dtype=np.int64)
    free = 0
    for t in range(n_trees):
        # Independent stream per tree: seed and tree index mixed through SplitMix64.
        s = _mix(np.uint64(seed) * _GOLDEN + np.uint64(t) + _GOLDEN)
        # Partial Fisher–Yates: perm[:ψ] is a uniform ψ-subset, perm[ψ:] the rows left out.
        # `perm` carries over between trees, which keeps every subset equally likely.
        for i in range(psi):
            s += _GOLDEN
            j = i + _below(_mix(s), n - i)
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
            ustart = np.uint64(start)
            uend = np.uint64(end)
            f = -1
            lo = 0.0
            hi = 0.0
            if depth < max_depth and size > 1:
                # Draw features without replacement until one varies over the node's rows.
                for k in range(d):
                    feats[k] = k
                remaining = d
                while remaining > 0:
                    s += _GOLDEN
                    j = _below(_mix(s), remaining)
                    cand = feats[j]
                    lo = xt[cand, rows[ustart]]
                    hi = lo
                    for i in range(ustart + np.uint64(1), uend):
                        v = xt[cand, rows[i]]
                        lo = v if v < lo else lo
                        hi = v if v > hi else hi
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
                for i in range(ustart, uend):
                    train[rows[i]] += v
                continue
            s += _GOLDEN
            thr = (hi - lo) * _unit(_mix(s)) + lo
            if thr == hi:
                thr = lo
            # Stable branchless partition (x ≤ thr first): a random split mispredicts half
            # its branches.
            nl = np.uint64(0)
            nr = np.uint64(0)
            for i in range(ustart, uend):
                r = rows[i]
                go = np.uint64(xt[f, r] > thr)
                rows[ustart + nl] = r
                spill[nr] = r
                nl += np.uint64(1) - go
                nr += go
            for i in range(nr):
                rows[ustart + nl + i] = spill[i]
            mid = start + np.int64(nl)
            left[me] = free
            feature[me] = f
            threshold[me] = thr
            # Right pushed first so the left subtree is grown first.
            stack[top, 0] = mid
            stack[top, 1] = end
            stack[top, 2] = depth + 1
            stack[top, 3] = free + 1
            top += 1
            stack[top, 0] = start
            stack[top, 1] = mid
            stack[top, 2] = depth + 1
            stack[top, 3] = free
            top += 1
            free += 2
        _walk_tree_cols(
            xt, perm[psi:], roots[t], depths[t], left, feature, threshold, value, node, train
        )
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
