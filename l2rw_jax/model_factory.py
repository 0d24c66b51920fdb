"""``create_model(name, num_classes, **options)``: a model of the zoo or the user's own, by name.

Why a module of its own: it sits above both the zoo (:mod:`l2rw_jax.models`) and the adapter
(:mod:`l2rw_jax.adapter`, which uses the zoo's ``output_layer_path``), so neither of those
imports the other's user (nanodo's ``model_factory.py`` is the model).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from l2rw_jax import adapter
from l2rw_jax import models


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds a model by name: ``lenet``, ``resnet32``, ``wrn``, ``small_cnn``, ``mlp``
    (``models.MODELS``), or a Linen module of your own, ``"package.module:ClassName"``
    (``adapter.import_model``: ``kwargs`` are its constructor arguments, ``kwargs["adapter"]``
    the keywords of ``adapter.adapt``).

    Raises:
      ValueError: an unknown name, an option the model does not have, ``num_classes`` not a
        positive int (zoo models); for ``"package.module:ClassName"`` as
        ``adapter.import_model``.

    Example:
      >>> create_model("wrn", 10, depth=10, width=1).depth
      10
    """
    if isinstance(name, str) and ":" in name:
        return adapter.import_model(name, num_classes, **kwargs)
    if name not in models.MODELS:
        raise ValueError(
            f"Unknown model {name!r}; allowed: {', '.join(sorted(models.MODELS))} "
            f"or 'package.module:ClassName'."
        )
    cls = models.MODELS[name]
    allowed = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for model {name!r}; allowed: {sorted(allowed)}."
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be a positive int.")
    return cls(num_classes=num_classes, **kwargs)
