"""The audit's fourth section, on every training row: labels ranked from most to least suspect,
scored against the noise mask when known, and the ranked `label_issues.csv`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from l2rw_jax.audit import common
from l2rw_jax.audit import data_maps
from l2rw_jax.audit import figures
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import ranking_quality
from l2rw_jax.audit.sections import Inputs
from l2rw_jax.audit.sections import Section


def label_issues_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Training labels ranked from most to least suspect (the recorded L2RW signals when given,
    final loss, confident learning), scored against the noise mask when known; the ranked CSV of
    every training row (`label_issues.rank_label_issues`) as the section's file."""
    del rng  # no random subset: every training row is ranked
    x_train, y_train, class_names = inp.x_train, inp.y_train, inp.class_names
    example_weights, is_noisy_train = inp.example_weights, inp.is_noisy_train
    true_train, source_index = inp.true_train, inp.source_index
    notes = []
    # The weight data map from the run's running sums (None: not recorded, or an older record).
    dmap = None if example_weights is None else data_maps.weight_map_from_record(example_weights)
    probs_train = common.softmax(inp.logits_train)
    loss_train = label_issues.final_loss(probs_train, y_train)
    rows_ranked = np.arange(len(x_train))
    orders = {}
    mean_w = meta_grad = None
    if example_weights is not None:
        idx = np.asarray(example_weights["index"])
        w = np.asarray(example_weights["mean_weight"], np.float64)
        seen = np.isfinite(w)
        if "count" in example_weights:
            seen &= np.asarray(example_weights["count"]) > 0
        if (~seen).any():
            notes.append(
                f"{int((~seen).sum())} training examples have no recorded weight (never drawn); "
                f"they are left out of every ranking."
            )
        rows_ranked = np.sort(idx[seen])
        mean_w = np.full(len(x_train), np.nan)
        mean_w[idx] = w
        orders["l2rw_weight"] = label_issues.rank_by_l2rw_weight(
            mean_w[rows_ranked], loss_train[rows_ranked]
        )
        # The meta-gradient itself (high = harmful): its mean over the example's visits, and
        # the robust variant's per-example memory of it.
        for key, name in (
            ("mean_meta_grad", "l2rw_meta_grad"),
            ("meta_grad_memory", "l2rw_memory"),
        ):
            if key in example_weights:
                score = np.full(len(x_train), np.nan)
                score[idx] = np.asarray(example_weights[key], np.float64)
                orders[name] = label_issues.rank_by_l2rw_weight(
                    -score[rows_ranked], loss_train[rows_ranked]
                )
                if key == "mean_meta_grad":
                    meta_grad = score
    else:
        notes.append(
            "No recorded L2RW weights were given: label issues are ranked by the baselines only."
        )
    orders["final_loss"] = label_issues.rank_by_loss(loss_train[rows_ranked])
    orders["confident_learning"] = label_issues.rank_by_confident_learning(
        probs_train[rows_ranked], y_train[rows_ranked]
    )
    l_res = {"n_ranked": int(len(rows_ranked)), "rankings": {}}
    if is_noisy_train is not None and is_noisy_train[rows_ranked].any():
        noisy_r = is_noisy_train[rows_ranked]
        n_noisy = int(noisy_r.sum())
        ks = [n_noisy] + [int(k) for k in config.suspect_ks]
        l_res["n_noisy"] = n_noisy
        for name, order in orders.items():
            l_res["rankings"][name] = label_issues.score_ranking(order, noisy_r, ks)
        # The field's standard (Northcutt et al. 2021, Sec. 5): AUROC, AP, precision/recall@k
        # of each ranking as the strict order it gives, over the same ranked rows.
        l_res["ranking_quality"] = ranking_quality.score_rankings(orders, noisy_r, ks)
    else:
        notes.append(
            "No example is marked noisy (is_noisy missing or all False): AUROC, average "
            "precision, precision@k and recall@k are not computed."
        )
    main = next(
        n for n in ("l2rw_meta_grad", "l2rw_memory", "l2rw_weight", "final_loss") if n in orders
    )
    top = rows_ranked[orders[main][: config.num_suspects]]
    pred_train = probs_train.argmax(axis=1)
    l_res["suspects_ranking"] = main
    l_res["top_suspects"] = [
        {
            "train_row": int(r),
            "source_index": int(source_index[r]),
            "given_label": int(y_train[r]),
            "predicted_label": int(pred_train[r]),
            "true_label": None if true_train is None else int(true_train[r]),
            "is_noisy": None if is_noisy_train is None else bool(is_noisy_train[r]),
            "mean_weight": None if mean_w is None else float(mean_w[r]),
            "mean_meta_grad": None if meta_grad is None else float(meta_grad[r]),
            "loss": float(loss_train[r]),
        }
        for r in top
    ]
    l_res["csv"], write_csv = _label_issues_csv(
        example_weights,
        dmap,
        source_index,
        y_train,
        probs_train,
        loss_train,
        true_train,
        class_names if inp.names_given else None,
    )
    figs = {}
    figs["suspects"] = figures.fig_suspects(
        common.to_raw(x_train[top], inp.mean_C, inp.std_C), l_res["top_suspects"], class_names
    )
    if mean_w is not None and is_noisy_train is not None:
        figs["weight_hist"] = figures.fig_weight_hist(
            mean_w[rows_ranked], is_noisy_train[rows_ranked]
        )
        if meta_grad is not None:
            figs["meta_grad_hist"] = figures.fig_weight_hist(
                meta_grad[rows_ranked],
                is_noisy_train[rows_ranked],
                xlabel="mean normalised L2RW meta-gradient",
            )
    if dmap is not None:
        l_res["data_map"], figs["data_map"] = _data_map(dmap, example_weights, is_noisy_train)
    elif example_weights is not None:
        notes.append(
            "The recorded weights carry no weight_sq_sum / nonzero_count (a run recorded before "
            "they were kept): no data map."
        )
    files = {l_res["csv"]["file"]: write_csv}
    return Section("label_issues", "Finding mislabeled examples", l_res, figs, notes, files)


def _data_map(dmap: dict, example_weights, is_noisy_train) -> tuple[dict, str]:
    """The weight data map's summary for audit.json (medians over the drawn examples, per
    clean / noisy group where the truth is known) and its figure."""
    idx = np.asarray(example_weights["index"])
    drawn = dmap["draws"] > 0
    rows = idx[drawn]
    cols = {k: np.asarray(dmap[k])[drawn] for k in ("mean_weight", "weight_std", "nonzero_share")}

    def medians(mask):
        return {
            "n": int(mask.sum()),
            **{
                f"median_{k}": float(np.median(v[mask])) if mask.any() else None
                for k, v in cols.items()
            },
        }

    res = {
        "source": "example_weights running sums (weight_sum, weight_sq_sum, nonzero_count, count)",
        "n_drawn": int(drawn.sum()),
        "all": medians(np.ones(len(rows), bool)),
    }
    noisy = None
    if is_noisy_train is not None:
        noisy = np.asarray(is_noisy_train, bool)[rows]
        res["clean"], res["noisy"] = medians(~noisy), medians(noisy)
    fig = figures.fig_data_map(
        cols["mean_weight"], cols["weight_std"], noisy, cols["nonzero_share"]
    )
    return res, fig


def _label_issues_csv(
    example_weights, dmap, source_index, y_train, probs_train, loss_train, true_train, class_names
) -> tuple[dict, Callable[[str], str]]:
    """`label_issues.csv`: every training row, ranked as the report's suspects are
    (`label_issues.rank_label_issues`, ranked_by="auto"), with each ranking's rank of the row in
    its `rank_<ranking>` column (`ranking_quality.suspect_rankings`); returns its audit.json
    entry and the function that writes it at a path.

    Recorded values are written only for the examples the run recorded them for (count > 0);
    the confident-learning flag is computed over every training row.
    """
    n = len(y_train)
    recorded = {}
    count = None
    if example_weights is not None:
        idx = np.asarray(example_weights["index"])
        seen = np.isfinite(np.asarray(example_weights["mean_weight"], np.float64))
        if "count" in example_weights:
            c = np.asarray(example_weights["count"])
            seen &= c > 0
            count = np.full(n, None, object)
            count[idx] = [int(v) for v in c]
        for key in ("mean_meta_grad", "meta_grad_memory", "mean_weight"):
            if key in example_weights:
                score = np.full(n, np.nan)
                score[idx[seen]] = np.asarray(example_weights[key], np.float64)[seen]
                recorded[key] = score
        # The weight data map's other coordinates, from the running sums (when recorded).
        for key in ("weight_std", "nonzero_share") if dmap is not None else ():
            value = np.full(n, np.nan)
            value[idx[seen]] = np.asarray(dmap[key])[seen]
            recorded[key] = value
    flags = label_issues.confident_learning_flags(probs_train, y_train)
    # Every ranking over every row, each in its own `rank_<ranking>` column.
    ranks = ranking_quality.suspect_rankings(
        probs_train,
        y_train,
        mean_weight=recorded.get("mean_weight"),
        mean_meta_grad=recorded.get("mean_meta_grad"),
        meta_grad_memory=recorded.get("meta_grad_memory"),
    )
    order, ranked_by = label_issues.rank_label_issues(
        loss_train,
        mean_meta_grad_N=recorded.get("mean_meta_grad"),
        meta_grad_memory_N=recorded.get("meta_grad_memory"),
        mean_weight_N=recorded.get("mean_weight"),
        flags_N=flags,
    )
    columns = {
        "source_index": source_index,
        "train_row": np.arange(n),
        "given_label": y_train,
        "predicted_label": probs_train.argmax(axis=1),
        "true_label": true_train,
        "count": count,
        "mean_meta_grad": recorded.get("mean_meta_grad"),
        "meta_grad_memory": recorded.get("meta_grad_memory"),
        "mean_weight": recorded.get("mean_weight"),
        "weight_std": recorded.get("weight_std"),
        "nonzero_share": recorded.get("nonzero_share"),
        "loss": loss_train,
        "confident_learning": flags,
    }
    entry = {
        "file": "label_issues.csv",
        "rows": n,
        "ranked_by": ranked_by,
        "rank_columns": {f"rank_{name}": name for name in ranks},
        "empty_columns": sorted(
            [k for k, v in columns.items() if v is None]
            + [f"rank_{name}" for name in label_issues.RANKINGS if name not in ranks]
        ),
    }
    return entry, lambda path: label_issues.write_label_issues_csv(
        path, order, columns, class_names, ranks
    )
