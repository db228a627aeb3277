"""keras[jax]: the Keras model and optimizer run statelessly inside jax transformations, as Keras's own JAX trainer
runs them: model.stateless_call inside jax.value_and_grad, optimizer.stateless_apply for the update, a training
window one jax.jit(lax.scan) over its steps with the variables' buffers donated. The values go back into the Keras
variables after every call, so the variables are always the state (engine.py reads them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from backends.keras import vae
from common.spec import Spec


def configure(spec: Spec) -> None:
    if spec.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # before any float64 array exists


class Compiled:
    def __init__(self, spec: Spec, model, optimizer, generator, train_x: np.ndarray):
        self.spec, self.model, self.optimizer, self.dtype = spec, model, optimizer, spec.dtype
        self.train_x = jnp.asarray(train_x)  # uint8 pixels stay uint8 on the device; the model casts a batch
        self.lr_index = next(i for i, v in enumerate(optimizer.variables) if v is optimizer.learning_rate)
        noise_shape = (spec.train_k, spec.batch_size, spec.latent_size)

        def log_weights(trainable, non_trainable, x, eps):
            return model.stateless_call(trainable, non_trainable, (x, eps))[0]

        def total(trainable, non_trainable, x, eps):
            value = vae.objective(spec, log_weights(trainable, non_trainable, x, eps))
            return jnp.sum(value), value

        gradient = jax.value_and_grad(total, has_aux=True)

        def objective_and_grads(trainable, non_trainable, x, eps):
            (_, value), grads = gradient(trainable, non_trainable, x, eps)
            return value, grads

        def step(non_trainable, train_x, carry, inputs):
            trainable, opt = carry
            indices, eps, lr = inputs
            (_, value), grads = gradient(trainable, non_trainable, train_x[indices], eps)
            opt = [lr if i == self.lr_index else v for i, v in enumerate(opt)]  # this step's learning rate
            trainable, opt = optimizer.stateless_apply(opt, [-g for g in grads], trainable)
            return (trainable, opt), jnp.mean(value)

        def window(trainable, opt, non_trainable, train_x, indices, noise, rates):
            (trainable, opt), means = jax.lax.scan(lambda c, i: step(non_trainable, train_x, c, i), (trainable, opt),
                                                   (indices, noise, rates))
            return trainable, opt, jnp.mean(means)

        def draw(word, first, steps):
            """Training steps first..first+steps-1, step s's noise from the seed state [word, s]."""
            states = jnp.stack([jnp.full((steps,), word, jnp.uint32),
                                first + jnp.arange(steps, dtype=jnp.uint32)], axis=1)
            return jax.vmap(lambda state: vae.normal(noise_shape, state, self.dtype, generator))(states)

        def log_weights_seeded(trainable, non_trainable, x, words, k):
            eps = vae.normal((k, x.shape[0], spec.latent_size), words, self.dtype, generator)
            return log_weights(trainable, non_trainable, x, eps)

        self._window = jax.jit(window, donate_argnums=(0, 1))
        self._draw = jax.jit(draw, static_argnums=2)
        self._grads = jax.jit(objective_and_grads)
        self._log_weights = jax.jit(log_weights)
        self._log_weights_seeded = jax.jit(log_weights_seeded, static_argnums=4)

    def _values(self, variables) -> list:
        return [v.value for v in variables]

    def draw(self, word: int, first: int, steps: int) -> jax.Array:
        return self._draw(jnp.uint32(word), jnp.uint32(first), steps)

    def train(self, indices: np.ndarray, noise, rates: np.ndarray) -> float:
        model, optimizer = self.model, self.optimizer
        trainable, opt, mean = self._window(self._values(model.trainable_variables), self._values(optimizer.variables),
                                            self._values(model.non_trainable_variables), self.train_x,
                                            jnp.asarray(indices), jnp.asarray(noise, self.dtype), jnp.asarray(rates))
        for variable, value in zip(model.trainable_variables + optimizer.variables, trainable + opt, strict=True):
            variable.assign(value)
        return float(mean)

    def objective_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        value, grads = self._grads(self._values(self.model.trainable_variables),
                                   self._values(self.model.non_trainable_variables), jnp.asarray(x), jnp.asarray(eps))
        return np.asarray(value), [np.asarray(g) for g in grads]

    def log_weights(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        return np.asarray(self._log_weights(self._values(self.model.trainable_variables),
                                            self._values(self.model.non_trainable_variables), jnp.asarray(x),
                                            jnp.asarray(eps)))

    def log_weights_seeded(self, x: np.ndarray, k: int, words: tuple[int, int]) -> np.ndarray:
        return np.asarray(self._log_weights_seeded(self._values(self.model.trainable_variables),
                                                   self._values(self.model.non_trainable_variables), jnp.asarray(x),
                                                   jnp.asarray(words, jnp.uint32), k))
