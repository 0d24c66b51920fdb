"""A tree of image files -> numpy arrays, read with Pillow (no TensorFlow).

The layout (the `folder:<root>` source of `datasets.load_arrays`):

    <root>/train/<class>/<image files>     the (noisy) training set, required
    <root>/test/<class>/<image files>      the test set, required
    <root>/clean/<class>/<image files>     a trusted clean set, optional

The classes are the sorted folder names under `train/` (Python string order); label c is
`class_names[c]`. `test/` and `clean/` may use any subset of them, no other name. Files are
read class by class in that order and, inside a class folder, sorted by file name: that order
is the row order of the arrays, so `source_index` i of a split is `list_images(root, split)[i]`.

Every file Pillow recognises by its extension (PNG, JPEG, BMP, ...) is read; hidden entries
(names starting with '.') are skipped; anything else (another file, a nested folder) is an error
rather than silently left out. All images of the tree must have one size and one mode, 'L'
(grey, read as H x W x 1) or 'RGB' (H x W x 3); the error names the first file that differs.

EXIF orientation: cameras and phones store many JPEGs with their pixels rotated or mirrored and
an EXIF Orientation tag (values 2..8) that tells viewers how to show them. Every image is turned
upright first, as a viewer shows it (Pillow's `ImageOps.exif_transpose`), so the model sees what
a person sees; the size check applies to the upright image (a portrait photo stored as
W x H with Orientation 6 or 8 counts as H x W).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

SPLITS = ("train", "test", "clean")
MODES = {"L": 1, "RGB": 3}


class FolderImages(NamedTuple):
    """The images of one tree: `splits[name] = (x uint8 N x H x W x C, y int32 N)`."""

    class_names: tuple[str, ...]
    splits: dict  # "train", "test" and, when present, "clean" -> (x, y)


def _visible(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))


def _image_extensions() -> frozenset:
    from PIL import Image  # Here, not at the top: only folder sources need Pillow.

    return frozenset(Image.registered_extensions())


def class_names(root: str | os.PathLike) -> tuple[str, ...]:
    """The sorted class folder names under `<root>/train`.

    Raises:
      FileNotFoundError: `root` or `root/train` is not a folder.
      ValueError: a file directly under `train/`, or fewer than two classes.
    """
    root = os.fspath(root)
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        raise FileNotFoundError(
            f"image folder {root!r} has no train/ folder (resolved to "
            f"{os.path.abspath(train)!r}); expected train/<class>/<images>, test/<class>/<images> "
            f"and optionally clean/<class>/<images>."
        )
    names = _visible(train)
    files = [n for n in names if not os.path.isdir(os.path.join(train, n))]
    if files:
        raise ValueError(
            f"image folder {root!r}: train/{files[0]} is a file; train/ must hold only class "
            f"folders (train/<class>/<images>)."
        )
    if len(names) < 2:
        raise ValueError(
            f"image folder {root!r}: train/ has {len(names)} class folder(s) {names}; need at "
            f"least 2."
        )
    return tuple(names)


def list_images(
    root: str | os.PathLike, split: str, classes: tuple[str, ...] | None = None
) -> list[tuple[str, int]]:
    """`(path, label)` of every image of `split`, in row order (class, then file name).

    `classes` defaults to `class_names(root)`. Returns [] for a missing optional `clean/`.

    Raises:
      FileNotFoundError: no `train/` or `test/` folder.
      ValueError: an unknown class folder, a file that is not an image, a nested folder, an empty
        class folder under `train/`, or no image at all in `test/` or a present `clean/`.
    """
    root = os.fspath(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    classes = class_names(root) if classes is None else tuple(classes)
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        if split == "clean":
            return []
        raise FileNotFoundError(
            f"image folder {root!r} has no {split}/ folder (resolved to "
            f"{os.path.abspath(folder)!r}); expected {split}/<class>/<images>."
        )
    extensions = _image_extensions()
    out = []
    for name in _visible(folder):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            raise ValueError(
                f"image folder {root!r}: {split}/{name} is a file; {split}/ must hold only class "
                f"folders ({split}/<class>/<images>)."
            )
        if name not in classes:
            raise ValueError(
                f"image folder {root!r}: {split}/{name} is not a class of train/; allowed: "
                f"{', '.join(classes)}."
            )
        files = _visible(class_dir)
        for f in files:
            path = os.path.join(class_dir, f)
            if os.path.isdir(path):
                raise ValueError(
                    f"image folder {root!r}: {split}/{name}/{f} is a folder; images must lie "
                    f"directly in {split}/<class>/."
                )
            if os.path.splitext(f)[1].lower() not in extensions:
                raise ValueError(
                    f"image folder {root!r}: {split}/{name}/{f} is not an image file Pillow "
                    f"reads (extension {os.path.splitext(f)[1]!r}); remove it or hide it with a "
                    f"leading '.'."
                )
        if not files and split == "train":
            raise ValueError(f"image folder {root!r}: train/{name}/ holds no image.")
        out.extend((os.path.join(class_dir, f), classes.index(name)) for f in files)
    out.sort(key=lambda pl: pl[1])  # Stable: class order, file names sorted inside each class.
    if not out and split != "train":
        raise ValueError(f"image folder {root!r}: {split}/ holds no image.")
    return out


def read_folder(root: str | os.PathLike) -> FolderImages:
    """Reads the train, test and (if present) clean images of `root` into memory.

    Returns:
      `FolderImages(class_names, splits)`; `splits[s] = (x, y)`, x uint8 `N x H x W x C` (C = 1
      for mode 'L', 3 for 'RGB'), y int32, rows in `list_images` order.

    Raises:
      FileNotFoundError / ValueError: see `list_images`; ValueError also for an image of another
        size or mode than the first one read (train/<first class>/<first file>), naming both.
        Sizes are those after the EXIF orientation is applied (module docstring).
    """
    from PIL import Image
    from PIL import ImageOps

    root = os.fspath(root)
    classes = class_names(root)
    lists = {s: list_images(root, s, classes) for s in SPLITS}
    expected = None  # (height, width, mode, relative path of the file that set it)
    splits = {}
    for split, items in lists.items():
        if split == "clean" and not items:
            continue
        xs = []
        for path, _ in items:
            rel = os.path.relpath(path, root)
            with Image.open(path) as stored:
                # Upright as a viewer shows it (EXIF Orientation 2..8 rotates or mirrors);
                # a copy without the tag otherwise.
                im = ImageOps.exif_transpose(stored)
                if im.mode not in MODES:
                    raise ValueError(
                        f"image folder {root!r}: {rel} has mode {im.mode!r}; allowed: "
                        f"{', '.join(map(repr, MODES))} (convert it, e.g. with Pillow's "
                        f"Image.convert)."
                    )
                got = (im.height, im.width, im.mode)
                if expected is None:
                    expected = got + (rel,)
                elif got != expected[:3]:
                    raise ValueError(
                        f"image folder {root!r}: {rel} is {got[0]}x{got[1]} (HxW, upright) mode "
                        f"{got[2]!r}; expected {expected[0]}x{expected[1]} mode "
                        f"{expected[2]!r} like {expected[3]} (all images must share one size "
                        f"and mode)."
                    )
                xs.append(np.asarray(im, dtype=np.uint8))
        x = np.stack(xs).reshape((len(xs), expected[0], expected[1], MODES[expected[2]]))
        y = np.array([label for _, label in items], np.int32)
        splits[split] = (x, y)
    return FolderImages(classes, splits)
