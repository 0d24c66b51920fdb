"""tf.data streams: keys, shapes, dtypes, index bookkeeping, epochs, augmentation, padding
masks, determinism, multi-process slicing and bad input, on mock CIFAR-10, digits and an npz."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import streams

from l2rw_jax import input_pipeline as ip

TRAIN_KEYS = {
    "image": np.float32,
    "label": np.int32,
    "true_label": np.int32,
    "is_noisy": np.bool_,
    "index": np.int32,
}
CLEAN_KEYS = {"image": np.float32, "label": np.int32, "index": np.int32}
TEST_KEYS = {"image": np.float32, "label": np.int32, "mask": np.bool_}


@pytest.fixture(scope="module")
def npz_name(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("npz") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (230, 6, 6), dtype=np.uint8),
        y_train=np.arange(230) % 10,
        x_test=rng.integers(0, 256, (37, 6, 6), dtype=np.uint8),
        y_test=np.arange(37) % 10,
    )
    return f"npz:{path}"


@pytest.fixture(scope="module")
def npz_streams(npz_name):
    # 230 - 20 clean = 210 train rows; batch 16 does not divide it, nor 8 the 37 test rows.
    return streams.make_streams(
        npz_name,
        batch_size=16,
        clean_per_class=2,
        eval_batch_size=8,
        noise="uniform",
        ratio=0.4,
        seed=0,
    )


@pytest.fixture(scope="module")
def cifar_streams():
    with tfds.testing.mock_data(num_examples=200):
        return streams.make_streams(
            "cifar10",
            batch_size=32,
            clean_per_class=2,
            eval_batch_size=48,
            noise="uniform",
            ratio=0.4,
            seed=0,
            augment=True,
            download=True,
        )


@pytest.fixture(scope="module")
def digits_streams(tmp_path_factory):
    return streams.make_streams(
        "digits",
        data_dir=str(tmp_path_factory.mktemp("tfds")),
        batch_size=50,
        clean_per_class=10,
        eval_batch_size=64,
        noise="background",
        ratio=0.4,
        seed=0,
    )


SOURCES = ["npz_streams", "cifar_streams", "digits_streams"]


def _normalise(raw_uint8, streams):
    scale = (1.0 / (255.0 * streams.std.astype(np.float64))).astype(np.float32)
    shift = (-streams.mean.astype(np.float64) / streams.std).astype(np.float32)
    return raw_uint8.astype(np.float32) * scale + shift


def _raw(image, streams):
    """Inverse of the normalisation, back to exact uint8 pixels."""
    scale = (1.0 / (255.0 * streams.std.astype(np.float64))).astype(np.float32)
    shift = (-streams.mean.astype(np.float64) / streams.std).astype(np.float32)
    raw = np.rint((image - shift) / scale)
    assert np.all(np.abs((image - shift) / scale - raw) < 1e-2)
    return raw.astype(np.uint8)


def _take(it, n):
    return list(itertools.islice(it, n))


def _check(batch, keys, b, image_shape):
    assert set(batch) == set(keys)
    for k, dtype in keys.items():
        assert batch[k].dtype == dtype, k
        assert batch[k].shape == ((b,) + image_shape if k == "image" else (b,)), k


@pytest.mark.parametrize("source", SOURCES)
def test_keys_shapes_dtypes(source, request):
    s = request.getfixturevalue(source)
    _check(next(s.train), TRAIN_KEYS, s.batch_size, s.image_shape)
    _check(next(s.clean), CLEAN_KEYS, s.clean_batch_size, s.image_shape)
    for batch in s.test:
        _check(batch, TEST_KEYS, s.eval_batch_size, s.image_shape)
    assert s.image_shape == s.splits.train_x.shape[1:]
    assert s.num_train == len(s.splits.train_x) and s.num_classes == s.splits.num_classes


@pytest.mark.parametrize("source", ["npz_streams", "digits_streams"])
def test_train_and_clean_rows_carry_their_index(source, request):
    s = request.getfixturevalue(source)
    sp = s.splits
    for batch in _take(s.train, 3):
        i = batch["index"]
        np.testing.assert_allclose(batch["image"], _normalise(sp.train_x[i], s), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(batch["label"], sp.train_labels[i])
        np.testing.assert_array_equal(batch["true_label"], sp.train_true_labels[i])
        np.testing.assert_array_equal(batch["is_noisy"], sp.train_is_noisy[i])
    for batch in _take(s.clean, 3):
        i = batch["index"]
        np.testing.assert_allclose(batch["image"], _normalise(sp.clean_x[i], s), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(batch["label"], sp.clean_labels[i])


def test_every_epoch_is_a_permutation_and_reshuffled(npz_name):
    s = streams.make_streams(
        npz_name, batch_size=16, clean_per_class=2, noise="uniform", ratio=0.4, seed=0
    )
    n, m = s.num_train, s.num_clean
    assert (n, m) == (210, 20)
    order = np.concatenate([b["index"] for b in _take(s.train, -(-3 * n // 16))])[: 3 * n]
    epochs = order.reshape(3, n)
    for e in epochs:
        np.testing.assert_array_equal(np.sort(e), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # The clean set (20) is smaller than two batches (32): the stream runs on, each pass reshuffled.
    order = np.concatenate([b["index"] for b in _take(s.clean, 5)])[: 4 * m].reshape(4, m)
    for e in order:
        np.testing.assert_array_equal(np.sort(e), np.arange(m))
    assert len({tuple(e) for e in order}) == 4


@pytest.mark.parametrize("source", SOURCES)
def test_test_stream_pads_the_last_batch_and_masks_it(source, request):
    s = request.getfixturevalue(source)
    t, b = s.num_test, s.eval_batch_size
    batches = list(s.test)
    assert len(batches) == -(-t // b)
    mask = np.concatenate([x["mask"] for x in batches])
    assert mask.sum() == t and np.all(mask[:t]) and not np.any(mask[t:])
    assert len(mask) - t == (-t) % b and len(mask) - t > 0  # Every source here needs padding.
    labels = np.concatenate([x["label"] for x in batches])[mask]
    np.testing.assert_array_equal(labels, s.splits.test_labels)
    images = np.concatenate([x["image"] for x in batches])[mask]
    np.testing.assert_allclose(images, _normalise(s.splits.test_x, s), rtol=0, atol=1e-6)
    # Re-iterable: a second evaluation pass yields the same batches.
    np.testing.assert_array_equal(
        np.concatenate([x["label"] for x in s.test]), np.concatenate([x["label"] for x in batches])
    )


def _crop_candidates(orig_HxWxC, pad, mode):
    padded = np.pad(orig_HxWxC, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    h, w = orig_HxWxC.shape[:2]
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            crop = padded[oy : oy + h, ox : ox + w]
            yield (oy, ox, False), crop
            yield (oy, ox, True), crop[:, ::-1]


def _augmentations(batch, source_x, streams, pad=4, mode="constant"):
    """For each row: the unique (oy, ox, flipped) whose crop of the padded original it equals."""
    found = []
    raw = _raw(batch["image"], streams)
    for r, i in zip(raw, batch["index"]):
        hits = [
            k for k, crop in _crop_candidates(source_x[i], pad, mode) if np.array_equal(crop, r)
        ]
        assert len(hits) == 1, hits
        found.append(hits[0])
    return found


def test_cifar_augmentation_is_exact_pad_crop_and_mirror(cifar_streams):
    s = cifar_streams
    found = []
    for batch in _take(s.train, 3):
        found += _augmentations(batch, s.splits.train_x, s)
        np.testing.assert_array_equal(batch["label"], s.splits.train_labels[batch["index"]])
    found += _augmentations(next(s.clean), s.splits.clean_x, s)
    assert {f for _, _, f in found} == {True, False}  # Both mirrored and plain crops ...
    assert len({(oy, ox) for oy, ox, _ in found}) > 20  # ... at many of the 81 offsets.
    assert all(0 <= oy <= 8 and 0 <= ox <= 8 for oy, ox, _ in found)
    # (Test batches stay plain: test_test_stream_pads_the_last_batch_and_masks_it compares them
    # with the normalised test images, this augmenting source included.)


def test_reflect_padding(npz_streams):
    s = npz_streams
    ds = ip.train_dataset(
        s.splits,
        batch_size=16,
        seed=3,
        mean=s.mean,
        std=s.std,
        augment=True,
        pad=2,
        pad_mode="reflect",
    )
    batch = next(ds.as_numpy_iterator())
    found = _augmentations(batch, s.splits.train_x, s, pad=2, mode="reflect")
    assert len({k for k in found}) > 1


def test_same_seed_same_stream_different_seed_different(npz_name):
    kw = dict(batch_size=16, clean_per_class=2, noise="uniform", ratio=0.4, augment=True)
    a = streams.make_streams(npz_name, seed=0, **kw)
    tf.random.set_seed(1234)  # Global tf seeds must not matter: everything is stateless.
    b = streams.make_streams(npz_name, seed=0, **kw)
    c = streams.make_streams(npz_name, seed=1, **kw)
    for x, y in zip(_take(a.train, 4) + _take(a.clean, 2), _take(b.train, 4) + _take(b.clean, 2)):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(next(a.train)["index"], next(c.train)["index"])


def test_processes_read_their_part_of_the_same_global_batch(npz_streams):
    s = npz_streams
    kw = dict(seed=5, mean=s.mean, std=s.std, augment=True, pad=4)
    one = ip.train_dataset(s.splits, batch_size=16, **kw).as_numpy_iterator()
    parts = [
        ip.train_dataset(
            s.splits, batch_size=16, process_index=p, process_count=4, **kw
        ).as_numpy_iterator()
        for p in range(4)
    ]
    for _ in range(3):
        whole, pieces = next(one), [next(p) for p in parts]
        assert pieces[0]["image"].shape[0] == 4
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in pieces]))
    clean_one = ip.clean_dataset(s.splits, batch_size=16, **kw).as_numpy_iterator()
    clean_parts = [
        ip.clean_dataset(
            s.splits, batch_size=16, process_index=p, process_count=2, **kw
        ).as_numpy_iterator()
        for p in range(2)
    ]
    whole, pieces = next(clean_one), [next(p) for p in clean_parts]
    for k in whole:
        np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in pieces]))
    test_kw = dict(batch_size=8, mean=s.mean, std=s.std)
    whole = list(tfds.as_numpy(ip.test_dataset(s.splits, **test_kw)))
    halves = [
        list(tfds.as_numpy(ip.test_dataset(s.splits, process_index=p, process_count=2, **test_kw)))
        for p in range(2)
    ]
    assert len(halves[0]) == len(halves[1]) == len(whole) == 5
    for w, h0, h1 in zip(whole, *halves):
        for k in w:
            np.testing.assert_array_equal(w[k], np.concatenate([h0[k], h1[k]]))


def test_start_step_resumes_exactly(npz_streams):
    s = npz_streams
    kw = dict(batch_size=16, seed=0, mean=s.mean, std=s.std, augment=True)
    full = _take(ip.train_dataset(s.splits, **kw).as_numpy_iterator(), 20)
    resumed = _take(ip.train_dataset(s.splits, start_step=15, **kw).as_numpy_iterator(), 5)
    for x, y in zip(full[15:], resumed):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_channel_stats_exact():
    x = np.random.default_rng(1).integers(0, 256, (50, 7, 5, 3), dtype=np.uint8)
    mean, std = ip.channel_stats(x)
    ref = x.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), rtol=1e-6)


def test_given_mean_std_are_used(npz_name):
    s = streams.make_streams(npz_name, batch_size=16, clean_per_class=2, mean=0.5, std=0.25)
    batch = next(s.train)
    np.testing.assert_allclose(
        batch["image"], (s.splits.train_x[batch["index"]] / 255.0 - 0.5) / 0.25, atol=1e-5
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        (
            {"batch_size": 100, "process_count": 3},
            r"batch_size=100 is not divisible by the number of processes \(3\)",
        ),
        (
            {"batch_size": 100, "num_devices": 8},
            r"batch_size=100 is not divisible by the number of devices \(8\)",
        ),
        (
            {"batch_size": 64, "eval_batch_size": 100, "num_devices": 8},
            r"eval_batch_size=100 is not divisible by the number of devices \(8\)",
        ),
        ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
        ({"process_index": 2, "process_count": 2}, r"process_index must be an integer in \[0, 2\)"),
        ({"pad_mode": "wrap"}, r"pad_mode must be one of \('constant', 'reflect'\), got 'wrap'"),
        ({"noise": "uniform", "ratio": 1.5}, r"ratio must be a number in \[0, 1\], got 1.5"),
        ({"noise": "imbalance", "majority_fraction": 1.0}, r"majority_fraction.*got 1.0"),
        ({"clean_per_class": -1}, r"clean_per_class must be an integer >= 1, got -1"),
        ({"mean": 0.5}, r"give both mean and std or neither"),
        ({"dataset": "Image Net"}, r"unknown dataset 'Image Net'; allowed: a tfds"),
    ],
)
def test_bad_settings_raise_before_loading(kw, match):
    # The npz does not exist: each error must come from the checks that run before any loading.
    kw = {"dataset": "npz:/nonexistent/never.npz", "batch_size": 16, "clean_per_class": 1, **kw}
    with pytest.raises(ValueError, match=match):
        streams.make_streams(kw.pop("dataset"), **kw)


def test_bad_mean_std_length_raises(npz_name):
    with pytest.raises(ValueError, match=r"mean and std need 1 or 1 values .*mean=\[0.1, 0.2\]"):
        streams.make_streams(
            npz_name, batch_size=16, clean_per_class=2, mean=[0.1, 0.2], std=[1, 1]
        )
    with pytest.raises(ValueError, match=r"std positive.*std=0"):
        streams.make_streams(npz_name, batch_size=16, clean_per_class=2, mean=0.1, std=0)


def test_npz_clean_set_feeds_the_clean_stream(tmp_path):
    """An npz's x_clean, y_clean are the clean stream's rows; all of x_train is trained on."""
    from l2rw_jax import array_source

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
    y = np.arange(40) % 3
    x_clean, y_clean = rng.integers(0, 256, (5, 4, 4, 1), dtype=np.uint8), np.array([2, 0, 2, 1, 0])
    name = array_source.save_arrays(
        tmp_path / "c.npz", x, y, x[:6], y[:6], x_clean=x_clean, y_clean=y_clean
    )
    s = streams.make_streams(name, batch_size=8, clean_per_class=0, seed=0, mean=0.0, std=1.0)
    assert s.num_train == 40 and s.num_clean == 5
    np.testing.assert_array_equal(s.splits.train_source_index, np.arange(40))
    batch = next(s.clean)
    np.testing.assert_array_equal(batch["label"], y_clean[batch["index"]])
    np.testing.assert_allclose(batch["image"], x_clean[batch["index"]] / 255.0, atol=1e-6)
    assert batch["index"].max() < 5
    with pytest.raises(ValueError, match=r"clean_per_class=2 would draw a clean set"):
        streams.make_streams(name, batch_size=8, clean_per_class=2, seed=0)


def test_clean_per_class_larger_than_a_class_raises(npz_name):
    with pytest.raises(ValueError, match=r"k_per_class=24 is larger than class \d has \(23"):
        streams.make_streams(npz_name, batch_size=16, clean_per_class=24)
