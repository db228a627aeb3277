"""The optimizers of backends/numpy/optim.py (torch.optim's formulas, eps outside the square root) as optax
transformations that give each step's direction d; the step itself, theta <- theta - lr_t d, is taken here with
the learning rate as an argument (a scan input), so no schedule is baked into a compiled function.

  rmsprop  optax.scale_by_stddev(eps_in_sqrt=False): g / (sqrt(E[g^2] - E[g]^2) + eps), torch's centered RMSprop
  adam     optax.scale_by_adam: (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), torch's Adam
  adagrad  scale_by_sum_of_squares below: optax.scale_by_rss is not torch's Adagrad (it adds eps inside the
           square root and starts its accumulator at 0.1; torch adds eps outside and starts at 0)
  adam-burda  scale_by_burda_adam below: Burda et al.'s Adam, v starting at 1 and the step taken with the
           moments from before it, (sqrt(1 - b2^t) / (1 - b1^t)) m / (sqrt(v) + eps); optax has none such
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.spec import Spec

PyTree = Any
FIELDS = {  # torch's slot names (common.optim.SLOTS) -> the field of the transformation's state that holds each
    "rmsprop": {"square_avg": "nu", "grad_avg": "mu"},
    "adam": {"exp_avg": "mu", "exp_avg_sq": "nu"},
    "adagrad": {"sum": "sum"},
    "adam-burda": {"exp_avg": "mu", "exp_avg_sq": "nu"},
}


class SumOfSquaresState(NamedTuple):
    sum: PyTree  # sum of g^2 over the steps so far


def scale_by_sum_of_squares(eps: float) -> optax.GradientTransformation:
    """Adagrad's direction as torch computes it: s <- s + g^2 (s starting at 0), d = g / (sqrt(s) + eps)."""
    def init(params: PyTree) -> SumOfSquaresState:
        return SumOfSquaresState(jax.tree.map(jnp.zeros_like, params))

    def update(grads: PyTree, state: SumOfSquaresState, params: PyTree = None) -> tuple[PyTree, SumOfSquaresState]:
        total = jax.tree.map(lambda s, g: s + g * g, state.sum, grads)
        return jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), grads, total), SumOfSquaresState(total)

    return optax.GradientTransformation(init, update)


class BurdaAdamState(NamedTuple):
    count: jax.Array  # int32: the steps taken
    mu: PyTree  # m, starting at 0
    nu: PyTree  # v, starting at 1


def scale_by_burda_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """The direction of Burda et al.'s Adam (backends/numpy/optim.py): from the moments before this step's update."""
    def init(params: PyTree) -> BurdaAdamState:
        return BurdaAdamState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params),
                              jax.tree.map(jnp.ones_like, params))

    def update(grads: PyTree, state: BurdaAdamState, params: PyTree = None) -> tuple[PyTree, BurdaAdamState]:
        t = (state.count + 1).astype(jax.tree.leaves(grads)[0].dtype)
        scale = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        d = jax.tree.map(lambda m, v: scale * m / (jnp.sqrt(v) + eps), state.mu, state.nu)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        return d, BurdaAdamState(state.count + 1, mu, nu)

    return optax.GradientTransformation(init, update)


def direction(spec: Spec) -> optax.GradientTransformation:
    if spec.optimizer == "rmsprop":
        return optax.scale_by_stddev(decay=spec.rmsprop_decay, eps=spec.rmsprop_eps, eps_in_sqrt=False)
    if spec.optimizer == "adam":
        return optax.scale_by_adam(b1=spec.adam_beta1, b2=spec.adam_beta2, eps=spec.adam_eps, eps_root=0.0)
    if spec.optimizer == "adam-burda":
        return scale_by_burda_adam(spec.adam_beta1, spec.adam_beta2, spec.adam_eps)
    return scale_by_sum_of_squares(spec.adagrad_eps)


STATE_TYPES = {"rmsprop": optax.ScaleByRStdDevState, "adam": optax.ScaleByAdamState, "adagrad": SumOfSquaresState,
               "adam-burda": BurdaAdamState}


class State(NamedTuple):
    step: jax.Array  # int32: the steps taken, the position in the learning-rate schedule
    inner: optax.OptState  # the direction's state: the slots, under the field names of FIELDS


def update(spec: Spec, grads: PyTree, state: State, params: PyTree, lr: jax.Array) -> tuple[PyTree, State]:
    """One step on the loss whose gradient is grads; returns the new parameters and state."""
    d, inner = direction(spec).update(grads, state.inner, params)
    return jax.tree.map(lambda p, d_p: p - lr * d_p, params, d), State(state.step + 1, inner)


def slots(spec: Spec, state: State) -> dict[str, PyTree]:
    return {slot: getattr(state.inner, field) for slot, field in FIELDS[spec.optimizer].items()}


def restore(spec: Spec, step: int, slot_trees: dict[str, PyTree]) -> State:
    """The state with this step count and these slots (torch's names, each laid out like the parameters), on the
    host: the caller places every leaf as it places the parameters, counts included (a count left uncommitted on
    one device makes the mesh's jit compile the window again once the state comes back replicated)."""
    fields = {field: slot_trees[slot] for slot, field in FIELDS[spec.optimizer].items()}
    if spec.optimizer in ("adam", "adam-burda"):
        fields["count"] = np.array(step, np.int32)  # each Adam counts its own steps, for the bias correction
    return State(np.array(step, np.int32), STATE_TYPES[spec.optimizer](**fields))
