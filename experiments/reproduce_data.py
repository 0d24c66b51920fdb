"""The reproduction suite's data: where each part's npz is, and the JPEG copy of cifar10_dev.

``data_path("mnist" | "cifar10_dev", data_dir, workdir)`` finds ``<data_dir>/<name>.npz``; for
CIFAR a ``cifar10_dev_jpeg.npz`` (a third of the size) is decoded once into the workdir
(:func:`decode_jpeg_npz`); the development copy in ``../shared/data`` is the last resort.
"""

from __future__ import annotations

import io
import os

import numpy as np

from l2rw_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def decode_jpeg_npz(src: str, dst: str) -> None:
    """``cifar10_dev_jpeg.npz`` -> an npz with ``x_train, y_train, x_test, y_test`` (uint8).

    ``src`` holds, per split s, ``x_s_jpeg`` (uint8, the JPEG files concatenated),
    ``x_s_offsets`` (int64, N + 1: image i is ``x_s_jpeg[off[i]:off[i+1]]``) and ``y_s``.
    Each image is decoded with Pillow to RGB (``../shared/data/cifar10_dev/README.md``: the
    very pixels of ``cifar10_dev.npz``); ``dst`` is written atomically (uncompressed).

    Raises:
      ValueError: missing keys, offsets that do not cut the bytes into ``len(y_s)`` images,
        or images of different shapes.
    """
    from PIL import Image

    out = {}
    with np.load(src, allow_pickle=False) as f:
        for split in ("train", "test"):
            keys = [f"x_{split}_jpeg", f"x_{split}_offsets", f"y_{split}"]
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise ValueError(
                    f"{src!r} lacks key(s) {missing}; a JPEG npz has "
                    f"x_<split>_jpeg, x_<split>_offsets, y_<split> for train, test."
                )
            buf, off, y = f[keys[0]], f[keys[1]].astype(np.int64), f[keys[2]]
            if (
                off.ndim != 1
                or len(off) != len(y) + 1
                or off[0] != 0
                or off[-1] != len(buf)
                or np.any(np.diff(off) <= 0)
            ):
                raise ValueError(
                    f"{src!r}: x_{split}_offsets must rise from 0 to "
                    f"{len(buf)} (the byte count) in {len(y) + 1} steps; got "
                    f"{len(off)} offsets from {off[:1]} to {off[-1:]}."
                )
            images = [
                np.asarray(Image.open(io.BytesIO(buf[a:b].tobytes())).convert("RGB"))
                for a, b in zip(off[:-1], off[1:])
            ]
            shapes = {im.shape for im in images}
            if len(shapes) != 1:
                raise ValueError(f"{src!r}: x_{split} images differ in shape: {sorted(shapes)}.")
            out[f"x_{split}"], out[f"y_{split}"] = np.stack(images), y
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    workdir_lib.write_npz(dst, **out)


def data_path(name: str, data_dir: str, workdir: str) -> str:
    """The npz of ``name`` ("mnist" | "cifar10_dev"): ``<data_dir>/<name>.npz``, else (CIFAR)
    ``<data_dir>/cifar10_dev_jpeg.npz`` decoded once into ``<workdir>/data/``, else the copy
    in ``../shared/data/<name>/``. Raises FileNotFoundError naming every place it looked."""
    tried = [os.path.join(data_dir, f"{name}.npz")]
    if os.path.isfile(tried[0]):
        return tried[0]
    if name == "cifar10_dev":
        jpeg = os.path.join(data_dir, "cifar10_dev_jpeg.npz")
        decoded = os.path.join(workdir, "data", "cifar10_dev.npz")
        tried.append(jpeg)
        if os.path.isfile(jpeg):
            if not os.path.isfile(decoded) or os.path.getmtime(decoded) < os.path.getmtime(jpeg):
                decode_jpeg_npz(jpeg, decoded)
            return decoded
    tried.append(os.path.join(SHARED_DATA, name, f"{name}.npz"))
    if os.path.isfile(tried[-1]):
        return tried[-1]
    raise FileNotFoundError(
        f"no data for {name!r}: looked for {tried}; copy it into "
        f"--data_dir (see docs/reproduce.md)."
    )
