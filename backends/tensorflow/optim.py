"""The optimizers written out in TensorFlow with torch.optim's formulas, and Burda et al.'s Adam
(backends/numpy/optim.py, the reference).

Keras's own optimizers differ (RMSprop puts eps inside the square root), so none is used. The learning rate
of each step is a tensor argument, so a schedule changes no trace. The state is tf.Variables: a step count
and the slots of common.optim.SLOTS under torch's names, one per parameter.
"""

from __future__ import annotations

import tensorflow as tf

from common.optim import SLOTS, initial
from common.spec import Spec

Slots = dict[str, tf.Variable]  # one parameter's slot variables, by slot name


class Optimizer(tf.Module):
    """state["step"] and state[slot][name]; apply() takes the gradient of the loss (-objective)."""

    def __init__(self, spec: Spec, variables: dict[str, tf.Variable]):
        super().__init__(name=spec.optimizer.replace("-", "_"))
        self.spec = spec
        self.step = tf.Variable(0, dtype=tf.int64, name="step")
        self.slots = {slot: {k: tf.Variable(tf.fill(tf.shape(v), tf.constant(initial(spec.optimizer, slot), v.dtype)),
                                            name=f"{k}.{slot}") for k, v in variables.items()}
                      for slot in SLOTS[spec.optimizer]}

    def apply(self, variables: dict[str, tf.Variable], grads: dict[str, tf.Tensor], lr: tf.Tensor) -> None:
        t = tf.cast(self.step + 1, lr.dtype)
        for k, g in grads.items():
            variables[k].assign_sub(self.delta({slot: self.slots[slot][k] for slot in self.slots}, g, lr, t))
        self.step.assign_add(1)

    def delta(self, slot: Slots, g: tf.Tensor, lr: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        """Update one parameter's slots for the gradient g of step t (1-based); return theta_old - theta_new."""
        raise NotImplementedError


class CenteredRMSprop(Optimizer):
    def delta(self, slot: Slots, g: tf.Tensor, lr: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        rho = self.spec.rmsprop_decay
        v = slot["square_avg"].assign(rho * slot["square_avg"] + (1.0 - rho) * g * g)
        g_bar = slot["grad_avg"].assign(rho * slot["grad_avg"] + (1.0 - rho) * g)
        return lr * g / (tf.sqrt(v - g_bar * g_bar) + self.spec.rmsprop_eps)


class Adam(Optimizer):
    def delta(self, slot: Slots, g: tf.Tensor, lr: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        b1, b2 = self.spec.adam_beta1, self.spec.adam_beta2
        m = slot["exp_avg"].assign(b1 * slot["exp_avg"] + (1.0 - b1) * g)
        v = slot["exp_avg_sq"].assign(b2 * slot["exp_avg_sq"] + (1.0 - b2) * g * g)
        denom = tf.sqrt(v) / tf.sqrt(1.0 - b2**t) + self.spec.adam_eps
        return (lr / (1.0 - b1**t)) * m / denom


class Adagrad(Optimizer):
    def delta(self, slot: Slots, g: tf.Tensor, lr: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        s = slot["sum"].assign(slot["sum"] + g * g)  # torch's initial_accumulator_value = 0
        return lr * g / (tf.sqrt(s) + self.spec.adagrad_eps)


class BurdaAdam(Optimizer):
    def delta(self, slot: Slots, g: tf.Tensor, lr: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
        """The step from the moments before this step's update (read first: the reads and assigns of one
        variable run in program order inside a tf.function)."""
        b1, b2 = self.spec.adam_beta1, self.spec.adam_beta2
        m, v = slot["exp_avg"].read_value(), slot["exp_avg_sq"].read_value()
        step = lr * (tf.sqrt(1.0 - b2**t) / (1.0 - b1**t)) * m / (tf.sqrt(v) + self.spec.adam_eps)
        slot["exp_avg"].assign(b1 * m + (1.0 - b1) * g)
        slot["exp_avg_sq"].assign(b2 * v + (1.0 - b2) * g * g)
        return step


OPTIMIZERS = {"rmsprop": CenteredRMSprop, "adam": Adam, "adagrad": Adagrad, "adam-burda": BurdaAdam}


def create(spec: Spec, variables: dict[str, tf.Variable]) -> Optimizer:
    return OPTIMIZERS[spec.optimizer](spec, variables)
