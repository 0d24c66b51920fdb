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
