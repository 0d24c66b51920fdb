"""Robustness: FGSM and PGD (L-inf), accuracy over epsilon, minimal adversarial epsilon (bisection).

Pixel space (see `l2rw_jax.audit.common`): epsilons are in raw pixel units (images in [0, 1]);
the attack runs on the normalised images the model eats, where the ball of radius eps is the
per-channel box `|x' - x| <= eps / std_C` and the valid range is
`[(0 - mean_C)/std_C, (1 - mean_C)/std_C]`. Every candidate is projected onto both, so each
adversarial image is a valid image within eps of the original in raw pixels.

The attacks (Goodfellow et al. 2015; Madry et al. 2018) take signed-gradient steps on an objective
J(f(x), y) of the logits z = f(x) and the reference label y:

  FGSM:  x_f = clip(x + eps * sign(grad_x J(f(x), y)))
  PGD:   x_0 = x (+ U(-eps, eps) with random start);
         x_{t+1} = proj(x_t + a * sign(grad_x J(f(x_t), y)))

J is by default the logit margin (Carlini & Wagner 2017, their f_6 without the confidence
term; the "CW loss" of PGD evaluations):

  J_margin(z, y) = max_{j != y} z_j - z_y          (> 0: x is misclassified)

Why not the cross-entropy (Madry et al. 2018)? `objective="cross_entropy"` is kept for comparison,
but it saturates: its gradient is sum_c (p_c - 1[c = y]) grad z_c, and in float32 p_y rounds to 1
once the margin z_y - max_{j != y} z_j exceeds about 17, so the -grad z_y part vanishes (the step
follows the wrong classes' logits alone); past a margin of about 88 every p_{j != y} falls below
float32's smallest normal number exp(-87.3), XLA flushes it to 0 (about 103 where subnormals are
kept), the gradient is exactly 0, sign(0) = 0, and the attack does not move. Confidently
classified examples then look robust because the attack stalls, not because they are. The
margin's gradient grad z_j* - grad z_y (j* the runner-up) never saturates, and scaling the logits
by c > 0 scales it by c, leaving sign(grad) -- hence every iterate -- unchanged; whether a
candidate fools the model (argmax z != y) does not depend on the scale either. So the results do
not change when the logits are multiplied by a positive constant, up to float32 rounding of
gradient components that are zero to working precision and of exact ties (tested exactly on a
linear model at scales 1, 30 and 300).

An example counts as robust at eps only if *no* candidate the attack visited fools the model:
for FGSM {x, x_f}; for PGD {x, x_f, x_0, ..., x_T} (PGD keeps the FGSM point as a candidate, so it
is never weaker than FGSM, by construction). Over an ascending list of epsilons the candidates
found at smaller eps also lie in the larger ball, so robustness at eps_k requires robustness at
every eps_j <= eps_k: robust accuracy never rises with eps, and eps = 0 gives the clean accuracy
(all candidates equal x). Each candidate is a genuine perturbation inside the ball, so the
reported numbers remain valid upper bounds on the true robust accuracy (and the minimal eps
upper bounds on the true one, to within the bisection bracket); a weaker attack only loosens
them, i.e. overstates robustness.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import auto as tqdm  # a widget in notebooks, a text bar in a terminal

from l2rw_jax.audit import common


OBJECTIVES = ("margin", "cross_entropy")


class AttackConfig(NamedTuple):
    """How FGSM / PGD search, and the pixel space they search in (module docstring).

    Attributes:
      steps: PGD iterations T (>= 0).
      step_size: PGD step as a fraction of eps (a = step_size * eps, > 0).
      random_start: start PGD from a uniform point of the ball instead of x.
      objective: what the steps ascend, one of `OBJECTIVES`.
      mean, std: per-channel normalisation of the images the model eats (scalars or C values;
        raw = x * std + mean lies in [0, 1]); epsilons are in raw pixel units.
      seed: PRNG seed of the random starts.
      batch_size: examples per jitted call (the last batch is padded).
    """

    steps: int = 10
    step_size: float = 0.25
    random_start: bool = True
    objective: str = "margin"
    mean: float | Sequence[float] = 0.0
    std: float | Sequence[float] = 1.0
    seed: int = 0
    batch_size: int = 256


def margin_loss(logits_BxC, y_B):
    """Per-example logit margin `max_{j != y} z_j - z_y` (B,), float32.

    > 0 means argmax z != y (fooled), < 0 means argmax z = y, 0 is a tie.

    Carlini & Wagner 2017 (f_6 with kappa = 0). Needs C >= 2 classes. Ties among the other
    classes share the gradient equally (the gradient rule of `jnp.max`).
    """
    logits_BxC = logits_BxC.astype(jnp.float32)
    is_y_BxC = jax.nn.one_hot(y_B, logits_BxC.shape[-1], dtype=bool)
    z_y_B = jnp.sum(jnp.where(is_y_BxC, logits_BxC, 0.0), axis=-1)
    return jnp.max(jnp.where(is_y_BxC, -jnp.inf, logits_BxC), axis=-1) - z_y_B


def attack_objective(logits_BxC, y_B, objective: str = "margin"):
    """The per-example quantity the attacks ascend (B,): `margin_loss` or the cross-entropy.

    Raises ValueError for an objective not in `OBJECTIVES`.
    """
    if objective == "margin":
        return margin_loss(logits_BxC, y_B)
    if objective == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxC.astype(jnp.float32), y_B)
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")


def _bounds(mean_C, std_C):
    inv_std_1x1x1xC = (1.0 / std_C).reshape(1, 1, 1, -1)
    lo_1x1x1xC = ((0.0 - mean_C) / std_C).reshape(1, 1, 1, -1)
    hi_1x1x1xC = ((1.0 - mean_C) / std_C).reshape(1, 1, 1, -1)
    return inv_std_1x1x1xC, lo_1x1x1xC, hi_1x1x1xC


def attack_batch(model: common.Model, attack: AttackConfig, x_BxHxWxC, y_B, eps_B, key) -> dict:
    """FGSM and PGD on one batch with a per-example radius `eps_B` (raw pixel units).

    Args:
      model: the model (`apply_fn`, `params`, `model_state`; `feature_fn` unused).
      attack: steps, step size, start, objective and pixel space (`attack.seed` and
        `attack.batch_size` unused: the batch is this one and `key` drives the random start).
      x_BxHxWxC: normalised images; y_B: reference labels (the class to push the example out of).
      eps_B: radius per example.
      key: PRNG key for the random start.

    Returns:
      dict of `clean_correct`, `fgsm_correct`, `pgd_correct` (bool B, "not fooled by any
      candidate so far", so pgd <= fgsm <= clean elementwise) and `x_adv` (the first candidate
      that fooled the model -- the FGSM point first, then the PGD iterates in order -- else the last
      PGD iterate).

    Raises:
      ValueError: an objective not in `OBJECTIVES`, or a non-positive std.
    """
    if attack.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {attack.objective!r}.")
    mean_C, std_C = common.channel_stats(attack.mean, attack.std, np.shape(x_BxHxWxC)[-1])
    return _attack_batch(
        model.apply_fn,
        attack.steps,
        attack.random_start,
        model.params,
        model.model_state,
        x_BxHxWxC,
        y_B,
        eps_B,
        attack.step_size,
        mean_C,
        std_C,
        key,
        objective=attack.objective,
    )


# The jitted core keeps positional arguments: the static ones (function, steps, flag, objective)
# key the compilation cache, everything else is traced.
@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames=("objective",))
def _attack_batch(
    apply_fn,
    steps: int,
    random_start: bool,
    params,
    model_state,
    x_BxHxWxC,
    y_B,
    eps_B,
    step_size,
    mean_C,
    std_C,
    key,
    *,
    objective: str = "margin",
):
    """`attack_batch` with its bundles unpacked (mean_C, std_C already per channel).

    Args:
      apply_fn: pure apply function (static: one compilation per function, steps, flag and shape).
      steps: PGD iterations T.
      random_start: start PGD from a uniform point of the ball instead of x.
      x_BxHxWxC: normalised images; y_B: reference labels (the class to push the example out of).
      eps_B: radius per example; step_size: PGD step as a fraction of eps (a = step_size * eps).
      mean_C, std_C: normalisation of the images (see module docstring).
      key: PRNG key for the random start.
      objective: what the steps ascend, one of `OBJECTIVES` (static; module docstring).

    Returns:
      dict of `clean_correct_B`, `fgsm_correct_B`, `pgd_correct_B` (bool, "not fooled by any
      candidate so far", so pgd <= fgsm <= clean elementwise) and `x_adv` (the first candidate
      that fooled the model — the FGSM point first, then the PGD iterates in order — else the last
      PGD iterate).
    """
    inv_std, lo, hi = _bounds(mean_C, std_C)
    eps_4d = eps_B.reshape(-1, 1, 1, 1) * inv_std
    alpha_4d = step_size * eps_4d
    x_min, x_max = jnp.maximum(x_BxHxWxC - eps_4d, lo), jnp.minimum(x_BxHxWxC + eps_4d, hi)

    def loss_and_pred(x):
        logits_BxC, _ = apply_fn(params, model_state, x, False)
        # Summed over the batch: each example's input gradient is that of its own term.
        loss = jnp.sum(attack_objective(logits_BxC, y_B, objective))
        return loss, jnp.argmax(logits_BxC, axis=-1)

    grad_fn = jax.grad(loss_and_pred, has_aux=True)
    g0, pred0 = grad_fn(x_BxHxWxC)
    clean_correct = pred0 == y_B
    x_fgsm = jnp.clip(x_BxHxWxC + eps_4d * jnp.sign(g0), x_min, x_max)
    _, pred_f = loss_and_pred(x_fgsm)
    fgsm_correct = clean_correct & (pred_f == y_B)

    if random_start:
        u = jax.random.uniform(key, x_BxHxWxC.shape, minval=-1.0, maxval=1.0)
        x_start = jnp.clip(x_BxHxWxC + u * eps_4d, x_min, x_max)
    else:
        x_start = x_BxHxWxC
    # Before any PGD candidate is visited the best adversarial is the FGSM point if it fooled.
    x_best = jnp.where(fgsm_correct.reshape(-1, 1, 1, 1), x_start, x_fgsm)

    def body(carry):
        t, x_t, correct, x_best = carry
        g, pred = grad_fn(x_t)
        newly_fooled = correct & (pred != y_B)
        x_best = jnp.where(newly_fooled.reshape(-1, 1, 1, 1), x_t, x_best)
        correct = correct & (pred == y_B)
        x_next = jnp.clip(x_t + alpha_4d * jnp.sign(g), x_min, x_max)
        return t + 1, x_next, correct, x_best

    # Stop early once every example of the batch is fooled: later iterates cannot change any
    # result (each example keeps its first fooling candidate), so this only saves time.
    _, x_last, correct, x_best = jax.lax.while_loop(
        lambda c: (c[0] < steps) & jnp.any(c[2]), body, (0, x_start, fgsm_correct, x_best)
    )
    _, pred_last = loss_and_pred(x_last)
    newly_fooled = correct & (pred_last != y_B)
    x_best = jnp.where(
        newly_fooled.reshape(-1, 1, 1, 1) | correct.reshape(-1, 1, 1, 1), x_last, x_best
    )
    pgd_correct = correct & (pred_last == y_B)
    return {
        "clean_correct": clean_correct,
        "fgsm_correct": fgsm_correct,
        "pgd_correct": pgd_correct,
        "x_adv": x_best,
    }


def _check_attack_args(model, x, y, attack: AttackConfig):
    if not isinstance(model, common.Model):
        raise TypeError(
            f"model must be an l2rw_jax.audit.common.Model(apply_fn, params, model_state), got "
            f"{type(model).__name__}."
        )
    if not isinstance(attack, AttackConfig):
        raise TypeError(f"attack must be an AttackConfig, got {type(attack).__name__}.")
    if attack.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {attack.objective!r}.")
    x = common.check_images(x)
    y = common.check_labels(y, x.shape[0], None, "labels")
    if attack.steps < 0:
        raise ValueError(f"steps must be >= 0, got {attack.steps}.")
    if not attack.step_size > 0:
        raise ValueError(f"step_size (a fraction of eps) must be > 0, got {attack.step_size}.")
    if attack.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {attack.batch_size}.")
    mean_C, std_C = common.channel_stats(attack.mean, attack.std, x.shape[-1])
    return x, y, mean_C, std_C


def robust_accuracy_curve(
    model: common.Model,
    x: np.ndarray,
    y: np.ndarray,
    epsilons: Sequence[float],
    attack: AttackConfig = AttackConfig(),
    *,
    progress: bool = True,
) -> dict:
    """Accuracy under FGSM and PGD for each epsilon in an ascending list (raw pixel units).

    `model` gives apply_fn, params and model_state; `attack` how to search (`AttackConfig`);
    x are normalised images N x H x W x C, y their labels.

    Robust at eps_k = not fooled by any candidate at any eps_j <= eps_k (module docstring), so the
    curves start at the clean accuracy for eps = 0, never rise, and PGD <= FGSM pointwise.

    Returns dict: `epsilons`, `clean_accuracy`, `fgsm_accuracy` and `pgd_accuracy` (lists, one per
    eps), `n`, and per-example `fgsm_correct_NxE`, `pgd_correct_NxE` (bool arrays).
    """
    x, y, mean_C, std_C = _check_attack_args(model, x, y, attack)
    eps_E = np.asarray(epsilons, np.float32).reshape(-1)
    if eps_E.size == 0 or np.any(eps_E < 0) or np.any(np.diff(eps_E) < 0):
        raise ValueError(
            f"epsilons must be a non-empty ascending list of values >= 0, got {list(epsilons)}."
        )
    key = jax.random.key(attack.seed)
    n = len(x)
    clean_N = None
    fgsm_ok, pgd_ok = np.ones(n, bool), np.ones(n, bool)
    fgsm_NxE, pgd_NxE = np.zeros((n, eps_E.size), bool), np.zeros((n, eps_E.size), bool)
    bar = tqdm.tqdm(
        total=eps_E.size, desc="robust accuracy (FGSM/PGD)", leave=False, disable=not progress
    )
    for e, eps in enumerate(eps_E):
        # Only examples not yet fooled need attacking (robustness is cumulative over eps): PGD (with
        # its FGSM candidate) where PGD has not won yet, FGSM alone where only FGSM has not.
        # At eps = 0 every PGD iterate is x itself: no iteration needed (same result, no cost).
        pgd_steps = attack.steps if eps > 0 else 0
        for rows, k, is_pgd in (
            (np.flatnonzero(pgd_ok), pgd_steps, True),
            (np.flatnonzero(fgsm_ok & ~pgd_ok), 0, False),
        ):
            if rows.size == 0:
                continue
            out = common.map_batched(
                lambda i, xb, yb, k=k: _attack_batch(
                    model.apply_fn,
                    k,
                    attack.random_start,
                    model.params,
                    model.model_state,
                    xb,
                    yb,
                    np.full(len(xb), eps, np.float32),
                    attack.step_size,
                    mean_C,
                    std_C,
                    jax.random.fold_in(jax.random.fold_in(key, e), i),
                    objective=attack.objective,
                ),
                [x[rows], y[rows]],
                attack.batch_size,
                with_index=True,
            )
            if clean_N is None:  # first call: every row, clean predictions
                clean_N = out["clean_correct"]
            fgsm_ok[rows] &= out["fgsm_correct"]
            if is_pgd:
                pgd_ok[rows] &= out["pgd_correct"]
        pgd_ok &= fgsm_ok
        fgsm_NxE[:, e], pgd_NxE[:, e] = fgsm_ok, pgd_ok
        bar.update(1)
    bar.close()
    return {
        "epsilons": eps_E.tolist(),
        "n": int(len(x)),
        "clean_accuracy": float(clean_N.mean()),
        "fgsm_accuracy": fgsm_NxE.mean(axis=0).tolist(),
        "pgd_accuracy": pgd_NxE.mean(axis=0).tolist(),
        "fgsm_correct_NxE": fgsm_NxE,
        "pgd_correct_NxE": pgd_NxE,
    }


def minimal_adversarial_epsilon(
    model: common.Model,
    x: np.ndarray,
    y_ref: np.ndarray,
    attack: AttackConfig = AttackConfig(),
    *,
    eps_max: float = 0.5,
    bisection_steps: int = 8,
    progress: bool = True,
) -> dict:
    """Per-example smallest eps (raw pixel units) at which PGD pushes x out of class `y_ref`.

    `model` gives apply_fn, params and model_state; `attack` how to search (`AttackConfig`).

    Bisection on [0, eps_max] with the batched PGD attack above (per-example radii, one compiled
    function): `fooled(eps)` = some candidate within eps is not classified as y_ref. Examples
    already not classified as y_ref get 0; examples PGD cannot fool at eps_max get +inf. Otherwise
    the result is the upper end of the final bracket: a radius at which a fooling perturbation was
    found, within eps_max / 2**bisection_steps of the last radius at which none was.

    Returns dict: `min_eps` (N, float64, inf = not found), `x_adv` (the fooling image found at
    `min_eps`, or x where none), `eps_max`, `bisection_steps`.
    """
    x, y_ref, mean_C, std_C = _check_attack_args(model, x, y_ref, attack)
    if not eps_max > 0:
        raise ValueError(f"eps_max must be > 0, got {eps_max}.")
    if bisection_steps < 0:
        raise ValueError(f"bisection_steps must be >= 0, got {bisection_steps}.")
    key = jax.random.key(attack.seed)

    def run(number, xb, yb):
        kb = jax.random.fold_in(key, number)
        run_pgd = lambda eps, i: _attack_batch(
            model.apply_fn,
            attack.steps,
            attack.random_start,
            model.params,
            model.model_state,
            xb,
            yb,
            eps.astype(np.float32),
            attack.step_size,
            mean_C,
            std_C,
            jax.random.fold_in(kb, i),
            objective=attack.objective,
        )
        out = jax.device_get(run_pgd(np.full(len(xb), eps_max), 0))
        clean = np.asarray(out["clean_correct"])
        found = ~np.asarray(out["pgd_correct"])
        x_adv = np.where(found.reshape(-1, 1, 1, 1), np.asarray(out["x_adv"]), xb)
        lo = np.zeros(len(xb))
        hi = np.full(len(xb), eps_max, np.float64)
        active = clean & found
        for i in range(bisection_steps):
            if not active.any():
                break
            mid = 0.5 * (lo + hi)
            out = jax.device_get(run_pgd(np.where(active, mid, hi), i + 1))
            fooled = ~np.asarray(out["pgd_correct"]) & active
            hi = np.where(fooled, mid, hi)
            lo = np.where(active & ~fooled, mid, lo)
            x_adv = np.where(fooled.reshape(-1, 1, 1, 1), np.asarray(out["x_adv"]), x_adv)
        min_eps = np.where(~clean, 0.0, np.where(found, hi, np.inf))
        x_adv = np.where(clean.reshape(-1, 1, 1, 1), x_adv, xb)
        return min_eps, x_adv

    min_eps, x_adv = common.map_batched(
        run,
        [x, y_ref],
        attack.batch_size,
        desc="minimal adversarial eps" if progress else None,
        with_index=True,
    )
    return {
        "min_eps": min_eps.astype(np.float64),
        "x_adv": x_adv,
        "eps_max": float(eps_max),
        "bisection_steps": int(bisection_steps),
    }
