"""A plain Flax Linen module, with none of the library's conventions, trains and is audited.

The modules below take no ``features=`` / ``conv_delta=``, name nothing ``head`` and (the first)
take no training flag. Through ``l2rw_jax.adapter`` their apply function is ``module.apply``
itself, the penultimate features feed the output layer, ``conv_delta``'s gradient is the
gradient with respect to the last convolution's output computed by hand, and
``config.model = "<this module>:BNDropNet"`` trains with L2RW (``meta_params="last"``) and is
audited end to end, nearest neighbours and Grad-CAM included.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import l2rw_jax

import tiny_data
from l2rw_jax import adapter
from l2rw_jax import config as config_lib
from l2rw_jax import model_factory, models
from l2rw_jax import train

SHAPE = (8, 8, 1)
SPEC = f"{__name__}:BNDropNet"  # importable: pytest has imported this file under __name__


class PlainCNN(nn.Module):
    """No training flag, automatic names; the output layer is Dense_1."""

    num_classes: int = 10
    width: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        x = nn.relu(nn.Dense(8)(jnp.mean(x, axis=(1, 2))))
        return nn.Dense(self.num_classes)(x)


class BNDropNet(nn.Module):
    """setup style, a ``train`` flag, BatchNorm and dropout; the class count has its own name."""

    classes: int

    def setup(self):
        self.stem = nn.Conv(4, (3, 3))
        self.norm = nn.BatchNorm(momentum=0.9)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Dense(self.classes)

    def __call__(self, x, train: bool = False):
        h = nn.relu(self.norm(self.stem(x), use_running_average=not train))
        return self.out(self.drop(jnp.mean(h, axis=(1, 2)), deterministic=not train))


class SharedConv(nn.Module):
    """One convolution called twice: Grad-CAM's map is its second output."""

    @nn.compact
    def __call__(self, x):
        conv = nn.Conv(1, (3, 3))
        return nn.Dense(2)(conv(nn.relu(conv(x))).reshape((x.shape[0], -1)))


class Scaled(nn.Module):
    """The logits are computed after the last layer: no layer returns them."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x):
        return 2.0 * nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def not_a_module():
    return None


def _x(n, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(dtype)


def _to64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _conv(p, x):
    return nn.Conv(p["kernel"].shape[-1], (3, 3)).apply({"params": p}, x)


def _dense(p, h):
    return h @ p["kernel"] + p["bias"][None, :]


def _assert_grad_cam_gradient(feature_fn, params, state, x, fmap, head):
    """d logit_c / d conv_delta at 0 == d head(fmap)_c / d fmap, ``head`` written by hand."""
    c = 1
    _, feats = feature_fn(params, state, x)
    np.testing.assert_allclose(feats["conv"], fmap, rtol=1e-12, atol=1e-12)
    g = jax.grad(lambda d: feature_fn(params, state, x, d)[0][:, c].sum())(jnp.zeros_like(fmap))
    g_hand = jax.grad(lambda f: head(f)[:, c].sum())(fmap)
    assert np.max(np.abs(g_hand)) > 1e-3
    np.testing.assert_allclose(g, g_hand, rtol=1e-12, atol=1e-14)


def test_plain_module_is_its_own_apply_with_exact_features_and_grad_cam_gradient():
    module = PlainCNN(num_classes=3)
    adapted = adapter.adapt(module, num_classes=3)
    assert adapted.train_kwarg is None
    key = jax.random.key(0)
    params, state = models.init_model(adapted, key, (1, *SHAPE))
    # The module's own variables, the same numbers for the same key (no extra level).
    zeros = jnp.zeros((1, *SHAPE))
    jax.tree.map(np.testing.assert_array_equal, adapted.init(key, zeros), module.init(key, zeros))
    assert state == {} and jax.tree.structure(params) == jax.tree.structure(
        module.init(key, zeros)["params"]
    )
    path = models.output_layer_path(adapted, (1, *SHAPE))
    assert path == adapter.output_layer(adapted, (1, *SHAPE)) == ("Dense_1",)
    assert adapter.resolve_meta_params(adapted, {"meta_params": "last"}, (1, *SHAPE)) == {
        "meta_params": ("Dense_1",)
    }

    with jax.enable_x64(True):
        p, x = _to64(params), _x(4)
        apply_fn, feature_fn = models.make_apply_fn(adapted), models.make_feature_fn(adapted)
        own = module.apply({"params": p}, x)
        for train_mode in (False, True):
            logits, new_state = apply_fn(p, {}, x, train_mode)
            np.testing.assert_array_equal(logits, own)
            assert new_state == {}
        logits, feats = feature_fn(p, {}, x)
        np.testing.assert_array_equal(logits, own)
        # The penultimate features are the output layer's input: logits = f W + b.
        np.testing.assert_allclose(
            logits, _dense(p["Dense_1"], feats["penultimate"]), rtol=1e-12, atol=1e-12
        )
        assert feats["penultimate"].shape == (4, 8)
        # Grad-CAM's map is the last convolution's output (before its ReLU).
        fmap = _conv(p["Conv_1"], jax.nn.relu(_conv(p["Conv_0"], x)))
        head = lambda f: _dense(
            p["Dense_1"], jax.nn.relu(_dense(p["Dense_0"], jnp.mean(jax.nn.relu(f), axis=(1, 2))))
        )
        _assert_grad_cam_gradient(feature_fn, p, {}, x, fmap, head)


def test_batchnorm_dropout_module_with_a_train_flag():
    module = BNDropNet(classes=3)
    adapted = model_factory.create_model(SPEC, 3, classes=3)
    assert isinstance(adapted, adapter.Adapted) and adapted.train_kwarg == "train"
    key = jax.random.key(1)
    params, state = models.init_model(adapted, key, (1, *SHAPE))
    zeros = jnp.zeros((1, *SHAPE))
    reference = module.init(key, zeros)
    jax.tree.map(np.testing.assert_array_equal, adapted.init(key, zeros), reference)
    assert jax.tree.structure((params, state)) == jax.tree.structure(
        (reference["params"], {"batch_stats": reference["batch_stats"]})
    )
    assert models.output_layer_path(adapted, (1, *SHAPE)) == ("out",)

    with jax.enable_x64(True):
        p, s, x, rng = _to64(params), _to64(state), _x(4, seed=1), jax.random.key(2)
        # Non-trivial running statistics, so evaluation differs from training.
        s = jax.tree.map(lambda a: a + 0.3, s)
        apply_fn, feature_fn = models.make_apply_fn(adapted), models.make_feature_fn(adapted)
        logits, new_state = apply_fn(p, s, x, True, rng)
        own, own_state = module.apply(
            {"params": p, **s}, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        np.testing.assert_array_equal(logits, own)
        jax.tree.map(np.testing.assert_array_equal, new_state, dict(own_state))
        logits, same_state = apply_fn(p, s, x, False)
        np.testing.assert_array_equal(logits, module.apply({"params": p, **s}, x))
        assert same_state is s

        logits, feats = feature_fn(p, s, x)
        np.testing.assert_allclose(
            logits, _dense(p["out"], feats["penultimate"]), rtol=1e-12, atol=1e-12
        )
        bn = lambda f: nn.BatchNorm(use_running_average=True).apply(
            {"params": p["norm"], "batch_stats": s["batch_stats"]["norm"]}, f
        )
        head = lambda f: _dense(p["out"], jnp.mean(jax.nn.relu(bn(f)), axis=(1, 2)))
        _assert_grad_cam_gradient(feature_fn, p, s, x, _conv(p["stem"], x), head)


def test_named_layers_override_the_automatic_choice():
    module = PlainCNN(num_classes=3)
    params = module.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))["params"]
    x = _x(2, dtype=np.float32)
    named = adapter.adapt(
        module, conv_layer="Conv_0", penultimate_layer=("Dense_0",), output_layer="Dense_0"
    )
    logits, feats = models.make_feature_fn(named)(params, {}, x)
    np.testing.assert_array_equal(logits, module.apply({"params": params}, x))
    np.testing.assert_allclose(feats["conv"], _conv(params["Conv_0"], x), rtol=1e-6, atol=1e-6)
    hidden = jnp.mean(jax.nn.relu(_conv(params["Conv_1"], jax.nn.relu(feats["conv"]))), (1, 2))
    np.testing.assert_allclose(
        feats["penultimate"], _dense(params["Dense_0"], hidden), rtol=1e-5, atol=1e-6
    )  # Dense_0's output, before its ReLU
    assert adapter.output_layer(named, (1, *SHAPE)) == ("Dense_0",)

    # A convolution called twice: conv_delta lands on its last output only.
    shared = adapter.adapt(SharedConv())
    sp = SharedConv().init(jax.random.key(0), x)["params"]
    _, feats = models.make_feature_fn(shared)(sp, {}, x)
    second = _conv(sp["Conv_0"], jax.nn.relu(_conv(sp["Conv_0"], x)))
    np.testing.assert_allclose(feats["conv"], second, rtol=1e-6, atol=1e-6)
    delta = np.random.default_rng(3).normal(size=second.shape).astype(np.float32)
    moved, _ = models.make_feature_fn(shared)(sp, {}, x, delta)
    np.testing.assert_allclose(
        moved, _dense(sp["Dense_0"], (second + delta).reshape(2, -1)), rtol=1e-5, atol=1e-5
    )

    # Layers held in fields (nn.Sequential) keep their paths: found, and named.
    seq = nn.Sequential([nn.Conv(2, (3, 3)), nn.relu, lambda h: h.reshape((2, -1)), nn.Dense(3)])
    seq_params = seq.init(jax.random.key(0), x)["params"]
    assert adapter.output_layer(adapter.adapt(seq), x.shape) == ("layers_3",)
    _, feats = models.make_feature_fn(adapter.adapt(seq, conv_layer="layers_0"))(seq_params, {}, x)
    np.testing.assert_allclose(
        feats["conv"], _conv(seq_params["layers_0"], x), rtol=1e-6, atol=1e-6
    )

    # Without any convolution: no map, as for the MLP; conv_delta is refused.
    flat = adapter.adapt(Scaled(), output_layer="Dense_0")
    fp = Scaled().init(jax.random.key(0), x)["params"]
    _, feats = models.make_feature_fn(flat)(fp, {}, x)
    assert set(feats) == {"penultimate"} and feats["penultimate"].shape == (2, 64)
    with pytest.raises(ValueError, match="Scaled has no convolutional feature map"):
        models.make_feature_fn(flat)(fp, {}, x, np.zeros((2, 8, 8, 1), np.float32))
    for bad, match in (
        (dict(conv_layer="Dense_0"), r"returns a 2-D array"),
        (dict(conv_layer="Conv_9"), r"\('Conv_9',\) is not a submodule"),
        (dict(penultimate_layer="a/b"), r"\('a', 'b'\) is not a submodule"),
    ):
        with pytest.raises(ValueError, match=match):
            models.make_feature_fn(adapter.adapt(module, **bad))(params, {}, x)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A tiny learnable 10-class dataset of 8x8 images (class c: a bright pixel c, plus noise)."""
    return tiny_data.write_tiny_npz(
        str(tmp_path_factory.mktemp("data") / "tiny.npz"), num_train=300
    )


def _config(npz, model, **options):
    c = tiny_data.tiny_config(
        npz,
        {
            "data": dict(hyper_val_size=0, eval_batch_size=50),
            "method": {"name": "l2rw", "l2rw": {"warmup_steps": 0}},
            "num_steps": 4,
            "loop": dict(log_every=2, eval_every=4, checkpoint_every=4),
        },
    )
    # Assigned, not merged: the user's model takes only its own options.
    c.model.name, c.model.options = model, ml_collections.ConfigDict(options)
    return c


def test_import_string_module_trains_with_l2rw_and_is_audited(npz, tmp_path):
    from experiments import audit as audit_main
    from l2rw_jax import audit
    from l2rw_jax.audit import mistakes

    # meta_params="last" (the config's default) must move the user's output layer, "out":
    # with "last" read as params["head"] this run fails.
    config = _config(npz, SPEC, classes=10)
    assert config.method.l2rw.meta_params == "last"
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    assert results["completed"] and results["num_steps"] == 4
    with np.load(os.path.join(workdir, "example_weights.npz")) as z:
        assert np.any(z["mean_meta_grad"] != 0)

    cfg = audit.default_config()
    cfg.update(
        batch_size=50,
        epsilons=(0.0, 0.1),
        pgd_steps=2,
        robust_examples=32,
        min_eps_examples=32,
        eps_max=1.0,
        bisection_steps=2,
        bias_examples_per_class=5,
        num_prototypes=2,
        num_criticisms=2,
        num_mistakes=2,
        ig_steps=4,
        num_suspects=8,
        neighbor_pool=64,
    )
    res = audit_main.audit_run(workdir, cfg)
    # The loader rebuilt the same model and parameters the run evaluated.
    assert res["mistakes"]["top_k_accuracy"]["top1"] == pytest.approx(
        results["final_test_accuracy"]["per_seed"][0], abs=1e-6
    )
    gallery = res["mistakes"]["gallery"]
    assert len(gallery) == 2 and all(len(g["neighbors"]) == cfg.num_neighbors for g in gallery)
    assert not any("Grad-CAM" in note for note in res["meta"]["notes"])
    with open(os.path.join(workdir, "audit", "audit.json")) as f:
        assert json.load(f)["meta"]["run"]["model"] == SPEC
    run = audit_main.load_run(workdir)
    rows = [g["test_row"] for g in gallery]
    cam = mistakes.grad_cam(
        run["feature_fn"],
        run["params"],
        run["model_state"],
        run["test"]["image"][rows],
        np.zeros(2, np.int32),
    )
    assert cam["cam"].shape == (2, 8, 8) and np.all(np.isfinite(cam["cam"]))
    assert np.any(cam["cam"] > 0)


def test_bad_models_fail_with_one_clear_line(npz, tmp_path):
    cases = [
        ("nope", {}, r"Unknown model 'nope'.*'package.module:ClassName'"),
        ("no_such_package_xyz:Net", {}, r"cannot import 'no_such_package_xyz'"),
        (f"{__name__}:Missing", {}, r"has no attribute 'Missing'"),
        (f"{__name__}:not_a_module", {}, r"not a flax.linen.Module class"),
        (":Net", {}, r"must be 'package.module:ClassName'"),
        (SPEC, {"classes": 3, "depth": 2}, r"Unknown option\(s\) \['depth'\].*\['classes'\]"),
        (SPEC, {"classes": 3, "adapter": {"conv": "stem"}}, r"Unknown adapter option\(s\)"),
        (SPEC, {"classes": 3, "adapter": {"train_kwarg": "mode"}}, r"train_kwarg='mode'"),
    ]
    for spec, options, match in cases:
        with pytest.raises(ValueError, match=match):
            model_factory.create_model(spec, 3, **options)
    with pytest.raises(ValueError, match=r"no_such_package_xyz"):  # before any work
        config_lib.validate(_config(npz, "no_such_package_xyz:Net"))

    class TwoFlags(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False, deterministic: bool = True):
            return nn.Dense(2)(x)

    class NeedsMode(nn.Module):
        @nn.compact
        def __call__(self, x, mode):
            return nn.Dense(2)(x)

    with pytest.raises(ValueError, match=r"several training flags \['train', 'deterministic'\]"):
        adapter.adapt(TwoFlags())
    assert adapter.adapt(TwoFlags(), train_kwarg="deterministic").train_kwarg == "deterministic"
    with pytest.raises(ValueError, match=r"requires \['mode'\] besides the input"):
        adapter.adapt(NeedsMode())
    with pytest.raises(ValueError, match="takes a module instance, got the class PlainCNN"):
        adapter.adapt(PlainCNN)
    # The wrong output format is a public exception (a ValueError), exported at the top.
    with pytest.raises(l2rw_jax.ModelOutputError, match=r"returns 3 logits for 10 classes"):
        models.init_model(
            model_factory.create_model(SPEC, 10, classes=3), jax.random.key(0), (1, *SHAPE)
        )
    assert issubclass(l2rw_jax.ModelOutputError, ValueError)
    assert l2rw_jax.ModelOutputError is adapter.ModelOutputError
    assert not l2rw_jax.ModelOutputError.__name__.startswith("_")

    # No layer returns the logits: the error names the way out, in the library and in training.
    scaled = adapter.adapt(Scaled())
    with pytest.raises(ValueError, match=r"Scaled returns its logits.*output_layer"):
        adapter.output_layer(scaled, (1, *SHAPE))
    with pytest.raises(ValueError, match=r"Scaled returns its logits.*adapter.output_layer"):
        train.train_and_evaluate(_config(npz, f"{__name__}:Scaled"), str(tmp_path / "scaled"))
    assert adapter.output_layer(adapter.adapt(Scaled(), output_layer="Dense_0"), (1, *SHAPE)) == (
        "Dense_0",
    )
