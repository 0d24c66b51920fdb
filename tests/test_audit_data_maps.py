"""Data-map coordinates equal a hand computation on a tiny saved weight history."""

from typing import NamedTuple

import numpy as np
import pytest

from l2rw_jax.audit import data_maps

# 4 steps, batches of 2, 5 examples; example 4 is never drawn.
ROWS = np.array([[0, 1], [2, 0], [1, 3], [0, 2]])
WEIGHTS = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.25, 0.75]])


def saved_history(tmp_path):
    path = tmp_path / "weight_history.npz"
    np.savez(path, weights=data_maps.weight_history_from_batches(ROWS, WEIGHTS, 5))
    with np.load(path) as z:
        return z["weights"]


def test_weight_history_marks_the_steps_that_did_not_draw(tmp_path):
    W = saved_history(tmp_path)
    nan = np.nan
    np.testing.assert_array_equal(
        W,
        [
            [1.0, 0.0, nan, nan, nan],
            [0.0, nan, 1.0, nan, nan],
            [nan, 0.0, nan, 1.0, nan],
            [0.25, nan, 0.75, nan, nan],
        ],
    )


def test_weight_map_by_hand(tmp_path):
    out = data_maps.weight_map(saved_history(tmp_path))
    # ex 0: weights 1, 0, 0.25 at the 3 steps that drew it (not 4: step 2 did not draw it):
    #   mean 5/12; deviations 7/12, -5/12, -2/12 -> variance (49 + 25 + 4) / 144 / 3 = 26/144.
    # ex 1: 0, 0. ex 2: 1, 0.75. ex 3: 1. ex 4: never drawn -> NaN (unknown), 0 draws.
    np.testing.assert_allclose(out["mean_weight"], [5 / 12, 0.0, 0.875, 1.0, np.nan], rtol=1e-15)
    np.testing.assert_allclose(
        out["weight_std"], [np.sqrt(26) / 12, 0.0, 0.125, 0.0, np.nan], rtol=1e-15
    )
    np.testing.assert_array_equal(out["nonzero_share"], [2 / 3, 0.0, 1.0, 1.0, np.nan])
    assert out["draws"].tolist() == [3, 2, 2, 1, 0]


def test_mean_weight_and_draws_are_example_weights_npz_columns():
    # The run's accumulators (members.example_weights): weight_sum and count per example.
    w_sum, count = np.zeros(5), np.zeros(5, int)
    np.add.at(w_sum, ROWS, WEIGHTS)
    np.add.at(count, ROWS, 1)
    out = data_maps.weight_map(data_maps.weight_history_from_batches(ROWS, WEIGHTS, 5))
    seen = count > 0
    np.testing.assert_allclose(out["mean_weight"][seen], (w_sum / np.maximum(count, 1))[seen])
    np.testing.assert_array_equal(out["draws"], count)


def test_a_dense_history_with_its_mask_equals_the_nan_one(tmp_path):
    W = saved_history(tmp_path)
    drawn = ~np.isnan(W)
    dense = np.where(drawn, W, 0.0)  # 0 where not drawn: wrong without the mask
    with_mask = data_maps.weight_map(dense, drawn)
    for key, value in data_maps.weight_map(W).items():
        np.testing.assert_array_equal(with_mask[key], value)
    assert data_maps.weight_map(dense)["mean_weight"][0] == 1.25 / 4  # what the mask prevents


def test_twice_in_one_step_sums():
    W = data_maps.weight_history_from_batches(np.array([[1, 1]]), np.array([[0.25, 0.5]]), 2)
    np.testing.assert_array_equal(W, [[np.nan, 0.75]])


def test_confidence_map_and_data_map_by_hand(tmp_path):
    labels = np.array([0, 1, 0, 1, 0])
    # p(given label) per evaluation: ex 0: 0.75, 0.25; ex 1: 0.5, 0.5; ex 2: 1, 0.5;
    # ex 3: 0.25, 0.25; ex 4: 0.5, 1.
    p0 = np.array([0.75, 0.5, 1.0, 0.25, 0.5])
    p1 = np.array([0.25, 0.5, 0.5, 0.25, 1.0])

    def probs(pg):  # two classes: the given label gets pg
        out = np.empty((5, 2))
        out[np.arange(5), labels] = pg
        out[np.arange(5), 1 - labels] = 1 - pg
        return out

    history = np.stack([probs(p0), probs(p1)])
    out = data_maps.data_map(saved_history(tmp_path), history, labels)
    np.testing.assert_array_equal(out["confidence"], [0.5, 0.5, 0.75, 0.25, 0.75])
    np.testing.assert_array_equal(out["variability"], [0.25, 0.0, 0.25, 0.0, 0.25])
    # argmax on the given label: ex 0 at e=0 only; ex 1: a 0.5 tie goes to class 0 (not its
    # label 1); ex 2: both (at e=1 a tie, class 0 = its label); ex 3: never; ex 4: both.
    np.testing.assert_array_equal(out["correctness"], [0.5, 0.0, 1.0, 0.0, 1.0])
    assert out["draws"].tolist() == [3, 2, 2, 1, 0]
    assert set(data_maps.data_map(saved_history(tmp_path))) == {
        "mean_weight",
        "weight_std",
        "nonzero_share",
        "draws",
    }


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: data_maps.weight_history_from_batches(ROWS, WEIGHTS[:, :1], 5), "one shape"),
        (lambda: data_maps.weight_history_from_batches(ROWS, WEIGHTS, 3), r"\[0, 3\)"),
        (lambda: data_maps.weight_history_from_batches(ROWS * 1.0, WEIGHTS, 5), "integers"),
        (lambda: data_maps.weight_history_from_batches(ROWS, WEIGHTS * np.nan, 5), "finite"),
        (lambda: data_maps.weight_history_from_batches(ROWS, WEIGHTS, 0), ">= 1"),
        (lambda: data_maps.weight_map(np.zeros(3)), "T x N"),
        (lambda: data_maps.weight_map(np.full((1, 2), np.inf)), "infinite"),
        (lambda: data_maps.weight_map(np.zeros((1, 2)), np.ones((1, 2))), "bool"),
        (lambda: data_maps.weight_map(np.full((1, 2), np.nan), np.ones((1, 2), bool)), "NaN"),
        (lambda: data_maps.confidence_map(np.zeros((2, 3)), np.zeros(2, int)), "E x N x C"),
        (lambda: data_maps.confidence_map(np.zeros((1, 2, 2)), np.array([0, 2])), r"\[0, 2\)"),
        (lambda: data_maps.data_map(np.zeros((1, 2)), np.zeros((1, 2, 2))), "together"),
        (
            lambda: data_maps.data_map(np.zeros((1, 2)), np.zeros((1, 3, 2)), np.zeros(3, int)),
            "E x 2 x C",
        ),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ no history: running sums
def _accumulate(rows_TxB, weights_TxB, n):
    """The training loop's own accumulators (`build.make_loop_step`, jitted) over the given
    batches: a stand-in train step hands the loop step t's weights."""
    import jax
    import jax.numpy as jnp

    from l2rw_jax import build

    W = jnp.asarray(weights_TxB, jnp.float32)

    def train_step(t, batch, val_batch):
        w_B = W[t]
        return t + 1, {"w_B": w_B, "all_zero": jnp.all(w_B == 0).astype(jnp.int32)}

    step = jax.jit(build.make_loop_step(train_step, accumulate=True))
    acc = {
        "w_sum": np.zeros(n, np.float32),
        "w_sq_sum": np.zeros(n, np.float32),
        "nonzero": np.zeros(n, np.int32),
        "count": np.zeros(n, np.int32),
        "all_zero_steps": np.zeros((), np.int32),
    }
    t = jnp.zeros((), jnp.int32)
    for rows_B in rows_TxB:
        t, acc, _ = step(t, acc, {}, {"index": jnp.asarray(rows_B, jnp.int32)}, None)
    return {k: np.asarray(v) for k, v in acc.items()}


def test_running_sums_of_the_loop_equal_the_history_weight_map():
    from l2rw_jax import members

    # The hand case, then 60 L2RW-like steps (batches of 8 drawn without replacement from 30
    # examples, about a third of the weights clipped to 0, each step's weights summing to 1).
    rng = np.random.default_rng(0)
    rows = np.stack([rng.choice(30, 8, replace=False) for _ in range(60)])
    raw = np.maximum(rng.normal(0.5, 1.0, rows.shape), 0.0)
    weights = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-12)
    for rows_TxB, weights_TxB, n in ((ROWS, WEIGHTS, 5), (rows, weights, 30)):
        acc = _accumulate(rows_TxB, weights_TxB, n)
        want = data_maps.weight_map(data_maps.weight_history_from_batches(rows_TxB, weights_TxB, n))
        got = members.running_weight_stats(
            acc["w_sum"], acc["w_sq_sum"], acc["nonzero"], acc["count"]
        )
        np.testing.assert_array_equal(acc["count"], want["draws"])
        np.testing.assert_array_equal(np.isnan(got["mean_weight"]), want["draws"] == 0)
        for key in ("mean_weight", "weight_std", "nonzero_share"):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=2e-6, err_msg=key)
    # The hand case's numbers (test_weight_map_by_hand), from the sums alone.
    acc = _accumulate(ROWS, WEIGHTS, 5)
    got = members.running_weight_stats(acc["w_sum"], acc["w_sq_sum"], acc["nonzero"], acc["count"])
    np.testing.assert_allclose(
        got["weight_std"][:4], [np.sqrt(26) / 12, 0.0, 0.125, 0.0], atol=1e-7
    )
    np.testing.assert_array_equal(got["nonzero_share"], [2 / 3, 0.0, 1.0, 1.0, np.nan])


def test_weight_map_from_a_record_and_from_an_old_one():
    acc = _accumulate(ROWS, WEIGHTS, 5)
    record = {
        "index": np.arange(5),
        "weight_sum": acc["w_sum"],
        "weight_sq_sum": acc["w_sq_sum"],
        "nonzero_count": acc["nonzero"],
        "count": acc["count"],
    }
    got = data_maps.weight_map_from_record(record)
    want = data_maps.weight_map(data_maps.weight_history_from_batches(ROWS, WEIGHTS, 5))
    assert got["draws"].tolist() == want["draws"].tolist() == [3, 2, 2, 1, 0]
    np.testing.assert_allclose(got["weight_std"], want["weight_std"], atol=1e-7)
    # A record written before the squares and non-zero counts were kept: no map, no error.
    old = {k: v for k, v in record.items() if k not in ("weight_sq_sum", "nonzero_count")}
    assert data_maps.weight_map_from_record(old) is None
    with pytest.raises(ValueError, match=r"nonzero <= count"):
        data_maps.weight_map_from_record(dict(record, nonzero_count=acc["nonzero"] + 5))
    with pytest.raises(ValueError, match=r"lacks \['weight_sum'\]"):
        data_maps.weight_map_from_record({k: v for k, v in record.items() if k != "weight_sum"})


# ---------------------------------------------------------- the trajectory: per-bin sums
class _Step(NamedTuple):
    step: object


def _accumulate_binned(rows_TxB, weights_TxB, n, bins):
    """`_accumulate` with the loop's trajectory sums (B x N per bin), the bins over the T
    given steps; the stand-in state carries the step as TrainState does."""
    import jax
    import jax.numpy as jnp

    from l2rw_jax import build

    W = jnp.asarray(weights_TxB, jnp.float32)

    def train_step(state, batch, val_batch):
        w_B = W[state.step]
        return _Step(state.step + 1), {"w_B": w_B, "all_zero": jnp.all(w_B == 0).astype(jnp.int32)}

    step = jax.jit(build.make_loop_step(train_step, True, history_steps=len(rows_TxB)))
    acc = {
        "w_sum": np.zeros(n, np.float32),
        "w_sq_sum": np.zeros(n, np.float32),
        "nonzero": np.zeros(n, np.int32),
        "count": np.zeros(n, np.int32),
        "w_bin_sum": np.zeros((bins, n), np.float32),
        "bin_count": np.zeros((bins, n), np.int32),
        "all_zero_steps": np.zeros((), np.int32),
    }
    state = _Step(jnp.zeros((), jnp.int32))
    for rows_B in rows_TxB:
        state, acc, _ = step(state, acc, {}, {"index": jnp.asarray(rows_B, jnp.int32)}, None)
    return {k: np.asarray(v) for k, v in acc.items()}


def _trajectory_record(acc, steps):
    from l2rw_jax import members

    return {
        "index": np.arange(acc["count"].size),
        **members.weight_history_columns(acc["w_bin_sum"], acc["bin_count"], steps),
    }


def test_binned_trajectory_of_the_loop_by_hand():
    # 4 steps in 2 bins (steps 0-1, 2-3). Bin 0: ex 0 weights 1 (step 0) and 0 (step 1) -> 0.5;
    # ex 1: 0; ex 2: 1; ex 3, 4 not drawn. Bin 1: ex 0: 0.25; ex 1: 0; ex 2: 0.75; ex 3: 1.
    nan = np.nan
    acc = _accumulate_binned(ROWS, WEIGHTS, 5, bins=2)
    got = data_maps.weight_trajectory_from_record(_trajectory_record(acc, 4))
    np.testing.assert_array_equal(got["edges"], [0, 2, 4])
    np.testing.assert_array_equal(got["count"], [[2, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(
        got["mean"], [[0.5, 0.0, 1.0, nan, nan], [0.25, 0.0, 0.75, 1.0, nan]]
    )
    # 3 bins over 4 steps: edges ceil(b 4 / 3) = 0, 2, 3, 4.
    acc = _accumulate_binned(ROWS, WEIGHTS, 5, bins=3)
    got = data_maps.weight_trajectory_from_record(_trajectory_record(acc, 4))
    np.testing.assert_array_equal(got["edges"], [0, 2, 3, 4])
    np.testing.assert_array_equal(
        got["mean"][1:], [[nan, 0.0, nan, 1.0, nan], [0.25, nan, 0.75, nan, nan]]
    )


def test_binned_trajectory_of_the_loop_equals_the_per_step_weights():
    from l2rw_jax import members

    # 60 L2RW-like steps in 16 bins (of 3 or 4 steps) and in 7; then 5 steps in 16 bins (most
    # of them empty: NaN everywhere, never 0).
    rng = np.random.default_rng(1)
    rows = np.stack([rng.choice(30, 8, replace=False) for _ in range(60)])
    raw = np.maximum(rng.normal(0.5, 1.0, rows.shape), 0.0)
    weights = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-12)
    for T, bins in ((60, 16), (60, 7), (5, 16)):
        acc = _accumulate_binned(rows[:T], weights[:T], 30, bins)
        got = data_maps.weight_trajectory_from_record(_trajectory_record(acc, T))
        edges = members.history_edges(bins, T)
        W = data_maps.weight_history_from_batches(rows[:T], weights[:T], 30)
        want = data_maps.binned_weight_trajectory(W, edges)
        np.testing.assert_array_equal(got["edges"], edges)
        np.testing.assert_array_equal(np.isnan(got["mean"]), np.isnan(want))
        np.testing.assert_allclose(got["mean"], want, rtol=1e-5, atol=1e-7)
        # Brute force, step by step: bin b holds the steps t with t * bins // T == b.
        for b in range(bins):
            in_bin = [t for t in range(T) if t * bins // T == b]
            assert list(range(edges[b], edges[b + 1])) == in_bin
            drawn = np.isfinite(W[in_bin])
            np.testing.assert_array_equal(got["count"][b], drawn.sum(axis=0))
        # The bins add up to the running sums.
        np.testing.assert_array_equal(acc["bin_count"].sum(axis=0), acc["count"])
        np.testing.assert_allclose(acc["w_bin_sum"].sum(axis=0), acc["w_sum"], rtol=1e-5, atol=1e-7)
    assert np.isnan(got["mean"]).all(axis=1).sum() == 11  # 5 steps fill 5 of the 16 bins


def test_trajectory_from_an_old_record_is_absent_and_bad_ones_are_errors():
    acc = _accumulate_binned(ROWS, WEIGHTS, 5, bins=2)
    record = _trajectory_record(acc, 4)
    old = {k: v for k, v in record.items() if not k.startswith("weight_bin")}
    assert data_maps.weight_trajectory_from_record(old) is None
    with pytest.raises(ValueError, match=r"lacks \['weight_bin_count'\]"):
        data_maps.weight_trajectory_from_record(
            {k: v for k, v in record.items() if k != "weight_bin_count"}
        )
    with pytest.raises(ValueError, match="N = len"):
        data_maps.weight_trajectory_from_record(dict(record, index=np.arange(4)))
    with pytest.raises(ValueError, match="non-decreasing"):
        data_maps.weight_trajectory_from_record(dict(record, weight_bin_edges=np.array([0, 3, 2])))
    with pytest.raises(ValueError, match="non-decreasing from 0 to T=4"):
        data_maps.binned_weight_trajectory(np.zeros((4, 5)), [0, 2])
