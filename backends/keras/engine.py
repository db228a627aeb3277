"""The Keras 3 backend behind backends/contract.py: one VAE written once in keras.layers / keras.ops (vae.py),
torch.optim's updates as Keras optimizers (optim.py), run by the engine its variant names: keras[jax],
keras[torch], keras[tensorflow]. The rows measure what writing once in Keras costs or gains against the native
backend on the same engine (runner/bench.py pairs keras[jax] with jax, and so on).

Keras picks its engine once, from KERAS_BACKEND at its first import, so a variant is a process of its own:
compare.py starts each variant's worker with KERAS_BACKEND set (backends.environment), and Backend(variant)
refuses a process where it is not set so, or where Keras already runs another engine.

Written once, in Keras: the model, the optimizers, the objective, the noise. Keras has no engine-neutral gradient
nor training loop, so those are written per engine, each as Keras's own trainer for that engine writes them
(on_<engine>.py: Compiled):

  jax         model.stateless_call in jax.value_and_grad, optimizer.stateless_apply; a window one
              jax.jit(lax.scan) over its steps, the variables' buffers donated
  tensorflow  tf.GradientTape and optimizer.apply on the variables; a window one tf.function(jit_compile=True)
              loop over its steps: XLA on every device, as the native backend trains (Keras's jit_compile="auto"
              would pick it only with a GPU), so the pair differs in the code, not in the compiler
  torch       eager, as Keras's "auto" is on torch: autograd, optimizer.apply under torch.no_grad, step by step

Noise: keras.random.normal seeded statelessly (vae.normal: keras.StatelessScope maps a SeedGenerator's state to the
seed state given). Training step s draws from the state [w, s], w a 30-bit word of the "train" stream's seed: a
function of the step alone, so how steps are grouped into train() calls, or a run stopped and resumed, never changes
it. An evaluation chunk draws from its seed's two 30-bit words and never moves the training stream. Keras hands the
state to the engine's generator: threefry on jax (the state is the key), philox on tensorflow (stateless ops), and
on torch a torch.Generator seeded with the words' sum. A fast-mode window draws its noise first, in one compiled
call, then runs the parity-mode window itself on it, so fast mode computes exactly what parity mode computes.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

import numpy as np

from common import streams
from common.optim import SLOTS, learning_rates
from common.params import check_params
from common.spec import Spec

ENGINES = ("jax", "torch", "tensorflow")
MODELS = ("vae",)  # the model families written in Keras (backends.REGISTRY says the same)
EVAL_SAMPLES_PER_CHUNK = 4096  # examples * k per log_weights call, as the native torch and tensorflow backends
WORD = (1 << 30) - 1  # seed words are 30 bits: every engine's seed dtype (int32 on torch) holds them


def start_keras(variant: str):
    """Keras, imported for this variant's engine, or a clear error where this process cannot run it."""
    if variant not in ENGINES:
        raise ValueError(f"keras runs on one engine per process: keras[jax], keras[torch] or keras[tensorflow] "
                         f"(got {variant!r})")
    wanted = os.environ.get("KERAS_BACKEND")
    if "keras" not in sys.modules and wanted != variant:
        raise RuntimeError(f"keras[{variant}] needs a process started with KERAS_BACKEND={variant} (it is "
                           f"{wanted!r}): Keras picks its engine once, when first imported, and compare.py sets it "
                           "for each variant's worker")
    if variant == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ info lines only
    import keras

    if keras.backend.backend() != variant:
        raise RuntimeError(f"keras[{variant}]: Keras was already imported in this process with the "
                           f"{keras.backend.backend()} engine; each variant needs a process of its own "
                           f"(KERAS_BACKEND={variant})")
    return keras


def words(seed: int) -> tuple[int, int]:
    """A 63-bit seed as the two 30-bit words of a Keras seed state."""
    return (seed >> 33) & WORD, seed & WORD


class Backend:
    is_main = True
    devices = 1
    eval_chunk_samples = EVAL_SAMPLES_PER_CHUNK

    def __init__(self, variant: str | None = None):
        self.keras = start_keras(variant)
        self.variant, self.name = variant, f"keras[{variant}]"
        self.on = importlib.import_module(f"backends.keras.on_{variant}")

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        if spec.model not in MODELS:
            raise ValueError(f"keras supports --model {', '.join(MODELS)} only (got {spec.model})")
        if spec.devices != 1:
            raise ValueError(f"{self.name} runs on one device (got --devices {spec.devices})")
        check_params(spec, params)
        from backends.keras import optim, vae

        self.on.configure(spec)  # before the engine makes its first array
        self.spec, self.dtype = spec, np.dtype(spec.dtype)
        self.model = vae.VAE(spec)
        self.model.build_for()
        self.names = self.model.canonical_names()
        self.variables = dict(zip(self.names, self.model.trainable_variables, strict=True))
        if set(self.variables) != set(params):
            raise ValueError(f"the Keras VAE's weights {sorted(self.variables)} are not the canonical "
                             f"{sorted(params)}")
        for name, variable in self.variables.items():
            variable.assign(np.asarray(params[name], self.dtype))
        self.optimizer = optim.create(spec)
        self.optimizer.build(self.model.trainable_variables)
        # only names the seed state that vae.normal maps; never advanced
        self.generator = self.keras.random.SeedGenerator(0)
        self.train_word = words(streams.seed_of(spec.seed, "train"))[0]
        self.steps_taken = 0  # the host's copy of optimizer.iterations: a window's rates need no device read
        self.n_train = len(train_x)
        self.compiled = self.on.Compiled(spec, self.model, self.optimizer, self.generator, np.asarray(train_x))

    # --- training -----------------------------------------------------------------------------

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        steps, start = len(batch_indices), self.steps_taken
        rates = learning_rates(self.spec, start, start + steps, self.n_train).astype(self.dtype)
        eps = self.compiled.draw(self.train_word, start, steps) if noise is None else np.asarray(noise, self.dtype)
        mean = self.compiled.train(np.asarray(batch_indices, np.int32), eps, rates)
        self.steps_taken += steps
        return float(mean)

    def preview_noise(self, steps: int) -> np.ndarray:
        return self.keras.ops.convert_to_numpy(self.compiled.draw(self.train_word, self.steps_taken, steps))

    # --- evaluation and gradients ------------------------------------------------------------

    def log_weights(self, x: np.ndarray, k: int, noise: np.ndarray | None = None,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if (noise is None) == (seed is None):
            raise ValueError("log_weights needs exactly one of noise and seed")
        x = np.asarray(x, self.dtype)
        if noise is None:
            log_w = self.compiled.log_weights_seeded(x, k, words(seed))
        else:
            log_w = self.compiled.log_weights(x, np.asarray(noise, self.dtype))
        log_w = np.asarray(log_w)
        return log_w, log_w  # the VAE's ELBO of a sample is its log-weight

    def objective_and_grads(self, x: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        value, grads = self.compiled.objective_and_grads(np.asarray(x, self.dtype), np.asarray(noise, self.dtype))
        return np.asarray(value), {k: np.asarray(g, self.dtype) for k, g in zip(self.names, grads, strict=True)}

    # --- state --------------------------------------------------------------------------------

    def _numpy(self, variable) -> np.ndarray:
        return np.array(self.keras.ops.convert_to_numpy(variable.value), self.dtype)

    def params(self) -> dict[str, np.ndarray]:
        return {k: self._numpy(v) for k, v in self.variables.items()}

    def optimizer_state(self) -> dict:
        step = int(self.keras.ops.convert_to_numpy(self.optimizer.iterations.value))
        return {"step": step} | {slot: {k: self._numpy(v) for k, v in zip(self.names, variables, strict=True)}
                                 for slot, variables in self.optimizer.slots.items()}

    def set_optimizer_state(self, state: dict) -> None:
        self.steps_taken = int(state["step"])
        self.optimizer.iterations.assign(self.steps_taken)
        for slot in SLOTS[self.spec.optimizer]:
            for k, v in zip(self.names, self.optimizer.slots[slot], strict=True):
                v.assign(np.asarray(state[slot][k], self.dtype))

    def rng_state(self) -> np.ndarray:
        """The training stream's word: with the step count (optimizer state) it fixes every draw to come."""
        return np.array([self.train_word], np.int64)

    def set_rng_state(self, state: np.ndarray) -> None:
        self.train_word = int(np.asarray(state, np.int64)[0])

    # --- the machine's peak -------------------------------------------------------------------

    @staticmethod
    def matmul_flop_per_s(m: int, k: int, n: int, seconds: float = 0.5) -> float:
        """keras.ops.matmul in float32 on the engine this process runs Keras with: the best rate over `seconds`,
        each product timed to a host sync (a one-element read)."""
        import keras
        from keras import ops

        a = keras.random.normal((m, k), dtype="float32", seed=0)
        b = keras.random.normal((k, n), dtype="float32", seed=1)

        def run() -> None:
            ops.convert_to_numpy(ops.matmul(a, b)[:1, :1])

        run()  # warm-up: threads, caches, compilation
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            run()
            best = max(best, 2.0 * m * k * n / (time.perf_counter() - start))
        return best
