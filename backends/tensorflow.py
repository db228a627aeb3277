"""TensorFlow backend: the VAE as tf.Variables, autodiff with tf.GradientTape, steps compiled by XLA.

The math is common/reference.py's, written once (`VAE.elbo`) and used by every entry point;
parity mode (noise given) and fast mode (noise from a tf.random.Generator on the device) run
the same compiled step and differ only in where eps comes from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ info lines only

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common.init import check_params, made_masks, param_shapes  # noqa: E402
from common.spec import N_PIXELS, Spec  # noqa: E402

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# XLA on the training loop: measured 1.4x (mean-field) and 2x (IAF) faster on a 2-core CPU, as it
# fuses the optimizer's and the flow's elementwise ops; evaluation is matmul-bound, was no faster
# with XLA (slightly slower), and would compile once per chunk shape.
JIT_TRAIN, JIT_EVALUATE = True, False
EVAL_SAMPLES_PER_CHUNK = 4096  # chunk_examples * K per call: intermediates stay in cache (measured ~1.2x 32768)


def _configure_threads() -> None:
    """Use every core; TF only accepts this before its runtime starts, so a later call is a no-op."""
    cores = os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:  # runtime already initialized (an earlier load in this process)
        pass


def _dense(a: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None = None) -> tf.Tensor:
    """a (..., in) @ kernel (in, out) [+ bias]; leading sample dims are flattened for one matmul."""
    if a.shape.rank == 2:
        out = tf.matmul(a, kernel)
    else:
        lead = tf.shape(a)[:-1]
        out = tf.reshape(tf.matmul(tf.reshape(a, [-1, a.shape[-1]]), kernel),
                         tf.concat([lead, [kernel.shape[-1]]], 0))
    return out if bias is None else out + bias


class VAE(tf.Module):
    """Encoder -> reparameterized q(z|x) (optionally an IAF) -> Bernoulli decoder, canonical params."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        super().__init__(name="vae")
        self.spec = spec
        self.dtype = tf.as_dtype(spec.dtype)
        self.v = {k: tf.Variable(np.asarray(params[k], spec.dtype), name=k) for k in param_shapes(spec)}
        self.masks = {k: tf.constant(m, self.dtype) for k, m in made_masks(spec).items()}

    def kernel(self, name: str) -> tf.Tensor:
        # masked in the forward pass, so the gradient of a masked entry is exactly zero
        w = self.v[name]
        return w * self.masks[name] if name in self.masks else w

    def layer(self, name: str, a: tf.Tensor) -> tf.Tensor:
        return _dense(a, self.kernel(name + ".kernel"), self.v[name + ".bias"])

    def encode(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """x (N, 784) -> loc, scale_arg, context (None for mean-field), each (N, L)."""
        L = self.spec.latent_size
        h = tf.nn.relu(self.layer("encoder.l0", x))
        h = tf.nn.relu(self.layer("encoder.l1", h))
        out = self.layer("encoder.l2", h)
        context = out[:, 2 * L:] if self.spec.variational == "iaf" else None
        return out[:, :L], out[:, L:2 * L], context

    def made(self, t: int, z: tf.Tensor, context: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """MADE of flow step t: [m | s], output i a function of z_<i and the context only."""
        p = f"flow.{t}"
        h = tf.nn.relu(self.layer(f"{p}.l0", z) + context @ self.v[f"{p}.l0.context"])
        h = tf.nn.relu(self.layer(f"{p}.l1", h) + context @ self.v[f"{p}.l1.context"])
        ms = self.layer(f"{p}.out", h)
        L = self.spec.latent_size
        return ms[..., :L], ms[..., L:]

    def sample_q(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """eps (..., N, L) -> z (..., N, L) and log q(z|x) (..., N)."""
        loc, scale_arg, context = self.encode(x)
        scale = tf.nn.softplus(scale_arg)
        z = loc + scale * eps
        log_q_z = tf.reduce_sum(-0.5 * tf.square(eps) - tf.math.log(scale) - HALF_LOG_2PI, -1)
        if self.spec.variational == "iaf":
            for t in range(self.spec.flow_steps):
                if t > 0:
                    z = tf.reverse(z, [-1])  # alternate the autoregressive order
                m, s = self.made(t, z, context)
                sigma = tf.sigmoid(s + 2.0)
                z = sigma * z + (1.0 - sigma) * m
                log_q_z += tf.reduce_sum(tf.nn.softplus(-(s + 2.0)), -1)  # -= sum log sigma
        return z, log_q_z

    def log_p_x_given_z(self, x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        h = tf.nn.relu(self.layer("decoder.l0", z))
        h = tf.nn.relu(self.layer("decoder.l1", h))
        logits = self.layer("decoder.l2", h)
        return tf.reduce_sum(x * logits - tf.nn.softplus(logits), -1)

    def elbo(self, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """x (N, 784), eps (..., N, L) -> ELBO (..., N) = log p(x|z) + log p(z) - log q(z|x)."""
        z, log_q_z = self.sample_q(x, eps)
        log_p_z = tf.reduce_sum(-0.5 * tf.square(z) - HALF_LOG_2PI, -1)
        return self.log_p_x_given_z(x, z) + log_p_z - log_q_z

    def elbo_and_grads(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Per-example ELBO and d(sum ELBO)/d every variable, by canonical name."""
        with tf.GradientTape() as tape:
            elbo = self.elbo(x, eps)
            elbo_sum = tf.reduce_sum(elbo)
        # a plain dict: tf.Module wraps self.v in a _DictWrapper, which tf.function's tracing rejects
        return elbo, tape.gradient(elbo_sum, dict(self.v))


class CenteredRMSprop(tf.Module):
    """torch.optim.RMSprop(centered=True), written out: Keras's RMSprop puts eps inside the sqrt."""

    def __init__(self, spec: Spec, variables: dict[str, tf.Variable]):
        super().__init__(name="centered_rmsprop")
        self.rho, self.lr, self.eps = spec.rmsprop_decay, spec.learning_rate, spec.rmsprop_eps
        self.square_avg = {k: tf.Variable(tf.zeros_like(v), name=f"{k}.square_avg")
                           for k, v in variables.items()}
        self.grad_avg = {k: tf.Variable(tf.zeros_like(v), name=f"{k}.grad_avg")
                         for k, v in variables.items()}

    def apply(self, variables: dict[str, tf.Variable], grads: dict[str, tf.Tensor]) -> None:
        rho = self.rho
        for k, g in grads.items():
            sq, ga = self.square_avg[k], self.grad_avg[k]
            sq.assign(rho * sq + (1.0 - rho) * g * g)
            ga.assign(rho * ga + (1.0 - rho) * g)
            variables[k].assign_sub(self.lr * g / (tf.sqrt(sq - ga * ga) + self.eps))


class Backend:
    name = "tensorflow"

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        _configure_threads()
        check_params(spec, params)
        self.spec = spec
        self.dtype = tf.as_dtype(spec.dtype)
        self.model = VAE(spec, params)
        self.optimizer = CenteredRMSprop(spec, self.model.v)
        self.train_x = tf.cast(tf.convert_to_tensor(np.asarray(train_x)), self.dtype)
        self.rng = tf.random.Generator.from_seed(spec.seed)
        self._compile()

    def _compile(self) -> None:
        """One traced graph per entry point; shapes left None so new step counts do not retrace."""
        B, L, dt = self.spec.batch_size, self.spec.latent_size, self.dtype
        idx = tf.TensorSpec([None, B], tf.int32)
        x = tf.TensorSpec([None, N_PIXELS], dt)
        eps_train, eps_eval = tf.TensorSpec([None, B, L], dt), tf.TensorSpec([None, None, L], dt)
        k = tf.TensorSpec([], tf.int32)
        self._train_given = tf.function(self._train_given_noise, input_signature=[idx, eps_train],
                                        jit_compile=JIT_TRAIN)
        self._train_noise = tf.function(self._draw_train_noise, input_signature=[k], jit_compile=JIT_TRAIN)
        self._evaluate_given = tf.function(self._evaluate_chunk, input_signature=[x, eps_eval],
                                           jit_compile=JIT_EVALUATE)
        self._evaluate_rng = tf.function(self._evaluate_chunk_own_noise, input_signature=[x, k],
                                         jit_compile=JIT_EVALUATE)
        self._elbo_and_grads = tf.function(self.model.elbo_and_grads,
                                           input_signature=[x, tf.TensorSpec([None, L], dt)],
                                           jit_compile=JIT_TRAIN)

    # --- training -------------------------------------------------------------------------

    def _step(self, indices: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """One RMSprop step on -sum ELBO of train_x[indices]; returns the batch-mean ELBO."""
        x = tf.gather(self.train_x, indices)
        elbo, grads_elbo = self.model.elbo_and_grads(x, eps)
        self.optimizer.apply(self.model.v, {k: -g for k, g in grads_elbo.items()})
        return tf.reduce_mean(elbo)

    def _train_steps(self, batch_indices: tf.Tensor,
                     noise_at: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
        # all steps in one compiled loop: one dispatch and one host sync per train() call
        steps = tf.shape(batch_indices)[0]
        total = tf.zeros([], self.dtype)
        for s in tf.range(steps):
            total += self._step(batch_indices[s], noise_at(s))
        return total / tf.cast(steps, self.dtype)

    def _train_given_noise(self, batch_indices: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        return self._train_steps(batch_indices, lambda s: noise[s])

    def _draw_train_noise(self, steps: tf.Tensor) -> tf.Tensor:
        return self.rng.normal(tf.stack([steps, self.spec.batch_size, self.spec.latent_size]), dtype=self.dtype)

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        indices = tf.constant(np.asarray(batch_indices, np.int32))
        # fast mode draws the window's noise on the device, then runs the parity-mode loop itself
        eps = (self._train_noise(tf.constant(len(batch_indices), tf.int32)) if noise is None
               else tf.constant(np.asarray(noise, self.spec.dtype)))
        return float(self._train_given(indices, eps))

    def preview_noise(self, steps: int) -> np.ndarray:
        # graph and eager draws of one generator differ, so draw with the very function train() uses
        state = self.rng.state.numpy()
        noise = self._train_noise(tf.constant(steps, tf.int32)).numpy()
        self.rng.reset(state)
        return noise

    # --- evaluation -----------------------------------------------------------------------

    def _evaluate_chunk(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """eps (K, n, L) -> mean ELBO over K and log p(x) = logsumexp_k log w_k - log K, (n,) each."""
        log_w = self.model.elbo(x, eps)
        k = tf.cast(tf.shape(log_w)[0], self.dtype)
        return tf.reduce_mean(log_w, 0), tf.reduce_logsumexp(log_w, 0) - tf.math.log(k)

    def _evaluate_chunk_own_noise(self, x: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        eps = self.rng.normal(tf.stack([k, tf.shape(x)[0], self.spec.latent_size]), dtype=self.dtype)
        return self._evaluate_chunk(x, eps)

    def evaluate(self, x: np.ndarray, k: int, noise: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, self.spec.dtype)
        chunk = max(1, EVAL_SAMPLES_PER_CHUNK // k)
        elbos, log_pxs = [], []
        for start in range(0, x.shape[0], chunk):
            x_chunk = tf.constant(x[start:start + chunk])
            if noise is None:
                elbo, log_px = self._evaluate_rng(x_chunk, tf.constant(k, tf.int32))
            else:
                eps = tf.constant(np.asarray(noise[:, start:start + chunk], self.spec.dtype))
                elbo, log_px = self._evaluate_given(x_chunk, eps)
            elbos.append(elbo.numpy())
            log_pxs.append(log_px.numpy())
        return np.concatenate(elbos).astype(np.float64), np.concatenate(log_pxs).astype(np.float64)

    def elbo_and_grads(self, x: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        dt = self.spec.dtype
        elbo, grads = self._elbo_and_grads(tf.constant(np.asarray(x, dt)), tf.constant(np.asarray(noise, dt)))
        return elbo.numpy(), {k: g.numpy() for k, g in grads.items()}

    # --- state ----------------------------------------------------------------------------

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.model.v.items()}

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        return {slot: {k: v.numpy() for k, v in getattr(self.optimizer, slot).items()}
                for slot in ("square_avg", "grad_avg")}

    def rng_state(self) -> np.ndarray:
        return self.rng.state.numpy().copy()

    def set_rng_state(self, state: np.ndarray) -> None:
        self.rng.reset(np.asarray(state))

    def set_optimizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        for slot in ("square_avg", "grad_avg"):
            for k, var in getattr(self.optimizer, slot).items():
                var.assign(np.asarray(state[slot][k], self.spec.dtype))
