"""The docstring examples of the core modules run and print what they claim."""

import doctest

import pytest

from l2rw_jax import adapter
from l2rw_jax import conv
from l2rw_jax import flips
from l2rw_jax import members
from l2rw_jax import model_factory
from l2rw_jax import models
from l2rw_jax import pooling
from l2rw_jax import reweight
from l2rw_jax import safe_derivative
from l2rw_jax import subsets
from l2rw_jax import xla_options
from l2rw_jax.audit import data_maps
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import noise_estimate
from l2rw_jax.audit import ranking_quality
from l2rw_jax.audit import trusted_set


@pytest.mark.parametrize(
    "module",
    [
        reweight,
        flips,
        subsets,
        models,
        model_factory,
        adapter,
        safe_derivative,
        label_issues,
        noise_estimate,
        ranking_quality,
        data_maps,
        trusted_set,
        conv,
        pooling,
        xla_options,
        members,
    ],
    ids=lambda m: m.__name__,
)
def test_docstring_examples(module):
    failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted > 0, f"{module.__name__} has no examples to run"
    assert failed == 0
