"""experiments.clean_size: the config of each size and the two weight measures."""

import numpy as np
import pytest
from scipy import stats

from experiments import clean_size
from experiments.configs import protocol as protocol_config


def test_size_config_sets_the_clean_set_and_caps_the_clean_batch():
    own = protocol_config.setting_config("digits_uniform40", "l2rw").data.clean_batch_size
    assert own == 50
    cfg = clean_size.size_config("digits_uniform40", "l2rw", 3)
    assert (cfg.data.clean_per_class, cfg.data.clean_batch_size) == (3, 30)  # 3 x 10 classes
    cfg = clean_size.size_config("digits_uniform40", "l2rw", 30)
    assert (cfg.data.clean_per_class, cfg.data.clean_batch_size) == (30, own)


def test_size_config_refuses_an_empty_clean_set():
    with pytest.raises(ValueError, match="per_class=0"):
        clean_size.size_config("digits_uniform40", "l2rw", 0)


def _record(source_index, mean_weight, count, is_noisy):
    return {
        "source_index": np.asarray(source_index),
        "mean_weight": np.asarray(mean_weight, dtype=np.float32),
        "count": np.asarray(count),
        "is_noisy": np.asarray(is_noisy, dtype=bool),
    }


def test_weight_agreement_matches_rows_by_source_index():
    rng = np.random.default_rng(0)
    src = np.arange(100, 160)
    w = rng.random(60)
    ref = _record(src, w, np.ones(60), np.zeros(60))
    # The same rows in another order, two rows the reference lacks, one never drawn.
    perm = rng.permutation(60)
    other_w = np.concatenate([w[perm] + 0.01 * rng.random(60), [5.0, 6.0]])
    count = np.ones(62)
    count[3] = 0
    run = _record(np.concatenate([src[perm], [999, 998]]), other_w, count, np.zeros(62))
    keep = np.arange(60) != 3
    expected = stats.spearmanr(other_w[:60][keep], w[perm][keep])[0]
    assert clean_size.weight_agreement(run, ref) == pytest.approx(expected, abs=1e-12)
    assert clean_size.weight_agreement(ref, ref) == pytest.approx(1.0)


def test_weight_auroc_counts_only_drawn_rows():
    # Noisy rows get weight 0, clean rows 1: perfect separation, except an undrawn noisy row
    # with weight 1 that must be ignored.
    rec = _record(np.arange(5), [0.0, 0.0, 1.0, 1.0, 1.0], [2, 2, 2, 2, 0], [1, 1, 0, 0, 1])
    assert clean_size.weight_auroc(rec) == 1.0
    rec["count"][4] = 1  # now drawn: 1 of the 2 x 3 ... pairs misordered
    # noisy scores -w: [0, 0, -1]; clean: [-1, -1]; pairs ordered right: 2 x 2 + 0.5 x 2 = 5 of 6
    assert clean_size.weight_auroc(rec) == pytest.approx(5 / 6)
