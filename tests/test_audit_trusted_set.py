"""The trusted set under audit: the leave-one-out closed form against brute force (numpy and the
project's own meta-step), a flipped clean label found, batching, the CSV, the section."""

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2rw_jax import reweight
from l2rw_jax.audit import common as audit_common
from l2rw_jax.audit import report
from l2rw_jax.audit import sections
from l2rw_jax.audit import trusted_set
from l2rw_jax.audit import trusted_set_section


def random_case(seed, n=13, m=6, d=4, c=3):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, d)),
        rng.normal(size=(n, c)) * 2,
        rng.integers(0, c, n),
        rng.normal(size=(m, d)),
        rng.normal(size=(m, c)) * 2,
        rng.integers(0, c, m),
    )


def flat_gradients(h_NxD, logits_NxC, y_N):
    """Per-example output-layer gradients by hand: [(softmax − onehot) ⊗ h, softmax − onehot]."""
    p = np.exp(logits_NxC - logits_NxC.max(1, keepdims=True))
    r = p / p.sum(1, keepdims=True)
    r[np.arange(len(y_N)), y_N] -= 1
    return np.concatenate([(h_NxD[:, :, None] * r[:, None, :]).reshape(len(y_N), -1), r], axis=1)


def weights_from_scratch(g_train_NxP, g_clean_KxP):
    """The paper's rule recomputed from the clean gradients given: max(0, mean_j g_i·g_j),
    normalised (0 when nothing is positive)."""
    a = np.maximum(g_train_NxP @ g_clean_KxP.mean(0), 0.0)
    return a / a.sum() if a.sum() > 0 else a


def brute_force(h, z, y, hc, zc, yc):
    """(w, [w without clean example j for every j]) from explicit gradients."""
    gt, gc = flat_gradients(h, z, y), flat_gradients(hc, zc, yc)
    w = weights_from_scratch(gt, gc)
    return w, [weights_from_scratch(gt, np.delete(gc, j, axis=0)) for j in range(len(yc))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_one_out_equals_recomputing_the_weights_without_each_clean_example(seed):
    h, z, y, hc, zc, yc = random_case(seed)
    w, w_loo = brute_force(h, z, y, hc, zc, yc)
    assert 0 < (w > 0).sum() < len(w)  # the clip bites: some weights are 0, some are not
    disputed = z.argmax(1) != y
    res = trusted_set.trusted_set_influence(hc, zc, yc, trusted_set.array_batches(h, z, y, 5))
    for j, wj in enumerate(w_loo):
        assert res.influence_M[j] == pytest.approx(np.abs(wj - w).sum(), rel=1e-12, abs=1e-15)
        want = (w - wj)[disputed].sum()
        assert res.endorsement_M[j] == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert res.disputed_weight == pytest.approx(w[disputed].sum(), rel=1e-12)
    assert (res.n_train, res.n_disputed) == (len(y), int(disputed.sum()))
    assert res.influence_M.max() > 1e-3  # not a vacuous equality of zeros


def test_the_weights_are_those_of_the_projects_meta_step():
    # l2rw_jax.reweight.meta_weights with an SGD look-ahead on the output layer (z = h W + b),
    # the whole training set as its batch: the clean set with and without each example.
    h, z0, y, hc, _, yc = random_case(3)
    rng = np.random.default_rng(3)
    params = {"W": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3)}
    logits = lambda p, x: x @ p["W"] + p["b"][None, :]
    loss_fn = lambda p, b: optax.softmax_cross_entropy_with_integer_labels(
        logits(p, b["h"]), b["y"]
    )
    tx = optax.sgd(0.1)
    batch = {"h": jnp.asarray(h, jnp.float32), "y": jnp.asarray(y)}
    weights = jax.jit(
        lambda v: reweight.meta_weights(loss_fn, params, tx.init(params), tx, batch, v).w
    )
    val = lambda keep: {"h": jnp.asarray(hc[keep], jnp.float32), "y": jnp.asarray(yc[keep])}
    w = np.asarray(weights(val(np.arange(len(yc)))), np.float64)
    z = np.asarray(logits(params, batch["h"]), np.float64)
    zc = np.asarray(logits(params, jnp.asarray(hc, jnp.float32)), np.float64)
    res = trusted_set.trusted_set_influence(hc, zc, yc, trusted_set.array_batches(h, z, y, 4))
    disputed = z.argmax(1) != y
    assert res.disputed_weight == pytest.approx(w[disputed].sum(), abs=1e-5)
    for j in range(len(yc)):
        wj = np.asarray(weights(val(np.delete(np.arange(len(yc)), j))), np.float64)
        assert res.influence_M[j] == pytest.approx(np.abs(wj - w).sum(), abs=2e-5)
        assert res.endorsement_M[j] == pytest.approx((w - wj)[disputed].sum(), abs=2e-5)


def flipped_case(seed=0, c=3, d=6):
    """A model that fits its class means (logits = h μᵀ), 25% of training labels flipped k ->
    k+1, a correct clean set of 5 per class but for clean row 7, flipped the same way."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(c, d)) * 1.5

    def make(n_per):
        y = np.repeat(np.arange(c), n_per)
        return mu[y] + 0.5 * rng.normal(size=(len(y), d)), y

    h, y_true = make(30)
    y = np.where(rng.random(len(y_true)) < 0.25, (y_true + 1) % c, y_true)
    hc, yc = make(5)
    yc[7] = (yc[7] + 1) % c
    return h, h @ mu.T, y, hc, hc @ mu.T, yc


def test_a_flipped_clean_label_ranks_first_and_is_the_only_one_flagged():
    h, z, y, hc, zc, yc = flipped_case()
    res = trusted_set.trusted_set_influence(hc, zc, yc, trusted_set.array_batches(h, z, y, 16))
    assert res.order_M[0] == 7 and res.rank_M[7] == 1
    assert np.flatnonzero(res.flagged_M).tolist() == [7]
    assert res.predicted_M[7] == (yc[7] - 1) % 3 and res.confidence_M[7] > 0.9
    assert res.endorsement_M[7] > 0 and res.influence_M.argmax() == 7
    # The correct clean labels: the flag asks for a dispute, so no threshold lets them in.
    loose = trusted_set.trusted_set_influence(
        hc, zc, yc, trusted_set.array_batches(h, z, y, 16), flag_probability=1.0
    )
    assert np.flatnonzero(loose.flagged_M).tolist() == [7]
    # Below the label's probability exp(−loss) the threshold lets nothing through.
    p7 = np.exp(-res.loss_M[7])
    strict = trusted_set.trusted_set_influence(
        hc, zc, yc, trusted_set.array_batches(h, z, y, 16), flag_probability=p7 / 2
    )
    assert not strict.flagged_M.any()
    # No disputed training label (the model agrees with every one): nothing to endorse, no flag.
    agree = z.argmax(1)
    clean_train = trusted_set.trusted_set_influence(
        hc, zc, yc, trusted_set.array_batches(h, z, agree, 16)
    )
    assert clean_train.n_disputed == 0 and not clean_train.endorsement_M.any()
    assert not clean_train.flagged_M.any() and clean_train.order_M[0] == 7


def test_batching_gives_the_unbatched_result():
    h, z, y, hc, zc, yc = flipped_case(1)
    whole = trusted_set.trusted_set_influence(hc, zc, yc, lambda: [(h, z, y)])
    for b in (1, 7, 89, 90, 1000):
        res = trusted_set.trusted_set_influence(hc, zc, yc, trusted_set.array_batches(h, z, y, b))
        for name, a, want in zip(res._fields, res, whole):
            np.testing.assert_allclose(a, want, rtol=1e-12, atol=1e-16, err_msg=name)


def test_shapes_and_the_csv(tmp_path):
    h, z, y, hc, zc, yc = flipped_case()
    res = trusted_set.trusted_set_influence(hc, zc, yc, trusted_set.array_batches(h, z, y, 32))
    m = len(yc)
    for a in res[:8]:
        assert np.shape(a) == (m,)
    assert sorted(res.order_M.tolist()) == list(range(m))
    assert np.all(res.loss_M[res.order_M][:-1] >= res.loss_M[res.order_M][1:])
    assert np.all((res.influence_M >= 0) & (res.influence_M <= 2 + 1e-12))
    source = 1000 + 3 * np.arange(m)
    path = trusted_set.write_trusted_set_csv(
        str(tmp_path / "trusted_set.csv"), res, yc, source, ["a", "b", "c"]
    )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*trusted_set.CSV_COLUMNS, *trusted_set.CSV_CLASS_COLUMNS]
    assert len(rows) == m and [int(r["rank"]) for r in rows] == list(range(1, m + 1))
    assert [int(r["clean_row"]) for r in rows] == res.order_M.tolist()
    assert [int(r["source_index"]) for r in rows] == source[res.order_M].tolist()
    top = rows[0]
    assert (top["clean_row"], top["given_label"], top["flagged"]) == ("7", str(yc[7]), "1")
    assert (
        top["given_class"] == "abc"[yc[7]] and top["predicted_class"] == "abc"[res.predicted_M[7]]
    )
    assert float(top["influence"]) == res.influence_M[7]  # written exactly (repr of the float)
    assert not [p for p in tmp_path.iterdir() if p.name != "trusted_set.csv"]  # no temporary


def test_bad_input_is_refused():
    h, z, y, hc, zc, yc = random_case(0)
    batches = trusted_set.array_batches(h, z, y, 4)
    with pytest.raises(ValueError, match="M >= 2"):
        trusted_set.trusted_set_influence(hc[:1], zc[:1], yc[:1], batches)
    with pytest.raises(ValueError, match="flag_probability must be in"):
        trusted_set.trusted_set_influence(hc, zc, yc, batches, flag_probability=1.5)
    with pytest.raises(ValueError, match=r"labels_clean must lie in \[0, 3\)"):
        trusted_set.trusted_set_influence(hc, zc, yc + 3, batches)
    with pytest.raises(ValueError, match="training batch at row 0 must be h"):
        trusted_set.trusted_set_influence(hc, zc, yc, lambda: [(h[:, :2], z, y)])
    passes = iter([[(h, z, y)], [(h[:5], z[:5], y[:5])]])
    with pytest.raises(ValueError, match="13 rows on the first pass and 5 on the second"):
        trusted_set.trusted_set_influence(hc, zc, yc, lambda: next(passes))


# ------------------------------------------------------------------ the section
def linear_inputs(case, clean_source_index=None, class_names=None):
    """`sections.Inputs` for a model whose penultimate features are the flattened image and
    whose logits are features @ mu_T: the section must see exactly `case`'s h and logits."""
    h, z, y, hc, zc, yc = case
    mu_T = np.linalg.lstsq(h, z, rcond=None)[0].astype(np.float32)  # z = h @ mu_T exactly

    def feature_fn(params, model_state, x, conv_delta=None):
        f = x.reshape(x.shape[0], -1)
        return f @ params, {"penultimate": f}

    apply_fn = lambda params, model_state, x, train: (feature_fn(params, model_state, x)[0], {})
    img = lambda a: a.astype(np.float32).reshape(len(a), 2, 3, 1)
    model = audit_common.Model(apply_fn, jnp.asarray(mu_T), {}, feature_fn)
    logits = lambda a: audit_common.predict_logits(apply_fn, model.params, {}, img(a))
    return sections.Inputs(
        model=model,
        x_test=img(hc),
        y_test=yc,
        logits_test=logits(hc),
        x_train=img(h),
        y_train=y,
        logits_train=logits(h),
        true_train=None,
        is_noisy_train=None,
        source_index=np.arange(len(y)),
        example_weights=None,
        attributes={},
        num_classes=3,
        mean_C=np.zeros(1, np.float32),
        std_C=np.ones(1, np.float32),
        class_names=class_names or ["0", "1", "2"],
        names_given=class_names is not None,
        x_clean=img(hc),
        y_clean=yc,
        clean_source_index=clean_source_index,
    ), mu_T


def test_the_section_reports_the_library_numbers_and_writes_the_csv(tmp_path, monkeypatch):
    from l2rw_jax import audit

    case = flipped_case()
    h, _, y, hc, _, yc = case
    source = 500 + np.arange(len(yc))
    inp, mu_T = linear_inputs(case, source, ["cat", "dog", "<b>emu</b>"])
    config = audit.default_config()
    config.batch_size = 8
    config.num_suspects = 4
    monkeypatch.setattr(trusted_set_section, "CHUNK_ROWS", 16)  # 90 rows: 6 chunks, 2 passes
    s = trusted_set_section.trusted_set_section(inp, config, np.random.default_rng(0))
    h32, hc32 = h.astype(np.float32), hc.astype(np.float32)
    want = trusted_set.trusted_set_influence(
        hc32, hc32 @ mu_T, yc, trusted_set.array_batches(h32, h32 @ mu_T, y, 90)
    )
    r = s.results
    assert (s.name, r["n_clean"], r["n_train"], r["n_flagged"]) == ("trusted_set", 15, 90, 1)
    assert [t["clean_row"] for t in r["top_suspects"]] == want.order_M[:4].tolist()
    top = r["top_suspects"][0]
    assert (top["clean_row"], top["source_index"], top["flagged"], top["rank"]) == (7, 507, True, 1)
    assert top["influence"] == pytest.approx(want.influence_M[7], rel=1e-5)
    assert top["endorsement"] == pytest.approx(want.endorsement_M[7], rel=1e-5)
    assert top["loss"] == pytest.approx(want.loss_M[7], rel=1e-5)
    assert r["disputed_weight"] == pytest.approx(want.disputed_weight, rel=1e-5)
    meta = {
        "title": "t",
        "class_names": inp.class_names,
        "seconds": {},
        "n_test": 15,
        "n_train": 90,
    }
    json_path, html_path = report.write_report(str(tmp_path), {"meta": meta, "trusted_set": r}, [s])
    with open(json_path) as f:
        assert json.load(f)["trusted_set"]["csv"] == {
            "file": "trusted_set.csv",
            "rows": 15,
            "columns": list(trusted_set.CSV_COLUMNS),
        }
    with open(tmp_path / "trusted_set.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 and sorted(int(t["source_index"]) for t in rows) == source.tolist()
    assert (rows[0]["source_index"], rows[0]["given_class"]) == ("507", inp.class_names[yc[7]])
    page = open(html_path).read()
    assert "<h2 id='trusted_set'>1. The trusted set under audit</h2>" in page
    assert "1 of 15" in page and "<td>507</td>" in page and "data:image/png;base64," in page
    assert "<b>emu</b>" not in page  # class names escaped


def test_the_section_without_a_clean_set():
    from l2rw_jax import audit

    inp, _ = linear_inputs(flipped_case())
    config = audit.default_config()
    for clean in (None, 1):
        x = None if clean is None else inp.x_clean[:1]
        y = None if clean is None else inp.y_clean[:1]
        s = trusted_set_section.trusted_set_section(
            inp._replace(x_clean=x, y_clean=y), config, np.random.default_rng(0)
        )
        assert s.results == {"n_clean": clean} and not s.files and not s.figures
        assert "needs at least two clean examples" in s.notes[0]
        page = report.render_html(
            {"title": "t", "class_names": [], "seconds": {}, "n_test": 1, "n_train": 1}, [s]
        )
        assert "needs at least two clean examples" in page
