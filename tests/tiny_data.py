"""The tiny learnable image dataset the training tests share (one definition, several sizes)."""

import numpy as np


def write_tiny_npz(path: str, num_train: int = 400, num_test: int = 100) -> str:
    """Writes 10-class 8x8 uint8 images to ``path`` (npz source keys) and returns ``path``.

    Class c: noise in [0, 60) plus pixel 3c set to 255, so a small MLP learns it in a few steps.
    """
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, size=(n, 8, 8)).astype(np.uint8)
        x.reshape(n, 64)[np.arange(n), 3 * y] = 255
        return x, y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = make(num_train), make(num_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def tiny_config(npz: str, *overrides):
    """The training tests' tiny config on ``write_tiny_npz``'s data, then each of ``overrides``
    (nested dicts, merged in order); learning rate 0.1. 400 rows - 20 clean (2 per class) -
    20 hyper-validation = 360 noisy training examples; an MLP with 8 hidden units, ERM, 2
    steps."""
    from l2rw_jax import config as config_lib

    c = config_lib.default_config()
    c.update(
        {
            "data": dict(
                dataset=f"npz:{npz}",
                noise="uniform",
                noise_ratio=0.4,
                corrupt_given_labels=True,
                clean_per_class=2,
                hyper_val_size=20,
                batch_size=8,
                clean_batch_size=8,
                eval_batch_size=64,
            ),
            "model": {"name": "mlp", "options": {"hidden": (8,)}},
            "method": {"name": "erm"},
            "optim": {"learning_rate": 0.1},
            "num_steps": 2,
            "loop": dict(log_every=1, eval_every=2, checkpoint_every=2, progress_bar=False),
        }
    )
    for o in overrides:
        c.update(o)
    return c
