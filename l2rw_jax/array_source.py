"""Arrays already in memory, and the npz file that holds them: the checked form of every source.

`make_arrays` checks images and labels and returns them as `Arrays` (uint8 `N x H x W x C`
images, int32 labels); every source of `datasets.load_arrays` ends in it. `save_arrays` writes
checked arrays to an npz (from a notebook), `load_npz` reads one back (the `npz:<path>` source):
`x_train, y_train, x_test, y_test`, optionally `x_clean, y_clean` (a trusted clean set, used as
given: see `corruption.make_splits`), `class_names` (strings, one per class), `num_classes` (a
scalar) and `y_train_true` (the true labels of `x_train` when `y_train` holds the labels as
observed, benchmarks only: docs/noise.md).

Images are uint8 (0..255) `N x H x W` or `N x H x W x C` (channel-last; a channel-first
`N x C x H x W` array is refused with the transpose that fixes it), or floats in [0, 1] (no NaN),
which are stored as `round(255 x)` uint8. Labels are integers in [0, num_classes).
`num_classes` is `len(class_names)` when names are given, else the largest label + 1.
docs/inputs.md states every source's rules. Numpy only: no TensorFlow.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from l2rw_jax import files

NPZ_PREFIX = "npz:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL_KEYS = ("x_clean", "y_clean", "class_names", "num_classes", "y_train_true")
# Channel counts of common images (grey, RGB, RGBA): how a channel axis is recognised.
CHANNEL_COUNTS = (1, 3, 4)


class Arrays(NamedTuple):
    """A source's full train and test sets, and its trusted clean set if it has one."""

    x_train: np.ndarray  # uint8 N x H x W x C
    y_train: np.ndarray  # int32 N
    x_test: np.ndarray  # uint8 T x H x W x C
    y_test: np.ndarray  # int32 T
    num_classes: int
    name: str
    x_clean: np.ndarray | None = None  # uint8 M x H x W x C, a trusted clean set, or None
    y_clean: np.ndarray | None = None  # int32 M, or None
    class_names: tuple[str, ...] | None = None  # class_names[c] names label c, or None
    y_train_true: np.ndarray | None = None  # int32 N, true labels of x_train when known


def check_num_classes(num_classes: Any, where: str = "") -> int:
    """`num_classes` as an int, checked: an integer (not a bool) >= 2."""
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ValueError(f"{where}num_classes must be an integer >= 2, got {num_classes!r}.")
    return int(num_classes)


def _images(key: str, x: Any, where: str) -> np.ndarray:
    """uint8 N x H x W x C from uint8 or [0, 1] float N x H x W (x C).

    Refused: another dtype or rank; NaN or values outside [0, 1] in a float array; and a 4-D
    array that is channel-first (N x C x H x W, PyTorch's layout): dimension 1 is a channel
    count (`CHANNEL_COUNTS`: grey, RGB, RGBA), the last dimension is not, and dimension 2 is
    larger than any channel count (an image height). Read as channel-last, such an array would
    be C-pixel-high images with W channels and would train without a word.
    """
    x = np.asarray(x)
    is_float = np.issubdtype(x.dtype, np.floating)
    if not (x.dtype == np.uint8 or is_float) or x.ndim not in (3, 4):
        raise ValueError(
            f"{where}{key} must be uint8 (0..255) or float (in [0, 1]) N x H x W or "
            f"N x H x W x C, got dtype {x.dtype} and shape {x.shape}."
        )
    if (
        x.ndim == 4
        and x.shape[1] in CHANNEL_COUNTS
        and x.shape[3] not in CHANNEL_COUNTS
        and x.shape[2] > max(CHANNEL_COUNTS)
    ):
        # N x C x H x W (PyTorch's layout) would pass as C-pixel-high images with W channels.
        raise ValueError(
            f"{where}{key} has shape {x.shape}, which is channel-first (N x C x H x W, PyTorch's "
            f"layout); images must be channel-last N x H x W x C: pass "
            f"{key}.transpose(0, 2, 3, 1) (shape {(x.shape[0], *x.shape[2:], x.shape[1])})."
        )
    if is_float:
        nan = np.isnan(x)
        if nan.any():
            first = np.unravel_index(int(np.argmax(nan)), x.shape)
            raise ValueError(
                f"{where}{key} holds {int(nan.sum())} NaN pixel value(s) (first at index "
                f"{tuple(int(i) for i in first)}); float images must lie in [0, 1]."
            )
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (lo >= 0.0 and hi <= 1.0):  # -inf / inf show as such.
            raise ValueError(
                f"{where}{key} is float, so it must lie in [0, 1]; found min {lo} and max {hi} "
                f"(scale 0..255 floats by 1/255, or pass uint8)."
            )
        # Stored as uint8: the input pipelines, the device backend and the npz all hold uint8
        # (4x less memory than float32), and k/255 maps back to exactly k.
        x = np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    return x[..., None] if x.ndim == 3 else x


def _labels(key: str, y: Any, n: int, xkey: str, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{where}{key} must be a 1-D integer array, got dtype {y.dtype} and shape {y.shape}."
        )
    if len(y) != n:
        raise ValueError(f"{where}{xkey} has {n} images but {key} has {len(y)} labels.")
    if y.size and y.min() < 0:
        raise ValueError(
            f"{where}{key} has negative labels, e.g. {int(y.min())}; labels must lie in "
            f"[0, num_classes)."
        )
    return y


def _class_names(class_names: Any, where: str) -> tuple[str, ...]:
    if isinstance(class_names, np.ndarray):
        class_names = class_names.tolist() if class_names.ndim == 1 else class_names
    if (
        isinstance(class_names, (str, bytes))
        or not isinstance(class_names, Sequence)
        or not all(isinstance(c, str) and c for c in class_names)
        or len(set(class_names)) != len(class_names)
    ):
        raise ValueError(
            f"{where}class_names must be a sequence of distinct non-empty strings, one per "
            f"class, got {class_names!r}."
        )
    return tuple(class_names)


def make_arrays(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    x_clean: Any = None,
    y_clean: Any = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    name: str = "arrays",
    where: str = "",
    y_train_true: Any = None,
) -> Arrays:
    """Checks numpy arrays and returns them as `Arrays` (uint8 images with a channel axis,
    int32 labels).

    Args:
      x_train, x_test, x_clean: images `N x H x W` or `N x H x W x C` (channel-last; a
        channel-first `N x C x H x W` array is refused, see `_images`), uint8 (0..255) or
        float in [0, 1] without NaN (stored as `round(255 x)`); all of one `H x W x C`.
      y_train, y_test, y_clean: 1-D integer labels in [0, num_classes).
      x_clean, y_clean: a trusted clean set (at least one example), both or neither.
      class_names: one distinct string per class; fixes `num_classes = len(class_names)`.
      num_classes: default `len(class_names)`, else the largest label + 1.
      name: `Arrays.name`.
      y_train_true: the true labels of `x_train` (1-D, same length as `y_train`, in
        [0, num_classes)) when `y_train` holds labels as observed; benchmarks only.
      where: prefix of every error message (e.g. "npz '/a/b.npz': ").

    Raises:
      ValueError: naming the key, the value found and what is allowed.
    """
    given = {"x_clean": x_clean is not None, "y_clean": y_clean is not None}
    if given["x_clean"] != given["y_clean"]:
        missing, present = ("y_clean", "x_clean") if given["x_clean"] else ("x_clean", "y_clean")
        raise ValueError(f"{where}{present} is given but {missing} is not; give both or neither.")
    splits = ("train", "test") + (("clean",) if given["x_clean"] else ())
    raw = {"train": (x_train, y_train), "test": (x_test, y_test), "clean": (x_clean, y_clean)}
    xs, ys = {}, {}
    for s in splits:
        xs[s] = _images(f"x_{s}", raw[s][0], where)
        ys[s] = _labels(f"y_{s}", raw[s][1], len(xs[s]), f"x_{s}", where)
    for s in splits[1:]:
        if xs[s].shape[1:] != xs["train"].shape[1:]:
            raise ValueError(
                f"{where}train images are {xs['train'].shape[1:]} but {s} images are "
                f"{xs[s].shape[1:]}; all must share one H x W x C."
            )
    if len(xs["train"]) == 0:
        raise ValueError(f"{where}x_train is empty.")
    if "clean" in xs and len(xs["clean"]) == 0:
        raise ValueError(f"{where}x_clean is empty; give at least one example, or no clean set.")
    names = None if class_names is None else _class_names(class_names, where)
    if num_classes is not None:
        num_classes = check_num_classes(num_classes, where)
    if names is not None:
        if num_classes is not None and num_classes != len(names):
            raise ValueError(
                f"{where}num_classes={num_classes} but class_names has {len(names)} names; "
                f"they must agree."
            )
        num_classes = len(names)
    top = max(int(y.max(initial=0)) for y in ys.values())
    if num_classes is None:
        num_classes = top + 1
    if top >= num_classes:
        key = next(f"y_{s}" for s in splits if ys[s].max(initial=0) == top)
        raise ValueError(
            f"{where}labels out of range: found label {top} in {key}, allowed "
            f"[0, {num_classes}) (num_classes={num_classes})."
        )
    if num_classes < 2:
        raise ValueError(f"{where}labels cover a single class ({top}); need at least 2.")
    if y_train_true is not None:
        y_train_true = _labels("y_train_true", y_train_true, len(xs["train"]), "x_train", where)
        if y_train_true.max(initial=0) >= num_classes:
            raise ValueError(
                f"{where}y_train_true has label {int(y_train_true.max())}, allowed "
                f"[0, {num_classes}) (num_classes={num_classes})."
            )
        y_train_true = y_train_true.astype(np.int32)
    return Arrays(
        xs["train"],
        ys["train"].astype(np.int32),
        xs["test"],
        ys["test"].astype(np.int32),
        int(num_classes),
        name,
        x_clean=xs.get("clean"),
        y_clean=ys["clean"].astype(np.int32) if "clean" in ys else None,
        class_names=names,
        y_train_true=y_train_true,
    )


def save_arrays(
    path: str | os.PathLike,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    x_clean: Any = None,
    y_clean: Any = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    y_train_true: Any = None,
) -> str:
    """Checks arrays (as `make_arrays`), writes them to an npz and returns its source name.

    For notebooks: the returned `"npz:<absolute path>"` is what `config.data.dataset` takes, so a
    run records a JSON-able name and can be resumed from it. The file holds the converted arrays
    (uint8 with a channel axis, int32 labels) and, when given, `x_clean, y_clean`,
    `class_names` and `num_classes`; it is written atomically (`files.atomic_write`): a
    reader never sees half a file, and a failure leaves none.

    >>> name = save_arrays("data.npz", x_train, y_train, x_test, y_test,  # doctest: +SKIP
    ...                    x_clean=x_trusted, y_clean=y_trusted)
    >>> config.data.dataset = name  # doctest: +SKIP

    Raises:
      ValueError: as `make_arrays`, before anything is written.
    """
    path = os.path.abspath(os.fspath(path))
    arrays = make_arrays(
        x_train,
        y_train,
        x_test,
        y_test,
        x_clean=x_clean,
        y_clean=y_clean,
        class_names=class_names,
        num_classes=num_classes,
        name=NPZ_PREFIX + path,
        y_train_true=y_train_true,
    )
    out = {k: getattr(arrays, k) for k in NPZ_KEYS}
    if arrays.y_train_true is not None:
        out["y_train_true"] = arrays.y_train_true
    if arrays.x_clean is not None:
        out.update(x_clean=arrays.x_clean, y_clean=arrays.y_clean)
    if arrays.class_names is not None:
        out["class_names"] = np.array(arrays.class_names, dtype=str)
    if num_classes is not None:
        out["num_classes"] = np.array(arrays.num_classes, np.int64)
    files.atomic_write(path, lambda f: np.savez(f, **out), mode="wb")
    return arrays.name


def load_npz(path: str, num_classes: int | None) -> Arrays:
    """The `npz:<path>` source: the file's arrays through `make_arrays` (`num_classes`: as
    `datasets.load_arrays`'s; it must agree with the file's own `num_classes`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"npz file {path!r} not found (resolved to "
            f"{os.path.abspath(path)!r}); expected a .npz with keys "
            f"{', '.join(NPZ_KEYS)}."
        )
    where = f"npz {path!r}: "
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"npz {path!r} is missing key(s) {missing}; it has {sorted(f.files)}, "
                f"needs {list(NPZ_KEYS)}, may have {list(NPZ_OPTIONAL_KEYS)}."
            )
        unknown = sorted(set(f.files) - set(NPZ_KEYS) - set(NPZ_OPTIONAL_KEYS))
        if unknown:
            raise ValueError(
                f"npz {path!r} has unknown key(s) {unknown}; allowed: "
                f"{list(NPZ_KEYS + NPZ_OPTIONAL_KEYS)}."
            )
        a = {k: f[k] for k in f.files}
    stored = a.get("num_classes")
    if stored is not None:
        if stored.ndim != 0 or not np.issubdtype(stored.dtype, np.integer):
            raise ValueError(f"{where}num_classes must be a scalar integer, got {stored!r}.")
        stored = int(stored)
        if num_classes is not None and num_classes != stored:
            raise ValueError(
                f"{where}num_classes={num_classes} was asked but the file says {stored}."
            )
    names = a.get("class_names")
    if names is not None and (names.ndim != 1 or names.dtype.kind != "U"):
        raise ValueError(
            f"{where}class_names must be a 1-D array of strings, got dtype {names.dtype} and "
            f"shape {names.shape}."
        )
    return make_arrays(
        a["x_train"],
        a["y_train"],
        a["x_test"],
        a["y_test"],
        x_clean=a.get("x_clean"),
        y_clean=a.get("y_clean"),
        class_names=names,
        num_classes=num_classes if stored is None else stored,
        name=NPZ_PREFIX + path,
        where=where,
        y_train_true=a.get("y_train_true"),
    )


def npz_has_truth(name: str) -> bool:
    """True when `name` is an `npz:` source whose file exists and holds `y_train_true` (read
    from the zip directory only; no array is loaded)."""
    if not (isinstance(name, str) and name.startswith(NPZ_PREFIX)):
        return False
    path = name[len(NPZ_PREFIX) :]
    if not os.path.isfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            return "y_train_true" in f.files
    except (OSError, ValueError):
        return False
