"""The grouped config: the flat (pre-group) names map one-to-one onto it, old config.json files
resume and are read, errors name the field's path, and the translation hands each library
function exactly its group."""

import json

import numpy as np
import optax
import pytest

import tiny_data
from l2rw_jax import compose
from l2rw_jax import config as config_lib
from l2rw_jax import from_config
from l2rw_jax import workdir


def _schema():
    return config_lib.flatten(config_lib.default_config().to_dict())


def test_every_field_has_exactly_one_flat_name():
    targets = list(config_lib.LEGACY_FIELDS.values())
    assert sorted(targets) == sorted(_schema())  # a bijection onto the schema
    assert set(config_lib.ADDED_FIELDS) <= set(_schema())


def _flat(config) -> dict:
    """The config as a pre-group config.json held it."""
    inverse = {v: k for k, v in config_lib.LEGACY_FIELDS.items()}
    return {inverse[k]: v for k, v in config_lib.flatten(from_config.as_json(config)).items()}


def test_a_flat_config_upgrades_to_the_same_grouped_config():
    c = config_lib.validate(config_lib.default_config())
    c.method.name, c.method.mwnet.meta_lr, c.data.batch_size = "mwnet", 0.5, 20
    c.model.options = {"hidden": [3]}
    flat = _flat(c)
    assert flat["mwnet_lr"] == 0.5 and flat["batch_size"] == 20 and flat["method"] == "mwnet"
    assert config_lib.upgrade(flat) == from_config.as_json(c)
    assert from_config.as_json(config_lib.validate(flat)) == from_config.as_json(c)
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['mwnet_rate'\]"):
        config_lib.upgrade({**flat, "mwnet_rate": 1.0})


def test_resuming_checks_a_flat_config_json_field_by_field(tmp_path):
    c = config_lib.validate(config_lib.default_config())
    c.method.l2rw.update(config_lib.PAPER_L2RW)  # what runs did before these fields existed
    c.method.l2rw.lookahead, c.loop.backend = "optimizer", "tfdata"
    flat = _flat(c)
    for name in ("l2rw_memory_decay", "l2rw_weight_map", "backend", "l2rw_lookahead"):
        del flat[name]  # written before the field was added
    (tmp_path / "config.json").write_text(json.dumps(flat))
    compose.check_or_write_config(str(tmp_path), c, write=False)  # the same run: resumes
    assert compose.resolve_backend("auto", str(tmp_path)) == "tfdata"
    c.optim.learning_rate = 0.3
    c.loop.progress_bar = False  # may change between invocations
    with pytest.raises(ValueError, match=r"fields \['optim\.learning_rate'\]"):
        compose.check_or_write_config(str(tmp_path), c, write=False)
    assert compose.read_config(str(tmp_path)).method.l2rw.weight_map == "clip"


def test_member_data_reads_a_flat_config_json(tmp_path):
    npz = tiny_data.write_tiny_npz(str(tmp_path / "tiny.npz"), num_train=100, num_test=20)
    c = config_lib.default_config()
    c.data.update(dataset=f"npz:{npz}", clean_per_class=2, hyper_val_size=10)
    c.num_seeds = 2
    a, b = compose.member_data(c, 1), compose.member_data(_flat(c), 1)
    assert a.seed == b.seed == 1
    np.testing.assert_array_equal(a.splits.train_source_index, b.splits.train_source_index)
    np.testing.assert_array_equal(a.hyperval.test_labels, b.hyperval.test_labels)
    with pytest.raises(ValueError, match=r"member=2 must be an integer in \[0, 2\)"):
        compose.member_data(c, 2)


def test_translation_hands_each_library_call_its_group():
    c = config_lib.validate(config_lib.default_config())
    scheme_options = c.method.l2rw.to_dict()
    correction = {k: scheme_options.pop(k) for k in ("correction", "correction_at")}
    assert from_config.weighing(c.method) == ("l2rw", scheme_options)
    # The loss correction is not a scheme option: it wraps the scheme (the default's: the
    # guarded correction once the clean accuracy has not risen for 10% of the steps).
    assert correction == {"correction": "glc_guarded", "correction_at": 0.1}
    assert from_config.correction_steps(c) == 100  # 10% of the default 1000 steps
    c.method.l2rw.correction = "none"
    assert from_config.correction_steps(c) == 0
    c.num_steps, c.method.l2rw.correction = 1500, "glc"
    assert from_config.correction_steps(c) == 150
    assert from_config.weighing(c.method) == ("l2rw", scheme_options)
    # glc_plateau: correction_at is the patience (a share of num_steps).
    c.method.l2rw.update(correction="glc_plateau", correction_at=0.05)
    assert (from_config.correction(c), from_config.correction_steps(c)) == ("glc_plateau", 75)
    c.method.name = "erm"
    assert (from_config.correction(c), from_config.correction_steps(c)) == ("none", 0)
    c.method.l2rw.update(correction="none", correction_at=0.1)
    c.method.name = "mwnet"
    assert from_config.weighing(c.method) == (
        "mwnet",
        dict(hidden=100, meta_lr=1e-3, meta_weight_decay=1e-4, normalize=True),
    )
    c.method.name = "resample"
    assert from_config.weighing(c.method) == ("erm", {})
    c.optim.update(
        learning_rate=0.5, lr_boundaries=(2, 4), lr_decay=0.1, momentum=0.0, weight_decay=0.0
    )
    tx = from_config.make_optimizer(c.optim)
    params, grads = np.zeros(1, np.float32), np.ones(1, np.float32)
    state, steps = tx.init(params), []
    for _ in range(5):
        updates, state = tx.update(grads, state, params)
        steps.append(-float(updates[0]))
    np.testing.assert_allclose(steps, [0.5, 0.5, 0.05, 0.05, 0.005], rtol=1e-6)
    assert isinstance(tx, optax.GradientTransformation)
    c.method.name, c.method.finetune_steps, c.num_steps = "finetune", 3, 10
    assert from_config.total_steps(c) == 13
    feed = compose.feed(c, "device")
    assert feed.phases == [("noisy", 0, 10), ("clean", 10, 13)] and feed.total_steps == 13


def test_workdir_paths_keep_a_uri_scheme(tmp_path):
    run = workdir.path("gs://bucket/run")
    assert str(run / "config.json") == "gs://bucket/run/config.json"
    assert workdir.is_remote("gs://bucket/run") and not workdir.is_remote(str(tmp_path))
    assert str(workdir.path("rel/run")).startswith("/")  # local paths are made absolute


def test_reliability_mix_needs_an_even_clean_batch_per_device():
    c = config_lib.default_config()
    c.method.l2rw.mix = "reliability"
    c.data.clean_batch_size = 7
    with pytest.raises(ValueError, match=r"clean_batch_size must be even, got 7"):
        config_lib.validate(c)
    c.data.clean_batch_size, c.data.batch_size, c.data.eval_batch_size = 12, 8, 8
    c.loop.num_devices = 4  # 3 clean rows per device
    with pytest.raises(ValueError, match=r"odd per device; use a multiple of 8"):
        config_lib.validate(c)
    c.data.clean_batch_size = 16
    config_lib.validate(c)
    c.method.l2rw.mix = "mean"
    with pytest.raises(ValueError, match=r"method.l2rw: mix"):
        config_lib.validate(c)


def test_resuming_ignores_the_options_of_schemes_the_run_does_not_use():
    before = config_lib.default_config()
    before.method.name = "erm"
    stored = from_config.as_json(before)
    now = config_lib.default_config()
    now.method.name = "erm"
    now.method.l2rw.mix, now.method.mwnet.hidden = "none", 7  # unused by ERM: same run
    assert config_lib.config_differences(stored, from_config.as_json(now)) == {}
    now.method.name = "l2rw"  # now the l2rw group is used, the mwnet one still not
    assert config_lib.config_differences(stored, from_config.as_json(now)) == {
        "method.name": ("erm", "l2rw"),
        "method.l2rw.mix": ("excess_loss", "none"),
    }


def test_resuming_accepts_the_same_data_file_under_another_path(tmp_path):
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "x.npz", x=np.zeros(1))
    (tmp_path / "link").symlink_to(tmp_path / "d")
    before, now = config_lib.default_config(), config_lib.default_config()
    before.data.dataset = f"npz:{tmp_path}/d/x.npz"
    now.data.dataset = f"npz:{tmp_path}/link/x.npz"
    stored = from_config.as_json(before)
    assert config_lib.config_differences(stored, from_config.as_json(now)) == {}
    now.data.dataset = f"npz:{tmp_path}/d/missing.npz"  # another (here: absent) file differs
    assert list(config_lib.config_differences(stored, from_config.as_json(now))) == ["data.dataset"]


def test_the_default_l2rw_options_are_spelled_once():
    """default_config's method.l2rw literals are config.ROBUST_L2RW, which is methods'
    ROBUST_OPTIONS plus the loss correction: no second copy can drift."""
    from l2rw_jax import methods

    defaults = config_lib.default_config().method.l2rw.to_dict()
    assert {k: defaults[k] for k in config_lib.ROBUST_L2RW} == config_lib.ROBUST_L2RW
    assert {k: config_lib.ROBUST_L2RW[k] for k in methods.ROBUST_OPTIONS} == methods.ROBUST_OPTIONS
    assert set(config_lib.ROBUST_L2RW) - set(methods.ROBUST_OPTIONS) == {
        "correction",
        "correction_at",
    }
    # The paper's rule sets every option the default changes.
    assert set(config_lib.ROBUST_L2RW) <= set(config_lib.PAPER_L2RW)


def test_a_source_of_your_own_keeps_its_labels_unless_asked():
    c = config_lib.default_config()  # noise uniform 0.4
    c.data.update(dataset="npz:/data/mine.npz", background_class=None)
    assert from_config.labels_as_given(c.data)
    opts = from_config.split_options(c.data)
    assert (opts["noise"], opts["ratio"]) == (from_config.LABELS_AS_GIVEN, 0.0)
    assert from_config.noise_note(c.data) == (
        "npz:/data/mine.npz: labels as given; the config's synthetic data.noise='uniform', "
        "data.noise_ratio=0.4 is not applied to a source of your own "
        "(data.corrupt_given_labels=True applies it)."
    )
    assert from_config.describe_data(c.data) == "mine.npz, labels as given"
    # A preset's background flip and its class, or the imbalance subsampling: dropped too.
    c.data.update(noise="background", background_class=3)
    assert from_config.split_options(c.data)["background_class"] is None
    config_lib.validate(c)
    c.data.update(
        dataset="folder:/data/my_images/",
        noise="imbalance",
        noise_ratio=0.0,
        background_class=None,
        majority_fraction=0.9,
    )
    assert from_config.split_options(c.data)["majority_fraction"] is None
    assert from_config.describe_data(c.data) == "my_images, labels as given"
    # Opt in: the noise applies, and the run says so.
    c.data.update(
        dataset="npz:/data/mine.npz",
        noise="uniform",
        noise_ratio=0.4,
        majority_fraction=None,
        corrupt_given_labels=True,
    )
    assert from_config.split_options(c.data)["noise"] == "uniform"
    assert from_config.noise_note(c.data) == (
        "npz:/data/mine.npz: synthetic data.noise='uniform', data.noise_ratio=0.4 applied to "
        "these labels (data.corrupt_given_labels=True)."
    )
    assert from_config.describe_data(c.data) == "mine.npz, 40% uniform flip"
    # Benchmarks always get the config's noise, and nothing is printed.
    c.data.update(dataset="digits", corrupt_given_labels=False)
    assert not from_config.labels_as_given(c.data) and from_config.noise_note(c.data) is None
    assert from_config.describe_data(c.data) == "digits, 40% uniform flip"
    c.data.update(noise="none", noise_ratio=0.0, dataset="npz:/data/mine.npz")
    assert from_config.noise_note(c.data) is None
    assert from_config.describe_data(c.data) == "mine.npz, labels as given"


def test_runs_from_before_the_flag_resume_as_they_were_trained():
    old = config_lib.flatten(config_lib.default_config().to_dict())
    del old["data.corrupt_given_labels"]
    old = config_lib.upgrade(config_lib.unflatten(old))
    # A benchmark run: the flag changes nothing it computes.
    assert config_lib.config_differences(old, config_lib.default_config()) == {}
    # An own source with noise: it was corrupted; resuming it needs the flag.
    old["data"]["dataset"] = "npz:/data/mine.npz"
    now = config_lib.default_config()
    now.data.dataset = "npz:/data/mine.npz"
    assert config_lib.config_differences(old, now) == {"data.corrupt_given_labels": (True, False)}
    now.data.corrupt_given_labels = True
    assert config_lib.config_differences(old, now) == {}


def test_noise_options_not_applied_to_your_data_are_still_checked():
    c = config_lib.default_config()
    c.data.update(dataset="npz:/data/mine.npz", noise_ratio=1.5)
    with pytest.raises(ValueError, match=r"^ratio must be a number in \[0, 1\], got 1\.5\.$"):
        config_lib.validate(c)


def test_a_config_json_written_before_added_fields_resumes_unchanged():
    """A stored config.json without the fields added since (each in ADDED_FIELDS with the
    behaviour runs had before it) has no difference from today's config of the same run."""
    now = config_lib.default_config()
    now.data.corrupt_given_labels = True  # what runs before the field did to every source
    now.method.l2rw.correction = "none"  # and before the loss correction existed
    stored = config_lib.flatten(from_config.as_json(now))
    for field in (
        "data.noise_map",
        "data.noise_matrix",
        "data.label_key",
        "data.true_label_key",
        "data.corrupt_given_labels",
        "method.l2rw.correction",
        "method.l2rw.correction_at",
    ):
        assert field in config_lib.ADDED_FIELDS
        del stored[field]
    assert (
        config_lib.config_differences(config_lib.unflatten(stored), from_config.as_json(now)) == {}
    )
