"""l2rw_jax: Learning to Reweight Examples (Ren et al., ICML 2018) in JAX, and a model audit
beyond accuracy (Stock & Cisse, ECCV 2018).

The public surface, one name per line. Modules are importable too (`l2rw_jax.corruption`,
`l2rw_jax.input_pipeline`, `l2rw_jax.audit`, ...); see ARCHITECTURE.md for how they fit.
"""
# Modules.
from l2rw_jax import adapter
from l2rw_jax import audit
from l2rw_jax import backends
from l2rw_jax import build
from l2rw_jax import config
from l2rw_jax import corruption
from l2rw_jax import datasets
from l2rw_jax import device_data
from l2rw_jax import distributed
from l2rw_jax import evaluate
from l2rw_jax import image_folder
from l2rw_jax import input_pipeline
from l2rw_jax import members
from l2rw_jax import methods
from l2rw_jax import models
from l2rw_jax import results
from l2rw_jax import reweight
from l2rw_jax import safe_derivative
from l2rw_jax import sharding
from l2rw_jax import step
from l2rw_jax import train
from l2rw_jax import workdir
from l2rw_jax import xla_options

# The meta-step.
from l2rw_jax.reweight import MetaWeights
from l2rw_jax.reweight import check_lookahead
from l2rw_jax.reweight import meta_gradient
from l2rw_jax.reweight import meta_weights
from l2rw_jax.reweight import normalize_weights

# Training.
from l2rw_jax.methods import EmptyState
from l2rw_jax.methods import HardMiningState
from l2rw_jax.methods import L2RWState
from l2rw_jax.methods import MWNetState
from l2rw_jax.methods import ProportionState
from l2rw_jax.methods import WeighContext
from l2rw_jax.methods import WeighingScheme
from l2rw_jax.methods import get_scheme
from l2rw_jax.step import make_train_step
from l2rw_jax.step import softmax_xent
from l2rw_jax.config import METHODS
from l2rw_jax.config import default_config
from l2rw_jax.evaluate import make_eval_fn
from l2rw_jax.members import member_data
from l2rw_jax.train import train_and_evaluate
from l2rw_jax.train_state import TrainState

# Models.
from l2rw_jax.adapter import ModelOutputError
from l2rw_jax.adapter import adapt
from l2rw_jax.models import LeNet
from l2rw_jax.models import MLP
from l2rw_jax.models import OUTPUT_LAYER
from l2rw_jax.models import ResNet32
from l2rw_jax.models import SmallCNN
from l2rw_jax.models import WideResNet
from l2rw_jax.models import create_model
from l2rw_jax.models import init_model
from l2rw_jax.models import make_apply_fn
from l2rw_jax.models import make_feature_fn
from l2rw_jax.models import output_layer_path

# Data.
from l2rw_jax.corruption import Corrupted
from l2rw_jax.corruption import Splits
from l2rw_jax.corruption import asymmetric_flip
from l2rw_jax.corruption import background_flip
from l2rw_jax.corruption import clean_split
from l2rw_jax.corruption import imbalance_subset
from l2rw_jax.corruption import make_splits
from l2rw_jax.corruption import pair_flip
from l2rw_jax.corruption import transition_flip
from l2rw_jax.corruption import uniform_flip
from l2rw_jax.datasets import load_arrays
from l2rw_jax.datasets import save_arrays
from l2rw_jax.device_data import DeviceSplit
from l2rw_jax.device_data import StreamOrder
from l2rw_jax.device_data import batch_at
from l2rw_jax.device_data import index_shuffle
from l2rw_jax.device_data import place_split
from l2rw_jax.sharding import batch_sharding
from l2rw_jax.sharding import data_mesh
from l2rw_jax.sharding import replicated_sharding
from l2rw_jax.sharding import shard_batch
from l2rw_jax.sharding import shard_members

__version__ = "0.1.0"
