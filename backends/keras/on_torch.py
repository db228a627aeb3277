"""keras[torch]: the Keras model and optimizer on their variables, eagerly, as Keras's own torch trainer runs them
(its jit_compile="auto" means eager on torch; torch.compile only when asked): the model called under autograd,
torch.autograd.grad for the gradient, optimizer.apply under torch.no_grad, one step after another; a train() call
syncs with the host once, for its result. The update runs optim.py's update_step once per variable, as for any
Keras optimizer written in keras.ops: Keras's fused torch._foreach versions exist only for its stock optimizers,
whose formulas are not torch.optim's."""

from __future__ import annotations

import numpy as np
import torch
from keras import ops

from backends.keras import vae
from common.metrics import usable_cores
from common.spec import Spec


def configure(spec: Spec) -> None:
    torch.set_num_threads(usable_cores())  # as the native torch backend sets it


class Compiled:
    def __init__(self, spec: Spec, model, optimizer, generator, train_x: np.ndarray):
        self.spec, self.model, self.optimizer, self.generator = spec, model, optimizer, generator
        self.dtype, self.trainable = spec.dtype, model.trainable_variables
        self.train_x = ops.convert_to_tensor(np.asarray(train_x))  # on Keras's device, uint8 pixels as given
        self.noise_shape = (spec.train_k, spec.batch_size, spec.latent_size)

    def _objective_and_grads(self, x, eps):
        value = vae.objective(self.spec, self.model((x, eps)))
        grads = torch.autograd.grad(value.sum(), [v.value for v in self.trainable])
        return value.detach(), grads

    def draw(self, word: int, first: int, steps: int) -> torch.Tensor:
        return torch.stack([vae.normal(self.noise_shape, np.array([word, first + i], np.int64), self.dtype,
                                       self.generator) for i in range(steps)])

    def train(self, indices: np.ndarray, noise, rates: np.ndarray) -> float:
        indices = ops.convert_to_tensor(np.asarray(indices, np.int64))
        noise = ops.convert_to_tensor(noise, self.dtype)
        total = ops.zeros((), self.dtype)
        for s in range(len(indices)):
            value, grads = self._objective_and_grads(self.train_x[indices[s]], noise[s])
            with torch.no_grad():
                self.optimizer.learning_rate.assign(float(rates[s]))
                self.optimizer.apply([-g for g in grads], self.trainable)
            total = total + value.mean()
        return total.item() / len(indices)  # one host sync per call

    def objective_and_grads(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        value, grads = self._objective_and_grads(ops.convert_to_tensor(x), ops.convert_to_tensor(eps))
        return ops.convert_to_numpy(value), [ops.convert_to_numpy(g) for g in grads]

    def log_weights(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ops.convert_to_numpy(self.model((ops.convert_to_tensor(x), ops.convert_to_tensor(eps))))

    def log_weights_seeded(self, x: np.ndarray, k: int, words: tuple[int, int]) -> np.ndarray:
        with torch.no_grad():
            eps = vae.normal((k, len(x), self.spec.latent_size), np.array(words, np.int64), self.dtype,
                             self.generator)
            return ops.convert_to_numpy(self.model((ops.convert_to_tensor(x), eps)))
