"""The optimizers' updates, written out in NumPy float64: the reference for every backend's optimizer.

Each follows torch.optim's formula (eps outside the square root), with the learning rate of the step
given (common/optim.py: learning_rates). g is the gradient of the loss (-objective).
  rmsprop (centered):  v <- rho v + (1-rho) g^2;  gbar <- rho gbar + (1-rho) g;
                       theta <- theta - lr g / (sqrt(v - gbar^2) + eps)
  adam:                m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  t = step + 1;
                       theta <- theta - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
  adagrad:             s <- s + g^2;  theta <- theta - lr g / (sqrt(s) + eps)
  adam-burda:          Burda et al.'s code (github.com/yburda/iwae, optimizers.py), its Theano updates
                       simultaneous, so the step takes the moments from before it: m starts at 0, v at 1, t = step + 1;
                       theta <- theta - lr (sqrt(1 - b2^t) / (1 - b1^t)) m / (sqrt(v) + eps);  then
                       m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
                       (the first step moves nothing, m being 0; v's start at 1 holds the early steps small
                       until b2^t falls below the mean g^2; their code runs it with b1 = 0.99, eps = 1e-4)
"""

from __future__ import annotations

import numpy as np

from common.optim import SLOTS, initial
from common.spec import Spec


def init_state(spec: Spec, params: dict[str, np.ndarray]) -> dict:
    state: dict = {"step": 0}
    for slot in SLOTS[spec.optimizer]:
        state[slot] = {k: np.full_like(v, initial(spec.optimizer, slot), dtype=np.float64) for k, v in params.items()}
    return state


def update(spec: Spec, params: dict, grads: dict, state: dict, lr: float) -> dict:
    """One step; returns the new parameters and updates state (slots and step) in place."""
    new = {}
    t = state["step"] + 1
    for k, g in grads.items():
        if spec.optimizer == "rmsprop":
            rho = spec.rmsprop_decay
            v = state["square_avg"][k] = rho * state["square_avg"][k] + (1 - rho) * g * g
            gbar = state["grad_avg"][k] = rho * state["grad_avg"][k] + (1 - rho) * g
            new[k] = params[k] - lr * g / (np.sqrt(v - gbar * gbar) + spec.rmsprop_eps)
        elif spec.optimizer == "adam":
            b1, b2 = spec.adam_beta1, spec.adam_beta2
            m = state["exp_avg"][k] = b1 * state["exp_avg"][k] + (1 - b1) * g
            v = state["exp_avg_sq"][k] = b2 * state["exp_avg_sq"][k] + (1 - b2) * g * g
            denom = np.sqrt(v) / np.sqrt(1 - b2**t) + spec.adam_eps
            new[k] = params[k] - (lr / (1 - b1**t)) * m / denom
        elif spec.optimizer == "adam-burda":
            b1, b2 = spec.adam_beta1, spec.adam_beta2
            m, v = state["exp_avg"][k], state["exp_avg_sq"][k]
            new[k] = params[k] - lr * (np.sqrt(1 - b2**t) / (1 - b1**t)) * m / (np.sqrt(v) + spec.adam_eps)
            state["exp_avg"][k] = b1 * m + (1 - b1) * g
            state["exp_avg_sq"][k] = b2 * v + (1 - b2) * g * g
        else:
            s = state["sum"][k] = state["sum"][k] + g * g
            new[k] = params[k] - lr * g / (np.sqrt(s) + spec.adagrad_eps)
    state["step"] = t
    return new
