"""The folder: source: a tree of PNG/JPEG files read with Pillow, its order and its errors."""

import os

import numpy as np
import pytest
from PIL import Image

from l2rw_jax import datasets
from l2rw_jax import image_folder


def _tree(root, splits, mode="L", size=(5, 4)):
    """Writes PNGs `root/<split>/<class>/<name>.png`; pixel values spell (split, class, name).

    `splits[split][class] = [file names]`; returns {relative path: array written}.
    """
    written = {}
    for s, (split, classes) in enumerate(splits.items()):
        for c, (cls, names) in enumerate(classes.items()):
            os.makedirs(os.path.join(root, split, cls), exist_ok=True)
            for n, name in enumerate(names):
                shape = (size[0], size[1]) + ((3,) if mode == "RGB" else ())
                a = np.full(shape, 100 * s + 10 * c + n, np.uint8)
                a[0, 0] = len(written)  # Unique per file.
                Image.fromarray(a, mode).save(os.path.join(root, split, cls, name))
                written[os.path.join(split, cls, name)] = a
    return written


TREE = {
    "train": {"b_dog": ["2.png", "10.png", "1.png"], "a_cat": ["z.png", "a.png"]},
    "test": {"b_dog": ["t.png"], "a_cat": ["u.png", "s.png"]},
    "clean": {"a_cat": ["c.png"]},
}


def test_folder_reads_every_image_in_sorted_order(tmp_path):
    written = _tree(tmp_path, TREE)
    (tmp_path / "train" / "a_cat" / ".DS_Store").write_bytes(b"x")  # Hidden: skipped.
    a = datasets.load_arrays(f"folder:{tmp_path}")
    assert a.class_names == ("a_cat", "b_dog") and a.num_classes == 2
    assert a.name == f"folder:{tmp_path}"
    # Class by class (sorted names), then file names in string order ("10" < "2").
    order = {
        "train": ["a_cat/a.png", "a_cat/z.png", "b_dog/1.png", "b_dog/10.png", "b_dog/2.png"],
        "test": ["a_cat/s.png", "a_cat/u.png", "b_dog/t.png"],
        "clean": ["a_cat/c.png"],
    }
    got = {
        "train": (a.x_train, a.y_train),
        "test": (a.x_test, a.y_test),
        "clean": (a.x_clean, a.y_clean),
    }
    for split, files in order.items():
        x, y = got[split]
        assert x.shape == (len(files), 5, 4, 1) and x.dtype == np.uint8
        for i, f in enumerate(files):
            np.testing.assert_array_equal(x[i, ..., 0], written[os.path.join(split, f)])
        assert y.tolist() == [int(f.startswith("b_dog")) for f in files]
        listed = image_folder.list_images(tmp_path, split)
        assert [os.path.relpath(p, tmp_path / split) for p, _ in listed] == files


def test_folder_rgb_without_clean(tmp_path):
    tree = {k: v for k, v in TREE.items() if k != "clean"}
    written = _tree(tmp_path, tree, mode="RGB", size=(3, 6))
    a = datasets.load_arrays(f"folder:{tmp_path}")
    assert a.x_train.shape == (5, 3, 6, 3) and a.x_clean is None and a.y_clean is None
    np.testing.assert_array_equal(a.x_test[2], written["test/b_dog/t.png"])


def test_folder_jpeg(tmp_path):
    for split in ("train", "test"):
        for c in ("x", "y"):
            os.makedirs(tmp_path / split / c)
            Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(tmp_path / split / c / "i.jpg")
    a = datasets.load_arrays(f"folder:{tmp_path}")
    assert a.x_train.shape == (2, 8, 8, 3) and np.abs(a.x_train.astype(int) - 200).max() <= 2


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda r: Image.fromarray(np.zeros((5, 5), np.uint8)).save(r / "test/a_cat/v.png"),
            r"test/a_cat/v.png is 5x5 \(HxW, upright\) mode 'L'; expected 5x4 mode 'L' like "
            r"train/a_cat/a.png",
        ),
        (
            lambda r: Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(r / "train/b_dog/3.png"),
            r"train/b_dog/3.png is 5x4 \(HxW, upright\) mode 'RGB'; expected 5x4 mode 'L'",
        ),
        (
            lambda r: Image.fromarray(np.zeros((5, 4, 4), np.uint8)).save(r / "train/a_cat/0.png"),
            r"train/a_cat/0.png has mode 'RGBA'; allowed: 'L', 'RGB'",
        ),
        (
            lambda r: (r / "train/a_cat/notes.txt").write_text("hi"),
            r"train/a_cat/notes.txt is not an image file Pillow reads \(extension '.txt'\)",
        ),
        (
            lambda r: os.makedirs(r / "test/eel"),
            r"test/eel is not a class of train/; allowed: a_cat, b_dog",
        ),
        (lambda r: os.makedirs(r / "train/a_cat/sub"), r"train/a_cat/sub is a folder"),
        (lambda r: os.makedirs(r / "train/c_eel"), r"train/c_eel/ holds no image"),
        (lambda r: (r / "train/x.png").write_bytes(b""), r"train/x.png is a file"),
        (lambda r: [os.remove(p) for p in (r / "clean/a_cat").iterdir()], r"clean/ holds no image"),
    ],
)
def test_folder_bad_tree_raises_naming_the_file(tmp_path, change, match):
    _tree(tmp_path, TREE)
    change(tmp_path)
    with pytest.raises(ValueError, match=match):
        datasets.load_arrays(f"folder:{tmp_path}")


def test_folder_missing_parts_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no train/ folder"):
        datasets.load_arrays(f"folder:{tmp_path}/nope")
    _tree(tmp_path, {"train": TREE["train"]})
    with pytest.raises(FileNotFoundError, match=r"has no test/ folder"):
        datasets.load_arrays(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match=r"num_classes=3 only applies to npz"):
        datasets.load_arrays(f"folder:{tmp_path}", num_classes=3)


def test_folder_one_class_refused(tmp_path):
    _tree(tmp_path, {"train": {"a": ["1.png"]}, "test": {"a": ["1.png"]}})
    with pytest.raises(ValueError, match=r"train/ has 1 class folder\(s\) \['a'\]; need at least"):
        datasets.load_arrays(f"folder:{tmp_path}")


def test_folder_and_save_arrays_need_no_tensorflow(tmp_path):
    """On a host without TensorFlow/tfds (as accelerator hosts often are) both sources load."""
    import subprocess
    import sys

    from test_imports import ABSENT, BLOCK, ROOT

    _tree(tmp_path, TREE)
    code = BLOCK.format(names=ABSENT) + (
        "import numpy as np\nfrom l2rw_jax import array_source, datasets\n"
        f"a = datasets.load_arrays('folder:{tmp_path}')\n"
        f"n = array_source.save_arrays('{tmp_path}/a.npz', a.x_train, a.y_train, a.x_test,"
        " a.y_test, x_clean=a.x_clean, y_clean=a.y_clean, class_names=a.class_names)\n"
        "b = datasets.load_arrays(n)\n"
        "assert all(np.array_equal(u, v) for u, v in zip(a[:4], b[:4]))\n"
        "assert np.array_equal(a.x_clean, b.x_clean) and a.class_names == b.class_names\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# What a viewer shows for each EXIF Orientation value, from the tag's definition (EXIF 2.32,
# Orientation: where the stored row 0 and column 0 are displayed), written out with numpy
# rather than through Pillow: 1 row 0 top / column 0 left, 2 top / right, 3 bottom / right,
# 4 bottom / left, 5 left / top, 6 right / top, 7 right / bottom, 8 left / bottom.
_SHOWN = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],
    3: lambda s: s[::-1, ::-1],
    4: lambda s: s[::-1, :],
    5: lambda s: s.swapaxes(0, 1),
    6: lambda s: np.rot90(s, k=-1),  # clockwise
    7: lambda s: np.rot90(s, k=-1)[::-1, :],
    8: lambda s: np.rot90(s, k=1),  # counter-clockwise
}
_ORIENTATION = 0x0112


def _save_oriented(path, stored, orientation, mode, **save_kw):
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    Image.fromarray(stored, mode).save(path, exif=exif.tobytes(), **save_kw)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_folder_exif_orientation_png_reads_upright(tmp_path, mode):
    # Upright 5 x 4 (H x W) for every file; the 5..8 files are stored 4 x 5 (turned a quarter),
    # so the tree loads only if sizes are checked after the orientation is applied.
    rng = np.random.default_rng(0)
    expected = {}
    for o, show in _SHOWN.items():
        stored_shape = (5, 4) if o <= 4 else (4, 5)
        stored = rng.integers(0, 256, stored_shape + ((3,) if mode == "RGB" else ()), np.uint8)
        expected[o] = show(stored)
        assert expected[o].shape[:2] == (5, 4)
        cls = "a" if o % 2 else "b"
        os.makedirs(tmp_path / "train" / cls, exist_ok=True)
        _save_oriented(tmp_path / "train" / cls / f"{o}.png", stored, o, mode)
        if o > 1:  # The test can fail: what is stored is not what is shown.
            assert stored.shape != expected[o].shape or not np.array_equal(stored, expected[o])
    for cls in ("a", "b"):
        os.makedirs(tmp_path / "test" / cls, exist_ok=True)
        Image.fromarray(expected[1], mode).save(tmp_path / "test" / cls / "t.png")
    a = datasets.load_arrays(f"folder:{tmp_path}")
    files = [os.path.basename(p) for p, _ in image_folder.list_images(tmp_path, "train")]
    assert files == ["1.png", "3.png", "5.png", "7.png", "2.png", "4.png", "6.png", "8.png"]
    assert a.x_train.shape == (8, 5, 4, 1 if mode == "L" else 3)
    for i, f in enumerate(files):
        got = a.x_train[i, ..., 0] if mode == "L" else a.x_train[i]
        np.testing.assert_array_equal(got, expected[int(f[0])])  # PNG: lossless, exact.


def test_folder_exif_orientation_jpeg_phone_photos(tmp_path):
    # JPEG is lossy, so the grid is made of constant 8 x 8 blocks on JPEG's own block grid with
    # levels 0, 85, 170, 255: at quality 95 a constant block is coded by its DC term alone and
    # comes back within a few grey levels (measured max error here: <= 1), while a wrong
    # orientation moves blocks of other levels (errors >= 85). Tolerance 4 separates the two.
    blocks = np.array([[0, 85, 170], [255, 170, 0]], np.uint8)  # 2 x 3 blocks: not symmetric
    upright = np.kron(blocks, np.ones((8, 8), np.uint8))  # 16 x 24
    inverse = {
        1: upright,
        3: upright[::-1, ::-1],
        6: np.rot90(upright, k=1),
        8: np.rot90(upright, k=-1),
    }  # stored so that _SHOWN[o](stored) is upright
    for o, stored in inverse.items():
        np.testing.assert_array_equal(_SHOWN[o](stored), upright)
        for split in ("train", "test"):
            cls = "a" if o in (1, 3) else "b"
            os.makedirs(tmp_path / split / cls, exist_ok=True)
            _save_oriented(
                tmp_path / split / cls / f"{o}.jpg",
                np.ascontiguousarray(stored),
                o,
                "L",
                quality=95,
            )
    a = datasets.load_arrays(f"folder:{tmp_path}")
    assert a.x_train.shape == (4, 16, 24, 1)
    for x in (a.x_train, a.x_test):
        err = np.abs(x[..., 0].astype(int) - upright.astype(int))
        assert err.max() <= 4


def test_folder_size_is_checked_upright(tmp_path):
    # Stored 5 x 4 like the first file, but Orientation 6 shows it 4 x 5: refused, naming it.
    os.makedirs(tmp_path / "train" / "a")
    os.makedirs(tmp_path / "train" / "b")
    os.makedirs(tmp_path / "test" / "a")
    grid = np.zeros((5, 4), np.uint8)
    Image.fromarray(grid, "L").save(tmp_path / "train" / "a" / "1.png")
    Image.fromarray(grid, "L").save(tmp_path / "test" / "a" / "1.png")
    _save_oriented(tmp_path / "train" / "b" / "r.png", grid, 6, "L")
    with pytest.raises(
        ValueError,
        match=r"train/b/r\.png is 4x5 \(HxW, upright\) mode 'L'; "
        r"expected 5x4",
    ):
        datasets.load_arrays(f"folder:{tmp_path}")
