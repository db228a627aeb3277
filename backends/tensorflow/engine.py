"""The TensorFlow backend (backends/contract.py): the VAE of vae.py, the optimizers of optim.py, steps compiled by XLA.

A training window is one tf.function(jit_compile=True) loop over its steps; parity mode (noise given) and fast
mode (noise drawn on the device by a tf.random.Generator seeded from the "train" stream) run that very loop and
differ only in where eps comes from. Evaluation draws each chunk's noise statelessly from the seed it is given.
On N devices (spec.devices > 1) the same entry points run their per-replica part through distributed.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ info lines only

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from backends.tensorflow import cvae, distributed, fa, gmvae, optim, vae, vrnn  # noqa: E402
from common import streams  # noqa: E402
from common.metrics import usable_cores  # noqa: E402
from common.models import family  # noqa: E402
from common.optim import learning_rates  # noqa: E402
from common.params import check_params  # noqa: E402
from common.spec import Spec  # noqa: E402

# XLA on the training loop: measured 1.4x (mean-field) and 2x (IAF) faster on a 2-core CPU, as it fuses the
# optimizer's and the flow's elementwise ops; evaluation is matmul-bound, was no faster with XLA (slightly
# slower), and would compile once per chunk shape.
JIT_TRAIN, JIT_EVALUATE = True, False
EVAL_SAMPLES_PER_CHUNK = 4096  # examples * k per call: intermediates stay in cache (measured ~1.2x 32768)


def configure_threads() -> None:
    """Use every core this process may run on; TF only accepts this before its runtime starts, so a later call
    is a no-op."""
    cores = usable_cores()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:  # runtime already initialized (an earlier load in this process)
        pass


def seed_pair(seed: int) -> tf.Tensor:
    """A 63-bit seed as the [2] int64 seed TF's stateless ops take."""
    return tf.constant([seed >> 32, seed & 0xFFFFFFFF], tf.int64)


# spec.model -> this framework's module of the family
MODELS = {"vae": vae.VAE, "cvae": cvae.CVAE, "fa": fa.FactorAnalysis, "gmvae": gmvae.GMVAE, "vrnn": vrnn.VRNN}


def pair(out: tf.Tensor | tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """A family's log_weights gives log w, or (log w, elbo) where its ELBO is not log w itself."""
    return out if isinstance(out, tuple) else (out, out)


def objective(spec: Spec, log_w: tf.Tensor, elbo: tf.Tensor) -> tf.Tensor:
    """(k, n) -> (n,) training objective: mean_k elbo (ELBO) or logmeanexp_k log w (IWAE bound)."""
    if spec.objective == "elbo":
        return tf.reduce_mean(elbo, 0)
    return tf.reduce_logsumexp(log_w, 0) - tf.math.log(tf.cast(tf.shape(log_w)[0], log_w.dtype))


def objective_and_grads(model: tf.Module, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The per-example objective (n,) and d(sum objective)/d every variable, by canonical name."""
    with tf.GradientTape() as tape:
        value = objective(model.spec, *pair(model.log_weights(x, eps)))
        total = tf.reduce_sum(value)
    # a plain dict: tf.Module wraps model.v in a _DictWrapper, which tf.function's tracing rejects
    return value, tape.gradient(total, dict(model.v))


def signature(spec: Spec, dtype: tf.DType) -> list[tf.TensorSpec]:
    """[x (n, data width), eps (k, n, ...)] with n and k left open: one trace for any chunk."""
    _, _, *rest = family(spec).noise_shape(spec, 1, 1)
    return [tf.TensorSpec([None, family(spec).data_dim(spec)], dtype), tf.TensorSpec([None, None, *rest], dtype)]


class Backend:
    name = "tensorflow"
    is_main = True  # False on every host but the chief of a TF_CONFIG cluster
    devices = 1
    eval_chunk_samples = EVAL_SAMPLES_PER_CHUNK

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        configure_threads()
        check_params(spec, params)
        self.spec, self.devices, self.dtype = spec, spec.devices, tf.as_dtype(spec.dtype)
        self.replicas = distributed.Replicas(spec.devices) if spec.devices > 1 else None
        with self.replicas.strategy.scope() if self.replicas else contextlib.nullcontext():
            # mirrored on N devices: one copy of each variable and slot per replica
            self.model = MODELS[spec.model](spec, params)
            self.optimizer = optim.create(spec, self.model.v)
        self.steps_taken = 0  # the host's copy of optimizer.step: train() reads no device before it runs
        # binary pixels stay uint8, as given (the model casts a batch); real-valued data (factor analysis) in the
        # model's dtype; tf.identity copies it onto the default device (a GPU's, where there is one)
        train_x = np.asarray(train_x) if np.asarray(train_x).dtype == np.uint8 else np.asarray(train_x, spec.dtype)
        with tf.device(distributed.HOST) if self.replicas else contextlib.nullcontext():
            self.train_x = tf.identity(tf.convert_to_tensor(train_x))
        if self.replicas:
            self.is_main = self.replicas.is_main
            self.replicas.build(self.model, self.optimizer, self.train_x,
                                functools.partial(objective_and_grads, self.model), signature(spec, self.dtype))
        # fast mode draws step s's noise from fold_in(train seed, s), a function of the step alone: how a run is cut
        # into windows (which follows --eval-every) or stopped and resumed never changes it. Not mirrored: the
        # global batch's noise is drawn as on one device, and split
        self.train_seed = streams.seed_of(spec.seed, "train")
        self._compile()

    def _compile(self) -> None:
        """One trace per entry point: sizes left None so a new window, chunk or schedule does not retrace."""
        spec, dt, one = self.spec, self.dtype, self.replicas is None
        self._step_on_devices = self._step if one else self.replicas.step
        self._log_weights_on_devices = (lambda x, eps: pair(self.model.log_weights(x, eps))) if one else \
            functools.partial(self.replicas.log_weights, pair=pair)
        gradients = functools.partial(objective_and_grads, self.model) if one else self.replicas.objective_and_grads
        noise = family(spec).noise_shape(spec, spec.train_k, spec.batch_size)
        window = [tf.TensorSpec([None, spec.batch_size], tf.int32), tf.TensorSpec([None, *noise], dt),
                  tf.TensorSpec([None], dt)]
        x, eps = signature(spec, dt)
        count, seed = tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int64)
        first = tf.TensorSpec([], tf.int64)
        # on N devices only each replica's part is XLA-compiled (distributed.py says why)
        self._train = tf.function(self._train_window, input_signature=window, jit_compile=JIT_TRAIN and one)
        self._train_noise = tf.function(self._draw_train_noise, input_signature=[seed, first, count],
                                        jit_compile=JIT_TRAIN)
        self._log_weights = tf.function(self._log_weights_on_devices, input_signature=[x, eps],
                                        jit_compile=JIT_EVALUATE)
        self._log_weights_seeded = tf.function(self._log_weights_own_noise, input_signature=[x, count, seed],
                                               jit_compile=JIT_EVALUATE)
        self._objective_and_grads = tf.function(gradients, input_signature=[x, eps],
                                                jit_compile=JIT_TRAIN and one)

    # --- training -----------------------------------------------------------------------------

    def _step(self, indices: tf.Tensor, eps: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        """One optimizer step on -sum objective of train_x[indices]; returns the batch-mean objective."""
        value, grads = objective_and_grads(self.model, tf.gather(self.train_x, indices), eps)
        self.optimizer.apply(self.model.v, {k: -g for k, g in grads.items()}, lr)
        return tf.reduce_mean(value)

    def _train_window(self, batch_indices: tf.Tensor, noise: tf.Tensor, rates: tf.Tensor) -> tf.Tensor:
        # all steps in one compiled loop: one dispatch and one host sync per train() call
        steps = tf.shape(batch_indices)[0]
        total = tf.zeros([], self.dtype)
        for s in tf.range(steps):
            total += self._step_on_devices(batch_indices[s], noise[s], rates[s])
        return total / tf.cast(steps, self.dtype)

    def _draw_train_noise(self, seed: tf.Tensor, first: tf.Tensor, steps: tf.Tensor) -> tf.Tensor:
        """(steps, k, B, L): the noise of steps first..first+steps-1, step s's drawn from fold_in(seed, s)."""
        shape = family(self.spec).noise_shape(self.spec, self.spec.train_k, self.spec.batch_size)
        noise = tf.TensorArray(self.dtype, size=steps)
        for i in tf.range(steps):
            step_seed = tf.random.experimental.stateless_fold_in(seed, first + tf.cast(i, tf.int64))
            noise = noise.write(i, tf.random.stateless_normal(shape, step_seed, dtype=self.dtype, alg="philox"))
        return noise.stack()

    def _window_noise(self, steps: int) -> tf.Tensor:
        return self._train_noise(seed_pair(self.train_seed), tf.constant(self.steps_taken, tf.int64),
                                 tf.constant(steps, tf.int32))

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        steps, start = len(batch_indices), self.steps_taken
        rates = learning_rates(self.spec, start, start + steps, self.train_x.shape[0])
        # fast mode draws the window's noise on the device, then runs the parity-mode loop itself
        eps = self._window_noise(steps) if noise is None else tf.constant(np.asarray(noise, self.spec.dtype))
        mean = self._train(tf.constant(np.asarray(batch_indices, np.int32)), eps,
                           tf.constant(rates.astype(self.spec.dtype)))
        self.steps_taken += steps
        return float(mean)

    def preview_noise(self, steps: int) -> np.ndarray:
        return self._window_noise(steps).numpy()  # the very function train() draws with

    # --- evaluation and gradients ------------------------------------------------------------

    def _log_weights_own_noise(self, x: tf.Tensor, k: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # stateless: the chunk's noise is a function of its seed and never moves the training generator; drawn
        # whole, then split on N devices, so they evaluate what one does. Philox named, not TF's per-device pick
        shape = family(self.spec).noise_shape(self.spec, k, tf.shape(x)[0])
        eps = tf.random.stateless_normal(tf.stack(shape), seed, dtype=self.dtype, alg="philox")
        return self._log_weights_on_devices(x, eps)

    def log_weights(self, x: np.ndarray, k: int, noise: np.ndarray | None = None,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if (noise is None) == (seed is None):
            raise ValueError("log_weights needs exactly one of noise and seed")
        x = tf.constant(np.asarray(x, self.spec.dtype))
        if noise is None:
            weights = self._log_weights_seeded(x, tf.constant(k, tf.int32), seed_pair(seed))
        else:
            weights = self._log_weights(x, tf.constant(np.asarray(noise, self.spec.dtype)))
        return tuple(w.numpy() for w in weights)

    def objective_and_grads(self, x: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        dt = self.spec.dtype
        value, grads = self._objective_and_grads(tf.constant(np.asarray(x, dt)), tf.constant(np.asarray(noise, dt)))
        return value.numpy(), {k: g.numpy() for k, g in grads.items()}

    # --- state --------------------------------------------------------------------------------

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.model.v.items()}

    def optimizer_state(self) -> dict:
        return {"step": int(self.optimizer.step.numpy())} | {
            slot: {k: v.numpy() for k, v in variables.items()} for slot, variables in self.optimizer.slots.items()}

    def set_optimizer_state(self, state: dict) -> None:
        self.steps_taken = int(state["step"])
        self.optimizer.step.assign(self.steps_taken)
        for slot, variables in self.optimizer.slots.items():
            for k, v in variables.items():
                v.assign(np.asarray(state[slot][k], self.spec.dtype))

    def rng_state(self) -> np.ndarray:
        """The training stream's seed: with the step count (optimizer state) it fixes every draw to come."""
        return np.array([self.train_seed], np.int64)

    def set_rng_state(self, state: np.ndarray) -> None:
        self.train_seed = int(np.asarray(state, np.int64)[0])

    # --- the machine's peak -------------------------------------------------------------------

    @staticmethod
    def matmul_flop_per_s(m: int, k: int, n: int, seconds: float = 0.5) -> float:
        """oneDNN's GEMM (eager tf.matmul) and XLA's (jit_compile=True), half the time each: the faster one."""
        configure_threads()
        a = tf.random.stateless_normal([m, k], [0, 0], dtype=tf.float32)
        b = tf.random.stateless_normal([k, n], [0, 1], dtype=tf.float32)
        xla = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=True)
        return max(best_rate(matmul, a, b, seconds / 2) for matmul in (tf.matmul, xla))


def best_rate(matmul: Callable[[tf.Tensor, tf.Tensor], tf.Tensor], a: tf.Tensor, b: tf.Tensor,
              seconds: float) -> float:
    """The best FLOP/s of matmul(a, b) over `seconds`, each call timed to a host sync (GPUs run asynchronously)."""
    flop = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    matmul(a, b)  # warm-up: threads, caches, XLA's compile
    tf.test.experimental.sync_devices()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        matmul(a, b)
        tf.test.experimental.sync_devices()
        best = max(best, flop / (time.perf_counter() - start))
    return best
