"""The embedded dataset: a tfds builder over scikit-learn's bundled `load_digits`.

1797 real 8x8 grey-level images of handwritten digits (UCI "Optical Recognition of Handwritten
Digits", the test part bundled with scikit-learn), ten classes. It ships inside scikit-learn, so
this dataset builds offline, with no download and no file outside the install, in a few seconds.

- Pixels: the original 0..16 counts rescaled to uint8 0..255 as `(v * 255 + 8) // 16` (integer
  rounding, so 16 -> 255, 8 -> 128, 0 -> 0); images are 8 x 8 x 1.
- Splits: a fixed stratified split, `test` = 36 images of every class (360), `train` = the other
  1437. Within each class the test images are the first 36 of `np.random.default_rng(0)
  .permutation` of that class's rows (in `load_digits` order); both splits keep `load_digits`
  order. The split is part of the dataset version: changing it means a new `VERSION`.

The builder is not registered in the tfds catalog (so it cannot clash with a future catalog
name). `l2rw_jax.datasets.load_arrays("digits")` does not use it: it reads the same arrays from
scikit-learn without TensorFlow (`datasets.digits_arrays`, the split and pixel functions shared
with this builder); the builder serves users who want the digits as a tfds dataset.

Needs the `[tfds]` extra to import and the `[digits]` extra to build
(`pip install "l2rw_jax[tfds,digits]"`).
"""

import numpy as np

from l2rw_jax import _optional
from l2rw_jax.datasets import DIGITS_NUM_CLASSES as NUM_CLASSES
from l2rw_jax.datasets import digits_pixels_uint8
from l2rw_jax.datasets import digits_split_indices

tfds = _optional.require("tensorflow_datasets", "l2rw_jax.digits_builder")


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's 8x8 digits as a tfds dataset (see the module docstring)."""

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn load_digits, 1437 train / 360 test (36 per class)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test part), "
            "pixels rescaled from 0..16 to 0..255.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            # Keep generation order (load_digits order) instead of tfds's hash order.
            disable_shuffling=True,
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        # Only needed to build.
        load_digits = _optional.require("sklearn.datasets", "the digits builder").load_digits

        bunch = load_digits()
        images = digits_pixels_uint8(bunch.images)[..., None]
        labels = bunch.target.astype(np.int64)
        train, test = digits_split_indices(labels)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(self, images, labels, rows):
        for r in rows:
            # Keyed by the row in `load_digits`, so tfds keeps that order on read.
            yield int(r), {"image": images[r], "label": int(labels[r])}
