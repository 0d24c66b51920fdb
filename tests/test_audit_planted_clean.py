"""Wrong labels planted in the user's own clean set are found by the trusted-set audit.

A real L2RW run (the paper's rule) on scikit-learn's 8x8 digits: the user gives 1337 training
images with 40% of their labels flipped and a clean set of 100 images (10 per class) of which 5
carry a wrong label. Labels given are taken as given, so the library corrupts neither set; the
5 wrong clean labels steer the meta-step as the 95 right ones do. Three seeds train at once
(vmapped), and each member's model is audited: its trusted-set ranking (loss on the given label,
highest first) must put at least 4 of the 5 planted rows among its first 10 (chance: 0.5 of
them). Measured (CPU, deterministic): the planted rows rank 1-5, {1, 2, 3, 5, 7} and
{1, 2, 3, 5, 6} for seeds 0, 1, 2; training and the three audits take about 10 s on 2 cores.
"""

import csv
import os

import numpy as np
import pytest

import l2rw_jax
from l2rw_jax import audit
from l2rw_jax import config
from l2rw_jax import datasets
from l2rw_jax.audit import common
from l2rw_jax.audit import trusted_set

NUM_SEEDS, NUM_PLANTED, TOP = 3, 5, 10


def user_data(rng):
    """(training x, y; test x, y; clean x, y; the planted clean rows), all from the digits'
    training split but the test set: a clean set of 10 per class, 5 of its labels wrong, and
    the other training images with 40% of their labels flipped to another class."""
    a = datasets.digits_arrays()
    clean = np.concatenate(
        [rng.permutation(np.flatnonzero(a.y_train == k))[:10] for k in range(10)]
    )
    train = np.setdiff1d(np.arange(len(a.y_train)), clean)
    planted = np.sort(rng.choice(len(clean), NUM_PLANTED, replace=False))
    y_clean = a.y_train[clean].copy()
    y_clean[planted] = (y_clean[planted] + rng.integers(1, 10, NUM_PLANTED)) % 10
    y_train = a.y_train[train].copy()
    flip = rng.random(len(train)) < 0.4
    y_train[flip] = (y_train[flip] + rng.integers(1, 10, int(flip.sum()))) % 10
    assert np.array_equal(np.flatnonzero(y_clean != a.y_train[clean]), planted)
    return (
        (a.x_train[train], y_train),
        (a.x_test, a.y_test),
        (a.x_train[clean], y_clean),
        planted,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One L2RW run of 3 vmapped seeds on the user's arrays: (workdir, planted clean rows)."""
    tmp = tmp_path_factory.mktemp("planted_clean")
    (x_tr, y_tr), (x_te, y_te), (x_cl, y_cl), planted = user_data(np.random.default_rng(0))
    name = l2rw_jax.save_arrays(
        str(tmp / "mine.npz"), x_tr, y_tr, x_te, y_te, x_clean=x_cl, y_clean=y_cl
    )
    c = config.default_config()
    c.data.update(
        dataset=name,
        clean_per_class=0,  # the clean set is the user's
        batch_size=50,
        clean_batch_size=100,
        eval_batch_size=500,
    )
    c.model.name, c.model.options = "mlp", {"hidden": (32,)}
    c.method.name = "l2rw"
    c.method.l2rw.update(config.PAPER_L2RW)
    c.num_steps, c.num_seeds = 300, NUM_SEEDS
    c.loop.update(log_every=300, eval_every=300, checkpoint_every=300, progress_bar=False)
    workdir = str(tmp / "run")
    results = l2rw_jax.train_and_evaluate(c, workdir)
    # The model learnt the digits (not a ranking of a chance-level model): measured 0.91-0.92.
    assert min(results["final_test_accuracy"]["per_seed"]) > 0.85
    return workdir, planted


def trusted_set_csv(workdir, member, path):
    """The member's `trusted_set.csv` (what the audit's section writes), as rows."""
    run = audit.load_run(workdir, member)
    model = run["apply_fn"], run["feature_fn"], run["params"], run["model_state"]

    def features_and_logits(x):
        h = common.compute_features(model[1], model[2], model[3], x)
        return h, common.predict_logits(model[0], model[2], model[3], x)

    clean, train = run["clean"], run["train"]
    h_tr, z_tr = features_and_logits(train["image"])
    h_cl, z_cl = features_and_logits(clean["image"])
    res = trusted_set.trusted_set_influence(
        h_cl, z_cl, clean["label"], trusted_set.array_batches(h_tr, z_tr, train["label"], 2048)
    )
    trusted_set.write_trusted_set_csv(path, res, clean["label"], clean["source_index"])
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("member", range(NUM_SEEDS))
def test_planted_clean_labels_rank_in_the_top_ten(trained, member, tmp_path):
    workdir, planted = trained
    rows = trusted_set_csv(workdir, member, os.path.join(tmp_path, "trusted_set.csv"))
    assert len(rows) == 100
    # The clean set given is the user's, in its order: the CSV's source_index is its row there.
    assert sorted(int(r["source_index"]) for r in rows) == list(range(100))
    rank = {int(r["source_index"]): int(r["rank"]) for r in rows}
    ranks = sorted(rank[int(p)] for p in planted)
    assert sum(r <= TOP for r in ranks) >= NUM_PLANTED - 1, f"planted ranks {ranks}"
