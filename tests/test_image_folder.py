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
    got = {"train": (a.x_train, a.y_train), "test": (a.x_test, a.y_test),
           "clean": (a.x_clean, a.y_clean)}
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
        (lambda r: Image.fromarray(np.zeros((5, 5), np.uint8)).save(r / "test/a_cat/v.png"),
         r"test/a_cat/v.png is 5x5 \(HxW\) mode 'L'; expected 5x4 mode 'L' like train/a_cat/a.png"),
        (lambda r: Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(r / "train/b_dog/3.png"),
         r"train/b_dog/3.png is 5x4 \(HxW\) mode 'RGB'; expected 5x4 mode 'L'"),
        (lambda r: Image.fromarray(np.zeros((5, 4, 4), np.uint8)).save(r / "train/a_cat/0.png"),
         r"train/a_cat/0.png has mode 'RGBA'; allowed: 'L', 'RGB'"),
        (lambda r: (r / "train/a_cat/notes.txt").write_text("hi"),
         r"train/a_cat/notes.txt is not an image file Pillow reads \(extension '.txt'\)"),
        (lambda r: os.makedirs(r / "test/eel"),
         r"test/eel is not a class of train/; allowed: a_cat, b_dog"),
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
        "import numpy as np\nfrom l2rw_jax import datasets\n"
        f"a = datasets.load_arrays('folder:{tmp_path}')\n"
        f"n = datasets.save_arrays('{tmp_path}/a.npz', a.x_train, a.y_train, a.x_test, a.y_test,"
        " x_clean=a.x_clean, y_clean=a.y_clean, class_names=a.class_names)\n"
        "b = datasets.load_arrays(n)\n"
        "assert all(np.array_equal(u, v) for u, v in zip(a[:4], b[:4]))\n"
        "assert np.array_equal(a.x_clean, b.x_clean) and a.class_names == b.class_names\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
