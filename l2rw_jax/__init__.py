"""l2rw_jax: Learning to Reweight Examples (Ren et al., ICML 2018) in JAX, and a model audit
beyond accuracy (Stock & Cisse, ECCV 2018).

The public surface, one name per line (`__all__`): what a user trains, weighs, builds models,
loads data and audits with. Every module stays importable for the rest (`l2rw_jax.backends`,
`l2rw_jax.input_pipeline`, `l2rw_jax.workdir`, ...: the training loop's parts, see
ARCHITECTURE.md), but only these names are the package's interface.
"""

# Modules used as namespaces (`config.default_config()`, `audit.audit_run(workdir)`, ...).
from l2rw_jax import audit
from l2rw_jax import config
from l2rw_jax import corruption
from l2rw_jax import datasets
from l2rw_jax import distributed
from l2rw_jax import methods
from l2rw_jax import models
from l2rw_jax import reweight
from l2rw_jax import sharding

# A run: a config in, a workdir and its results out.
from l2rw_jax.config import METHODS
from l2rw_jax.config import default_config
from l2rw_jax.compose import member_data
from l2rw_jax.train import train_and_evaluate
from l2rw_jax.workdir import read_selected

# The meta-step.
from l2rw_jax.reweight import MetaWeights
from l2rw_jax.reweight import check_lookahead
from l2rw_jax.reweight import meta_gradient
from l2rw_jax.reweight import meta_weights
from l2rw_jax.reweight import normalize_weights

# Weighting schemes, and the train and eval steps for a loop of your own.
from l2rw_jax.evaluate import make_eval_fn
from l2rw_jax.methods import WeighContext
from l2rw_jax.methods import WeighingScheme
from l2rw_jax.methods import get_scheme
from l2rw_jax.sharding import data_mesh
from l2rw_jax.sharding import shard_batch
from l2rw_jax.step import make_train_step
from l2rw_jax.step import softmax_xent
from l2rw_jax.train_state import TrainState

# Models.
from l2rw_jax.adapter import ModelOutputError
from l2rw_jax.adapter import adapt
from l2rw_jax.models import MLP
from l2rw_jax.models import LeNet
from l2rw_jax.models import ResNet32
from l2rw_jax.models import SmallCNN
from l2rw_jax.models import WideResNet
from l2rw_jax.models import init_model
from l2rw_jax.models import make_apply_fn
from l2rw_jax.models import make_feature_fn
from l2rw_jax.models import output_layer_path
from l2rw_jax.model_factory import create_model

# Data: sources as arrays, and the corruptions (pure numpy functions of a seed).
from l2rw_jax.array_source import save_arrays
from l2rw_jax.corruption import Splits
from l2rw_jax.corruption import make_splits
from l2rw_jax.flips import asymmetric_flip
from l2rw_jax.flips import background_flip
from l2rw_jax.flips import pair_flip
from l2rw_jax.flips import transition_flip
from l2rw_jax.flips import uniform_flip
from l2rw_jax.subsets import clean_split
from l2rw_jax.subsets import imbalance_subset
from l2rw_jax.datasets import load_arrays

__version__ = "0.1.0"

__all__ = [
    # Modules.
    "audit",
    "config",
    "corruption",
    "datasets",
    "distributed",
    "methods",
    "models",
    "reweight",
    "sharding",
    # A run.
    "METHODS",
    "default_config",
    "member_data",
    "train_and_evaluate",
    "read_selected",
    # The meta-step.
    "MetaWeights",
    "check_lookahead",
    "meta_gradient",
    "meta_weights",
    "normalize_weights",
    # Schemes and steps.
    "make_eval_fn",
    "WeighContext",
    "WeighingScheme",
    "get_scheme",
    "data_mesh",
    "shard_batch",
    "make_train_step",
    "softmax_xent",
    "TrainState",
    # Models.
    "ModelOutputError",
    "adapt",
    "MLP",
    "LeNet",
    "ResNet32",
    "SmallCNN",
    "WideResNet",
    "create_model",
    "init_model",
    "make_apply_fn",
    "make_feature_fn",
    "output_layer_path",
    # Data.
    "Splits",
    "asymmetric_flip",
    "background_flip",
    "clean_split",
    "imbalance_subset",
    "make_splits",
    "pair_flip",
    "transition_flip",
    "uniform_flip",
    "load_arrays",
    "save_arrays",
]
