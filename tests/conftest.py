"""Test-wide settings, applied before jax is imported anywhere.

Four fake CPU devices let one process compare 1 device against 4 (tests pick a subset of
`jax.devices()` for their meshes); everything else runs on device 0 as usual.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# etils sends gs:// to tf.io.gfile when TensorFlow is installed, past its own test double
# (fake_bucket.fake_gs), and caches that choice at the first path operation: set it now.
os.environ["EPATH_USE_TF"] = "false"

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_platforms", "cpu")
