"""The optional dependencies, imported where a feature needs them, through one function.

`pip install l2rw_jax` installs what `import l2rw_jax` and training on arrays, npz files and
image folders need (the device input backend). The rest are extras of the package:

  extra          packages                                   for
  tfds           tensorflow, tensorflow-datasets             tfds sources, the tfdata backend,
                                                             l2rw_jax.digits_builder
  digits         scikit-learn                               the embedded `digits` source
  tensorboard    tensorboardX, tensorboard                  <workdir>/tb event files, the viewer

`require` imports a module or raises a one-line ImportError naming the feature and the extra
(`pip install "l2rw_jax[tfds]"`), before the feature does any work.
"""

from __future__ import annotations

import importlib
import types

# Top-level module -> (what it is called, the extra that installs it).
EXTRAS = {
    "tensorflow": ("TensorFlow", "tfds"),
    "tensorflow_datasets": ("TensorFlow Datasets", "tfds"),
    "sklearn": ("scikit-learn", "digits"),
    "tensorboardX": ("tensorboardX", "tensorboard"),
}


def missing_message(module: str, feature: str) -> str:
    """The one-line message for `feature` when `module` (dotted) is not installed."""
    top = module.split(".")[0]
    if top not in EXTRAS:
        raise ValueError(
            f"module={module!r} is not an optional dependency; allowed: "
            f"{', '.join(EXTRAS)} and their submodules."
        )
    what, extra = EXTRAS[top]
    return f'{feature} needs {what}: pip install "l2rw_jax[{extra}]"'


def require(module: str, feature: str) -> types.ModuleType:
    """``importlib.import_module(module)``, or a one-line ImportError naming the extra.

    Args:
      module: a dotted module name whose top-level package is in `EXTRAS`
        (``"tensorflow_datasets"``, ``"sklearn.datasets"``).
      feature: what needs it, as the message's subject (``"the tfds source 'mnist'"``).

    Raises:
      ValueError: `module` is not one of the optional dependencies.
      ImportError: the package is not installed: ``<feature> needs <package>: pip install
        "l2rw_jax[<extra>]"``. An ImportError from inside an installed package (a broken
        install) is chained under the same message, so its cause stays visible.
    """
    message = missing_message(module, feature)  # Checks `module` before importing anything.
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if (err.name or "").split(".")[0] == module.split(".")[0]:
            raise ImportError(message) from None  # Not installed: the one line says it all.
        raise ImportError(message) from err
