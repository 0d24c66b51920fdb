"""Uncovering biases: per-class prototypes and criticisms, two ways.

(a) Adversarial robustness (our reading of Stock & Cisse 2018, Sec. 5): within a class, the
    prototypes are the examples hardest to perturb out of the class (largest minimal adversarial
    epsilon), the criticisms the easiest. Ties (e.g. many examples never fooled up to eps_max)
    are broken by the clean logit margin `f_y(x) - max_{c != y} f_c(x)`. The minimal eps comes
    from `attacks.minimal_adversarial_epsilon`, whose PGD ascends the logit margin, so confident
    examples are not ranked hardest merely because a saturated loss stalled the attack, and the
    ranking does not change when the logits are multiplied by a positive constant.
(b) MMD-critic (Kim, Khanna, Koyejo, NeurIPS 2016) in penultimate feature space:
    prototypes greedily minimise MMD^2 between the class and the prototypes; criticisms
    greedily maximise |witness| plus a log-det diversity term.

A bias shows as an attribute (a visual cue, a noisy label, ...) over-represented on one side;
`attribute_rates` turns that into numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def median_heuristic_bandwidth(x_NxD: np.ndarray) -> float:
    """sigma = median of the pairwise Euclidean distances between distinct rows (Gretton et al.
    2012).

    Falls back to 1.0 when every distance is 0 (all rows equal).
    """
    x_NxD = np.asarray(x_NxD, np.float64)
    if x_NxD.ndim != 2 or x_NxD.shape[0] < 2:
        raise ValueError(
            f"need at least 2 rows N x D for a median distance, got shape {x_NxD.shape}."
        )
    sq_N = np.sum(x_NxD**2, axis=1)
    d2_NxN = np.maximum(sq_N[:, None] + sq_N[None, :] - 2.0 * x_NxD @ x_NxD.T, 0.0)
    iu = np.triu_indices(x_NxD.shape[0], k=1)
    sigma = float(np.median(np.sqrt(d2_NxN[iu])))
    return sigma if sigma > 0 else 1.0


def rbf_kernel(x_NxD: np.ndarray, y_MxD: np.ndarray, sigma: float) -> np.ndarray:
    """k(x, y) = exp(-||x - y||^2 / (2 sigma^2)), float64 N x M."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}.")
    x_NxD = np.asarray(x_NxD, np.float64)
    y_MxD = np.asarray(y_MxD, np.float64)
    d2 = np.sum(x_NxD**2, 1)[:, None] + np.sum(y_MxD**2, 1)[None, :] - 2.0 * x_NxD @ y_MxD.T
    return np.exp(-np.maximum(d2, 0.0) / (2.0 * sigma**2))


def mmd2(k_NxN: np.ndarray, proto_idx: Sequence[int]) -> float:
    """MMD^2 between the empirical distribution of all N points and that of the prototypes.

    MMD^2 = 1/N^2 sum_ij k(x_i, x_j) - 2/(N m) sum_{i, j in S} k(x_i, x_j) + 1/m^2 sum_{i,j in S} k.
    """
    s = np.asarray(proto_idx, np.int64)
    n, m = k_NxN.shape[0], len(s)
    return float(
        k_NxN.sum() / n**2 - 2.0 * k_NxN[:, s].sum() / (n * m) + k_NxN[np.ix_(s, s)].sum() / m**2
    )


def greedy_prototypes(k_NxN: np.ndarray, m: int) -> np.ndarray:
    """Greedy MMD^2 prototypes (Kim et al. 2016, Alg. 1).

    Maximises
    J(S) = 2/(N|S|) sum_{i in [N], j in S} k(x_i, x_j) - 1/|S|^2 sum_{i,j in S} k(x_i, x_j)
    (= constant - MMD^2), adding at each step the point with the largest J(S + {c}). Each step is
    O(N) with running sums: colsum_c = sum_i k(x_i, x_c), a_c = sum_{j in S} k(x_j, x_c).
    Ties go to the lowest index. Returns the m indices in the order chosen.
    """
    k_NxN = np.asarray(k_NxN, np.float64)
    n = k_NxN.shape[0]
    if k_NxN.shape != (n, n):
        raise ValueError(f"kernel matrix must be square, got shape {k_NxN.shape}.")
    if not 1 <= m <= n:
        raise ValueError(f"number of prototypes m must be in [1, {n}] (points available), got {m}.")
    colsum_N = k_NxN.sum(axis=0)
    diag_N = np.diag(k_NxN).copy()
    a_N = np.zeros(n)  # sum_{j in S} k(x_j, x_c)
    colsum_s = 0.0  # sum_{j in S} colsum_j
    kss = 0.0  # sum_{i,j in S} k
    chosen = np.zeros(n, bool)
    order = []
    for t in range(m):
        size = t + 1
        j_N = 2.0 / (n * size) * (colsum_s + colsum_N) - (kss + 2.0 * a_N + diag_N) / size**2
        j_N[chosen] = -np.inf
        c = int(np.argmax(j_N))
        order.append(c)
        chosen[c] = True
        colsum_s += colsum_N[c]
        kss += 2.0 * a_N[c] + diag_N[c]
        a_N += k_NxN[c]
    return np.asarray(order, np.int64)


def witness(k_NxN: np.ndarray, proto_idx: Sequence[int]) -> np.ndarray:
    """Witness function at every point: w(x) = 1/N sum_i k(x, x_i) - 1/m sum_{j in S} k(x, x_j).

    w > 0 where the data is denser than the prototypes (under-represented), w < 0 where the
    prototypes over-represent it.
    """
    s = np.asarray(proto_idx, np.int64)
    if s.size == 0:
        raise ValueError("witness needs at least one prototype.")
    return k_NxN.mean(axis=1) - k_NxN[:, s].mean(axis=1)


def greedy_criticisms(
    k_NxN: np.ndarray, proto_idx: Sequence[int], c: int, reg_weight: float = 1.0
) -> tuple[np.ndarray, float]:
    """Greedy criticisms with the log-det diversity regulariser (Kim et al. 2016, Sec. 3.2).

    Maximises L(C) = sum_{l in C} |w(x_l)| + reg_weight * log det K_{C,C} over points that are not
    prototypes. The log-det gain of adding c to C is the Schur complement

      log det K_{C+c} - log det K_C = log(k_cc - k_Cc^T K_C^{-1} k_Cc) = log d_c,

    kept for every candidate by an incremental (pivoted) Cholesky factorisation K_C = L L^T: each
    candidate stores v_c = L^{-1} k_Cc; adding s appends l_ss = sqrt(d_s), the new component
    (k_sc - v_s . v_c) / l_ss to every v_c, and d_c -= that component^2. O(N |C|) per step, no
    matrix inverse. Candidates with d_c <= 0 (duplicates of chosen points) are never picked.

    Returns (indices in the order chosen, log det K_{C,C} accumulated from the pivots).
    """
    k_NxN = np.asarray(k_NxN, np.float64)
    n = k_NxN.shape[0]
    protos = np.asarray(proto_idx, np.int64)
    available = np.ones(n, bool)
    available[protos] = False
    if not 0 <= c <= int(available.sum()):
        raise ValueError(
            f"number of criticisms c must be in [0, {int(available.sum())}] "
            f"(non-prototype points), got {c}."
        )
    abs_w_N = np.abs(witness(k_NxN, protos))
    v_CxN = np.zeros((c, n))
    d_N = np.diag(k_NxN).copy()
    logdet = 0.0
    order = []
    for t in range(c):
        # A candidate whose Schur complement vanishes would make K_CC singular: never eligible.
        eligible = available & (d_N > 1e-12)
        gain_N = np.where(
            eligible, abs_w_N + reg_weight * np.log(np.where(eligible, d_N, 1.0)), -np.inf
        )
        if not np.isfinite(gain_N.max()):
            raise ValueError(
                f"only {t} criticisms are linearly independent in the kernel; asked for {c}."
            )
        s = int(np.argmax(gain_N))
        l_ss = np.sqrt(d_N[s])
        v_CxN[t] = (k_NxN[s] - v_CxN[:t].T @ v_CxN[:t, s]) / l_ss
        logdet += float(np.log(d_N[s]))
        d_N = d_N - v_CxN[t] ** 2
        available[s] = False
        order.append(s)
    return np.asarray(order, np.int64), logdet


def mmd_critic(
    feats_NxD: np.ndarray,
    num_prototypes: int,
    num_criticisms: int,
    *,
    sigma: float | None = None,
    reg_weight: float = 1.0,
) -> dict:
    """MMD-critic on one set of feature vectors: RBF kernel, median-heuristic bandwidth by default.

    Returns dict: `prototypes`, `criticisms` (row indices, in the order chosen), `sigma`,
    `mmd2` (of the prototypes), `criticism_logdet`, `witness` (N).

    Example (eight points on a segment and one far away: three prototypes cover the segment, the
    far point is the criticism):
      >>> x = np.array([[0.], [.1], [.2], [.3], [.4], [.5], [.6], [.7], [3.]])
      >>> out = mmd_critic(x, 3, 1)
      >>> out["prototypes"].tolist(), out["criticisms"].tolist()
      ([4, 1, 7], [8])
    """
    feats_NxD = np.asarray(feats_NxD, np.float64)
    if feats_NxD.ndim != 2 or feats_NxD.shape[0] == 0:
        raise ValueError(f"features must be a non-empty N x D array, got shape {feats_NxD.shape}.")
    n = feats_NxD.shape[0]
    if num_prototypes + num_criticisms > n:
        raise ValueError(
            f"{num_prototypes} prototypes + {num_criticisms} criticisms need at least "
            f"{num_prototypes + num_criticisms} points, got {n}."
        )
    sigma = median_heuristic_bandwidth(feats_NxD) if sigma is None else float(sigma)
    k_NxN = rbf_kernel(feats_NxD, feats_NxD, sigma)
    protos = greedy_prototypes(k_NxN, num_prototypes)
    crits, logdet = greedy_criticisms(k_NxN, protos, num_criticisms, reg_weight)
    return {
        "prototypes": protos,
        "criticisms": crits,
        "sigma": sigma,
        "mmd2": mmd2(k_NxN, protos),
        "criticism_logdet": logdet,
        "witness": witness(k_NxN, protos),
    }


def robustness_prototypes(
    min_eps_N: np.ndarray, margin_N: np.ndarray, num_prototypes: int, num_criticisms: int
) -> dict:
    """Prototypes = largest minimal adversarial eps (hardest to push out), criticisms = smallest.

    Ties in eps (inf for never fooled, 0 for already outside the class) are broken by the clean
    margin: larger margin = harder. Returns dict `prototypes` (hardest first), `criticisms`
    (easiest first).
    """
    min_eps_N = np.asarray(min_eps_N, np.float64)
    margin_N = np.asarray(margin_N, np.float64)
    n = len(min_eps_N)
    if margin_N.shape != (n,):
        raise ValueError(f"margin must have shape ({n},), got {margin_N.shape}.")
    if num_prototypes + num_criticisms > n:
        raise ValueError(
            f"{num_prototypes} prototypes + {num_criticisms} criticisms need at least "
            f"{num_prototypes + num_criticisms} examples, got {n}."
        )
    hard_first = np.lexsort((-margin_N, -min_eps_N))  # last key is primary
    easy_first = hard_first[::-1]
    return {"prototypes": hard_first[:num_prototypes], "criticisms": easy_first[:num_criticisms]}


def per_class_groups(labels: np.ndarray, classes: Sequence[int]) -> dict[int, np.ndarray]:
    """Row indices of each requested class; ValueError for a class with no example."""
    labels = np.asarray(labels)
    groups = {int(k): np.flatnonzero(labels == k) for k in classes}
    empty = [k for k, rows in groups.items() if rows.size == 0]
    if empty:
        raise ValueError(
            f"class(es) {empty} have no examples; prototypes and criticisms need at least "
            f"one example per class (present: {np.unique(labels).tolist()})."
        )
    return groups


def attribute_rates(
    attr_N: np.ndarray, rows_by_side: dict[str, np.ndarray], class_rows: np.ndarray
) -> dict[str, float]:
    """Mean of an attribute (fraction if boolean) over the class and over each side's rows.

    Also `prototype_minus_criticism` for each method present as `<method>_prototypes` /
    `<method>_criticisms`: the over-representation of the attribute among prototypes.
    """
    attr_N = np.asarray(attr_N, np.float64)
    out = {"class_rate": float(attr_N[class_rows].mean())}
    for side, rows in rows_by_side.items():
        out[side] = float(attr_N[rows].mean()) if len(rows) else None
    for side in list(rows_by_side):
        if side.endswith("_prototypes"):
            method = side[: -len("_prototypes")]
            p, c = out.get(f"{method}_prototypes"), out.get(f"{method}_criticisms")
            if p is not None and c is not None:
                out[f"{method}_prototype_minus_criticism"] = p - c
    return out
