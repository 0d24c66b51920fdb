"""What the training loop needs, built once: the model, the step of one member with its
per-example accumulators, and the K members' initial carry.

The carry of a group of members is ``(state, acc, msum)``: ``state`` a :class:`TrainState`
whose every leaf has a leading seed axis K (also for K = 1); ``acc = {"w_sum": KxN, "w_sq_sum":
KxN, "nonzero": KxN, "count": KxN, "w_bin_sum": KxBxN, "bin_count": KxBxN, "all_zero_steps":
K}`` (and for l2rw ``"g_sum": KxN``), the per-example weights, their squares and their non-zero
draws summed over training, and the weights and draws summed per step bin (the weight
trajectory, B = ``HISTORY_BINS`` bins: :func:`history_bin`), all saved in example_weights.npz;
``msum`` the scalar metrics summed since the last log.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2rw_jax import adapter
from l2rw_jax import correction as correction_lib
from l2rw_jax import methods
from l2rw_jax import model_factory
from l2rw_jax import models
from l2rw_jax import reweight
from l2rw_jax import step as step_lib
from l2rw_jax.config_schema import CORRECTIONS
from l2rw_jax.members import MemberData
from l2rw_jax.train_state import TrainState


# Equal step bins of the per-example weight trajectory: B x N float32 sums and B x N int32
# draws per member, 8 B N bytes (CIFAR-10's 45k rows: 5.8 MB a member), whatever the steps.
HISTORY_BINS = 16


def history_bin(step, num_bins: int, num_steps: int):
    """The trajectory bin of 0-based training step ``step``: ``min(step * num_bins //
    num_steps, num_bins - 1)``, so bin ``b`` holds the steps ``t`` in ``[ceil(b S / B),
    ceil((b + 1) S / B))`` with ``S = num_steps``, ``B = num_bins`` (``members.history_edges``;
    bins of one more or one less step, empty ones where ``S < B``). Works on ints and jax
    arrays alike (int32: ``step * num_bins`` must stay below 2^31)."""
    return jnp.minimum(step * num_bins // num_steps, num_bins - 1)


class Run(NamedTuple):
    """What the loop needs, built once."""

    members: list[MemberData]
    apply_fn: Callable
    train_step: Callable  # one member, un-jitted
    carry0: tuple  # host (numpy) initial (state, acc, msum), stacked over K
    metric_names: list[str]
    total_steps: int
    num_classes: int
    history_steps: int = 0  # the steps the trajectory bins cover (the noisy phase); 0: none


def make_loop_step(
    train_step: Callable, accumulate: bool, history_steps: int | None = None
) -> Callable:
    """One member's step plus the per-example weight accumulation and the metric sums.

    ``acc = {"w_sum": (N,), "w_sq_sum": (N,), "nonzero": (N,), "count": (N,)}`` is
    scatter-added at ``batch["index"]`` (the row in the noisy training set) with this step's
    ``w_B``, ``w_B ** 2``, ``w_B != 0`` and 1 (when ``accumulate``: the running sums behind each
    example's mean weight, weight std and share of non-zero draws,
    ``members.running_weight_stats``; and ``acc["g_sum"]``,
    when present, with the RMS-normalised meta-gradient ``g_B``), ``acc
    ["all_zero_steps"]`` counts the steps whose weights were all 0, and ``msum`` adds up the
    scalar metrics of the steps since the last log.

    The weight trajectory: when ``acc`` has ``"w_bin_sum"`` and ``"bin_count"`` (B x N each),
    the step ``t = state.step`` (before the step) adds ``w_B`` and 1 at ``(history_bin(t, B,
    history_steps), batch["index"])``: per bin, per example, the weights and draws whose
    quotient is the example's mean weight in that bin. Summed over the bins they are ``w_sum``
    and ``count``.

    Raises:
      ValueError: ``acc`` with the trajectory sums but no ``history_steps`` >= 1 (at trace).
    """

    def member_step(state, acc, msum, batch, val_batch):
        step_t = state.step if accumulate and "w_bin_sum" in acc else None
        state, metrics = train_step(state, batch, val_batch)
        acc = dict(acc, all_zero_steps=acc["all_zero_steps"] + metrics["all_zero"])
        if accumulate:
            index_B = batch["index"]
            w_B = metrics["w_B"]
            acc.update(
                w_sum=acc["w_sum"].at[index_B].add(w_B),
                w_sq_sum=acc["w_sq_sum"].at[index_B].add(w_B * w_B),
                nonzero=acc["nonzero"].at[index_B].add((w_B != 0).astype(jnp.int32)),
                count=acc["count"].at[index_B].add(1),
            )
            if "w_bin_sum" in acc:
                if not history_steps or history_steps < 1:
                    raise ValueError(
                        f"history_steps={history_steps!r}: the weight trajectory needs the "
                        f"number of steps its bins cover (>= 1)."
                    )
                b = history_bin(step_t, acc["w_bin_sum"].shape[0], history_steps)
                acc.update(
                    w_bin_sum=acc["w_bin_sum"].at[b, index_B].add(w_B),
                    bin_count=acc["bin_count"].at[b, index_B].add(1),
                )
            if "g_sum" in acc:  # l2rw: the meta-gradient before it is clipped and normalised
                gn_B = methods.rms_normalized(metrics["g_B"])
                acc.update(g_sum=acc["g_sum"].at[index_B].add(gn_B))
        msum = {k: msum[k] + metrics[k].astype(jnp.float32) for k in msum}
        return state, acc, msum

    return member_step


def with_correction(
    weighing: methods.WeighingScheme,
    correction: str,
    correction_steps: int,
    *,
    num_clean: int,
    num_train: int,
) -> methods.WeighingScheme:
    """``weighing`` inside the loss correction ``correction`` (:func:`build_run`'s argument;
    ``"none"``: ``weighing`` as it is).

    Raises:
      ValueError: a ``correction`` not in ``CORRECTIONS``; the correction's own errors.
    """
    if correction not in CORRECTIONS:
        raise ValueError(
            f"correction={correction!r} is not supported; allowed: {', '.join(CORRECTIONS)}."
        )
    if correction == "none":
        return weighing
    sizes = dict(num_clean=num_clean, num_train=num_train)
    if correction == "glc":
        return correction_lib.gold_correction(weighing, estimate_steps=correction_steps, **sizes)
    weighing = correction_lib.plateau_gold_correction(
        weighing,
        patience=correction_steps,
        reweight_first=correction in ("glc_reweighted", "glc_guarded"),
        **sizes,
    )
    if correction == "glc_plateau":
        return weighing
    guard = correction_steps if correction == "glc_guarded" else 0
    return correction_lib.rewind_at_trigger(weighing, guard=guard)


def init_states(
    module, tx, members: list[MemberData], scheme: methods.WeighingScheme, image_shape
) -> TrainState:
    """The K members' initial TrainStates, stacked (numpy).

    Member keys: ``split(PRNGKey(seed), 3)`` -> (model init, step rng, method state). The
    model is initialised for all members in one vmapped call (one compilation, and the same
    numbers as K separate calls: the random bits are a function of each key alone).
    """
    keys = [jax.random.split(jax.random.PRNGKey(md.seed), 3) for md in members]

    def init_one(key):
        params, model_state = models.init_model(module, key, (1,) + tuple(image_shape))
        return params, model_state, tx.init(params)

    # Not jitted here: init_model jits itself with compile-time-saving options.
    params, model_state, opt_state = jax.vmap(init_one)(jnp.stack([k[0] for k in keys]))
    if scheme.rewind is None:
        method_states = [scheme.init(k[2], md.class_counts) for k, md in zip(keys, members)]
    else:  # it keeps a copy of the parameters: each member its own initial ones
        method_states = [
            scheme.init(k[2], md.class_counts, params=jax.tree.map(lambda x, i=i: x[i], params))
            for i, (k, md) in enumerate(zip(keys, members))
        ]
    state = TrainState(
        step=np.zeros((len(members),), np.int32),
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        rng=jnp.stack([k[1] for k in keys]),
        method_state=jax.tree.map(lambda *xs: jnp.stack(xs), *method_states),
    )
    return to_host(state)


# Step metrics that need the true labels (absent from runs whose truth is unknown).
TRUTH_METRICS = ("w_mean_noisy", "w_mean_clean")


def to_host(tree):
    # np.array copies: the host copy must outlive the donated device buffers.
    return jax.tree.map(lambda x: np.array(x), tree)


def batch_shapes(batch_size: int, clean_batch_size: int, image_shape) -> tuple[dict, dict]:
    """Abstract (train, clean) batches of one member, as the streams yield them."""
    sds = jax.ShapeDtypeStruct
    b, m = batch_size, clean_batch_size
    train = {
        "image": sds((b,) + tuple(image_shape), jnp.float32),
        "label": sds((b,), jnp.int32),
        "true_label": sds((b,), jnp.int32),
        "is_noisy": sds((b,), jnp.bool_),
        "index": sds((b,), jnp.int32),
    }
    clean = {
        "image": sds((m,) + tuple(image_shape), jnp.float32),
        "label": sds((m,), jnp.int32),
        "index": sds((m,), jnp.int32),
    }
    return train, clean


def build_run(
    members: list[MemberData],
    *,
    model: str,
    model_kwargs: dict,
    tx: optax.GradientTransformation,
    scheme: str,
    options: dict,
    batch_size: int,
    clean_batch_size: int,
    total_steps: int,
    correction: str = "none",
    correction_steps: int = 0,
    history_steps: int | None = None,
) -> Run:
    """The model, optimizer step and initial carry of ``members`` (same-size training sets).

    Args:
      members: the members' data (``members.make_member``).
      model, model_kwargs: ``model_factory.create_model(model, num_classes, **model_kwargs)``.
      tx: the optimizer; ``scheme``, ``options``: ``methods.get_scheme(scheme, **options)``.
      batch_size, clean_batch_size: B and M of one member's step.
      total_steps: training steps of the run (the finetune phase included).
      correction, correction_steps: ``"none"``; ``"glc"``: the scheme wrapped in Gold Loss
        Correction estimated at step ``correction_steps`` (``correction.gold_correction``);
        ``"glc_plateau"``: estimated once the clean accuracy has not risen for
        ``correction_steps`` steps (``correction.plateau_gold_correction``);
        ``"glc_plateau_rewind"``: that, and the model set back to its parameters at the
        estimate when it is made (``correction.rewind_at_trigger``); ``"glc_reweighted"``:
        that, with the scheme's weights before the trigger and the matrix counted on the
        training rows (``reweight_first``); ``"glc_guarded"``: that, taken back (the model set
        back once more) where the clean accuracy sets no new best ``correction_steps`` steps
        after the trigger (``rewind_at_trigger``'s ``guard``).
      history_steps: the steps whose weights the trajectory's ``HISTORY_BINS`` bins cover
        (the phase that accumulates weights, steps ``0..history_steps - 1``; default
        ``total_steps``). The carry gets ``w_bin_sum`` and ``bin_count`` (K x B x N).

    Raises:
      ValueError: members with training sets of different sizes; an optimizer whose update
        the look-ahead schemes (l2rw, mwnet) cannot differentiate (before step 1, not NaN).
    """
    sizes = {len(md.splits.train_labels) for md in members}
    if len(sizes) != 1:
        raise ValueError(f"members' training sets differ in size {sorted(sizes)}.")
    history_steps = total_steps if history_steps is None else history_steps
    if not 1 <= history_steps <= total_steps:
        raise ValueError(
            f"history_steps={history_steps} must be in [1, total_steps={total_steps}]."
        )
    num_train, K = sizes.pop(), len(members)
    num_classes = members[0].splits.num_classes
    image_shape = members[0].splits.train_x.shape[1:]
    module = model_factory.create_model(model, num_classes, **model_kwargs)
    apply_fn = models.make_apply_fn(module)
    # meta_params="last" of a module of the user's: its output layer, wherever it is.
    options = adapter.resolve_meta_params(module, options, (1,) + tuple(image_shape))
    weighing = methods.get_scheme(scheme, **options)
    weighing = with_correction(
        weighing,
        correction,
        correction_steps,
        num_clean=len(members[0].splits.clean_labels),
        num_train=num_train,
    )
    train_step = step_lib.make_train_step(apply_fn, tx, weighing)
    state = init_states(module, tx, members, weighing, image_shape)
    if scheme in ("l2rw", "mwnet"):  # they differentiate tx.update: fail before step 1, not NaN
        params, opt_state = jax.tree.map(lambda x: x[0], (state.params, state.opt_state))
        reweight.check_lookahead(tx, params, opt_state)
    metrics = jax.eval_shape(
        train_step,
        jax.tree.map(lambda x: x[0], state),
        *batch_shapes(batch_size, clean_batch_size, image_shape),
    )[1]
    names = sorted(k for k, v in metrics.items() if not k.endswith("_B") and v.shape == ())
    if not members[0].splits.truth_known:
        # is_noisy is all False there, not a truth: the noisy-vs-clean means are left out.
        names = [k for k in names if k not in TRUTH_METRICS]
    acc = {
        "w_sum": np.zeros((K, num_train), np.float32),
        "w_sq_sum": np.zeros((K, num_train), np.float32),
        "nonzero": np.zeros((K, num_train), np.int32),
        "count": np.zeros((K, num_train), np.int32),
        "w_bin_sum": np.zeros((K, HISTORY_BINS, num_train), np.float32),
        "bin_count": np.zeros((K, HISTORY_BINS, num_train), np.int32),
        "all_zero_steps": np.zeros((K,), np.int32),
    }
    if "g_B" in metrics:
        acc["g_sum"] = np.zeros((K, num_train), np.float32)
    msum = {k: np.zeros((K,), np.float32) for k in names}
    return Run(
        members,
        apply_fn,
        train_step,
        (state, acc, msum),
        names,
        total_steps,
        num_classes,
        history_steps,
    )


HISTORY_KEYS = ("w_bin_sum", "bin_count")


def without_history(carry: tuple) -> tuple:
    """``carry`` without the trajectory sums (``HISTORY_KEYS``): the layout of a checkpoint
    written before they were kept, so such a run still resumes (and records no trajectory)."""
    state, acc, msum = carry
    return state, {k: v for k, v in acc.items() if k not in HISTORY_KEYS}, msum


def use_scan(run: Run, mesh, batch_size: int, clean_batch_size: int) -> bool:
    """Whether the device backend runs its calls under ``lax.scan``: yes, except for
    convolutional models on XLA:CPU (see ``device_call.make_train_call``)."""
    from l2rw_jax import device_call

    if mesh.devices.flat[0].platform != "cpu":
        return True
    image_shape = run.members[0].splits.train_x.shape[1:]
    return not device_call.has_convolution(
        run.train_step,
        jax.tree.map(lambda x: x[0], run.carry0[0]),
        *batch_shapes(batch_size, clean_batch_size, image_shape),
    )
