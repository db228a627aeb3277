"""The optimizers as keras.optimizers.Optimizer subclasses computing backends/numpy/optim.py (torch.optim's
formulas, eps outside the square root, and Burda et al.'s Adam), on any Keras engine.

Keras's own optimizers are not those formulas, and the difference is far beyond the 1e-8 that 20 steps are held
to (tests/test_keras.py: test_stock_keras_optimizers_are_not_torchs runs each stock one beside ours):

  RMSprop(centered=True)  Keras divides by sqrt(v - gbar^2 + eps), eps inside the square root; torch (ours) by
                          sqrt(v - gbar^2) + eps. After the first step v - gbar^2 = rho (1 - rho) g^2, about
                          1e-8 for a gradient of 1e-3: Keras's step is then sqrt(2) smaller, a 30% difference.
  Adam                    Keras: theta -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps), eps against the raw
                          second moment; torch: (lr / (1 - b1^t)) m / (sqrt(v / (1 - b2^t)) + eps), against the
                          bias-corrected one. Keras's eps is torch's eps / sqrt(1 - b2^t): 31.6 eps at step 1 with
                          b2 = 0.999, 7.1 eps at step 20 (Burda's preset has eps = 1e-4, where it shows most).
  Adagrad                 Keras divides by sqrt(s + eps) and starts s at 0.1 (initial_accumulator_value); torch
                          divides by sqrt(s) + eps and starts s at 0.

Keras's defaults differ too (RMSprop rho 0.9, eps 1e-7; Adam eps 1e-7), but those are only settings.

The learning rate of every step is the optimizer's own learning_rate variable, which the training step sets from
the data it is given (common.optim.learning_rates): no schedule is baked into a compiled step. The slots are
optimizer variables named as torch names them (common.optim.SLOTS), one per trainable variable, in the order the
optimizer was built with; the step count is Keras's `iterations`.
"""

from __future__ import annotations

import keras
from keras import ops

from common.optim import SLOTS, initial
from common.spec import Spec


class TorchFormula(keras.optimizers.Optimizer):
    """An optimizer whose slots are torch's (SLOTS[kind]); update_step(g, theta, lr) is one update of one variable
    with g the gradient of the loss."""

    kind = ""

    def __init__(self, spec: Spec, **kwargs):
        # Keras makes the learning-rate variable in keras.config.floatx() (float32 unless set): made in spec.dtype
        # here, as float64 parity needs, without changing the process-wide setting
        floatx = keras.config.floatx()
        keras.config.set_floatx(spec.dtype)
        try:
            super().__init__(learning_rate=float(spec.learning_rate), name=self.kind, **kwargs)
        finally:
            keras.config.set_floatx(floatx)
        self.spec = spec

    def build(self, variables: list) -> None:
        if self.built:
            return
        super().build(variables)
        self.slots = {slot: self.add_optimizer_variables(variables, slot,
                                                         keras.initializers.Constant(initial(self.kind, slot)))
                      for slot in SLOTS[self.kind]}

    def slots_of(self, variable) -> dict:
        i = self._get_variable_index(variable)
        return {slot: variables[i] for slot, variables in self.slots.items()}

    @staticmethod
    def constants(variable, *values: float) -> list:
        """Python floats as tensors of the variable's dtype, made from the float itself: a Python float that meets a
        Keras variable in an op is a float32 tensor first on torch (rho = 0.99 is then 1e-8 off), and ops.cast of a
        Python float goes through float32 on tensorflow."""
        return [ops.convert_to_tensor(value, variable.dtype) for value in values]

    def get_config(self) -> dict:
        return super().get_config() | {"spec": self.spec.to_dict()}


class CenteredRMSprop(TorchFormula):
    kind = "rmsprop"

    def update_step(self, gradient, variable, learning_rate) -> None:
        s, lr = self.slots_of(variable), ops.cast(learning_rate, variable.dtype)
        rho, one_minus_rho, eps = self.constants(variable, self.spec.rmsprop_decay, 1.0 - self.spec.rmsprop_decay,
                                                 self.spec.rmsprop_eps)
        v = rho * s["square_avg"] + one_minus_rho * gradient * gradient
        g_bar = rho * s["grad_avg"] + one_minus_rho * gradient
        self.assign(s["square_avg"], v)
        self.assign(s["grad_avg"], g_bar)
        self.assign_sub(variable, lr * gradient / (ops.sqrt(v - g_bar * g_bar) + eps))


class Adam(TorchFormula):
    kind = "adam"

    def update_step(self, gradient, variable, learning_rate) -> None:
        s, lr = self.slots_of(variable), ops.cast(learning_rate, variable.dtype)
        spec = self.spec
        b1, b2, one_minus_b1, one_minus_b2, eps = self.constants(
            variable, spec.adam_beta1, spec.adam_beta2, 1.0 - spec.adam_beta1, 1.0 - spec.adam_beta2, spec.adam_eps)
        t = ops.cast(self.iterations + 1, variable.dtype)
        m = b1 * s["exp_avg"] + one_minus_b1 * gradient
        v = b2 * s["exp_avg_sq"] + one_minus_b2 * gradient * gradient
        self.assign(s["exp_avg"], m)
        self.assign(s["exp_avg_sq"], v)
        denominator = ops.sqrt(v) / ops.sqrt(1.0 - ops.power(b2, t)) + eps
        self.assign_sub(variable, (lr / (1.0 - ops.power(b1, t))) * m / denominator)


class Adagrad(TorchFormula):
    kind = "adagrad"

    def update_step(self, gradient, variable, learning_rate) -> None:
        s, lr = self.slots_of(variable), ops.cast(learning_rate, variable.dtype)
        (eps,) = self.constants(variable, self.spec.adagrad_eps)
        total = s["sum"] + gradient * gradient  # starts at 0: torch's initial_accumulator_value
        self.assign(s["sum"], total)
        self.assign_sub(variable, lr * gradient / (ops.sqrt(total) + eps))


class BurdaAdam(TorchFormula):
    """Burda et al.'s Adam: the step from the moments before this step's update; exp_avg_sq starts at one."""

    kind = "adam-burda"

    def update_step(self, gradient, variable, learning_rate) -> None:
        s, lr = self.slots_of(variable), ops.cast(learning_rate, variable.dtype)
        spec = self.spec
        b1, b2, one_minus_b1, one_minus_b2, eps, one = self.constants(
            variable, spec.adam_beta1, spec.adam_beta2, 1.0 - spec.adam_beta1, 1.0 - spec.adam_beta2, spec.adam_eps,
            1.0)
        t = ops.cast(self.iterations + 1, variable.dtype)
        m, v = ops.copy(s["exp_avg"]), ops.copy(s["exp_avg_sq"])
        step = lr * (ops.sqrt(one - ops.power(b2, t)) / (one - ops.power(b1, t))) * m / (ops.sqrt(v) + eps)
        self.assign_sub(variable, step)
        self.assign(s["exp_avg"], b1 * m + one_minus_b1 * gradient)
        self.assign(s["exp_avg_sq"], b2 * v + one_minus_b2 * gradient * gradient)


OPTIMIZERS = {cls.kind: cls for cls in (CenteredRMSprop, Adam, Adagrad, BurdaAdam)}


def create(spec: Spec) -> TorchFormula:
    return OPTIMIZERS[spec.optimizer](spec)


def stock(spec: Spec) -> keras.optimizers.Optimizer:
    """Keras's own optimizer with the spec's settings: what a Keras user would reach for (and the tests show
    differs from the reference by far more than 1e-8 in 20 steps)."""
    if spec.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(float(spec.learning_rate), rho=spec.rmsprop_decay, epsilon=spec.rmsprop_eps,
                                        centered=True)
    if spec.optimizer in ("adam", "adam-burda"):  # Keras has no Adam whose second moments start at one
        return keras.optimizers.Adam(float(spec.learning_rate), beta_1=spec.adam_beta1, beta_2=spec.adam_beta2,
                                     epsilon=spec.adam_eps)
    return keras.optimizers.Adagrad(float(spec.learning_rate), initial_accumulator_value=0.0,
                                    epsilon=spec.adagrad_eps)
