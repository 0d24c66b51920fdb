"""The device-resident input: TensorFlow's order reproduced exactly, batches gathered on devices,
keyed augmentation, and training from an npz with TensorFlow absent."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
import tensorflow as tf

from l2rw_jax import compose
from l2rw_jax import corruption
from l2rw_jax import device_batches
from l2rw_jax import device_splits
from l2rw_jax import input_pipeline as ip
from l2rw_jax import sharding
from l2rw_jax import stream_order as so

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("n", [1, 2, 3, 100, 1237, 32769, 65536, 65537, 100_000])
def test_index_shuffle_is_tensorflows_random_index_shuffle(n):
    # Small and large sets (16-bit and wider blocks, 65537: an index beyond the 16-bit block),
    # seeds beyond 32 bits, epochs beyond the 8-bit key words, 4 and 8 rounds.
    idx = np.arange(n) if n <= 65537 else np.random.default_rng(0).integers(0, n, 4000)
    for seed, word, rounds in [
        (0, 0, 4),
        (7, 8 * 3 + 1, 4),
        (256, 8 * 40, 4),
        (2**40 + 7, 8 * 1000 + 1, 8),
    ]:
        want = tf.raw_ops.RandomIndexShuffle(
            index=tf.constant(idx, tf.int64),
            seed=tf.constant([seed, word, 0], tf.int64),
            max_index=tf.constant(n - 1, tf.int64),
            rounds=rounds,
        ).numpy()
        got = so.index_shuffle(idx, (seed, word, 0), n - 1, rounds)
        np.testing.assert_array_equal(got, want)
    if n <= 65536:
        assert sorted(so.index_shuffle(idx, (3, 1, 0), n - 1)) == list(range(n))


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (203, 6, 6, 2)).astype(np.uint8)
    y = np.arange(203) % 5
    return corruption.make_splits(
        x, y, x[:23], y[:23], num_classes=5, noise="uniform", ratio=0.4, clean_per_class=3, seed=3
    )


def _noisy_columns(s):
    return {
        "image": s.train_x[None],
        "label": s.train_labels[None].astype(np.int32),
        "true_label": s.train_true_labels[None].astype(np.int32),
        "is_noisy": s.train_is_noisy[None],
    }


@pytest.mark.parametrize("n_devices", [1, 4])
def test_first_batches_are_the_tfdata_streams_batches(splits, n_devices):
    # Every key, bit for bit, over 60 steps (several epochs of the 188 noisy rows and of the
    # 15 clean rows), with the rows split over 1 or 4 devices.
    mesh = sharding.data_mesh(jax.devices()[:n_devices])
    mean, std = ip.channel_stats(splits.train_x)
    noisy = device_splits.place_split(_noisy_columns(splits), [mean], [std], [3], mesh)
    clean = device_splits.place_split(
        {"image": splits.clean_x[None], "label": splits.clean_labels[None].astype(np.int32)},
        [mean],
        [std],
        [3],
        mesh,
    )
    streams = [
        (
            noisy,
            so.StreamOrder(3, so.TRAIN_STREAM, len(splits.train_x), 8),
            ip.train_dataset(splits, batch_size=8, seed=3, mean=mean, std=std, start_step=2),
        ),
        (
            clean,
            so.StreamOrder(3, so.CLEAN_STREAM, len(splits.clean_x), 4),
            ip.clean_dataset(splits, batch_size=4, seed=3, mean=mean, std=std, start_step=2),
        ),
    ]
    for split, order, ds in streams:
        for step, want in zip(range(2, 62), ds.as_numpy_iterator()):
            got = device_batches.batch_at(split, [order], step, mesh)
            assert set(got) == set(want)
            for key, value in want.items():
                g = np.asarray(got[key])[0]
                assert g.dtype == value.dtype, key
                np.testing.assert_array_equal(g, value, err_msg=f"{key} at step {step}")
            assert got["image"].sharding.spec == jax.sharding.PartitionSpec(None, "data")


def test_process_shares_and_tables_follow_the_tfdata_rows(splits):
    n = len(splits.train_x)
    mean, std = ip.channel_stats(splits.train_x)
    for process_index in (0, 1):
        ds = ip.train_dataset(
            splits,
            batch_size=8,
            seed=5,
            mean=mean,
            std=std,
            process_index=process_index,
            process_count=2,
        )
        want = np.stack([b["index"] for _, b in zip(range(30), ds.as_numpy_iterator())])
        order = so.StreamOrder(
            5, so.TRAIN_STREAM, n, 8, process_index=process_index, process_count=2
        )
        np.testing.assert_array_equal(order.rows(np.arange(30)), want)
    table = np.random.default_rng(1).integers(0, n, 2 * n)  # e.g. resample's balanced rows
    plain = so.StreamOrder(5, so.TRAIN_STREAM, 2 * n, 8).rows(np.arange(40))
    np.testing.assert_array_equal(
        so.StreamOrder(5, so.TRAIN_STREAM, 2 * n, 8, table=table).rows(np.arange(40)), table[plain]
    )


def test_test_batches_are_the_tfdata_test_stream(splits):
    mean, std = ip.channel_stats(splits.train_x)
    want = list(ip.test_dataset(splits, batch_size=10, mean=mean, std=std).as_numpy_iterator())
    got = so.test_batches(splits.test_x, splits.test_labels, mean, std, 10)
    assert len(got) == len(want) == 3  # 23 examples: the last batch padded and masked
    chex.assert_trees_all_equal(got, want)


def test_augmentation_is_a_pad_crop_flip_keyed_by_seed_stream_step_row(splits):
    pad = 2
    raw = splits.train_x[:16]
    images = np.stack([raw, raw[::-1]])  # K = 2 members
    keys = device_splits.augmentation_keys([0, 1])
    out = {}
    for n_devices in (1, 4):
        mesh = sharding.data_mesh(jax.devices()[:n_devices])
        placed = sharding.shard_batch(images, sharding.batch_sharding(mesh, leading_axes=1))
        out[n_devices] = np.asarray(device_batches.augment(placed, keys, so.TRAIN_STREAM, 7, pad))
    np.testing.assert_array_equal(out[1], out[4])  # not a function of the device count
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = raw.shape[1:3]
    seen = set()
    for k in range(2):
        for j in range(16):
            candidates = {
                (oy, ox, f): padded[k, j, oy : oy + h, ox : ox + w][:, :: -1 if f else 1]
                for oy in range(2 * pad + 1)
                for ox in range(2 * pad + 1)
                for f in (0, 1)
            }
            match = [c for c, v in candidates.items() if np.array_equal(v, out[1][k, j])]
            assert match, (k, j)  # every row is one of the pad-crop-flips of its image
            seen.add(match[0])
    assert len(seen) > 12  # offsets and flips vary over rows and members
    again = np.asarray(device_batches.augment(images, keys, so.TRAIN_STREAM, 7, pad))
    np.testing.assert_array_equal(again, out[1])
    for other in [
        device_batches.augment(images, keys, so.TRAIN_STREAM, 8, pad),
        device_batches.augment(images, keys, so.CLEAN_STREAM, 7, pad),
        device_batches.augment(images, keys[::-1], so.TRAIN_STREAM, 7, pad),
    ]:
        assert not np.array_equal(np.asarray(other), out[1])


def test_auto_backend_is_device_or_the_resumed_runs_backend(tmp_path):
    assert compose.resolve_backend("auto", str(tmp_path)) == "device"
    assert compose.resolve_backend("tfdata", str(tmp_path)) == "tfdata"
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"method": "erm"}, f)  # a flat run from before the backend field
    assert compose.resolve_backend("auto", str(tmp_path)) == "tfdata"
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"method": {"name": "erm"}, "loop": {"backend": "device"}}, f)
    assert compose.resolve_backend("auto", str(tmp_path)) == "device"


def test_trains_from_an_npz_with_tensorflow_absent(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (120, 8, 8)).astype(np.uint8)
    y = np.arange(120) % 4
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:24], y_test=y[:24])
    # ml_collections stays: configs need it (pure Python, carried to accelerator hosts).
    code = (
        "import sys\n"
        "for name in ('tensorflow', 'tensorflow_datasets', 'sklearn', 'tensorboardX'):\n"
        "    sys.modules[name] = None\n"
        "import l2rw_jax\n"
        "from l2rw_jax import config\n"
        "c = config.default_config()\n"
        f"c.data.update(dataset='npz:{path}', clean_per_class=2, batch_size=8,\n"
        "              clean_batch_size=8, eval_batch_size=24, augment=True)\n"
        "c.model.name, c.model.options.hidden, c.num_steps = 'mlp', (8,), 4\n"
        "c.loop.update(eval_every=2, log_every=2, checkpoint_every=4, progress_bar=False)\n"
        "c.method.l2rw.warmup_steps = 0\n"
        f"r = l2rw_jax.train_and_evaluate(c, {str(tmp_path / 'run')!r})\n"
        "assert r['completed'] and r['config']['loop']['backend'] == 'device'\n"
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
        "print('trained', r['num_steps'])\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "trained 4" in out.stdout, out.stderr[-3000:]
    assert (
        "writing TensorBoard files (<workdir>/tb) needs tensorboardX: "
        'pip install "l2rw_jax[tensorboard]"'
    ) in out.stderr
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        assert [json.loads(line)["split"] for line in f] == ["train", "test"] * 2
