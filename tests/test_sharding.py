"""Data mesh and host-batch placement on the 4 fake CPU devices of conftest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2rw_jax import sharding


def _batch(b):
    rng = np.random.default_rng(0)
    return {
        "image": rng.normal(size=(b, 3, 3, 1)).astype(np.float32),
        "label": np.arange(b, dtype=np.int32) % 5,
        "mask": np.arange(b) % 3 > 0,
    }


@jax.jit
def _weighted_sum(batch):
    return jnp.sum(
        batch["image"] * batch["label"][:, None, None, None] * batch["mask"][:, None, None, None]
    )


def test_data_mesh_defaults_to_all_devices():
    mesh = sharding.data_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == len(jax.devices()) == 4
    assert sharding.data_mesh(jax.devices()[:2], axis_name="batch").shape == {"batch": 2}


@pytest.mark.parametrize("n_devices", [1, 2, 4])
def test_shard_batch_splits_rows_over_devices(n_devices):
    mesh = sharding.data_mesh(jax.devices()[:n_devices])
    host = _batch(8)
    placed = sharding.shard_batch(host, sharding.batch_sharding(mesh))
    for k, x in placed.items():
        assert isinstance(x, jax.Array) and x.shape == host[k].shape and x.dtype == host[k].dtype
        assert x.sharding.spec == jax.sharding.PartitionSpec("data")
        np.testing.assert_array_equal(np.asarray(x), host[k])
        shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        assert len(shards) == n_devices
        rows = 8 // n_devices
        for j, shard in enumerate(shards):
            np.testing.assert_array_equal(
                np.asarray(shard.data), host[k][j * rows : (j + 1) * rows]
            )
    # The same global computation, whatever the number of devices.
    np.testing.assert_allclose(
        _weighted_sum(placed), _weighted_sum(jax.device_put(host)), rtol=1e-6
    )


def test_replicated_sharding_puts_a_full_copy_everywhere():
    mesh = sharding.data_mesh()
    x = jax.device_put(np.arange(6.0), sharding.replicated_sharding(mesh))
    assert len(x.addressable_shards) == 4
    for shard in x.addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), np.arange(6.0))


def test_batch_not_divisible_by_devices_raises():
    s = sharding.batch_sharding(sharding.data_mesh())
    with pytest.raises(
        ValueError,
        match=r"batch size 6 .* not divisible by the 4 devices .*"
        r"multiple of 4",
    ):
        sharding.shard_batch(_batch(6), s)


def test_leaves_with_different_batch_sizes_raise():
    s = sharding.batch_sharding(sharding.data_mesh())
    with pytest.raises(ValueError, match=r"same leading batch axis.*\['label'\]: 4"):
        sharding.shard_batch({"image": np.zeros((8, 2)), "label": np.zeros(4)}, s)


def test_mesh_errors():
    with pytest.raises(ValueError, match="at least one device"):
        sharding.data_mesh([])
    mesh2d = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 2), ("a", "b"))
    with pytest.raises(ValueError, match=r"1-D data mesh, got axes \('a', 'b'\)"):
        sharding.batch_sharding(mesh2d)
