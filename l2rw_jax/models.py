"""Flax Linen classifiers behind one pure apply function.

Every model here is a Linen module called as ``module(x_BxHxWxC, train, *, features=False,
conv_delta=None)``. The rest of the library never touches Linen: it builds one with
``model_factory.create_model(name, num_classes, **options)`` and then uses three pure functions:

- ``init_model(module, rng, input_shape) -> (params, model_state)``
- ``make_apply_fn(module)(params, model_state, x, train, rng=None)
  -> (logits_BxC, new_model_state)``.
  ``model_state`` is ``{}`` or ``{"batch_stats": ...}``. ``train=True`` normalises with batch
  statistics and returns updated running statistics; ``train=False`` uses the running ones
  and returns ``model_state`` unchanged. ``rng`` feeds dropout (WideResNet only).
- ``make_feature_fn(module)(params, model_state, x, conv_delta=None)
  -> (logits_BxC, {"penultimate": feats_BxD, "conv": fmap_BxhxwxK})``, evaluation mode.
  ``"penultimate"`` is the input of the output layer (nearest-neighbour explanations,
  MMD-critic); ``"conv"`` is the last convolutional feature map (absent for the MLP) and
  ``conv_delta`` is added to it, so Grad-CAM's ``d logit_c / d fmap`` is the gradient with
  respect to ``conv_delta`` at zero.

The output layer of every model here is the Dense named ``OUTPUT_LAYER`` (``"head"``), so its
parameters are ``params["head"]`` (what ``methods.l2rw(meta_params="last")`` moves).
``output_layer_path(module, input_shape)`` finds the output layer of any Linen module, ours or
your own, from what the layers compute rather than from their names.

Why Linen: ``init``/``apply(mutable=...)`` hand out exactly the ``(params, model_state)``
pytrees the functional core works on, with no split/merge step (ARCHITECTURE.md).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2rw_jax import conv as conv_lib
from l2rw_jax import pooling

PyTree = Any

# The name of the output layer (the Dense that returns the logits) in every model here. Why a
# name and not a position: Flax hands the parameters back as a dict with sorted keys, so its
# last entry is whatever sorts last ("_PreActUnit_2" after "Dense_0", "Dense_2" after
# "Dense_10"), not the last layer.
OUTPUT_LAYER = "head"

# BatchNorm: running averages with decay 0.9, epsilon 1e-5 (Flax/PyTorch defaults for CIFAR
# ResNets); the statistics live in the "batch_stats" collection.
_BN = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
# He et al. 2015 initialisation, normal with std sqrt(2 / fan_out) as in the official
# L2RW ResNet code (resnet_module.py: stddev sqrt(2 / (k * k * out_filters))).
_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# LeNet's convolutions go through conv.conv_general_dilated: same parameters and values as
# nn.Conv; the first (1 input channel) is ~7x faster on XLA:CPU (see l2rw_jax/conv.py).
_Conv = functools.partial(nn.Conv, conv_general_dilated=conv_lib.conv_general_dilated)


def max_pool_same(x_BxHxWxC: jax.Array, window: int, stride: int) -> jax.Array:
    """Max-pool with TF/Flax ``"SAME"`` padding: :func:`l2rw_jax.pooling.max_pool_same`.

    Same values as ``nn.max_pool(x, (window, window), (stride, stride), "SAME")``. Why not
    that: on XLA:CPU the derivatives of ``reduce_window`` (select-and-scatter for the vjp,
    select-and-gather for the jvp) cost several times the whole rest of a LeNet step; the
    separable pool with a custom jvp costs a fraction of it in the forward, jvp (the
    forward-mode meta-step) and vjp passes (see ``l2rw_jax/pooling.py``).
    """
    return pooling.max_pool_same(x_BxHxWxC, window, stride)


def _outputs(logits, penultimate, conv, features):
    if not features:
        return logits
    feats = {"penultimate": penultimate}
    if conv is not None:
        feats["conv"] = conv
    return logits, feats


def _add_delta(fmap, conv_delta):
    # Why a tangent-friendly add: Grad-CAM differentiates with respect to conv_delta at 0.
    return fmap if conv_delta is None else fmap + conv_delta


class LeNet(nn.Module):
    """The LeNet of the official L2RW MNIST code (uber-research, mnist/reweight.py).

    Three 5x5 SAME convolutions with 16, 32, 64 channels, each followed by a 3x3 stride-2
    SAME max-pool and ReLU (28 -> 14 -> 7 -> 4), a 100-unit ReLU layer and the output layer.
    Weights truncated-normal with stddev 0.1 and zero biases, as in the official code. The
    official code has a single sigmoid output for its binary task; here the output has
    ``num_classes`` logits (2 for 4-vs-9 under softmax cross-entropy).
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False, *, features: bool = False, conv_delta=None):
        del train  # no BatchNorm, no dropout
        w_init = nn.initializers.truncated_normal(0.1)
        for channels in (16, 32, 64):
            x = _Conv(channels, (5, 5), padding="SAME", kernel_init=w_init)(x)
            x = nn.relu(max_pool_same(x, 3, 2))
        conv = _add_delta(x, conv_delta)
        x = conv.reshape((conv.shape[0], -1))
        penultimate = nn.relu(nn.Dense(100, kernel_init=w_init)(x))
        logits = nn.Dense(self.num_classes, kernel_init=w_init, name=OUTPUT_LAYER)(penultimate)
        return _outputs(logits, penultimate, conv, features)


class _PreActUnit(nn.Module):
    """Pre-activation residual unit of the official L2RW ResNet (resnet_module.py _residual).

    ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3`` plus a parameter-free shortcut: average pool
    by the stride, then zero-pad the channels (He et al. 2016 option A).
    """

    out_channels: int
    stride: int
    preactivate: bool

    @nn.compact
    def __call__(self, x, train: bool):
        h = x
        if self.preactivate:
            h = nn.relu(_BN(use_running_average=not train)(h))
        h = nn.Conv(
            self.out_channels,
            (3, 3),
            (self.stride, self.stride),
            padding="SAME",
            use_bias=False,
            kernel_init=_he_fan_out,
        )(h)
        h = nn.relu(_BN(use_running_average=not train)(h))
        h = nn.Conv(
            self.out_channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_he_fan_out
        )(h)
        shortcut = x
        if self.stride > 1:
            shortcut = nn.avg_pool(
                shortcut,
                (self.stride, self.stride),
                strides=(self.stride, self.stride),
                padding="SAME",
            )
        extra = self.out_channels - x.shape[-1]
        if extra > 0:
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return h + shortcut


class ResNet32(nn.Module):
    """CIFAR ResNet-32 with BatchNorm (He et al. 2016; the official L2RW ResNet-32 config).

    3x3 conv (16) + BN + ReLU, then 3 stages x ``units_per_stage`` (5) pre-activation basic
    units with 16/32/64 channels (strides 1, 2, 2), final BN + ReLU, global average pool and
    the output layer: 1 + 3 * 5 * 2 + 1 = 32 layers. ``units_per_stage`` and ``widths`` only
    exist so tests can build a tiny one.
    """

    num_classes: int = 10
    units_per_stage: int = 5
    widths: Sequence[int] = (16, 32, 64)

    @nn.compact
    def __call__(self, x, train: bool = False, *, features: bool = False, conv_delta=None):
        x = nn.Conv(
            self.widths[0], (3, 3), padding="SAME", use_bias=False, kernel_init=_he_fan_out
        )(x)
        x = nn.relu(_BN(use_running_average=not train)(x))
        for stage, channels in enumerate(self.widths):
            for unit in range(self.units_per_stage):
                stride = 2 if (stage > 0 and unit == 0) else 1
                # The very first unit follows the stem's BN-ReLU, so it skips its own.
                x = _PreActUnit(channels, stride, preactivate=(stage, unit) != (0, 0))(x, train)
        x = nn.relu(_BN(use_running_average=not train)(x))
        conv = _add_delta(x, conv_delta)
        penultimate = jnp.mean(conv, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name=OUTPUT_LAYER)(penultimate)
        return _outputs(logits, penultimate, conv, features)


class _WideBasic(nn.Module):
    """Wide-ResNet block (Zagoruyko & Komodakis 2016): BN-ReLU-conv-BN-ReLU-dropout-conv."""

    out_channels: int
    stride: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, train: bool):
        o = nn.relu(_BN(use_running_average=not train)(x))
        shortcut = x
        if self.stride > 1 or x.shape[-1] != self.out_channels:
            shortcut = nn.Conv(
                self.out_channels,
                (1, 1),
                (self.stride, self.stride),
                use_bias=False,
                kernel_init=_he_fan_out,
            )(o)
        h = nn.Conv(
            self.out_channels,
            (3, 3),
            (self.stride, self.stride),
            padding="SAME",
            use_bias=False,
            kernel_init=_he_fan_out,
        )(o)
        h = nn.relu(_BN(use_running_average=not train)(h))
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        h = nn.Conv(
            self.out_channels, (3, 3), padding="SAME", use_bias=False, kernel_init=_he_fan_out
        )(h)
        return h + shortcut


class WideResNet(nn.Module):
    """WRN-depth-width (default WRN-28-10, dropout 0.3), Zagoruyko & Komodakis 2016.

    ``(depth - 4) / 6`` blocks per stage, channels 16 * width, 32 * width, 64 * width after a
    16-channel stem; 1x1 projection shortcuts where the shape changes; dropout between the two
    convolutions of a block (needs ``rng`` in training mode).
    """

    num_classes: int = 10
    depth: int = 28
    width: int = 10
    dropout_rate: float = 0.3

    @nn.compact
    def __call__(self, x, train: bool = False, *, features: bool = False, conv_delta=None):
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ValueError(f"WideResNet depth={self.depth} must be 6n + 4 with n >= 1.")
        blocks = (self.depth - 4) // 6
        x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=_he_fan_out)(x)
        for stage, channels in enumerate((16 * self.width, 32 * self.width, 64 * self.width)):
            for block in range(blocks):
                stride = 2 if (stage > 0 and block == 0) else 1
                x = _WideBasic(channels, stride, self.dropout_rate)(x, train)
        x = nn.relu(_BN(use_running_average=not train)(x))
        conv = _add_delta(x, conv_delta)
        penultimate = jnp.mean(conv, axis=(1, 2))
        logits = nn.Dense(self.num_classes, name=OUTPUT_LAYER)(penultimate)
        return _outputs(logits, penultimate, conv, features)


class SmallCNN(nn.Module):
    """A small CNN for CPU runs and tests: per entry of ``channels`` a 3x3 conv, optional
    BatchNorm, ReLU and 2x2 max-pool; then global average pool, a ``hidden``-unit ReLU layer
    and the output layer."""

    num_classes: int = 10
    channels: Sequence[int] = (16, 32)
    hidden: int = 64
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False, *, features: bool = False, conv_delta=None):
        for channels in self.channels:
            x = nn.Conv(channels, (3, 3), padding="SAME", use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = _BN(use_running_average=not train)(x)
            x = max_pool_same(nn.relu(x), 2, 2)
        conv = _add_delta(x, conv_delta)
        penultimate = nn.relu(nn.Dense(self.hidden)(jnp.mean(conv, axis=(1, 2))))
        logits = nn.Dense(self.num_classes, name=OUTPUT_LAYER)(penultimate)
        return _outputs(logits, penultimate, conv, features)


class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs (tests, tabular toys); ``hidden=()`` is a
    linear (softmax-regression) model whose "penultimate" features are the flattened inputs."""

    num_classes: int = 10
    hidden: Sequence[int] = (32,)

    @nn.compact
    def __call__(self, x, train: bool = False, *, features: bool = False, conv_delta=None):
        del train
        if conv_delta is not None:
            raise ValueError("MLP has no convolutional feature map; conv_delta must be None.")
        x = x.reshape((x.shape[0], -1))
        for units in self.hidden:
            x = nn.relu(nn.Dense(units)(x))
        logits = nn.Dense(self.num_classes, name=OUTPUT_LAYER)(x)
        return _outputs(logits, x, None, features)


# The zoo by name (model_factory.create_model builds from it).
MODELS: dict[str, type[nn.Module]] = {
    "lenet": LeNet,
    "resnet32": ResNet32,
    "wrn": WideResNet,
    "small_cnn": SmallCNN,
    "mlp": MLP,
}


def init_model(
    module: nn.Module, rng: jax.Array, input_shape: Sequence[int]
) -> tuple[PyTree, PyTree]:
    """Initialises ``module`` for inputs of ``input_shape`` (with a leading batch dimension,
    e.g. ``(1, 28, 28, 1)``) -> ``(params, model_state)``; ``model_state`` is ``{}`` or
    ``{"batch_stats": ...}``."""
    if len(input_shape) < 2:
        raise ValueError(f"input_shape={tuple(input_shape)} needs a leading batch dimension.")
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    # Runs once: XLA's backend optimisations would cost several times more compile time (e.g.
    # ~10 s for ResNet-32 on a 2-core CPU) than they could ever save at run time.
    init = jax.jit(
        functools.partial(module.init, train=False),
        compiler_options={"xla_backend_optimization_level": 0},
    )
    variables = init(rng, x)
    variables = dict(variables)
    params = variables.pop("params")
    return params, variables


def make_apply_fn(module: nn.Module) -> Callable[..., tuple[jax.Array, PyTree]]:
    """``apply_fn(params, model_state, x_BxHxWxC, train, rng=None) -> (logits_BxC, new_state)``.

    ``train`` must be a Python bool. In training mode BatchNorm uses the batch statistics and
    the running averages in the returned state are updated; in evaluation mode the running
    averages are used and ``model_state`` is returned as is.
    """

    def apply_fn(params, model_state, x, train: bool, rng=None):
        variables = {"params": params, **model_state}
        rngs = None if rng is None else {"dropout": rng}
        if train and model_state:
            logits, new_state = module.apply(
                variables, x, train=True, rngs=rngs, mutable=list(model_state)
            )
            return logits, dict(new_state)
        return module.apply(variables, x, train=train, rngs=rngs), model_state

    return apply_fn


def make_feature_fn(module: nn.Module) -> Callable[..., tuple[jax.Array, dict]]:
    """``feature_fn(params, model_state, x, conv_delta=None) -> (logits_BxC, feats)``.

    Evaluation mode. ``feats["penultimate"]`` (``B x D``) is the input of the output layer;
    ``feats["conv"]`` (``B x h x w x K``, not for the MLP) the last convolutional feature map,
    to which ``conv_delta`` is added. Grad-CAM for class ``c``::

        _, feats = feature_fn(params, state, x)
        d_fmap = jax.grad(lambda d: feature_fn(params, state, x, d)[0][:, c].sum())(
            jnp.zeros_like(feats["conv"]))
    """

    def feature_fn(params, model_state, x, conv_delta=None):
        return module.apply(
            {"params": params, **model_state}, x, train=False, features=True, conv_delta=conv_delta
        )

    return feature_fn


def output_layer_path(module: nn.Module, input_shape: Sequence[int]) -> tuple[str, ...]:
    """Where the output layer's parameters are in ``params``: the layer that returns the logits.

    ``module(x)`` is traced once on zeros of ``input_shape`` (``jax.eval_shape``: nothing is
    compiled or run) while every method call of every submodule is recorded; the output layer
    is the deepest submodule that holds parameters and whose call returned the very array the
    model returns. Names and their order play no part, so this also finds the output layer of
    a Linen module of your own (give it to ``methods.l2rw(meta_params=path)``). For every model
    of this file it is ``(OUTPUT_LAYER,)``.

    Args:
      module: a Linen module called as ``module(x)`` (for the models here: evaluation mode)
        that returns the logits as one array.
      input_shape: with a leading batch dimension, e.g. ``(1, 28, 28, 1)``.

    Returns:
      ``path``, a tuple of keys: ``params[path[0]][path[1]]...`` are the output layer's
      parameters.

    Raises:
      ValueError: ``module`` does not return one array, or no submodule with parameters
        returns it (e.g. the logits are scaled after the last layer): then no single layer
        outputs the logits, and the parameters to move must be named by hand.

    Example:
      >>> output_layer_path(MLP(num_classes=3, hidden=(4,) * 12), (1, 5))
      ('head',)
    """
    if len(input_shape) < 2:
        raise ValueError(f"input_shape={tuple(input_shape)} needs a leading batch dimension.")
    calls = []  # (submodule path, returned value) of every method call, in call order
    matched = []  # paths of the submodules whose call returned the model's output itself

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        calls.append((context.module.path, out))
        return out

    def trace(x):
        with nn.intercept_methods(record):
            out, variables = module.init_with_output(
                {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x
            )
        if not isinstance(out, jax.Array):
            raise ValueError(
                f"{type(module).__name__}(x) returns {type(out).__name__}; "
                f"output_layer_path needs a module that returns the logits array."
            )
        # Identity, not equality: the output layer's result is the very tracer returned.
        matched.extend(path for path, value in calls if path and value is out)
        return variables.get("params", {})

    params = jax.eval_shape(trace, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    found = [path for path in matched if jax.tree.leaves(_subtree(params, path))]
    if not found:
        raise ValueError(
            f"No layer with parameters of {type(module).__name__} returns its output (is it "
            f"computed after the last layer?); name the parameters to move by hand."
        )
    # A wrapper (e.g. nn.Sequential) returns its last layer's output too: the deepest is the layer.
    return tuple(max(found, key=len))


def _subtree(params: PyTree, path: Sequence[str]) -> PyTree:
    """``params[path[0]][path[1]]...``, or None where the path does not exist."""
    for key in path:
        if not hasattr(params, "keys") or key not in params:
            return None
        params = params[key]
    return params
