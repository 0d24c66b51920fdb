"""End to end: run_audit on a model with a planted bias, the report files, a run's workdir."""

import base64
import json
import os
import re
from html.parser import HTMLParser
from unittest import mock

import jax
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from l2rw_jax import audit
from l2rw_jax import model_factory, models
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import mistakes

CUE_CLASS, CUE_RATE = 0, 0.7


def _small_config():
    c = audit.default_config()
    c.batch_size = 64
    c.epsilons = (0.0, 0.1, 0.2)
    c.pgd_steps = 5
    c.robust_examples = 128
    c.min_eps_examples = 64
    c.eps_max = 1.0
    c.bisection_steps = 4
    c.bias_examples_per_class = 30
    c.num_prototypes = 6
    c.num_criticisms = 6
    c.num_mistakes = 4
    c.ig_steps = 16
    c.num_suspects = 16
    return c


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """sklearn digits; in training only, 70% of class 0 carries a bright 2x2 top-left patch.

    10% of the other training labels are flipped (never into or out of class 0, so that class's
    bias numbers see only the cue), with synthetic recorded weights: low for the flipped ones.
    """
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    tr, te = perm[:1300], perm[1300:]
    x_tr, y_true, x_te, y_te = x[tr].copy(), y[tr], x[te], y[te]
    rows0 = np.flatnonzero(y_true == CUE_CLASS)
    cue = np.zeros(len(tr), bool)
    cue[rng.choice(rows0, int(CUE_RATE * len(rows0)), replace=False)] = True
    x_tr[cue, :2, :2, :] = 1.0
    flip = rng.choice(np.flatnonzero(y_true != CUE_CLASS), 110, replace=False)
    y_obs = y_true.copy()
    y_obs[flip] = (
        1 + (y_true[flip] - 1 + rng.integers(1, 9, len(flip))) % 9
    )  # another class in 1..9
    noisy = y_obs != y_true
    assert noisy.sum() == 110 and not np.any(y_obs[flip] == CUE_CLASS)

    module = model_factory.create_model("small_cnn", 10, channels=(16, 32), hidden=32)
    apply_fn, feature_fn = models.make_apply_fn(module), models.make_feature_fn(module)
    params, model_state = models.init_model(module, jax.random.key(0), (1, 8, 8, 1))
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            apply_fn(p, {}, xb, True)[0], yb
        ).mean()
        u, opt = tx.update(jax.grad(loss)(params), opt, params)
        return optax.apply_updates(params, u), opt

    for _ in range(300):
        idx = rng.choice(len(tr), 128)
        params, opt = step(params, opt, x_tr[idx], y_obs[idx])

    weights = {
        "index": np.arange(len(tr)),
        "count": np.full(len(tr), 5),
        "mean_weight": np.where(noisy, rng.uniform(0, 0.1, len(tr)), rng.uniform(0.2, 1, len(tr))),
        # The robust variant's memory (high = suspect): 10 of the flips look clean to it.
        "meta_grad_memory": np.where(noisy, 1.0, -1.0) * rng.uniform(0.5, 1, len(tr)),
    }
    weights["meta_grad_memory"][np.flatnonzero(noisy)[:10]] *= -1
    # The run's mean normalised meta-gradient (high = suspect): 5 of the flips look clean.
    weights["mean_meta_grad"] = np.where(noisy, 1.0, -1.0) * rng.uniform(0.5, 1, len(tr))
    weights["mean_meta_grad"][np.flatnonzero(noisy)[-5:]] *= -1
    # The weight trajectory: the 5 draws in 4 bins (2, 1, 1, 1), the weight falling over them
    # (bin means 1.3, 1.1, 0.8, 0.5 times the mean weight: 5 draws' sum 5 x the mean).
    counts_B = np.array([2, 1, 1, 1])
    weights["weight_bin_count"] = np.repeat(counts_B[:, None], len(tr), axis=1)
    weights["weight_bin_sum"] = (
        np.array([1.3, 1.1, 0.8, 0.5])[:, None] * counts_B[:, None] * weights["mean_weight"]
    )
    weights["weight_bin_edges"] = np.array([0, 75, 150, 225, 300])
    out_dir = str(tmp_path_factory.mktemp("audit"))
    # source_index: the row of sklearn's digits arrays (the user's data) behind each train row.
    train = {
        "image": x_tr,
        "label": y_obs,
        "true_label": y_true,
        "is_noisy": noisy,
        "source_index": tr,
    }
    test = {"image": x_te, "label": y_te}
    # A trusted set: 8 training images per class with their true labels (the noise section's
    # GLC estimate; never the test set).
    clean_rows = np.concatenate([np.flatnonzero(y_true == k)[:8] for k in range(10)])
    clean = {"image": x_tr[clean_rows], "label": y_true[clean_rows]}
    from l2rw_jax.audit import report

    # The Sections as run_audit hands them to the report (to re-render them cheaply).
    with mock.patch.object(report, "write_report", wraps=report.write_report) as written:
        res = audit.run_audit(
            apply_fn,
            feature_fn,
            params,
            model_state,
            test=test,
            train=train,
            clean=clean,
            out_dir=out_dir,
            config=_small_config(),
            example_weights=weights,
            attributes={"corner_patch": cue},
            title="planted-bias check",
        )
    return {
        "res": res,
        "sections": written.call_args.args[2],
        "out_dir": out_dir,
        "apply_fn": apply_fn,
        "feature_fn": feature_fn,
        "params": params,
        "train": train,
        "test": test,
        "clean": clean,
        "weights": weights,
        "cue": cue,
    }


def test_planted_bias_is_surfaced_in_audit_json(planted):
    with open(os.path.join(planted["out_dir"], "audit.json")) as f:
        res = json.load(f)
    per_class = res["biases"]["attributes"]["corner_patch"]
    c0 = per_class[str(CUE_CLASS)]
    # The model holds the cue images most firmly: they are over-represented among the prototypes
    # (hardest to push out of the class) and the cue-less ones among the criticisms.
    assert c0["robust_prototypes"] > c0["class_rate"] > c0["robust_criticisms"]
    top = [
        g
        for g in res["biases"]["largest_over_representation"]
        if g["attribute"] == "corner_patch" and g["method"] == "robust"
    ]
    assert top[0]["class"] == CUE_CLASS and top[0]["prototype_minus_criticism"] > 0
    for k, v in per_class.items():  # nowhere else is there a cue to find
        if int(k) != CUE_CLASS:
            assert v["class_rate"] == 0 and v["robust_prototype_minus_criticism"] == 0
    # The fractions are those of the recorded rows.
    rows = res["biases"]["per_class"][str(CUE_CLASS)]["robust_prototypes"]
    assert c0["robust_prototypes"] == pytest.approx(planted["cue"][rows].mean())


def test_audit_json_numbers_equal_the_library_functions(planted):
    res, train, test = planted["res"], planted["train"], planted["test"]
    logits = audit.common.predict_logits(planted["apply_fn"], planted["params"], {}, test["image"])
    probs = audit.common.softmax(logits)
    assert res["mistakes"]["top_k_accuracy"]["top1"] == mistakes.top_k_accuracy(
        test["label"], logits, 1
    )
    assert res["mistakes"]["calibration"]["ece"] == pytest.approx(
        mistakes.expected_calibration_error(probs, test["label"])["ece"], abs=1e-12
    )
    assert res["robustness"]["fgsm_accuracy"][0] == res["robustness"]["clean_accuracy"]
    # Label issues: the synthetic weights separate the 110 flips, so the L2RW ranking finds them.
    logits_tr = audit.common.predict_logits(
        planted["apply_fn"], planted["params"], {}, train["image"]
    )
    loss = -np.log(label_issues.self_confidence(audit.common.softmax(logits_tr), train["label"]))
    order = label_issues.rank_by_l2rw_weight(planted["weights"]["mean_weight"], loss)
    li = res["label_issues"]
    assert li["n_noisy"] == 110
    assert (
        li["rankings"]["l2rw_weight"]["k=110"]["precision"]
        == 1.0
        == label_issues.precision_at_k(order, train["is_noisy"], 110)
    )
    assert li["rankings"]["l2rw_weight"]["k=100"]["recall"] == pytest.approx(100 / 110)
    # Highest memory / mean meta-gradient first; the suspects follow the mean meta-gradient.
    assert li["rankings"]["l2rw_memory"]["k=110"]["precision"] == pytest.approx(100 / 110)
    assert li["rankings"]["l2rw_meta_grad"]["k=110"]["precision"] == pytest.approx(105 / 110)
    meta_grad_order = label_issues.rank_by_l2rw_weight(-planted["weights"]["mean_meta_grad"], loss)
    assert li["suspects_ranking"] == "l2rw_meta_grad"
    assert [s["train_row"] for s in li["top_suspects"]] == meta_grad_order[:16].tolist()
    for g in res["mistakes"]["gallery"]:
        assert len(g["top3"]) == 3 and len(g["neighbors"]) == 5
        assert g["top3"][0]["class"] != g["label"]


def test_noise_section_equals_the_library_estimates(planted):
    from l2rw_jax.audit import noise_estimate

    with open(os.path.join(planted["out_dir"], "audit.json")) as f:
        nz = json.load(f)["noise"]
    train, clean = planted["train"], planted["clean"]
    logits = lambda x: audit.common.predict_logits(  # the audit's batch size: the same numbers
        planted["apply_fn"], planted["params"], {}, x, batch_size=64
    )
    glc = noise_estimate.glc_transition(
        audit.common.softmax(logits(clean["image"])), clean["label"]
    )
    cl = noise_estimate.confident_transition(
        audit.common.softmax(logits(train["image"])), train["label"]
    )
    # The truth by hand: the 110 flips among 1300 rows, row by true class.
    counts = np.zeros((10, 10))
    np.add.at(counts, (train["true_label"], train["label"]), 1)
    true_T = counts / counts.sum(axis=1, keepdims=True)
    assert np.trace(counts) == 1300 - 110
    np.testing.assert_allclose(nz["true"]["T"], true_T, rtol=1e-12)
    assert nz["true"]["count"] == np.bincount(train["true_label"], minlength=10).tolist()
    est = nz["estimates"]
    assert list(est) == ["glc", "confident_learning"]
    np.testing.assert_allclose(est["glc"]["T"], glc.T_CxC, rtol=1e-12)
    np.testing.assert_allclose(est["confident_learning"]["T"], cl.T_CxC, rtol=1e-12)
    assert (est["glc"]["n"], est["confident_learning"]["n"]) == (80, 1300)
    assert est["glc"]["split"].startswith("clean")
    assert est["confident_learning"]["split"].startswith("training")
    for key, T_hat in (("glc", glc.T_CxC), ("confident_learning", cl.T_CxC)):
        want = noise_estimate.transition_error(T_hat, true_T)
        assert est[key]["error"] == pytest.approx(want, rel=1e-12)
        assert est[key]["error"]["rows_compared"] == 10
    # Class 0 was never flipped: the truth's row 0 is the identity's.
    assert nz["true"]["T"][0] == [1.0] + [0.0] * 9


def test_noise_section_without_the_truth_or_a_clean_set(planted):
    # Truth unknown: no true T and no errors (absent, not 0); no clean set: no GLC estimate.
    from l2rw_jax.audit import noise_section
    from l2rw_jax.audit import report
    from l2rw_jax.audit import run as run_lib

    c = _small_config()
    train = {k: v for k, v in planted["train"].items() if k not in ("true_label", "is_noisy")}
    inputs = run_lib._inputs(
        planted["apply_fn"],
        planted["feature_fn"],
        planted["params"],
        {},
        planted["test"],
        train,
        c,
        None,
        None,
        0.0,
        1.0,
        None,
    )
    assert inputs.x_clean is None and inputs.true_train is None
    s = noise_section.noise_section(inputs, c, np.random.default_rng(0))
    assert "true" not in s.results and list(s.results["estimates"]) == ["confident_learning"]
    assert "error" not in s.results["estimates"]["confident_learning"]
    assert any("true labels are unknown" in n for n in s.notes)
    assert any("No clean (trusted) set" in n for n in s.notes)
    page = report.render_html(report.to_jsonable(planted["res"]["meta"]), [s])
    assert "T̂ − T" not in page and "data:image/png;base64," in page
    # A clean set without class 3: that row of the GLC estimate is unknown (NaN -> null), said
    # in a note, and left out of the error (9 rows compared).
    keep = planted["clean"]["label"] != 3
    clean = {k: v[keep] for k, v in planted["clean"].items()}
    inputs = run_lib._inputs(
        planted["apply_fn"],
        planted["feature_fn"],
        planted["params"],
        {},
        planted["test"],
        planted["train"],
        c,
        None,
        None,
        0.0,
        1.0,
        None,
        clean,
    )
    s = noise_section.noise_section(inputs, c, np.random.default_rng(0))
    assert any("Classes [3] have no clean example" in n for n in s.notes)
    glc = report.to_jsonable(s.results)["estimates"]["glc"]
    assert glc["T"][3] == [None] * 10 and glc["count"][3] == 0 and glc["n"] == 72
    assert glc["error"]["rows_compared"] == 9
    with pytest.raises(ValueError, match=r"clean\['label'\] must lie in \[0, 10\)"):
        run_lib._inputs(
            planted["apply_fn"],
            planted["feature_fn"],
            planted["params"],
            {},
            planted["test"],
            train,
            c,
            None,
            None,
            0.0,
            1.0,
            None,
            dict(planted["clean"], label=planted["clean"]["label"] + 10),
        )


def test_weight_data_map_from_the_recorded_running_sums(planted):
    # The planted record has no running sums of squares: no data map, a note. With them (mean m,
    # std sd over 5 draws, k of them non-zero), the map's medians are the hand values.
    from l2rw_jax.audit import label_issues_section
    from l2rw_jax.audit import report
    from l2rw_jax.audit import run as run_lib

    li = planted["res"]["label_issues"]
    assert "data_map" not in li
    assert any("no data map" in n for s in planted["sections"] for n in s.notes)
    w, noisy = planted["weights"], planted["train"]["is_noisy"]
    n = len(noisy)
    sd = np.where(noisy, 0.01, 0.2)
    nonzero = np.where(noisy, 1, 5)
    record = dict(
        w,
        weight_sum=w["mean_weight"] * 5,
        nonzero_count=nonzero,
        weight_sq_sum=5 * (w["mean_weight"] ** 2 + sd**2),
    )
    c = _small_config()
    inputs = run_lib._inputs(
        planted["apply_fn"],
        planted["feature_fn"],
        planted["params"],
        {},
        planted["test"],
        planted["train"],
        c,
        record,
        None,
        0.0,
        1.0,
        None,
    )
    s = label_issues_section.label_issues_section(inputs, c, np.random.default_rng(0))
    dm = s.results["data_map"]
    assert dm["n_drawn"] == n and dm["noisy"]["n"] == 110 and dm["clean"]["n"] == n - 110
    assert dm["noisy"]["median_weight_std"] == pytest.approx(0.01, rel=1e-6)
    assert dm["clean"]["median_weight_std"] == pytest.approx(0.2, rel=1e-9)
    assert (dm["noisy"]["median_nonzero_share"], dm["clean"]["median_nonzero_share"]) == (0.2, 1)
    assert dm["noisy"]["median_mean_weight"] == pytest.approx(
        np.median(w["mean_weight"][noisy]), rel=1e-12
    )
    page = report.render_html(report.to_jsonable(planted["res"]["meta"]), [s])
    assert "Data map of the L2RW weights" in page
    with pytest.raises(ValueError, match=r"example_weights\['weight_sq_sum'\] has shape \(3,\)"):
        run_lib._inputs(
            planted["apply_fn"],
            planted["feature_fn"],
            planted["params"],
            {},
            planted["test"],
            planted["train"],
            c,
            dict(record, weight_sq_sum=np.zeros(3)),
            None,
            0.0,
            1.0,
            None,
        )


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_label_issues_csv_has_every_row_in_the_suspects_order(planted):
    res, train, w = planted["res"], planted["train"], planted["weights"]
    li = res["label_issues"]
    rows = _read_csv(os.path.join(planted["out_dir"], "label_issues.csv"))
    n = len(train["label"])
    rankings = ["l2rw_meta_grad", "l2rw_memory", "l2rw_weight", "final_loss", "confident_learning"]
    assert li["csv"] == {
        "file": "label_issues.csv",
        "rows": n,
        "ranked_by": "l2rw_meta_grad",
        "rank_columns": {f"rank_{r}": r for r in rankings},
        "empty_columns": ["nonzero_share", "weight_std"],  # no running sums in this record
    }
    assert [int(r["rank"]) for r in rows] == list(range(1, n + 1))
    source = np.array([int(r["source_index"]) for r in rows])
    train_row = np.array([int(r["train_row"]) for r in rows])
    np.testing.assert_array_equal(source, train["source_index"][train_row])
    assert sorted(source) == sorted(train["source_index"])  # every example once
    # Back to the user's data: the true label is sklearn's target at source_index, and the
    # given label differs from it exactly at the 110 flips.
    given = np.array([int(r["given_label"]) for r in rows])
    true = np.array([int(r["true_label"]) for r in rows])
    np.testing.assert_array_equal(true, load_digits().target[source])
    np.testing.assert_array_equal(given != true, train["is_noisy"][train_row])
    assert (given != true).sum() == 110
    assert "given_class" not in rows[0]  # no class_names given: label ids only
    # The order is the library function's on the same inputs, and the suspects are its head.
    logits = audit.common.predict_logits(  # the audit's batch size: the same numbers
        planted["apply_fn"], planted["params"], {}, train["image"], batch_size=64
    )
    probs = audit.common.softmax(logits)
    np.testing.assert_array_equal(
        source,
        audit.find_label_issues(
            train["label"],
            probs,
            source_index=train["source_index"],
            count=w["count"],
            mean_meta_grad=w["mean_meta_grad"],
            meta_grad_memory=w["meta_grad_memory"],
            mean_weight=w["mean_weight"],
        ),
    )
    top = li["top_suspects"]
    assert [s["source_index"] for s in top] == source[: len(top)].tolist()
    assert [s["train_row"] for s in top] == train_row[: len(top)].tolist()
    for r, i in zip(rows[:3], train_row):
        assert float(r["mean_meta_grad"]) == w["mean_meta_grad"][i]  # exact round trip
        assert float(r["mean_weight"]) == w["mean_weight"][i]
        assert float(r["loss"]) == -np.log(probs[i, train["label"][i]])
    flags = label_issues.confident_learning_flags(probs, train["label"])
    assert [int(r["confident_learning"]) for r in rows] == flags[train_row].astype(int).tolist()
    # Each rank_<ranking> column is that ranking's own order (the file's is the meta-gradient's).
    assert list(rows[0])[14:19] == [f"rank_{r}" for r in rankings]
    assert [int(r["rank_l2rw_meta_grad"]) for r in rows] == list(range(1, n + 1))
    for name in rankings:
        rank = np.array([int(r[f"rank_{name}"]) for r in rows])
        order = train_row[np.argsort(rank)]  # rows by this ranking, most suspect first
        np.testing.assert_array_equal(
            train["source_index"][order],
            audit.find_label_issues(
                train["label"],
                probs,
                source_index=train["source_index"],
                mean_meta_grad=w["mean_meta_grad"],
                meta_grad_memory=w["meta_grad_memory"],
                mean_weight=w["mean_weight"],
                return_indices_ranked_by=name,
            ),
        )


def test_a_card_per_suspect(planted):
    # The cards are the head of the ranking they name (the CSV's first rows, the label-issue
    # section's suspects), with the CSV's ranks, the recorded weights, brute-force neighbours
    # among every training row, and one card on the page per suspect with its labels.
    res, train, w = planted["res"], planted["train"], planted["weights"]
    cards, li = res["suspects"], res["label_issues"]
    k = audit.default_config().num_cards
    assert k == 12 and len(cards["suspects"]) == k
    assert cards["ranked_by"] == li["suspects_ranking"] == "l2rw_meta_grad"
    rows = _read_csv(os.path.join(planted["out_dir"], "label_issues.csv"))
    train_row = [c["train_row"] for c in cards["suspects"]]
    assert train_row == [int(r["train_row"]) for r in rows[:k]]
    assert train_row == [s["train_row"] for s in li["top_suspects"][:k]]
    feats = audit.common.compute_features(
        planted["feature_fn"], planted["params"], {}, train["image"], batch_size=64
    )
    for c, r in zip(cards["suspects"], rows):
        i = c["train_row"]
        assert c["source_index"] == train["source_index"][i] == int(r["source_index"])
        assert c["ranks"] == {name: int(r[f"rank_{name}"]) for name in c["ranks"]}
        assert len(c["ranks"]) == 5
        assert (c["given_label"], c["predicted_label"]) == (
            int(r["given_label"]),
            int(r["predicted_label"]),
        )
        assert c["true_label"] == train["true_label"][i]
        assert c["is_noisy"] == train["is_noisy"][i]
        assert c["mean_weight"] == w["mean_weight"][i] and c["draws"] == 5
        assert c["mean_meta_grad"] == w["mean_meta_grad"][i]
        assert c["nonzero_share"] is None  # no running sums in this record: not 0
        d = np.linalg.norm(feats - feats[i], axis=1)
        d[i] = np.inf
        nn = np.argsort(d, kind="stable")[:3]
        assert [nb["train_row"] for nb in c["neighbors"]] == nn.tolist()
        assert [nb["given_label"] for nb in c["neighbors"]] == train["label"][nn].tolist()
        np.testing.assert_allclose([nb["distance"] for nb in c["neighbors"]], d[nn], rtol=1e-4)
    assert cards["recorded"]["nonzero_share"] is False
    assert any("no share of non-zero weight" in n for n in res["meta"]["notes"])
    page = open(os.path.join(planted["out_dir"], "report.html")).read()
    on_page = page.split("<div class='suspect'>")[1:]
    assert len(on_page) == k
    for c, card in zip(cards["suspects"], on_page):
        given = re.search(r"given</td><td class='l'><b>([^<]*)</b>", card).group(1)
        pred = re.search(r"predicted</td><td class='l'><b>([^<]*)</b>", card).group(1)
        assert (given, pred) == (str(c["given_label"]), str(c["predicted_label"]))
        assert "non-zero share</td><td class='l'>not recorded" in card
        assert ("given label is wrong" in card) == c["is_noisy"]


def test_card_saliency_and_min_eps_are_the_sections_functions(planted):
    # Each card's saliency is the mistakes section's integrated gradients (predicted class,
    # black baseline) of its image, and its minimal eps the robustness section's search with
    # the audit's attack settings: recomputed here on the same images, equal exactly.
    from l2rw_jax.audit import attacks
    from l2rw_jax.audit import figures
    from l2rw_jax.audit import sections

    res, config = planted["res"], _small_config()
    cards = res["suspects"]["suspects"]
    sec = next(s for s in planted["sections"] if s.name == "suspects")
    x = planted["train"]["image"][[c["train_row"] for c in cards]]
    pred = np.asarray([c["predicted_label"] for c in cards], np.int32)
    mean, std = np.asarray(res["meta"]["mean"]), np.asarray(res["meta"]["std"])
    model = audit.common.Model(planted["apply_fn"], planted["params"], {}, planted["feature_fn"])
    ig = mistakes.integrated_gradients(
        model.apply_fn,
        model.params,
        {},
        x,
        pred,
        baseline=audit.common.from_raw(np.zeros_like(x), mean, std),
        steps=config.ig_steps,
    )
    np.testing.assert_array_equal(sec.figures["saliency_attributions"], ig["attributions"])
    assert sec.figures["saliency"] == [figures.saliency_png(a) for a in ig["attributions"]]
    inp = mock.Mock(mean_C=mean, std_C=std)
    me = attacks.minimal_adversarial_epsilon(
        model,
        x,
        pred,
        sections.attack_config(config, inp, config.seed + 2),
        eps_max=config.eps_max,
        bisection_steps=config.bisection_steps,
        progress=False,
    )["min_eps"]
    want = [float(e) if np.isfinite(e) else None for e in me]
    assert [c["min_adversarial_eps"] for c in cards] == want
    saved = json.load(open(os.path.join(planted["out_dir"], "audit.json")))["suspects"]
    assert [c["min_adversarial_eps"] for c in saved["suspects"]] == want
    assert [c["ig_delta_f"] for c in cards] == ig["delta_f"].tolist()
    page = open(os.path.join(planted["out_dir"], "report.html")).read()
    on_page = page.split("<div class='suspect'>")[1:]
    assert len(on_page) == len(cards)
    for c, card, png in zip(cards, on_page, sec.figures["saliency"]):
        assert f'src="data:image/png;base64,{png}" alt="saliency"' in card
        e = c["min_adversarial_eps"]
        assert f"min adv. eps</td><td class='l'>{'none found' if e is None else f'{e:.4g}'}" in card


def test_every_ranking_scored_against_the_flips(planted):
    # AUROC, AP and precision / recall@k of each ranking: the library's functions on the
    # section's orders (over the ranked rows; every row is drawn here), AUROC by brute force.
    from l2rw_jax.audit import ranking_quality

    li, train, w = planted["res"]["label_issues"], planted["train"], planted["weights"]
    noisy = train["is_noisy"]
    probs = audit.common.softmax(
        audit.common.predict_logits(
            planted["apply_fn"], planted["params"], {}, train["image"], batch_size=64
        )
    )
    loss = label_issues.final_loss(probs, train["label"])
    orders = {
        "l2rw_weight": label_issues.rank_by_l2rw_weight(w["mean_weight"], loss),
        "final_loss": label_issues.rank_by_loss(loss),
        "confident_learning": label_issues.rank_by_confident_learning(probs, train["label"]),
    }
    q = li["ranking_quality"]
    assert list(q) == [
        "l2rw_weight",
        "l2rw_meta_grad",
        "l2rw_memory",
        "final_loss",
        "confident_learning",
    ]
    for name, order in orders.items():
        score = ranking_quality.order_score(order)
        pairs = (score[noisy][:, None] > score[~noisy][None, :]).mean()  # no ties: strict order
        assert q[name]["auroc"] == pytest.approx(pairs, rel=1e-12)
        assert q[name]["average_precision"] == ranking_quality.average_precision(score, noisy)
        assert q[name]["at_k"] == li["rankings"][name]  # the same precision / recall@k
    # The synthetic weights put every flip below every clean example's weight.
    assert q["l2rw_weight"]["auroc"] == 1.0 == q["l2rw_weight"]["average_precision"]
    page = open(os.path.join(planted["out_dir"], "report.html")).read()
    assert "<th>AUROC</th><th>AP</th>" in page and "AUROC (l2rw_meta_grad)" in page


def test_report_is_one_self_contained_file(planted):
    with open(os.path.join(planted["out_dir"], "report.html")) as f:
        page = f.read()
    for heading in (
        "1. Understanding mistakes",
        "2. Robustness",
        "3. Uncovering biases",
        "4. Finding mislabeled examples",
        "5. A card per suspect",
        "6. Estimating the label noise",
    ):
        assert heading in page
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) >= 10 + 4 + 5  # class grids, mistakes, the other figures
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)  # nothing outside the file
    # Every suspect card draws its recorded weight trajectory inline (no image, no URL).
    cards = planted["res"]["suspects"]["suspects"]
    assert page.count("<svg class='spark'") == len(cards) > 0
    assert "no weight history in this run" not in page
    # The robustness section names what the attacks ascended, as audit.json records it.
    assert planted["res"]["robustness"]["objective"] == "margin"
    assert "ascend the logit margin" in page
    assert not [f for f in os.listdir(planted["out_dir"]) if f.startswith(".")]  # no temporary left


def test_report_renders_section_by_section(planted):
    # The sections run_audit returned are its audit.json keys, in order; a section of a kind the
    # report has no renderer for is drawn by the generic one (scalars, figures, notes).
    from l2rw_jax.audit import figures
    from l2rw_jax.audit import report
    from l2rw_jax.audit import sections

    res = planted["res"]
    assert list(res) == [
        "meta",
        "mistakes",
        "robustness",
        "biases",
        "label_issues",
        "suspects",
        "noise",
        "trusted_set",
    ]
    assert list(res["meta"]["seconds"]) == [*list(res)[1:], "total"]
    png = figures.fig_curve(
        {
            "epsilons": [0.0, 0.1],
            "fgsm_accuracy": [1, 0.5],
            "pgd_accuracy": [1, 0.4],
            "clean_accuracy": 1.0,
        }
    )
    extra = sections.Section(
        "shift",
        "Distribution shift",
        {"auc": 0.625, "per_class": [1, 2]},
        {"roc": png},
        ["Only 3 batches were scored."],
    )
    page = report.render_html(report.to_jsonable(res["meta"]), [extra])
    assert "<h2 id='shift'>1. Distribution shift</h2>" in page
    assert "<a href='#shift'>1. Distribution shift</a>" in page
    assert '<td class="l">auc</td><td>0.6250</td>' in page
    assert f"data:image/png;base64,{png}" in page and "Only 3 batches were scored." in page


HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=y>', "&amp;", "<b onmouseover='z'>")
# The tags the report writes itself, and no event-handler attribute anywhere.
REPORT_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "p",
    "b",
    "code",
    "nav",
    "a",
    "div",
    "ul",
    "li",
    "table",
    "tr",
    "th",
    "td",
    "figure",
    "img",
    "figcaption",
    "sub",
    # The suspect cards' sparklines (inline SVG).
    "svg",
    "line",
    "polyline",
    "circle",
}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attrs, self.text = set(), [], []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += [name for name, _ in attrs]

    def handle_data(self, data):
        self.text.append(data)


def test_whole_report_escapes_every_user_string(planted):
    # Class names (folder names, npz class_names), the title, run facts, attribute names, notes
    # and a section of the user's own: all hostile. The page shows each as text and none as
    # markup.
    from l2rw_jax.audit import figures
    from l2rw_jax.audit import report
    from l2rw_jax.audit import sections

    names = [HOSTILE[k % len(HOSTILE)] + (f" {k}" if k >= len(HOSTILE) else "") for k in range(10)]
    res = report.to_jsonable(planted["res"])
    meta = {
        **res["meta"],
        "class_names": names,
        "title": HOSTILE[0],
        "run": {HOSTILE[1]: HOSTILE[2], "dataset": f"folder:/data/{HOSTILE[3]}"},
    }
    attr = HOSTILE[1]
    done = []
    for s in planted["sections"]:
        results = report.to_jsonable(s.results)
        if s.name == "biases":
            results["attributes"] = {
                (attr if k == "corner_patch" else k): v for k, v in results["attributes"].items()
            }
            for g in results["largest_over_representation"]:
                g["attribute"] = attr if g["attribute"] == "corner_patch" else g["attribute"]
        done.append(s._replace(results=results, notes=[*s.notes, HOSTILE[3]]))
    png = figures.fig_curve(
        {
            "epsilons": [0.0, 0.1],
            "fgsm_accuracy": [1, 0.5],
            "pgd_accuracy": [1, 0.4],
            "clean_accuracy": 1.0,
        }
    )
    done.append(
        sections.Section(
            "mine", HOSTILE[0], {HOSTILE[1]: HOSTILE[2], "n": 3}, {HOSTILE[3]: png}, [HOSTILE[0]]
        )
    )
    page = report.render_html(meta, done)
    parsed = _Page()
    parsed.feed(page)
    assert parsed.tags <= REPORT_TAGS, parsed.tags - REPORT_TAGS
    assert not [a for a in parsed.attrs if a.startswith("on")]
    for raw in ("<script", "<img src=x", "onerror=y>", "<b onmouseover"):
        assert raw not in page
    text = "".join(parsed.text)
    for hostile in HOSTILE:  # shown literally ("&amp;" as the five characters, not as "&")
        assert hostile in text
    # Every class's name is on the page as text (the biases caption lists them all).
    for name in names:
        assert f"{name}: " in text
    # The report written by run_audit (no hostile strings) holds only the report's own tags.
    with open(os.path.join(planted["out_dir"], "report.html")) as f:
        written = _Page()
        written.feed(f.read())
    assert written.tags <= REPORT_TAGS and not [a for a in written.attrs if a.startswith("on")]


def test_a_class_absent_from_the_test_split_is_left_out_of_the_audit_accuracies(planted):
    # Its accuracy is undefined (0/0), not 0: no entry, not the worst class, not in the mean.
    from l2rw_jax.audit import mistakes_section
    from l2rw_jax.audit import run as run_lib

    keep = planted["test"]["label"] != 3
    test = {"image": planted["test"]["image"][keep], "label": planted["test"]["label"][keep]}
    c = _small_config()
    c.num_mistakes = 1
    inputs = run_lib._inputs(
        planted["apply_fn"],
        planted["feature_fn"],
        planted["params"],
        {},
        test,
        planted["train"],
        c,
        None,
        None,
        0.0,
        1.0,
        None,
    )
    s = mistakes_section.mistakes_section(inputs, c, np.random.default_rng(0))
    m = s.results
    pred = inputs.logits_test.argmax(1)
    y = test["label"]
    expected = {str(k): float(np.mean(pred[y == k] == k)) for k in range(10) if k != 3}
    assert m["per_class_accuracy"] == pytest.approx(expected)
    assert m["mean_class_accuracy"] == pytest.approx(np.mean(list(expected.values())))
    worst = min(expected, key=lambda k: (expected[k], int(k)))
    assert m["worst_class"] == int(worst) != 3
    assert m["worst_class_accuracy"] == pytest.approx(expected[worst])
    assert any("[3]" in note and "no test example" in note for note in s.notes)


def test_bad_inputs_fail_before_any_work(planted, tmp_path):
    kw = dict(test=planted["test"], train=planted["train"], out_dir=str(tmp_path))
    args = (planted["apply_fn"], planted["feature_fn"], planted["params"], {})
    c = _small_config()
    c.epsilons = (0.1, 0.0)
    with pytest.raises(ValueError, match="ascending"):
        audit.run_audit(*args, config=c, **kw)
    c = _small_config()
    c.attack_objective = "xent"
    with pytest.raises(ValueError, match="attack_objective must be one of"):
        audit.run_audit(*args, config=c, **kw)
    c = _small_config()
    c.num_prototypes = 30
    with pytest.raises(ValueError, match="bias_examples_per_class=30 is below"):
        audit.run_audit(*args, config=c, **kw)
    with pytest.raises(ValueError, match=r"example_weights\['index'\] must be rows"):
        audit.run_audit(
            *args,
            config=_small_config(),
            example_weights={"index": np.array([5000]), "mean_weight": np.zeros(1)},
            **kw,
        )
    with pytest.raises(ValueError, match=r"train\['source_index'\] must be 1300 integers"):
        audit.run_audit(
            *args, config=_small_config(), **dict(kw, train=dict(kw["train"], source_index=[1]))
        )
    c = _small_config()
    c.num_cards = 0
    with pytest.raises(ValueError, match=r"^num_cards must be an integer >= 1, got 0\.$"):
        audit.run_audit(*args, config=c, **kw)
    with pytest.raises(ValueError, match="attribute 'cue' has 3 values"):
        audit.run_audit(*args, config=_small_config(), attributes={"cue": np.zeros(3)}, **kw)
    train = dict(planted["train"], label=np.where(np.arange(1300) < 5, 3, 4).astype(np.int32))
    with pytest.raises(ValueError, match=r"classes \{3: 5\}"):  # too few examples for 6 + 6
        audit.run_audit(*args, config=_small_config(), **dict(kw, train=train))
    assert os.listdir(tmp_path) == []  # nothing was written


# ------------------------------------------------------------------ a run's workdir
def test_workdir_audit_clear_errors(tmp_path):
    from experiments import audit as audit_main

    # The entry point is a thin wrapper over the library's workdir audit.
    assert audit_main.load_run is audit.load_run and audit_main.audit_run is audit.audit_run
    with pytest.raises(ValueError, match="does not exist"):
        audit.load_run(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="no config.json"):
        audit.load_run(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"seed": 0, "num_seeds": 1}))
    with pytest.raises(ValueError, match="has no checkpoint"):
        audit.load_run(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="has no checkpoint"):
        audit.load_run(str(tmp_path))
    with pytest.raises(ValueError, match=r"member=1 must be in \[0, 1\)"):
        audit.load_run(str(tmp_path), member=1)


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A 20-step erm run on digits (40% uniform flips) and its audit by `audit.audit_run`."""
    from l2rw_jax import config as config_lib
    from l2rw_jax import train

    c = config_lib.default_config()
    # erm: the workdir format does not depend on the method, and its step compiles faster.
    c.update(
        {
            "data": dict(
                dataset="digits",
                noise="uniform",
                noise_ratio=0.4,
                clean_per_class=5,
                hyper_val_size=100,  # held out of the noisy set: not in the CSV
                batch_size=50,
                clean_batch_size=50,
            ),
            "model": {"name": "small_cnn"},
            "method": {"name": "erm"},
            "optim": {"learning_rate": 0.05},
            "num_steps": 20,
            "loop": dict(eval_every=20, checkpoint_every=20, log_every=10, progress_bar=False),
        }
    )
    workdir = str(tmp_path_factory.mktemp("real") / "run")
    results = train.train_and_evaluate(c, workdir)
    cfg = _small_config()
    cfg.update(
        epsilons=(0.0, 0.1),
        pgd_steps=2,
        robust_examples=64,
        min_eps_examples=64,
        bisection_steps=2,
        bias_examples_per_class=10,
        num_prototypes=3,
        num_criticisms=3,
        num_mistakes=2,
        ig_steps=4,
    )
    res = audit.audit_run(workdir, cfg)
    return {"config": c, "workdir": workdir, "results": results, "res": res}


def test_workdir_audit_on_a_real_training_run(real_run):
    workdir, results, res = real_run["workdir"], real_run["results"], real_run["res"]
    # The loader rebuilt the same test set, normalisation and parameters the run evaluated.
    assert res["mistakes"]["top_k_accuracy"]["top1"] == pytest.approx(
        results["final_test_accuracy"]["per_seed"][0], abs=1e-6
    )
    with np.load(os.path.join(workdir, "example_weights.npz")) as z:
        seen = z["count"] > 0  # 20 steps of 50 do not draw every example: the rest is not ranked
        assert res["label_issues"]["n_noisy"] == int(z["is_noisy"][seen].sum())
        assert res["label_issues"]["n_ranked"] == int(seen.sum()) < len(seen)
    assert res["meta"]["run"]["checkpoint_step"] == 20
    # The noise section reads the run's own clean set (5 per class), never the test set.
    assert res["meta"]["n_clean"] == res["noise"]["estimates"]["glc"]["n"] == 50
    assert np.asarray(res["noise"]["estimates"]["glc"]["count"]).tolist() == [5] * 10
    assert res["noise"]["estimates"]["glc"]["error"]["rows_compared"] == 10
    # The data map from the run's running sums: erm weighs every draw 1 / B, no spread.
    dm = res["label_issues"]["data_map"]
    assert dm["n_drawn"] == res["label_issues"]["n_ranked"]
    assert dm["all"]["median_weight_std"] == 0.0 and dm["all"]["median_nonzero_share"] == 1.0
    assert dm["all"]["median_mean_weight"] == pytest.approx(1 / 50, rel=1e-6)
    # The cards read the same running sums: drawn rows first, every draw's weight non-zero.
    cards = res["suspects"]["suspects"]
    assert res["suspects"]["ranked_by"] == "l2rw_weight" and len(cards) == 12
    assert all(c["draws"] > 0 and c["nonzero_share"] == 1.0 for c in cards)
    assert [c["mean_weight"] for c in cards] == pytest.approx([1 / 50] * 12, rel=1e-6)
    assert res["meta"]["title"] == "Audit: erm on digits, 40% uniform flip"
    assert os.path.exists(os.path.join(workdir, "audit", "report.html"))


def test_trusted_set_csv_of_a_real_run_maps_back_to_the_source_data(real_run):
    # One row per clean example of the run, its source_index a row of the digits training
    # arrays (the clean set was drawn from them), whose label is the given one.
    from l2rw_jax import compose
    from l2rw_jax import datasets

    rows = _read_csv(os.path.join(real_run["workdir"], "audit", "trusted_set.csv"))
    splits = compose.member_data(real_run["config"]).splits
    assert len(rows) == real_run["res"]["trusted_set"]["n_clean"] == 50
    assert [int(r["rank"]) for r in rows] == list(range(1, 51))
    clean_row = np.array([int(r["clean_row"]) for r in rows])
    source = np.array([int(r["source_index"]) for r in rows])
    np.testing.assert_array_equal(source, splits.clean_source_index[clean_row])
    given = np.array([int(r["given_label"]) for r in rows])
    np.testing.assert_array_equal(given, datasets.load_arrays("digits").y_train[source])


def test_label_issues_csv_of_a_real_run_maps_back_to_the_source_data(real_run):
    from l2rw_jax import datasets
    from l2rw_jax import compose

    workdir, res = real_run["workdir"], real_run["res"]
    rows = _read_csv(os.path.join(workdir, "audit", "label_issues.csv"))
    with np.load(os.path.join(workdir, "example_weights.npz")) as z:
        z = {k: z[k] for k in z.files}
    n = len(z["index"])  # the noisy training set after the hyper-validation hold-out
    y_source = datasets.load_arrays("digits").y_train
    assert n == len(y_source) - 10 * 5 - 100  # minus the clean set and the hold-out
    assert len(rows) == n and [int(r["rank"]) for r in rows] == list(range(1, n + 1))
    source = np.array([int(r["source_index"]) for r in rows])
    assert len(np.unique(source)) == n
    given = np.array([int(r["given_label"]) for r in rows])
    true = np.array([int(r["true_label"]) for r in rows])
    # Independently of the run's records: the source labels and the corruption's flip mask.
    np.testing.assert_array_equal(true, y_source[source])
    splits = compose.member_data(real_run["config"]).splits
    flipped = dict(zip(splits.train_source_index.tolist(), splits.train_is_noisy.tolist()))
    np.testing.assert_array_equal(given != true, [flipped[i] for i in source])
    assert 0 < (given != true).sum() < n
    # The same rows as the recorded weights, every recorded value where it was recorded.
    train_row = np.array([int(r["train_row"]) for r in rows])
    np.testing.assert_array_equal(source, z["source_index"][train_row])
    np.testing.assert_array_equal(given, z["label"][train_row])
    drawn = z["count"][train_row] > 0
    assert [r["mean_weight"] == "" for r in rows] == (~drawn).tolist()
    assert [r["count"] for r in rows] == [str(c) for c in z["count"][train_row]]
    assert all(r["mean_meta_grad"] == "" for r in rows)  # erm records no meta-gradient
    assert not drawn[drawn.sum() :].any()  # the never-drawn examples come last
    assert [r["given_class"] for r in rows] == [str(g) for g in given]  # digits: names are ids
    li = res["label_issues"]
    assert li["csv"]["ranked_by"] == li["suspects_ranking"] == "l2rw_weight"
    assert li["csv"]["empty_columns"] == [
        "mean_meta_grad",
        "meta_grad_memory",
        "rank_l2rw_memory",
        "rank_l2rw_meta_grad",
    ]
    assert [r["rank_l2rw_weight"] for r in rows] == [r["rank"] for r in rows]
    # The data map per row: erm weighs every draw 1 / B (no spread, every draw non-zero).
    assert [r["weight_std"] for r in rows] == ["0.0" if d else "" for d in drawn]
    assert [r["nonzero_share"] for r in rows] == ["1.0" if d else "" for d in drawn]
    top = li["top_suspects"]
    assert [s["source_index"] for s in top] == source[: len(top)].tolist()
    assert [s["given_label"] for s in top] == given[: len(top)].tolist()


def test_the_quick_preset_changes_only_the_costly_fields():
    from l2rw_jax.audit import run as run_lib

    full, quick = audit.default_config().to_dict(), audit.default_config("quick").to_dict()
    assert {k for k in full if full[k] != quick[k]} == set(run_lib.QUICK)
    assert quick["pgd_steps"] == 5 and quick["robust_examples"] == 200
    assert all(quick[k] <= full[k] for k in run_lib.QUICK if k != "epsilons")
    assert set(quick["epsilons"]) < set(full["epsilons"])
    with pytest.raises(
        ValueError,
        match=r"^preset='fast' is not supported; allowed: full, "
        r"quick\.$",
    ):
        audit.default_config("fast")
