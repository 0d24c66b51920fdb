"""The audit's card per suspect: the training examples the label-issue ranking puts first, one
card each with what a reviewer needs to decide on the label.

Each card: the image, its index in the user's data, the given label, the predicted label with its
probability and the top-3 classes, the run's recorded mean L2RW weight and share of draws with a
non-zero weight (when recorded), its weight trajectory (the mean weight in each equal step bin of
training, `data_maps.weight_trajectory_from_record`; when recorded), its rank under every
ranking of `label_issues.RANKINGS` (the `rank_<ranking>` columns of `label_issues.csv`), its
nearest training neighbours in the model's penultimate-feature space with their given labels,
the true label where it is known, a saliency map (the mistakes section's integrated gradients,
`mistakes.integrated_gradients`, of the predicted class's logit) and the minimal adversarial
epsilon that leaves the predicted class (the robustness section's search,
`attacks.minimal_adversarial_epsilon`, with the audit's settings).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common
from l2rw_jax.audit import data_maps
from l2rw_jax.audit import figures
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import mistakes
from l2rw_jax.audit import ranking_quality
from l2rw_jax.audit.sections import Inputs
from l2rw_jax.audit.sections import Section
from l2rw_jax.audit.sections import attack_config

# The per-row arrays `suspect_cards` reads from a run's record (NaN where never drawn).
RECORDED = ("mean_weight", "mean_meta_grad", "meta_grad_memory", "nonzero_share")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_card_config(num_cards, num_neighbors, num_train: int) -> None:
    """ValueError (one line) unless `num_cards` is an integer >= 1 and `num_neighbors` an
    integer in [1, num_train - 1] (the training rows besides the suspect). A `num_cards` above
    `num_train` is allowed: every row gets a card."""
    if not _is_int(num_cards) or num_cards < 1:
        raise ValueError(f"num_cards must be an integer >= 1, got {num_cards!r}.")
    if not _is_int(num_neighbors) or not 1 <= num_neighbors <= num_train - 1:
        raise ValueError(
            f"card_neighbors must be an integer in [1, {num_train - 1}] (training rows besides "
            f"the suspect), got {num_neighbors!r}."
        )


def recorded_per_row(example_weights: Mapping | None, num_train: int) -> dict[str, np.ndarray]:
    """What the run recorded, per training row: {name: float64 num_train} for each of
    `RECORDED` the record has (`nonzero_share` from its running sums,
    `data_maps.weight_map_from_record`), NaN where the row was never drawn (count 0, or no
    finite mean weight), plus `count` (int64, 0 where never drawn) when the record has counts.
    Empty when nothing was recorded. The values equal `label_issues.csv`'s columns of the same
    names."""
    if example_weights is None:
        return {}
    idx = np.asarray(example_weights["index"])
    seen = np.isfinite(np.asarray(example_weights["mean_weight"], np.float64))
    out = {}
    if "count" in example_weights:
        c = np.asarray(example_weights["count"])
        seen &= c > 0
        out["count"] = np.zeros(num_train, np.int64)
        out["count"][idx] = c
    dmap = data_maps.weight_map_from_record(example_weights)
    source = {k: example_weights[k] for k in RECORDED[:3] if k in example_weights}
    if dmap is not None:
        source["nonzero_share"] = dmap["nonzero_share"]
    for key, values in source.items():
        out[key] = np.full(num_train, np.nan)
        out[key][idx[seen]] = np.asarray(values, np.float64)[seen]
    return out


def trajectory_per_row(example_weights: Mapping | None, num_train: int) -> dict | None:
    """The recorded weight trajectory per training row: {"mean": float64 num_train x B, each
    row's mean weight per step bin (NaN where the bin never drew it, or the row is not in the
    record), "edges": int64 B + 1 step edges}; None when the run recorded none
    (`data_maps.weight_trajectory_from_record`: a record written before it was kept)."""
    if example_weights is None:
        return None
    traj = data_maps.weight_trajectory_from_record(example_weights)
    if traj is None:
        return None
    mean = np.full((num_train, traj["mean"].shape[0]), np.nan)
    mean[np.asarray(example_weights["index"])] = traj["mean"].T
    return {"mean": mean, "edges": traj["edges"]}


def suspect_cards(
    probs_MxC: np.ndarray,
    labels_M: np.ndarray,
    feats_MxD: np.ndarray,
    *,
    num_cards: int = 12,
    num_neighbors: int = 3,
    recorded: Mapping[str, np.ndarray] | None = None,
    source_index_M: np.ndarray | None = None,
    true_labels_M: np.ndarray | None = None,
    is_noisy_M: np.ndarray | None = None,
    trajectory: Mapping | None = None,
) -> dict:
    """One card per suspect: the first `num_cards` training rows of the suspects' ranking.

    The ranking is `label_issues.rank_label_issues(ranked_by="auto")` on the recorded scores:
    the first of l2rw_meta_grad, l2rw_memory, l2rw_weight, final_loss that is there -- the
    order of `label_issues.csv` and of the label-issue section's suspects. Each card's `ranks`
    are its 1-based places under every ranking the inputs allow
    (`ranking_quality.suspect_rankings`, over every row: the CSV's `rank_<ranking>` columns).
    Neighbours: the `num_neighbors` rows nearest to the suspect in Euclidean distance of
    `feats_MxD` (`mistakes.nearest_neighbors`, the reference in chunks), the suspect itself
    left out.

    Args:
      probs_MxC: float M x C, the final model's class probabilities on the training rows.
      labels_M: int M, the given labels.
      feats_MxD: float M x D, the rows' penultimate features.
      num_cards: cards wanted (>= 1; at most M are made).
      num_neighbors: neighbours per card, in [1, M - 1].
      recorded: `recorded_per_row`'s arrays (NaN = never drawn), or None / {} when the run
        recorded nothing: mean weight and non-zero share are then None on every card, not 0.
      source_index_M: each row's index in the user's data (default: the row).
      true_labels_M, is_noisy_M: the truth, when known (synthetic noise); else None.
      trajectory: `trajectory_per_row`'s {"mean": M x B, "edges": B + 1}, or None when the run
        recorded no weight trajectory: every card's `weight_trajectory` is then None.

    Returns:
      {"ranked_by": str, "num_neighbors": int, "recorded": {name: bool},
      "weight_trajectory_edges": [B + 1 steps] or None, "suspects": [card]},
      card = {"position", "train_row", "source_index", "given_label", "given_prob",
      "predicted_label", "predicted_prob", "top3": [{"class", "prob"}], "true_label",
      "is_noisy", "draws", "mean_weight", "nonzero_share", "mean_meta_grad",
      "meta_grad_memory", "weight_trajectory": [B mean weights, None where the bin never
      drew the row], "ranks": {ranking: int}, "neighbors": [{"train_row", "source_index",
      "given_label", "true_label", "distance"}]}; None where unknown or not recorded
      (`draws`: None without recorded counts, 0 when never drawn).

    Raises:
      ValueError: `check_card_config`'s, or arrays whose lengths differ from M.
    """
    probs_MxC = np.asarray(probs_MxC, np.float64)
    m = len(probs_MxC)
    labels_M = common.check_labels(labels_M, m, probs_MxC.shape[1], "labels")
    feats_MxD = np.asarray(feats_MxD, np.float64)
    if feats_MxD.ndim != 2 or len(feats_MxD) != m:
        raise ValueError(f"feats must be {m} x D (one row per label), got {feats_MxD.shape}.")
    check_card_config(num_cards, num_neighbors, m)
    rec = dict(recorded or {})
    for name, a in rec.items():
        if np.shape(a) != (m,):
            raise ValueError(f"recorded[{name!r}] has shape {np.shape(a)}, expected ({m},).")
    if trajectory is not None and (
        np.ndim(trajectory["mean"]) != 2
        or len(trajectory["mean"]) != m
        or np.shape(trajectory["edges"]) != (np.shape(trajectory["mean"])[1] + 1,)
    ):
        raise ValueError(
            f"trajectory['mean'] must be {m} x B with B + 1 edges, got "
            f"{np.shape(trajectory['mean'])} and {np.shape(trajectory['edges'])} edges."
        )
    source_index_M = np.arange(m) if source_index_M is None else np.asarray(source_index_M)
    scores = {k: rec.get(k) for k in RECORDED[:3]}
    loss_M = label_issues.final_loss(probs_MxC, labels_M)
    order_M, ranked_by = label_issues.rank_label_issues(
        loss_M,
        mean_meta_grad_N=scores["mean_meta_grad"],
        meta_grad_memory_N=scores["meta_grad_memory"],
        mean_weight_N=scores["mean_weight"],
    )
    ranks = {}
    for name, order in ranking_quality.suspect_rankings(probs_MxC, labels_M, **scores).items():
        ranks[name] = np.empty(m, np.int64)
        ranks[name][order] = np.arange(1, m + 1)
    rows = order_M[: min(num_cards, m)]
    # One neighbour more than asked: the suspect is among them unless float rounding put
    # exact duplicates of it ahead, in which case the farthest is dropped instead.
    nn_QxK, dist_QxK = mistakes.nearest_neighbors(feats_MxD[rows], feats_MxD, num_neighbors + 1)
    top_cls, top_p = mistakes.top_predictions(probs_MxC[rows], min(3, probs_MxC.shape[1]))

    def value(name, r):
        v = rec.get(name)
        return None if v is None or np.isnan(v[r]) else float(v[r])

    def truth(r):
        return None if true_labels_M is None else int(true_labels_M[r])

    def history(r):
        if trajectory is None:
            return None
        return [None if np.isnan(v) else float(v) for v in trajectory["mean"][r]]

    cards = []
    for j, r in enumerate(rows):
        keep = [i for i in range(num_neighbors + 1) if nn_QxK[j, i] != r][:num_neighbors]
        cards.append(
            {
                "position": j + 1,
                "train_row": int(r),
                "source_index": int(source_index_M[r]),
                "given_label": int(labels_M[r]),
                "given_prob": float(probs_MxC[r, labels_M[r]]),
                "predicted_label": int(top_cls[j, 0]),
                "predicted_prob": float(top_p[j, 0]),
                "top3": [{"class": int(c), "prob": float(p)} for c, p in zip(top_cls[j], top_p[j])],
                "true_label": truth(r),
                "is_noisy": None if is_noisy_M is None else bool(is_noisy_M[r]),
                "draws": int(rec["count"][r]) if "count" in rec else None,
                **{name: value(name, r) for name in RECORDED},
                "weight_trajectory": history(r),
                "ranks": {name: int(rk[r]) for name, rk in ranks.items()},
                "neighbors": [
                    {
                        "train_row": int(nn_QxK[j, i]),
                        "source_index": int(source_index_M[nn_QxK[j, i]]),
                        "given_label": int(labels_M[nn_QxK[j, i]]),
                        "true_label": truth(nn_QxK[j, i]),
                        "distance": float(dist_QxK[j, i]),
                    }
                    for i in keep
                ],
            }
        )
    return {
        "ranked_by": ranked_by,
        "num_neighbors": int(num_neighbors),
        "recorded": {name: name in rec for name in RECORDED},
        "weight_trajectory_edges": (
            None if trajectory is None else [int(e) for e in trajectory["edges"]]
        ),
        "suspects": cards,
    }


def card_explanations(inp: Inputs, config, res: dict) -> np.ndarray:
    """Adds to each of `res["suspects"]` its saliency numbers and minimal adversarial eps, in
    place, and returns the attributions (cards x H x W x C, float32).

    Saliency: `mistakes.integrated_gradients` of the predicted class's logit from the black
    image (raw 0), `config.ig_steps` intervals, as the mistakes section computes it; each card
    gets `ig_delta_f` and `ig_relative_completeness_error`. Minimal adversarial eps (raw pixel
    units, L-inf): `attacks.minimal_adversarial_epsilon` away from the predicted class with the
    audit's attack (`sections.attack_config`, seed `config.seed + 2`), `config.eps_max` and
    `config.bisection_steps`, as the robustness section searches; `min_adversarial_eps` is None
    where PGD found no fooling image within eps_max (never 0 by default). `res` gets the
    settings under `saliency` and `min_adversarial_eps`.
    """
    apply_fn, params, model_state, _ = inp.model
    cards = res["suspects"]
    x = inp.x_train[[c["train_row"] for c in cards]]
    pred = np.asarray([c["predicted_label"] for c in cards], np.int32)
    ig = mistakes.integrated_gradients(
        apply_fn,
        params,
        model_state,
        x,
        pred,
        baseline=common.from_raw(np.zeros_like(x), inp.mean_C, inp.std_C),
        steps=config.ig_steps,
    )
    me = attacks.minimal_adversarial_epsilon(
        inp.model,
        x,
        pred,
        attack_config(config, inp, config.seed + 2),
        eps_max=config.eps_max,
        bisection_steps=config.bisection_steps,
        progress=False,
    )
    for j, c in enumerate(cards):
        c["ig_delta_f"] = float(ig["delta_f"][j])
        c["ig_relative_completeness_error"] = float(ig["relative_completeness_error"][j])
        e = me["min_eps"][j]
        c["min_adversarial_eps"] = float(e) if np.isfinite(e) else None
    res["saliency"] = {
        "method": "integrated gradients",
        "target": "predicted-class logit",
        "baseline": "black image (raw 0)",
        "steps": int(config.ig_steps),
    }
    res["min_adversarial_eps"] = {
        "units": "raw pixels in [0, 1] (L-inf)",
        "away_from": "predicted class",
        "eps_max": float(config.eps_max),
        "bracket_width": float(config.eps_max) / 2**config.bisection_steps,
        "pgd_steps": int(config.pgd_steps),
    }
    return ig["attributions"]


def suspects_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """A card per suspect (`suspect_cards`): `config.num_cards` cards, `config.card_neighbors`
    neighbours each, searched among every training row's penultimate features."""
    del rng  # no random subset: the neighbours are searched among every training row
    _, params, model_state, feature_fn = inp.model
    n = len(inp.x_train)
    check_card_config(config.num_cards, config.card_neighbors, n)
    feats = common.compute_features(
        feature_fn,
        params,
        model_state,
        inp.x_train,
        batch_size=config.batch_size,
        desc="train features (suspect cards)",
    )
    recorded = recorded_per_row(inp.example_weights, n)
    res = suspect_cards(
        common.softmax(inp.logits_train),
        inp.y_train,
        feats,
        num_cards=config.num_cards,
        num_neighbors=config.card_neighbors,
        recorded=recorded,
        source_index_M=inp.source_index,
        true_labels_M=inp.true_train,
        is_noisy_M=inp.is_noisy_train,
        trajectory=trajectory_per_row(inp.example_weights, n),
    )
    res["neighbor_space"] = (
        f"penultimate features, Euclidean distance, all {n} training rows but the suspect"
    )
    notes = []
    if not recorded:
        notes.append(
            "The run recorded no example weights: the cards show no mean weight or non-zero "
            "share (not recorded, not 0), and the suspects follow the final loss."
        )
    elif not res["recorded"]["nonzero_share"]:
        notes.append(
            "The recorded weights carry no weight_sq_sum / nonzero_count (a run recorded before "
            "they were kept): the cards show no share of non-zero weight."
        )
    if recorded and res["weight_trajectory_edges"] is None:
        notes.append(
            "The recorded weights carry no weight_bin_sum / weight_bin_count (a run recorded "
            "before the trajectory was kept): the cards show no weight over training."
        )
    raw = lambda rows: common.to_raw(inp.x_train[rows], inp.mean_C, inp.std_C)
    cards = res["suspects"]
    attr = card_explanations(inp, config, res)
    figs = {
        "images": [figures.image_png(im) for im in raw([c["train_row"] for c in cards])],
        "saliency": [figures.saliency_png(a) for a in attr],
        "saliency_attributions": attr,  # not drawn: the arrays behind "saliency"
        "neighbors": [
            [figures.image_png(im) for im in raw([nb["train_row"] for nb in c["neighbors"]])]
            for c in cards
        ],
    }
    return Section("suspects", "A card per suspect", res, figs, notes)
