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


def test_shard_members_keeps_the_seed_and_step_axes_whole():
    mesh = sharding.data_mesh(jax.devices()[:2])
    x_KxB = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)  # 3 members, batch 4
    placed = sharding.shard_members({"x": x_KxB}, mesh, slice(1, 3))["x"]
    np.testing.assert_array_equal(placed, x_KxB[1:3])  # members 1 and 2
    assert placed.sharding.spec == jax.sharding.PartitionSpec(None, "data")
    # Each device holds every member's half of the batch.
    assert {s.data.shape for s in placed.addressable_shards} == {(2, 2)}
    x_SxKxB = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)  # a chunk of 5 steps
    chunk = sharding.shard_members({"x": x_SxKxB}, mesh, slice(0, 1), step_axis=True)["x"]
    np.testing.assert_array_equal(chunk, x_SxKxB[:, :1])
    assert chunk.sharding.spec == jax.sharding.PartitionSpec(None, None, "data")
    with pytest.raises(ValueError, match="not divisible by the 2 devices"):
        sharding.shard_members({"x": np.zeros((3, 5))}, mesh)
    state = sharding.replicate({"w": np.ones(3)}, mesh)
    assert state["w"].sharding.is_fully_replicated
