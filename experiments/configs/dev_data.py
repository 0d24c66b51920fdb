"""Development copies of datasets, found through the environment, never a path in a config.

`L2RW_DEV_DATA` names a folder laid out as `<name>/<name>.npz` (this project's development
machines have one at `../shared/data`: `mnist/mnist.npz`, the genuine MNIST, and
`cifar10_dev/cifar10_dev.npz`, 20,000 / 5,000 real CIFAR-10 images):

    L2RW_DEV_DATA=../shared/data python -m experiments.cifar \\
        --config=experiments/configs/cifar_background.py:dev --workdir=workdirs/dev

Any config also takes a source directly: `--config.data.dataset=npz:/path/file.npz`.
"""

import os

ENV = "L2RW_DEV_DATA"


def source(name: str) -> str:
    """``npz:$L2RW_DEV_DATA/<name>/<name>.npz``; ValueError naming the variable when unset."""
    root = os.environ.get(ENV)
    if not root:
        raise ValueError(
            f"the development copy {name!r} is read from ${ENV}/{name}/{name}.npz and {ENV} is "
            f"not set; set it to the folder holding {name}/ (here: ../shared/data), or pass "
            f"--config.data.dataset=npz:/path/{name}.npz."
        )
    return f"npz:{os.path.join(root, name, f'{name}.npz')}"
