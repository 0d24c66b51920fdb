"""The audit's section on the trusted set: which clean examples the L2RW weights hang on, and
which clean labels look wrong (`trusted_set.trusted_set_influence`: the math, the exactness of
the leave-one-out, the flag rule), with `trusted_set.csv` (one row per clean example).

The training rows' penultimate features are computed a chunk at a time, twice (the two passes
of `trusted_set_influence`), so no N x D array of the whole training set is held.
"""

from __future__ import annotations

import numpy as np

from l2rw_jax.audit import common
from l2rw_jax.audit import figures
from l2rw_jax.audit import trusted_set
from l2rw_jax.audit.sections import Inputs
from l2rw_jax.audit.sections import Section

TITLE = "The trusted set under audit"
# Training rows per chunk of penultimate features: the chunk x M products of
# `trusted_set_influence` stay small (16 MB per float64 array for M = 1000).
CHUNK_ROWS = 2048


def trusted_set_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Per clean example: loss, prediction, leave-one-out influence on the L2RW weights of the
    final model (output layer), endorsement of disputed training labels, rank and flag; the top
    `config.num_suspects` in audit.json, all of them in `trusted_set.csv`."""
    del rng  # no random subset: every clean and training row is used
    if inp.x_clean is None or len(inp.x_clean) < 2:
        why = (
            "No clean (trusted) set was given"
            if inp.x_clean is None
            else "The clean set has one example"
        )
        return Section(
            "trusted_set",
            TITLE,
            {"n_clean": None if inp.x_clean is None else len(inp.x_clean)},
            {},
            [f"{why}: the trusted-set section needs at least two clean examples."],
        )
    apply_fn, params, model_state, feature_fn = inp.model
    features = lambda x, desc=None: common.compute_features(
        feature_fn, params, model_state, x, batch_size=config.batch_size, desc=desc
    )
    h_clean = features(inp.x_clean, "clean features")
    logits_clean = common.predict_logits(
        apply_fn, params, model_state, inp.x_clean, batch_size=config.batch_size
    )
    n = len(inp.x_train)

    def train_batches():
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            h = features(inp.x_train[start:stop])
            yield h, inp.logits_train[start:stop], inp.y_train[start:stop]

    res = trusted_set.trusted_set_influence(
        h_clean,
        logits_clean,
        inp.y_clean,
        train_batches,
        flag_probability=config.trusted_flag_probability,
    )
    m = len(inp.y_clean)
    source = (
        np.arange(m, dtype=np.int64) if inp.clean_source_index is None else inp.clean_source_index
    )
    notes = []
    if res.all_clipped:
        notes.append(
            "Every training example's L2RW signal is ≤ 0 at the final model: the rule gives no "
            "weight at all (the paper's δ rule), and the influences are measured against w = 0."
        )
    top = res.order_M[: config.num_suspects]
    results = {
        "n_clean": m,
        "n_train": res.n_train,
        "gradient": "output layer (weights and bias), closed form",
        "flag_probability": float(config.trusted_flag_probability),
        "n_flagged": int(res.flagged_M.sum()),
        "n_disputed_clean": int((res.predicted_M != inp.y_clean).sum()),
        "n_disputed_train": res.n_disputed,
        "disputed_weight": res.disputed_weight,
        "all_clipped": res.all_clipped,
        "influence": {
            "median": float(np.median(res.influence_M)),
            "max": float(res.influence_M.max()),
        },
        "top_suspects": [
            {
                "rank": int(res.rank_M[j]),
                "clean_row": int(j),
                "source_index": int(source[j]),
                "given_label": int(inp.y_clean[j]),
                "predicted_label": int(res.predicted_M[j]),
                "confidence": float(res.confidence_M[j]),
                "loss": float(res.loss_M[j]),
                "influence": float(res.influence_M[j]),
                "endorsement": float(res.endorsement_M[j]),
                "flagged": bool(res.flagged_M[j]),
            }
            for j in top
        ],
        "csv": {"file": "trusted_set.csv", "rows": m, "columns": list(trusted_set.CSV_COLUMNS)},
    }
    figs = {
        "scatter": figures.fig_trusted_set(
            res.loss_M, res.influence_M, res.predicted_M != inp.y_clean, res.flagged_M
        )
    }
    names = inp.class_names if inp.names_given else None
    files = {
        "trusted_set.csv": lambda path: trusted_set.write_trusted_set_csv(
            path, res, inp.y_clean, source, names
        )
    }
    return Section("trusted_set", TITLE, results, figs, notes, files)
