"""Noise as users meet it, end to end: labels given as they are (an npz with its truth, the
CIFAR-N label features through tfds's mock), truth-needing metrics absent when the truth is
unknown, and the oracle reference trained on exactly the correct rows and the clean set.

Each run is a few steps of a tiny MLP (tests/tiny_data.py's config)."""

import csv
import json
import os

import numpy as np
import pytest

import tiny_data
from l2rw_jax import compose
from l2rw_jax import config as config_lib
from l2rw_jax import from_config
from l2rw_jax import array_source
from l2rw_jax import datasets
from l2rw_jax import train

C = 10


@pytest.fixture(scope="module")
def given_npz(tmp_path_factory):
    """tiny_data's images; y_train = the truth with every third label moved by +3 (mod 10),
    y_train_true = the truth."""
    d = tmp_path_factory.mktemp("given")
    tiny = tiny_data.write_tiny_npz(str(d / "tiny.npz"))
    with np.load(tiny) as z:
        a = {k: z[k] for k in z.files}
    y_true = a["y_train"].copy()
    y_obs = y_true.copy()
    y_obs[::3] = (y_obs[::3] + 3) % C
    path = str(d / "given.npz")
    array_source.save_arrays(
        path, a["x_train"], y_obs, a["x_test"], a["y_test"], y_train_true=y_true
    )
    return {"path": path, "y_obs": y_obs, "y_true": y_true}


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _weights(workdir):
    with np.load(os.path.join(workdir, "example_weights.npz")) as z:
        return {k: z[k] for k in z.files}


def _noise_free(npz, *overrides):
    """tiny_config without its uniform flip: data.noise is left to its default."""
    c = config_lib.flatten(tiny_data.tiny_config(npz).to_dict())
    del c["data.noise"], c["data.noise_ratio"]
    for o in overrides:
        c.update(config_lib.flatten(o))
    return config_lib.unflatten(c)


def test_npz_with_true_labels_trains_and_its_suspects_are_scored_against_them(given_npz, tmp_path):
    from l2rw_jax import audit

    config = _noise_free(given_npz["path"], {"method": {"name": "l2rw"}, "num_steps": 4})
    assert config_lib.validate(config).data.noise == "given"  # The default with y_train_true.
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    w = _weights(workdir)
    rows = w["source_index"]
    np.testing.assert_array_equal(w["label"], given_npz["y_obs"][rows])
    np.testing.assert_array_equal(w["true_label"], given_npz["y_true"][rows])
    np.testing.assert_array_equal(
        w["is_noisy"], given_npz["y_obs"][rows] != given_npz["y_true"][rows]
    )
    assert all("w_mean_noisy" in r for r in _records(workdir) if r["split"] == "train")

    cfg = audit.default_config()
    cfg.update(
        epsilons=(0.0, 0.1),
        pgd_steps=1,
        robust_examples=16,
        min_eps_examples=16,
        bisection_steps=1,
        bias_examples_per_class=4,
        num_prototypes=2,
        num_criticisms=2,
        num_mistakes=2,
        ig_steps=2,
        num_suspects=4,
    )
    res = audit.audit_run(workdir, cfg)
    seen = w["count"] > 0
    assert res["label_issues"]["n_noisy"] == int(w["is_noisy"][seen].sum()) > 0
    with open(os.path.join(workdir, "audit", "label_issues.csv")) as f:
        table = list(csv.DictReader(f))
    by_row = {int(r["source_index"]): r for r in table}
    assert sorted(by_row) == sorted(rows.tolist())
    for i, r in by_row.items():  # Every row carries the npz's truth beside its label.
        assert int(r["given_label"]) == given_npz["y_obs"][i]
        assert int(r["true_label"]) == given_npz["y_true"][i]
    # The suspects are scored against the truth: precision/recall of every ranking.
    assert res["label_issues"]["rankings"]
    for name, score in res["label_issues"]["rankings"].items():
        assert "precision" in json.dumps(score), name


def test_given_labels_without_truth_leave_the_truth_metrics_out(tmp_path):
    npz = tiny_data.write_tiny_npz(str(tmp_path / "tiny.npz"))
    config = _noise_free(
        npz, {"data": {"noise": "given"}, "method": {"name": "l2rw"}, "num_steps": 2}
    )
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    train_records = [r for r in _records(workdir) if r["split"] == "train"]
    assert train_records and not any(
        "w_mean_noisy" in r or "w_mean_clean" in r for r in train_records
    )
    w = _weights(workdir)
    assert "is_noisy" not in w and "true_label" not in w
    config["method"]["name"] = "oracle"
    with pytest.raises(ValueError, match="method 'oracle' needs the true training labels"):
        train.train_and_evaluate(config, str(tmp_path / "oracle"))


@pytest.mark.parametrize(
    "noise", [{"noise": "pair", "noise_ratio": 0.45}, {"noise": "asymmetric", "noise_ratio": 0.4}]
)
def test_oracle_trains_only_on_correct_rows_and_the_clean_set(tmp_path, noise):
    npz = tiny_data.write_tiny_npz(str(tmp_path / "tiny.npz"))
    with np.load(npz) as z:
        y = z["y_train"]
    config = tiny_data.tiny_config(
        npz,
        {
            "data": noise,
            "method": {"name": "oracle"},
            "num_steps": 40,
            "loop": {"eval_every": 40, "checkpoint_every": 40},
        },
    )
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    md = compose.member_data(json.load(open(os.path.join(workdir, "config.json"))))
    w = _weights(workdir)
    n_noisy = len(md.splits.train_labels) - len(md.splits.clean_labels)
    assert results["num_train"] == len(w["index"]) == n_noisy + len(md.splits.clean_labels)
    drawn = w["count"] > 0
    # Every drawn row is correctly labelled; 40 steps x 8 draw over 2 epochs, so every one is.
    assert not w["is_noisy"][drawn].any()
    np.testing.assert_array_equal(drawn, ~w["is_noisy"])
    np.testing.assert_array_equal(w["label"][drawn], y[w["source_index"][drawn]])
    # The clean set is among them, as the last rows, by its source rows.
    np.testing.assert_array_equal(w["source_index"][n_noisy:], md.splits.clean_source_index)
    assert drawn[n_noisy:].all()
    assert int(w["is_noisy"].sum()) > 0  # There were wrong rows to leave out.


@pytest.mark.parametrize(
    "name,label_key,num_classes",
    [
        ("cifar10_n", "worse_label", 10),
        ("cifar10_n", "aggre_label", 10),
        ("cifar100_n", "noise_label", 100),
    ],
)
def test_cifar_n_label_features_train_with_is_noisy_from_the_two_keys(
    tmp_path, name, label_key, num_classes
):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "tfds")
    builder = tfds.builder(name, data_dir=data_dir)
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)  # "Prepared": metadata, mocked examples.
    # Random mock labels: enough rows that every class has one for the clean set.
    n = 200 if num_classes == 10 else 1500
    config = _noise_free(
        "digits",
        {
            "data": {
                "dataset": name,
                "data_dir": data_dir,
                "label_key": label_key,
                "clean_per_class": 1,
                "hyper_val_size": 0,
            },
            "num_steps": 2,
        },
    )
    assert config_lib.validate(config).data.noise == "given"
    with tfds.testing.mock_data(num_examples=n, data_dir=data_dir):
        arrays = datasets.load_arrays(name, data_dir=data_dir, label_key=label_key)
        workdir = str(tmp_path / "run")
        train.train_and_evaluate(config, workdir)
    ds_true = arrays.y_train_true
    assert ds_true is not None and arrays.num_classes == num_classes
    w = _weights(workdir)
    rows = w["source_index"]
    np.testing.assert_array_equal(w["label"], arrays.y_train[rows])
    np.testing.assert_array_equal(w["true_label"], ds_true[rows])
    np.testing.assert_array_equal(w["is_noisy"], arrays.y_train[rows] != ds_true[rows])
    assert w["is_noisy"].any()  # Random mock labels disagree somewhere.


def test_config_noise_fields_translate_and_bad_values_fail_in_one_line(tmp_path):
    c = config_lib.default_config()
    c.data.noise, c.data.noise_map = "asymmetric", {"9": 1, "3": 5}
    v = config_lib.validate(c, check_devices=False)
    assert from_config.split_options(v.data)["noise_map"] == {"9": 1, "3": 5}
    # Through config.json (JSON) and back: the same map.
    again = config_lib.validate(from_config.as_json(v), check_devices=False)
    assert from_config.split_options(again.data)["noise_map"] == {"9": 1, "3": 5}

    t = np.full((C, C), 1 / C)
    np.save(tmp_path / "T.npy", t)
    c = config_lib.default_config()
    c.data.noise, c.data.noise_matrix = "transition", str(tmp_path / "T.npy")
    v = config_lib.validate(c, check_devices=False)
    assert v.data.noise_ratio == 0.0  # A noise without a ratio: 0, not the uniform default.
    np.testing.assert_array_equal(from_config.split_options(v.data)["noise_matrix"], t)

    c = config_lib.default_config()
    c.data.label_key = "worse_label"
    v = config_lib.validate(c, check_devices=False)
    assert (v.data.noise, v.data.noise_ratio) == ("given", 0.0)

    for data, match in (
        (
            dict(noise="transition", noise_matrix=str(tmp_path / "missing.npy")),
            r"data.noise_matrix='.*missing.npy' is not a readable .npy file",
        ),
        (dict(noise="transition", noise_matrix=((0.5, 0.6), (0.0, 1.0))), r"row 0 sums to 1.1"),
        (dict(noise="pair", noise_ratio=1.0), r"\[0, 1\) for noise 'pair', got 1.0"),
        (
            dict(noise="uniform", noise_ratio=0.2, label_key="worse_label"),
            r"data.label_key='worse_label' .* must be 'given'",
        ),
        (
            dict(noise="none", noise_ratio=0.0, noise_map="cifar10"),
            r"noise_map='cifar10' only applies to noise 'asymmetric'",
        ),
    ):
        c = config_lib.default_config()
        c.data.update(data)
        with pytest.raises(ValueError, match=match) as e:
            config_lib.validate(c, check_devices=False)
        assert "\n" not in str(e.value)
    c = config_lib.default_config()
    c.data.noise, c.data.noise_ratio, c.method.name = "none", 0.0, "oracle"
    with pytest.raises(ValueError, match="method.name='oracle' .* data.noise='none'"):
        config_lib.validate(c, check_devices=False)


def test_bad_label_keys_and_true_labels_fail_before_anything_is_written(tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "tfds")
    builder = tfds.builder("cifar100_n", data_dir=data_dir)
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    with tfds.testing.mock_data(num_examples=4, data_dir=data_dir):
        for key, match in (
            (
                "coarse_label",
                r"label_key='coarse_label' is not an integer class "
                r"label of dataset 'cifar100_n' with 100 classes; "
                r"allowed: label, noise_label",
            ),
            ("worker_id", r"label_key='worker_id' is not an integer class"),
        ):
            with pytest.raises(ValueError, match=match):
                datasets.load_arrays("cifar100_n", data_dir=data_dir, label_key=key)
    with pytest.raises(ValueError, match=r"label_key='x' only applies to tfds datasets"):
        datasets.load_arrays("digits", label_key="x")
    x = np.zeros((6, 2, 2), np.uint8)
    y = np.arange(6) % 3
    with pytest.raises(ValueError, match=r"x_train has 6 images but y_train_true has 4 labels"):
        array_source.make_arrays(x, y, x, y, y_train_true=y[:4])
    with pytest.raises(ValueError, match=r"y_train_true has label 5, allowed \[0, 3\)"):
        array_source.make_arrays(x, y, x, y, y_train_true=np.full(6, 5))
