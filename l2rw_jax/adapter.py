"""Any Flax Linen classifier behind the library's model contract.

The models of :mod:`l2rw_jax.models` are called as ``module(x, train, *, features=False,
conv_delta=None)``. A module of your own needs none of that: ``adapt(module)`` wraps it in
:class:`Adapted`, a Linen module that follows the contract, so ``models.init_model``,
``models.make_apply_fn``, ``models.make_feature_fn``, training and the audit take it as they
take a zoo model. The wrapped module is bound to the wrapper's own scope, so its ``params``
and ``batch_stats`` are exactly those of ``module.init``: no extra level, and the same numbers
for the same key.

How the module is called. ``module(x)``, or ``module(x, <flag>=...)`` when ``__call__`` takes
one of the training flags of :data:`TRAIN_KWARGS` (found from its signature, or named with
``train_kwarg``): ``train``, ``training``, ``is_training`` get the library's ``train``;
``deterministic`` and ``use_running_average`` get ``not train``. BatchNorm statistics live in
``batch_stats`` (updated in training mode), dropout draws from the ``"dropout"`` rng. A module
without a flag must compute the same thing in both modes. It must return the logits, one
``B x C`` array.

What the audit gets, without any convention in the module (Flax's ``nn.intercept_methods``
sees every submodule call; ``model_options.adapter`` or the keyword arguments of
:func:`adapt` name the layers by their path in ``params`` instead):

- the output layer: ``models.output_layer_path`` (the deepest submodule with parameters whose
  call returns the logits), or ``output_layer``. ``methods.l2rw(meta_params="last")`` of a
  training config moves it (:func:`resolve_meta_params`).
- ``feats["penultimate"]``: the input of the output layer's last call, flattened to ``B x D``
  (so ``logits = penultimate @ W + b`` for a Dense output layer), or the output of the
  ``penultimate_layer``.
- ``feats["conv"]``: the output of the last call of a convolution (``nn.Conv``,
  ``nn.ConvLocal``, ``nn.ConvTranspose``) with a ``B x h x w x K`` output, in call order, or of
  ``conv_layer``; absent when there is none (no Grad-CAM, as for the MLP). ``conv_delta`` is
  added to that output inside the forward pass, so ``d logit / d conv_delta`` at 0 is
  ``d logit / d A`` for ``A`` that map: Grad-CAM's gradient, exact.

Grad-CAM (Selvaraju et al. 2017, Eq. 1-2) weighs the feature maps ``A^k`` of a convolutional
layer, the last one by default, by the spatial mean of ``d y_c / d A^k``; nothing in it needs
``A >= 0``. The zoo models hand it the
map after the last conv's nonlinearity (and pooling), as the authors' code does (VGG-16's
``relu5_3``); the adapter hands it the last convolution's own output, before whatever follows
it (bias included, BatchNorm and ReLU not), because that is the last layer it can find in any
module. Same formula, a different ``A``: where a ReLU follows, ``d y / d A`` is the
post-ReLU gradient masked by ``A > 0`` and the map can differ. To use a later map, name a
submodule that returns it (e.g. a conv block ending in its ReLU) as ``conv_layer``.

``config.model = "package.module:ClassName"`` builds a module with :func:`import_model`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2rw_jax import models

Path = tuple[str, ...]

# The training flags a module's __call__ may take, and whether the flag is `train` itself
# (True) or its negation (False).
TRAIN_KWARGS = {
    "train": True,
    "training": True,
    "is_training": True,
    "deterministic": False,
    "use_running_average": False,
}
# Layers whose output can be Grad-CAM's map (when it is B x h x w x K).
CONV_LAYERS = (nn.Conv, nn.ConvLocal, nn.ConvTranspose)
# The keys of model_options["adapter"] (the keyword arguments of adapt).
ADAPTER_OPTIONS = ("train_kwarg", "output_layer", "penultimate_layer", "conv_layer")


class ModelOutputError(ValueError):
    """A user's module does not return the logits: its output is not one ``B x C`` array (a
    tuple, a dict, another shape), or ``C`` is not the data's number of classes.

    Raised by :class:`Adapted` when the module is first called (``init_model``, a trace), and
    by :func:`output_layer` unchanged. A ``ValueError``, so ``except ValueError`` catches it
    with every other bad input; exported as ``l2rw_jax.ModelOutputError``.
    """


@dataclasses.dataclass(frozen=True, eq=False)
class Unbound:
    """Holds the wrapped module out of Flax's reach. A module in a field of another is bound
    as its child, one level down in ``params``, before the wrapper runs; ``nn.share_scope``
    lifts that level but leaves ``Module.path`` stale (the old level) for the submodules that
    the wrapped module holds in its own fields (``nn.Sequential``'s layers), and the paths are
    what the adapter matches layers by."""

    module: nn.Module


class Adapted(nn.Module):
    """A Linen module of the user's behind the model contract (module docstring); build it
    with :func:`adapt` or :func:`import_model`.

    Attributes:
      wrapped: ``Unbound(module)``, the wrapped module (``self.module``).
      train_kwarg: the training flag of ``module.__call__`` (a key of :data:`TRAIN_KWARGS`),
        or None: called as ``module(x)``.
      num_classes: when given, the logits must be ``B x num_classes``.
      output_layer, penultimate_layer, conv_layer: paths in ``params`` (tuples of keys) that
        replace the automatic choice; None: automatic.
    """

    wrapped: Unbound
    train_kwarg: str | None = None
    num_classes: int | None = None
    output_layer: Path | None = None
    penultimate_layer: Path | None = None
    conv_layer: Path | None = None

    @property
    def module(self) -> nn.Module:
        return self.wrapped.module

    def setup(self):
        # The wrapped module is bound to this module's own scope (as apply binds a root
        # module): its variables, names and paths are exactly those of module.init. Set
        # without Flax's __setattr__, which would make it a child, one level down.
        object.__setattr__(self, "_bound", self.module.copy(parent=self.scope))

    def __call__(self, x, train: bool = False, *, features: bool = False, conv_delta=None):
        flag = {}
        if self.train_kwarg is not None:
            flag[self.train_kwarg] = train if TRAIN_KWARGS[self.train_kwarg] else not train
        if not features and conv_delta is None:
            return self._check_logits(self._bound(x, **flag), x)

        # Which calls to capture, from an abstract trace of an unbound copy (nothing runs).
        copy = self.unbind()[0]
        feat_path = self.penultimate_layer or output_layer(copy, x.shape)
        conv_call = _conv_call(copy, x.shape, train)
        if conv_delta is not None and conv_call is None:
            raise ValueError(
                f"{self._name()} has no convolutional feature map; conv_delta must be None."
            )
        conv_counts: dict[Path, int] = {}
        found: dict[str, jax.Array] = {}

        def capture(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            path = tuple(context.module.path)
            if conv_call is not None and path == conv_call[0] and context.method_name == "__call__":
                k = conv_counts.get(path, 0)
                conv_counts[path] = k + 1
                if k == conv_call[1]:
                    if conv_delta is not None:
                        if conv_delta.shape != out.shape:
                            raise ValueError(
                                f"conv_delta has shape {conv_delta.shape}; the "
                                f"feature map {path} has {out.shape}."
                            )
                        out = out + conv_delta
                    found["conv"] = out
            if path == feat_path:  # the last call to return wins
                if self.penultimate_layer is not None:
                    found["penultimate"] = out
                else:
                    found["penultimate"] = args[0] if args else next(iter(kwargs.values()))
            return out

        with nn.intercept_methods(capture):
            logits = self._check_logits(self._bound(x, **flag), x)
        if not features:
            return logits
        if "penultimate" not in found:
            raise ValueError(
                f"penultimate_layer={feat_path} is not a submodule that {self._name()} calls."
            )
        penultimate = found["penultimate"]
        feats = {"penultimate": penultimate.reshape((penultimate.shape[0], -1))}
        if "conv" in found:
            feats["conv"] = found["conv"]
        return logits, feats

    @nn.nowrap  # helpers, not module methods: no setup, no interception
    def _name(self) -> str:
        return type(self.module).__name__

    @nn.nowrap
    def _check_logits(self, logits, x):
        if not isinstance(logits, jax.Array):
            raise ModelOutputError(
                f"{self._name()}(x) returns {type(logits).__name__}; the "
                f"model must return the logits, one B x C array."
            )
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ModelOutputError(
                f"{self._name()}(x) returns shape {logits.shape} for "
                f"{x.shape[0]} inputs; the logits must be B x C."
            )
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise ModelOutputError(
                f"{self._name()}(x) returns {logits.shape[1]} logits for {self.num_classes} "
                f"classes; give the module its number of classes through its own option in "
                f"model_options (its constructor has no num_classes)."
            )
        return logits


def adapt(
    module: nn.Module,
    *,
    num_classes: int | None = None,
    train_kwarg: str | None = "auto",
    output_layer: str | Sequence[str] | None = None,
    penultimate_layer: str | Sequence[str] | None = None,
    conv_layer: str | Sequence[str] | None = None,
) -> Adapted:
    """Wraps a Linen module of your own so that it trains and is audited like a zoo model.

    Args:
      module: an unbound ``flax.linen.Module`` instance that maps ``x`` (batch first) to the
        logits ``B x C``.
      num_classes: when given, checked against the logits' width.
      train_kwarg: ``"auto"`` (default): the one key of :data:`TRAIN_KWARGS` that
        ``module.__call__`` takes, if any; a key of :data:`TRAIN_KWARGS`; or None: call
        ``module(x)`` in both modes.
      output_layer, penultimate_layer, conv_layer: paths in ``params`` (``"block/Dense_0"`` or
        ``("block", "Dense_0")``) naming the output layer, the layer whose output is the
        penultimate features, and the layer whose output is Grad-CAM's map; None: automatic
        (module docstring).

    Returns:
      An :class:`Adapted` module; its parameters are ``module``'s own.

    Raises:
      ValueError: ``module`` is not a Linen module instance, ``__call__`` takes several
        training flags (name one) or a required argument besides the input, an unknown
        ``train_kwarg``, a malformed path.
      ModelOutputError (a ValueError): later, when the adapted module is first called
        (``init_model``), if the module does not return ``B x C`` logits with ``C =
        num_classes``.

    Example:
      >>> class Net(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, training: bool):
      ...         x = nn.relu(nn.Conv(4, (3, 3))(x))
      ...         return nn.Dense(3)(x.mean(axis=(1, 2)))
      >>> module = adapt(Net())
      >>> module.train_kwarg, output_layer(module, (1, 8, 8, 1))
      ('training', ('Dense_0',))
      >>> params, state = models.init_model(module, jax.random.key(0), (1, 8, 8, 1))
      >>> logits, feats = models.make_feature_fn(module)(params, state, jnp.ones((2, 8, 8, 1)))
      >>> logits.shape, feats["penultimate"].shape, feats["conv"].shape
      ((2, 3), (2, 4), (2, 8, 8, 4))
    """
    if isinstance(module, type) and issubclass(module, nn.Module):
        raise ValueError(
            f"adapt takes a module instance, got the class {module.__name__}; "
            f"call it first, e.g. {module.__name__}()."
        )
    if not isinstance(module, nn.Module):
        raise ValueError(f"adapt takes a flax.linen.Module instance, got {type(module).__name__}.")
    if isinstance(module, Adapted):
        return module
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes={num_classes!r} must be a positive int or None.")
    return Adapted(
        Unbound(module),
        _train_kwarg(module, train_kwarg),
        num_classes,
        _path("output_layer", output_layer),
        _path("penultimate_layer", penultimate_layer),
        _path("conv_layer", conv_layer),
    )


def import_model(
    spec: str, num_classes: int, *, adapter: Mapping[str, Any] | None = None, **options
) -> Adapted:
    """Builds ``config.model = "package.module:ClassName"``: imports the class, calls it with
    ``options`` (``config.model_options``) and adapts it.

    ``num_classes`` (the data's) is passed to the constructor when the class has a
    ``num_classes`` field; otherwise give the class count through the module's own option, and
    the logits' width is checked against ``num_classes`` when the model is first run.
    ``adapter`` (``model_options.adapter``) holds the keyword arguments of :func:`adapt`:
    ``train_kwarg``, ``output_layer``, ``penultimate_layer``, ``conv_layer``.

    Raises:
      ValueError: the import or the attribute fails, it is not a Linen module class, an
        option is not one of its fields, an unknown adapter option.
    """
    cls = load_class(spec)
    fields = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for model {spec!r}; allowed: "
            f"{sorted(fields - {'num_classes'})} and 'adapter' "
            f"({', '.join(ADAPTER_OPTIONS)})."
        )
    if "num_classes" in fields:
        options = {**options, "num_classes": num_classes}
    adapter = dict(adapter or {})
    bad = sorted(set(adapter) - set(ADAPTER_OPTIONS))
    if bad:
        raise ValueError(
            f"Unknown adapter option(s) {bad} for model {spec!r}; allowed: "
            f"{', '.join(ADAPTER_OPTIONS)}."
        )
    return adapt(cls(**options), num_classes=num_classes, **adapter)


def load_class(spec: str) -> type[nn.Module]:
    """The Linen module class named by ``"package.module:ClassName"`` (ValueError otherwise)."""
    module_name, _, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not module_name or not attr or ":" in attr:
        raise ValueError(f"model={spec!r} must be 'package.module:ClassName'.")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"model={spec!r}: cannot import {module_name!r} ({e}).") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model={spec!r}: {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"model={spec!r} names {obj!r}, not a flax.linen.Module class.")
    return obj


def output_layer(module: Adapted, input_shape: Sequence[int]) -> Path:
    """The output layer's path in ``params``: ``module.output_layer`` if named, else
    ``models.output_layer_path`` (traced on zeros of ``input_shape``, batch first).

    Raises ValueError (naming the way out) when no layer with parameters returns the logits,
    and :class:`ModelOutputError` when the module's output is not ``B x C`` logits.
    """
    if module.output_layer is not None:
        return module.output_layer
    if len(input_shape) < 2:
        raise ValueError(f"input_shape={tuple(input_shape)} needs a leading batch dimension.")
    try:
        return models.output_layer_path(module, input_shape)
    except ModelOutputError:
        raise
    except ValueError as e:  # what is left: no layer with parameters returns the logits
        raise ValueError(
            f"No layer with parameters of {module._name()} returns its logits (are they "
            f"computed after the last layer?); name the output layer: adapt(..., "
            f"output_layer='path/in/params') or model_options.adapter.output_layer."
        ) from e


def resolve_meta_params(module: nn.Module, options: dict, input_shape: Sequence[int]) -> dict:
    """``options`` of a weighting scheme with ``meta_params="last"`` turned into the output
    layer's path for an :class:`Adapted` module (``"last"`` means ``params["head"]``, the zoo's
    output layer); unchanged for the zoo models and other values."""
    if isinstance(module, Adapted) and options.get("meta_params") == "last":
        return {**options, "meta_params": output_layer(module, input_shape)}
    return options


def _conv_call(module: Adapted, input_shape, train: bool) -> tuple[Path, int] | None:
    """(path, k): Grad-CAM's map is the output of the k-th ``__call__`` of the submodule at
    ``path`` (0-based, in return order): its last call, of ``module.conv_layer`` if named,
    else of the last convolution returning a 4-D map. None when there is none."""
    calls = []  # (path, is a convolution, output ndim) of every __call__, in return order

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            calls.append(
                (
                    tuple(context.module.path),
                    isinstance(context.module, CONV_LAYERS),
                    getattr(out, "ndim", None),
                )
            )
        return out

    def trace(x):
        with nn.intercept_methods(record):
            module.init_with_output(
                {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train
            )

    jax.eval_shape(trace, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    if module.conv_layer is not None:
        hits = [c for c in calls if c[0] == module.conv_layer]
        if not hits:
            raise ValueError(
                f"conv_layer={module.conv_layer} is not a submodule that {module._name()} calls."
            )
        if hits[-1][2] != 4:
            raise ValueError(
                f"conv_layer={module.conv_layer} returns a {hits[-1][2]}-D array; "
                f"Grad-CAM needs a B x h x w x K map."
            )
        return module.conv_layer, len(hits) - 1
    convs = [c for c in calls if c[1] and c[2] == 4]
    if not convs:
        return None
    path = convs[-1][0]
    return path, sum(c[0] == path for c in calls) - 1


def _train_kwarg(module: nn.Module, train_kwarg: str | None) -> str | None:
    """The training flag ``module.__call__`` takes (see :func:`adapt`)."""
    name = type(module).__name__
    try:
        params = list(inspect.signature(type(module).__call__).parameters.values())[1:]
    except (TypeError, ValueError):  # no inspectable signature: trust the caller
        params = []
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    flags = [n for n in named if n in TRAIN_KWARGS]
    if train_kwarg == "auto":
        if len(flags) > 1:
            raise ValueError(
                f"{name}.__call__ takes several training flags {flags}; name the "
                f"one to set with train_kwarg."
            )
        train_kwarg = flags[0] if flags else None
    elif train_kwarg is not None:
        if train_kwarg not in TRAIN_KWARGS:
            raise ValueError(
                f"train_kwarg={train_kwarg!r} is not supported; allowed: 'auto', "
                f"None, {', '.join(map(repr, TRAIN_KWARGS))}."
            )
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
        if params and train_kwarg not in named and not takes_any:
            raise ValueError(
                f"train_kwarg={train_kwarg!r} but {name}.__call__ takes no such argument."
            )
    inputs = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if params and not inputs:
        raise ValueError(f"{name}.__call__ takes no positional input.")
    required = [
        p.name
        for p in params
        if p is not inputs[0]
        and p.default is p.empty
        and p.name != train_kwarg
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise ValueError(
            f"{name}.__call__ requires {required} besides the input; the adapter "
            f"passes only the input and a training flag "
            f"({', '.join(TRAIN_KWARGS)})."
        )
    return train_kwarg


def _path(field: str, value) -> Path | None:
    """``"a/b"`` or ``("a", "b")`` -> ``("a", "b")``; None stays None."""
    if value is None:
        return None
    path = tuple(value.split("/")) if isinstance(value, str) else value
    if not (
        isinstance(path, (tuple, list)) and path and all(isinstance(k, str) and k for k in path)
    ):
        raise ValueError(
            f"{field}={value!r} must be a path in params: 'a/b' or a non-empty tuple of keys."
        )
    return tuple(path)
