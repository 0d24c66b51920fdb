"""The run's members (one per seed) and their data, and the data-level methods' phases.

Member ``k`` of a run uses seed ``s_k = seed + k`` for *everything*: the clean / noisy split
and the corruption (``corruption.make_splits(seed=s_k)``), the hyper-validation hold-out, the
batch order and augmentation, the model initialisation and the step keys. So member ``k`` of a
K-seed run is the run ``seed = s_k, num_seeds = 1``, and a K-seed run is K splits, as in the
paper's "mean over 5 splits" (Ren et al. 2018, arXiv 1803.09050, §5).

Data-level methods (they all weigh with ``erm``) are phases and row tables here, the same on
both input backends:

- ``resample`` trains on a class-balanced oversampling of the noisy training set (every
  observed class cycled to the size of the largest one, :func:`balanced_rows`);
- ``finetune`` (the paper's "+FT") trains ``num_steps`` steps of ERM on the noisy set, then
  ``finetune_steps`` more on the clean set (:func:`phases`; optimizer state and schedule
  continue);
- ``clean_only`` trains ``num_steps`` steps on the clean set alone;
- ``oracle`` (a reference for benchmarks, where the truth is known) trains plain ERM on exactly
  the training rows whose observed label is correct, plus the clean set: the clean set is
  appended to the training fields and the stream draws from a row table (as ``resample``) of
  the correct rows and the clean rows (:func:`oracle_rows`). The table differs in length
  between members; the placed training set does not, so the members still train vmapped.

Nothing here takes the config: the loop hands each function its values (ARCHITECTURE.md: below
``l2rw_jax.config`` no function reads the whole config).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from l2rw_jax import array_source
from l2rw_jax import corruption


class MemberData(NamedTuple):
    """One member's (one seed's) data: its splits after the hyper-validation hold-out (noisy
    training rows) and the selection hold-out (clean rows)."""

    seed: int
    splits: corruption.Splits  # training rows = the noisy training set minus the hold-out
    hyperval: corruption.Splits | None  # test_* = the held-out noisy rows (observed labels)
    mean: np.ndarray
    std: np.ndarray
    class_counts: np.ndarray  # observed labels of the training rows, per class
    # The source's class names (tfds ClassLabel, an npz's class_names, folder: directories),
    # indexed by source class id (see splits.source_classes); None when the source has none.
    class_names: tuple[str, ...] | None = None
    # Rows of splits' training fields the noisy phase draws from (the oracle's), or None: all.
    row_table: np.ndarray | None = None
    # test_* = the clean rows held out for checkpoint selection (hold_out_selection), or None.
    selection: corruption.Splits | None = None


def seeds(seed: int, num_seeds: int) -> list[int]:
    """The members' seeds ``seed, seed + 1, ..., seed + num_seeds - 1``."""
    return [seed + k for k in range(num_seeds)]


def hold_out(
    splits: corruption.Splits, size: int, seed: int
) -> tuple[corruption.Splits, corruption.Splits | None]:
    """Moves ``size`` seeded random rows of the noisy training set into a hyper-validation set.

    The rows are the first ``size`` of ``default_rng([seed, 100]).permutation(N)``; both parts
    keep ascending row order. Returns ``(splits without them, hyperval)`` where ``hyperval`` is a
    ``Splits`` whose ``test_*`` fields hold the held-out images and *observed* labels
    (``test_source_index`` their rows in the source training set); None when ``size == 0``.
    """
    n = len(splits.train_labels)
    if size == 0:
        return splits, None
    if size >= n:
        raise ValueError(
            f"hyper_val_size={size} must be smaller than the noisy training set ({n} examples)."
        )
    perm = np.random.default_rng([seed, 100]).permutation(n)
    held, kept = np.sort(perm[:size]), np.sort(perm[size:])
    train = take_training_rows(splits, kept)
    hyperval = splits._replace(
        test_x=splits.train_x[held],
        test_labels=splits.train_labels[held],
        test_source_index=splits.train_source_index[held],
    )
    return train, hyperval


def selection_counts(clean_labels: np.ndarray, num_classes: int, size: int) -> np.ndarray:
    """Per class, how many of the clean rows :func:`hold_out_selection` takes (``[C]`` ints).

    ``size`` is shared out in proportion to the clean rows per class ``n_c`` (the largest
    remainder method: ``floor(size * n_c / M)`` each, then one more to the classes with the
    largest remainders, the lower class first on ties), so ``k`` clean rows per class and
    ``size = C s`` give ``s`` per class.

    Raises:
      ValueError: the clean set cannot be split so that every class present in it keeps at
        least one row on both sides (``size`` below the number of classes present, at or above
        the clean set's size, or a class whose share would take all its rows); the one-line
        message names both sizes and the allowed range.
    """
    n_C = np.bincount(clean_labels, minlength=num_classes).astype(np.int64)
    m, present = int(n_C.sum()), int((n_C > 0).sum())

    def counts(s: int) -> np.ndarray:
        quota = s * n_C
        s_C = quota // max(m, 1)
        rest = quota - s_C * max(m, 1)  # remainders, in units of 1 / M
        order = np.lexsort((np.arange(num_classes), -rest))  # largest first, lower class on ties
        s_C[order[: s - int(s_C.sum())]] += 1
        return s_C

    def valid(s: int) -> bool:
        s_C = counts(s)
        return bool(np.all((s_C >= 1) & (s_C <= n_C - 1) | (n_C == 0)))

    if not (present <= size < m and valid(size)):
        ok = [s for s in range(present, m) if valid(s)]
        allowed = f"{ok[0]}..{ok[-1]}" if ok else "none (every class needs 2 clean rows or more)"
        raise ValueError(
            f"selection_size={size} cannot be held out of the clean set of {m} examples in "
            f"{present} classes with at least one selection and one clean (meta) row per class "
            f"left; allowed: {allowed}."
        )
    return counts(size)


def hold_out_selection(
    splits: corruption.Splits, size: int, seed: int
) -> tuple[corruption.Splits, corruption.Splits | None]:
    """Moves ``size`` rows of the clean set into a selection set, stratified per class.

    Class ``c`` gives :func:`selection_counts` ``s_c`` rows: the first ``s_c`` of its clean rows
    in the order ``default_rng([seed, 102]).permutation`` (one draw per class, ascending
    classes); both parts keep ascending row order, and they are disjoint. Returns ``(splits
    with the rest as the clean (meta) set, selection)`` where ``selection`` is a ``Splits``
    whose ``test_*`` fields hold the selection images and labels (``test_source_index``: their
    ``clean_source_index``, a row of the given ``x_clean`` or of the source training set); None
    when ``size == 0``. The selection rows are never trained on: they only choose the
    checkpoint (``results.summary``).

    Raises:
      ValueError: a clean set too small to split (:func:`selection_counts`).
    """
    if size == 0:
        return splits, None
    labels = splits.clean_labels
    s_C = selection_counts(labels, splits.num_classes, size)
    rng = np.random.default_rng([seed, 102])
    held = []
    for c in range(splits.num_classes):
        rows_c = np.flatnonzero(labels == c)
        held.append(rows_c[rng.permutation(rows_c.size)[: s_C[c]]])
    held = np.sort(np.concatenate(held))
    kept = np.setdiff1d(np.arange(labels.size), held)
    selection = splits._replace(
        test_x=splits.clean_x[held],
        test_labels=labels[held],
        test_source_index=splits.clean_source_index[held],
    )
    rest = splits._replace(
        clean_x=splits.clean_x[kept],
        clean_labels=labels[kept],
        clean_source_index=splits.clean_source_index[kept],
    )
    return rest, selection


def take_training_rows(splits: corruption.Splits, rows: np.ndarray) -> corruption.Splits:
    """``splits`` with its training fields reduced (or repeated) to ``rows``."""
    return splits._replace(
        train_x=splits.train_x[rows],
        train_labels=splits.train_labels[rows],
        train_true_labels=splits.train_true_labels[rows],
        train_is_noisy=splits.train_is_noisy[rows],
        train_source_index=splits.train_source_index[rows],
    )


def balanced_rows(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Rows of a class-balanced oversampling of ``labels`` (the ``resample`` method).

    Every class c present with ``n_c`` rows contributes ``n_max = max_c n_c`` rows: its rows
    in a seeded random order (``default_rng([seed, 101, c])``), cycled. The stream then shuffles
    these rows every epoch, so each batch is class-balanced in expectation.
    """
    counts = np.bincount(labels, minlength=num_classes)
    n_max = int(counts.max())
    rows = []
    for c in np.flatnonzero(counts):
        rows_c = np.flatnonzero(labels == c)
        rows_c = rows_c[np.random.default_rng([seed, 101, int(c)]).permutation(rows_c.size)]
        rows.append(np.resize(rows_c, n_max))
    return np.concatenate(rows)


def clean_as_training(splits: corruption.Splits) -> corruption.Splits:
    """The clean set in the training fields (``clean_only`` and the ``finetune`` phase)."""
    labels = splits.clean_labels.astype(np.int32)
    return splits._replace(
        train_x=splits.clean_x,
        train_labels=labels,
        train_true_labels=labels,
        train_is_noisy=np.zeros(labels.shape, bool),
        train_source_index=splits.clean_source_index,
    )


def oracle_rows(splits: corruption.Splits) -> tuple[corruption.Splits, np.ndarray]:
    """The ``oracle`` method's data: (splits with the clean set appended to the training fields,
    row table). The clean rows come after the N noisy training rows, with their labels as
    observed and true labels and ``clean_source_index`` as source rows; the table holds the
    rows whose observed label is correct (``train_is_noisy`` False, ascending), the clean rows
    N..N+M-1 among them.

    Raises:
      ValueError: the truth is unknown (``splits.truth_known`` False).
    """
    if not splits.truth_known:
        raise ValueError(
            f"method 'oracle' needs the true training labels, which noise={splits.noise!r} "
            f"without true labels does not know; give y_train_true (npz) or "
            f"data.true_label_key (tfds), or use a synthetic noise."
        )
    clean = clean_as_training(splits)
    both = splits._replace(
        **{
            f: np.concatenate([getattr(splits, f), getattr(clean, f)])
            for f in (
                "train_x",
                "train_labels",
                "train_true_labels",
                "train_is_noisy",
                "train_source_index",
            )
        }
    )
    return both, np.flatnonzero(~both.train_is_noisy)


def make_member(
    arrays: array_source.Arrays,
    seed: int,
    *,
    split_options: dict,
    hyper_val_size: int,
    pixel_scale: str,
    oracle: bool = False,
    selection_size: int = 0,
) -> MemberData:
    """One member's data from the loaded ``arrays``: ``corruption.make_splits(seed=seed,
    **split_options)`` (with the clean set and true labels of ``arrays`` when the data brings
    them), the hold-out, ``selection_size`` clean rows held out for checkpoint selection
    (:func:`hold_out_selection`; before the oracle appends the clean set), with ``oracle``
    the oracle's training rows (:func:`oracle_rows`), and the input normalisation
    (``pixel_scale``: ``standardize``, the training images' per-channel statistics, or
    ``unit``, x / 255)."""
    from l2rw_jax import input_pipeline  # channel_stats; the module imports TF lazily.

    splits = corruption.make_splits(
        arrays.x_train,
        arrays.y_train,
        arrays.x_test,
        arrays.y_test,
        num_classes=arrays.num_classes,
        seed=seed,
        x_clean=arrays.x_clean,
        y_clean=arrays.y_clean,
        y_train_true=arrays.y_train_true,
        **split_options,
    )
    splits, hyperval = hold_out(splits, hyper_val_size, seed)
    splits, selection = hold_out_selection(splits, selection_size, seed)
    table = None
    if oracle:
        splits, table = oracle_rows(splits)
    rows = slice(None) if table is None else table
    if pixel_scale == "unit":
        channels = splits.train_x.shape[-1]
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    else:
        mean, std = input_pipeline.channel_stats(splits.train_x[rows])
    counts = np.bincount(splits.train_labels[rows], minlength=splits.num_classes)
    return MemberData(
        seed, splits, hyperval, mean, std, counts, arrays.class_names, table, selection
    )


def phases(method: str, num_steps: int, finetune_steps: int) -> list[tuple[str, int, int]]:
    """[(phase, first global step, last global step + 1)] of a run: phase ``noisy`` trains on
    the noisy set (resample: on its balanced rows), ``clean`` on the clean set."""
    if method == "clean_only":
        return [("clean", 0, num_steps)]
    out = [("noisy", 0, num_steps)]
    if method == "finetune":
        out.append(("clean", num_steps, num_steps + finetune_steps))
    return out


def training_rows(
    md: MemberData, phase: str, resample: bool
) -> tuple[corruption.Splits, np.ndarray | None]:
    """(splits whose training fields a phase trains on, row table or None).

    The table maps the stream's rows back to rows of the noisy training set (``resample``;
    the oracle's ``md.row_table``), so per-example weights accumulate per example.
    """
    if phase == "clean":
        return clean_as_training(md.splits), None
    if md.row_table is not None:
        return take_training_rows(md.splits, md.row_table), md.row_table
    if resample:
        rows = balanced_rows(md.splits.train_labels, md.splits.num_classes, md.seed)
        return take_training_rows(md.splits, rows), rows
    return md.splits, None


def running_weight_stats(
    w_sum_N: np.ndarray, w_sq_sum_N: np.ndarray, nonzero_N: np.ndarray, count_N: np.ndarray
) -> dict[str, np.ndarray]:
    """Each example's weight statistics over the c_i draws training gave it, from running sums.

      mean_weight[i] = S1_i / c_i
      weight_std[i] = sqrt(max(S2_i / c_i - mean_weight[i]^2, 0))     (population, ddof = 0)
      nonzero_share[i] = Z_i / c_i

    with S1 = sum of the weights, S2 = of their squares, Z = the draws with a weight != 0 (the
    accumulators of ``build.make_loop_step``). For an example drawn at most once a step these
    equal ``l2rw_jax.audit.data_maps.weight_map`` on the per-step weights, up to the float32
    sums: computed in float64 from them, a variance within their rounding bound,
    c_i 2^-24 S2_i / c_i, reads as 0 (one draw, or the same weight every draw, gives exactly
    0; a std below sqrt(c_i 2^-24) times the RMS weight is not resolved). NaN where c_i = 0
    (never drawn: unknown, not 0).

    Raises:
      ValueError: arrays of different shapes, or negative counts.

    Example:
      >>> stats = running_weight_stats(np.array([0.5, 0.0]), np.array([0.25, 0.0]),
      ...                              np.array([1, 0]), np.array([2, 0]))
      >>> stats["mean_weight"], stats["weight_std"], stats["nonzero_share"]
      (array([0.25,  nan]), array([0.25,  nan]), array([0.5,  nan]))
    """
    s1, s2 = np.asarray(w_sum_N, np.float64), np.asarray(w_sq_sum_N, np.float64)
    z, c = np.asarray(nonzero_N), np.asarray(count_N)
    if not s1.shape == s2.shape == z.shape == c.shape or s1.ndim != 1:
        raise ValueError(
            f"w_sum, w_sq_sum, nonzero and count must be 1-D of one shape, got "
            f"{s1.shape}, {s2.shape}, {z.shape}, {c.shape}."
        )
    if (c < 0).any() or (z < 0).any() or (z > c).any():
        raise ValueError("count and nonzero must be >= 0 with nonzero <= count.")
    seen = c > 0
    d = np.maximum(c, 1)
    mean = s1 / d
    var = s2 / d - mean * mean
    var = np.where(var > d * 2.0**-24 * (s2 / d), var, 0.0)  # float32 rounding of the sums
    std = np.sqrt(var)
    return {
        "mean_weight": np.where(seen, mean, np.nan),
        "weight_std": np.where(seen, std, np.nan),
        "nonzero_share": np.where(seen, z / d, np.nan),
    }


def history_edges(num_bins: int, num_steps: int) -> np.ndarray:
    """``[B + 1]`` int64 step edges of the weight trajectory's ``B = num_bins`` equal step
    bins over steps ``0..num_steps - 1``: bin ``b`` holds the steps ``edges[b] <= t <
    edges[b + 1]`` with ``edges[b] = ceil(b num_steps / B)``, i.e. the steps ``t`` with
    ``t B // num_steps == b`` (``build.history_bin``). Bins differ by at most one step; where
    ``num_steps < B`` some are empty.

    Raises:
      ValueError: ``num_bins`` or ``num_steps`` below 1.

    Example:
      >>> history_edges(4, 10).tolist()
      [0, 3, 5, 8, 10]
    """
    if num_bins < 1 or num_steps < 1:
        raise ValueError(f"num_bins={num_bins} and num_steps={num_steps} must both be >= 1.")
    b = np.arange(num_bins + 1, dtype=np.int64)
    return -(-b * num_steps // num_bins)


def weight_history_columns(
    w_bin_sum_BxN: np.ndarray, bin_count_BxN: np.ndarray, num_steps: int
) -> dict[str, np.ndarray]:
    """example_weights.npz's weight-trajectory columns from the loop's per-bin sums.

    Returns ``{"weight_bin_sum": float32 B x N, "weight_bin_count": int32 B x N,
    "weight_bin_edges": int64 B + 1}``: per step bin (:func:`history_edges` over ``num_steps``
    steps) and example, the sum of its weights and its draws in that bin. The example's mean
    weight in bin b is ``weight_bin_sum[b] / weight_bin_count[b]``, unknown (not 0) where the
    count is 0. Bounded: 2 B N numbers whatever the steps.

    Raises:
      ValueError: arrays not B x N of one shape, negative counts, or ``num_steps`` below 1.
    """
    s, c = np.asarray(w_bin_sum_BxN), np.asarray(bin_count_BxN)
    if s.ndim != 2 or s.shape != c.shape:
        raise ValueError(
            f"w_bin_sum and bin_count must be B x N of one shape, got {s.shape}, {c.shape}."
        )
    if (c < 0).any():
        raise ValueError("bin_count must be >= 0.")
    return {
        "weight_bin_sum": s.astype(np.float32),
        "weight_bin_count": c.astype(np.int32),
        "weight_bin_edges": history_edges(s.shape[0], num_steps),
    }


def example_weights(
    md: MemberData,
    w_sum_N: np.ndarray,
    count_N: np.ndarray,
    *,
    w_sq_sum_N: np.ndarray | None = None,
    nonzero_N: np.ndarray | None = None,
) -> dict:
    """The columns of a member's example_weights.npz (ARCHITECTURE.md "The run's workdir").

    With ``w_sq_sum_N`` and ``nonzero_N`` (the loop's running sums of the squared weights and of
    the non-zero draws) also ``weight_sq_sum``, ``nonzero_count``, ``weight_std`` and
    ``nonzero_share`` (:func:`running_weight_stats`; NaN where never drawn).
    """
    s = md.splits
    out = {
        "index": np.arange(len(s.train_labels), dtype=np.int32),
        "mean_weight": (w_sum_N / np.maximum(count_N, 1)).astype(np.float32),
        "count": count_N.astype(np.int32),
        "weight_sum": w_sum_N.astype(np.float32),
        "is_noisy": s.train_is_noisy.astype(bool),
        "label": s.train_labels.astype(np.int32),
        "true_label": s.train_true_labels.astype(np.int32),
        "source_index": s.train_source_index.astype(np.int64),
        "seed": np.int64(md.seed),
    }
    if (w_sq_sum_N is None) != (nonzero_N is None):
        raise ValueError("w_sq_sum_N and nonzero_N go together: give both or neither.")
    if w_sq_sum_N is not None:
        stats = running_weight_stats(w_sum_N, w_sq_sum_N, nonzero_N, count_N)
        out.update(
            weight_sq_sum=np.asarray(w_sq_sum_N).astype(np.float32),
            nonzero_count=np.asarray(nonzero_N).astype(np.int32),
            weight_std=stats["weight_std"].astype(np.float32),
            nonzero_share=stats["nonzero_share"].astype(np.float32),
        )
    if not s.truth_known:  # Unknown, not "all correct": the columns are left out.
        del out["is_noisy"], out["true_label"]
    return out
