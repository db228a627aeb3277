"""keras[tensorflow]: the Keras model and optimizer on their variables, as Keras's own TensorFlow trainer runs them:
tf.GradientTape around the model call, optimizer.apply, a training window one tf.function loop over its steps,
compiled by XLA (jit_compile=True). Keras's own default, jit_compile="auto", picks XLA only where TensorFlow sees a
GPU; it is used on every device here, as the native TensorFlow backend uses it for training, so that the pair
keras[tensorflow] / tensorflow compares code written once with native code under the same compiler. Evaluation is a
tf.function without XLA, as in the native backend (which measured no gain from XLA there)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.keras import vae
from common.metrics import usable_cores
from common.spec import Spec


def configure(spec: Spec) -> None:
    """Every core this process may run on, as the native backend sets it; TF only accepts this before its runtime
    starts, so a later call is a no-op."""
    cores = usable_cores()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:
        pass


class Compiled:
    def __init__(self, spec: Spec, model, optimizer, generator, train_x: np.ndarray):
        self.spec, self.model, self.optimizer, self.generator = spec, model, optimizer, generator
        self.dtype, self.trainable = tf.as_dtype(spec.dtype), model.trainable_variables
        self.train_x = tf.identity(tf.convert_to_tensor(np.asarray(train_x)))
        self.noise_shape = (spec.train_k, spec.batch_size, spec.latent_size)
        dt, L = self.dtype, spec.latent_size
        x, eps = tf.TensorSpec([None, 784], dt), tf.TensorSpec([None, None, L], dt)
        window = [tf.TensorSpec([None, spec.batch_size], tf.int32), tf.TensorSpec([None, *self.noise_shape], dt),
                  tf.TensorSpec([None], dt)]
        scalar, words = tf.TensorSpec([], tf.int64), tf.TensorSpec([2], tf.int64)
        self._window = tf.function(self._train_window, input_signature=window, jit_compile=True)
        self._draw = tf.function(self._draw_window, input_signature=[scalar, scalar, tf.TensorSpec([], tf.int32)],
                                 jit_compile=True)
        self._grads = tf.function(self._objective_and_grads, input_signature=[x, eps], jit_compile=True)
        self._log_weights = tf.function(lambda x, eps: model((x, eps)), input_signature=[x, eps])
        self._log_weights_seeded = tf.function(self._seeded, input_signature=[x, tf.TensorSpec([], tf.int32), words])

    def _objective_and_grads(self, x, eps):
        with tf.GradientTape() as tape:
            value = vae.objective(self.spec, self.model((x, eps)))
            total = tf.reduce_sum(value)
        return value, tape.gradient(total, self.trainable)

    def _step(self, indices, eps, lr):
        value, grads = self._objective_and_grads(tf.gather(self.train_x, indices), eps)
        self.optimizer.learning_rate.assign(lr)
        self.optimizer.apply([-g for g in grads], self.trainable)
        return tf.reduce_mean(value)

    def _train_window(self, batch_indices, noise, rates):
        steps = tf.shape(batch_indices)[0]
        total = tf.zeros([], self.dtype)
        for s in tf.range(steps):
            total += self._step(batch_indices[s], noise[s], rates[s])
        return total / tf.cast(steps, self.dtype)

    def _draw_window(self, word, first, steps):
        noise = tf.TensorArray(self.dtype, size=steps)
        for i in tf.range(steps):
            state = tf.stack([word, first + tf.cast(i, tf.int64)])
            noise = noise.write(i, vae.normal(self.noise_shape, state, self.spec.dtype, self.generator))
        return noise.stack()

    def _seeded(self, x, k, words):
        eps = vae.normal(tf.stack([k, tf.shape(x)[0], self.spec.latent_size]), words, self.spec.dtype, self.generator)
        return self.model((x, eps))

    def draw(self, word: int, first: int, steps: int) -> tf.Tensor:
        return self._draw(tf.constant(word, tf.int64), tf.constant(first, tf.int64), tf.constant(steps, tf.int32))

    def train(self, indices: np.ndarray, noise, rates: np.ndarray) -> float:
        return float(self._window(tf.constant(indices), tf.convert_to_tensor(noise, self.dtype),
                                  tf.constant(rates, self.dtype)))

    def objective_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        value, grads = self._grads(tf.constant(x), tf.constant(eps))
        return value.numpy(), [g.numpy() for g in grads]

    def log_weights(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        return self._log_weights(tf.constant(x), tf.constant(eps)).numpy()

    def log_weights_seeded(self, x: np.ndarray, k: int, words: tuple[int, int]) -> np.ndarray:
        return self._log_weights_seeded(tf.constant(x), tf.constant(k, tf.int32),
                                        tf.constant(words, tf.int64)).numpy()
