"""The audit's fifth section: the label noise, estimated as a transition matrix two ways.

  T[i, j] = P(observed label j | true label i),   rows = true class, columns = observed label.

  * from the trusted (clean) set: Gold Loss Correction's estimate (`noise_estimate.glc_transition`)
    on the trained model's probabilities on the clean images, their labels taken as the true
    ones;
  * from the noisy training set: confident learning's (`noise_estimate.confident_transition`) on
    the model's probabilities on the training images and their given labels (per-class
    thresholds from the training set).

Where the training set's true labels are known, its own transition matrix
(`noise_estimate.empirical_transition`) and each estimate's error (`noise_estimate.
transition_error`) beside them; where they are not, the truth and the errors are absent (not
zero). The test set is not used.
"""

from __future__ import annotations

import numpy as np

from l2rw_jax.audit import common
from l2rw_jax.audit import figures
from l2rw_jax.audit import noise_estimate
from l2rw_jax.audit.sections import Inputs
from l2rw_jax.audit.sections import Section

ORIENTATION = "T[i, j] = P(observed label j | true label i); rows = true class, columns = observed"

SPLIT_GLC = (
    "clean (trusted) set: the model's probabilities on its images, its labels taken as "
    "the true ones"
)
SPLIT_CONFIDENT = (
    "training set: the model's probabilities on its images and its given labels "
    "(per-class thresholds from the same set)"
)
SPLIT_TRUE = "training set: its true labels against its given labels"


def _error(T_hat_CxC: np.ndarray, true: noise_estimate.TransitionEstimate) -> dict:
    """`transition_error` over the rows both the estimate and the truth know (a true class
    without a training example has no row to compare)."""
    known_C = true.count_C > 0
    T_hat = np.where(known_C[:, None], T_hat_CxC, np.nan)
    T = np.where(known_C[:, None], true.T_CxC, np.eye(len(known_C)))  # unknown rows: not compared
    return noise_estimate.transition_error(T_hat, T)


def noise_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """GLC's transition estimate from the clean set beside confident learning's from the
    training set, with the training set's true T and each estimate's error where known."""
    del rng  # no random subset
    apply_fn, params, model_state, _ = inp.model
    c = inp.num_classes
    notes = []
    res = {"orientation": ORIENTATION, "num_classes": c, "estimates": {}}
    true = None
    if inp.true_train is not None:
        true = noise_estimate.empirical_transition(inp.true_train, inp.y_train, c)
        res["true"] = {
            "T": true.T_CxC,
            "count": true.count_C,
            "split": SPLIT_TRUE,
            "n": int(len(inp.y_train)),
        }
    else:
        notes.append(
            "The training set's true labels are unknown: its transition matrix and the "
            "estimates' errors are not computed."
        )
    if inp.x_clean is not None:
        logits_clean = common.predict_logits(
            apply_fn,
            params,
            model_state,
            inp.x_clean,
            batch_size=config.batch_size,
            desc="clean logits",
        )
        glc = noise_estimate.glc_transition(common.softmax(logits_clean), inp.y_clean)
        res["estimates"]["glc"] = {
            "T": glc.T_CxC,
            "count": glc.count_C,
            "split": SPLIT_GLC,
            "n": int(len(inp.y_clean)),
        }
        missing = np.flatnonzero(glc.count_C == 0)
        if missing.size:
            notes.append(
                f"Classes {missing.tolist()} have no clean example: their rows of the GLC "
                f"estimate are unknown."
            )
    else:
        notes.append("No clean (trusted) set was given: the GLC estimate is not computed.")
    probs_train = common.softmax(inp.logits_train)
    cl = noise_estimate.confident_transition(probs_train, inp.y_train)
    res["estimates"]["confident_learning"] = {
        "T": cl.T_CxC,
        "count": cl.count_C,
        "split": SPLIT_CONFIDENT,
        "n": int(len(inp.y_train)),
    }
    if true is not None:
        for est in res["estimates"].values():
            est["error"] = _error(est["T"], true)
    mats = {}
    if "glc" in res["estimates"]:
        mats["GLC estimate (clean set)"] = res["estimates"]["glc"]["T"]
    mats["confident-learning estimate (training set)"] = cl.T_CxC
    if true is not None:
        mats["true T of the training set"] = true.T_CxC
    figs = {"transitions": figures.fig_transitions(mats, inp.class_names)}
    return Section("noise", "Estimating the label noise", res, figs, notes)
