"""TensorFlow backend: the VAE as tf.Variables, autodiff with tf.GradientTape, steps compiled by XLA.

The math is common/reference.py's, written once (`VAE.elbo`) and used by every entry point;
parity mode (noise given) and fast mode (noise from a tf.random.Generator on the device) run
the same compiled step and differ only in where eps comes from.

On N devices (spec.devices > 1) the data parallelism is tf.distribute's: a MirroredStrategy over
N GPUs, or over N logical devices split from the CPU (MultiWorkerMirroredStrategy across hosts
when TF_CONFIG is set). Variables and optimizer slots are mirrored; each replica computes the
gradient of the summed ELBO over its rows of the global batch (XLA-compiled), an all-reduce sums
them, and every replica applies the same RMSprop update to its copy; evaluation splits each chunk's
examples the same way. Noise in fast mode is still drawn whole by the one generator and then split,
so N devices train and evaluate the very run one device does, up to the order of the sums.
"""

from __future__ import annotations

import functools
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
SUM = tf.distribute.ReduceOp.SUM
HOST = "/cpu:0"  # on N devices train_x stays here, once; each replica gathers its rows of a batch from it


def _configure_threads() -> None:
    """Use every core; TF only accepts this before its runtime starts, so a later call is a no-op."""
    cores = os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:  # runtime already initialized (an earlier load in this process)
        pass


def _split_cpu(devices: int) -> list[str]:
    """The CPU as `devices` logical devices; TF can split it only before its runtime starts."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as e:  # started already: fine if it was split as far (an earlier load did it)
        present = len(tf.config.list_logical_devices("CPU"))
        if present < devices:
            raise RuntimeError(
                f"{devices} devices need the CPU split into {devices} logical devices before TensorFlow's "
                f"runtime starts, but it has started in this process with {present}: load this backend "
                "with devices > 1 first, in a fresh process (as compare.py and the tests do)") from e
    return [f"/cpu:{i}" for i in range(devices)]


def _is_chief(resolver: tf.distribute.cluster_resolver.ClusterResolver | None) -> bool:
    """TF's convention: one host (no resolver), the "chief" task, else worker 0 when there is no chief."""
    if resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().jobs)


@functools.cache  # one per process: MultiWorkerMirroredStrategy sets up collectives, which TF allows once
def _strategy(devices: int) -> tf.distribute.Strategy:
    """`devices` replicas: every host's GPUs (else its CPU) when TF_CONFIG is set, else N GPUs or N CPU devices."""
    gpus = tf.config.list_physical_devices("GPU")
    if "TF_CONFIG" in os.environ:
        implementation = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=implementation.NCCL if gpus else implementation.AUTO)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        if strategy.num_replicas_in_sync != devices:
            raise ValueError(f"devices = {devices}, but TF_CONFIG's hosts with {len(gpus) or 'no'} GPUs each make "
                             f"{strategy.num_replicas_in_sync} replicas: devices must be hosts x GPUs per host")
        return strategy
    if len(gpus) >= devices:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(devices)])  # NCCL all-reduce
    # NCCL is GPU-only; between logical CPU devices, sum on one device and copy the sum back
    return tf.distribute.MirroredStrategy(_split_cpu(devices), cross_device_ops=tf.distribute.ReductionToOneDevice())


def _replica_rows(t: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """This replica's share of t along axis: contiguous blocks in replica order, sizes differing by <= 1."""
    ctx = tf.distribute.get_replica_context()
    n, r, replicas = tf.shape(t)[axis], ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
    return tf.gather(t, tf.range(r * n // replicas, (r + 1) * n // replicas), axis=axis)


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
    is_main = True  # False on every host but the chief of a TF_CONFIG cluster

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        _configure_threads()
        check_params(spec, params)
        self.spec = spec
        self.dtype = tf.as_dtype(spec.dtype)
        self.strategy = _strategy(spec.devices) if spec.devices > 1 else None
        if self.strategy is None:
            self.model = VAE(spec, params)
            self.optimizer = CenteredRMSprop(spec, self.model.v)
            self.train_x = tf.cast(tf.convert_to_tensor(np.asarray(train_x)), self.dtype)
        else:
            self.is_main = _is_chief(self.strategy.cluster_resolver)
            with self.strategy.scope():  # mirrored: one copy of each variable and slot per replica
                self.model = VAE(spec, params)
                self.optimizer = CenteredRMSprop(spec, self.model.v)
            with tf.device(HOST):
                self.train_x = tf.cast(tf.convert_to_tensor(np.asarray(train_x)), self.dtype)
        # not mirrored: fast mode draws the global batch's noise, as on one device, and splits it
        self.rng = tf.random.Generator.from_seed(spec.seed)
        self._compile()

    def _compile(self) -> None:
        """One traced graph per entry point; shapes left None so new step counts do not retrace."""
        B, L, dt = self.spec.batch_size, self.spec.latent_size, self.dtype
        idx = tf.TensorSpec([None, B], tf.int32)
        x = tf.TensorSpec([None, N_PIXELS], dt)
        eps_train, eps_eval = tf.TensorSpec([None, B, L], dt), tf.TensorSpec([None, None, L], dt)
        eps_batch = tf.TensorSpec([None, L], dt)
        k = tf.TensorSpec([], tf.int32)
        self._train_noise = tf.function(self._draw_train_noise, input_signature=[k], jit_compile=JIT_TRAIN)
        if self.strategy is not None:
            self._compile_replicated(idx, x, eps_train, eps_eval, eps_batch, k)
            return
        self._train_given = tf.function(self._train_given_noise, input_signature=[idx, eps_train],
                                        jit_compile=JIT_TRAIN)
        self._evaluate_given = tf.function(self._evaluate_chunk, input_signature=[x, eps_eval],
                                           jit_compile=JIT_EVALUATE)
        self._evaluate_rng = tf.function(self._evaluate_chunk_own_noise, input_signature=[x, k],
                                         jit_compile=JIT_EVALUATE)
        self._elbo_and_grads = tf.function(self.model.elbo_and_grads, input_signature=[x, eps_batch],
                                           jit_compile=JIT_TRAIN)

    # --- training -------------------------------------------------------------------------

    def _step(self, indices: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """One RMSprop step on -sum ELBO of train_x[indices]; returns the batch-mean ELBO."""
        x = tf.gather(self.train_x, indices)
        elbo, grads_elbo = self.model.elbo_and_grads(x, eps)
        self.optimizer.apply(self.model.v, {k: -g for k, g in grads_elbo.items()})
        return tf.reduce_mean(elbo)

    def _train_steps(self, batch_indices: tf.Tensor, noise_at: Callable[[tf.Tensor], tf.Tensor],
                     step: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]) -> tf.Tensor:
        # all steps in one compiled loop: one dispatch and one host sync per train() call
        steps = tf.shape(batch_indices)[0]
        total = tf.zeros([], self.dtype)
        for s in tf.range(steps):
            total += step(batch_indices[s], noise_at(s))
        return total / tf.cast(steps, self.dtype)

    def _train_given_noise(self, batch_indices: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        return self._train_steps(batch_indices, lambda s: noise[s], self._step)

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

    def _draw_eval_noise(self, x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        return self.rng.normal(tf.stack([k, tf.shape(x)[0], self.spec.latent_size]), dtype=self.dtype)

    def _evaluate_chunk_own_noise(self, x: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self._evaluate_chunk(x, self._draw_eval_noise(x, k))

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

    # --- N devices: the same entry points, their per-replica part spread by tf.distribute ---

    def _compile_replicated(self, idx, x, eps_train, eps_eval, eps_batch, k) -> None:
        # XLA compiles each replica's math for its device; the loop around strategy.run stays a graph, as
        # MirroredStrategy's all-reduce between CPU devices does not run inside XLA
        self._local_elbo_and_grads = tf.function(self.model.elbo_and_grads, input_signature=[x, eps_batch],
                                                 jit_compile=JIT_TRAIN)
        self._local_update = tf.function(lambda grads: self.optimizer.apply(self.model.v, grads),
                                         jit_compile=JIT_TRAIN)
        self._train_given = tf.function(self._train_replicated, input_signature=[idx, eps_train])
        self._evaluate_given = tf.function(self._evaluate_replicated, input_signature=[x, eps_eval])
        self._evaluate_rng = tf.function(self._evaluate_replicated_own_noise, input_signature=[x, k])
        self._elbo_and_grads = tf.function(self._elbo_and_grads_replicated, input_signature=[x, eps_batch])

    def _replica_elbo_and_grads(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """In a replica, given its rows: their ELBO, and d(sum ELBO)/d param summed over all replicas' rows."""
        elbo, grads = self._local_elbo_and_grads(x, eps)
        return elbo, tf.distribute.get_replica_context().all_reduce(SUM, grads)

    def _replicated_step(self, indices: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        """_step on N devices: each replica's rows of the global batch, then the same update on every copy."""
        def replica_step(indices: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            with tf.device(HOST):
                x = tf.gather(self.train_x, _replica_rows(indices))
            elbo, grads_elbo = self._replica_elbo_and_grads(x, _replica_rows(eps))
            return tf.reduce_sum(elbo), {k: -g for k, g in grads_elbo.items()}

        elbo_sum, grads = self.strategy.run(replica_step, args=(indices, eps))
        # update() calls fn once per device of its first argument, with that device's grads; inside, every
        # mirrored variable (parameters and slots alike) reads and writes that device's copy
        any_variable = next(iter(self.model.v.values()))
        self.strategy.extended.update(any_variable, lambda _, grads: self._local_update(grads), args=(grads,))
        return self.strategy.reduce(SUM, elbo_sum, axis=None) / self.spec.batch_size

    def _train_replicated(self, batch_indices: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
        return self._train_steps(batch_indices, lambda s: noise[s], self._replicated_step)

    def _evaluate_replicated(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """_evaluate_chunk with the examples split across the replicas (unevenly if they must be)."""
        def replica_evaluate(x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return self._evaluate_chunk(_replica_rows(x), _replica_rows(eps, axis=1))

        elbo, log_px = self.strategy.run(replica_evaluate, args=(x, eps))
        return self.strategy.gather(elbo, axis=0), self.strategy.gather(log_px, axis=0)

    def _evaluate_replicated_own_noise(self, x: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        # the chunk's noise drawn whole, as on one device: N devices evaluate what one does, and a resumed
        # run draws what it would have
        return self._evaluate_replicated(x, self._draw_eval_noise(x, k))

    def _elbo_and_grads_replicated(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        def replica_elbo_and_grads(x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            return self._replica_elbo_and_grads(_replica_rows(x), _replica_rows(eps))

        elbo, grads = self.strategy.run(replica_elbo_and_grads, args=(x, eps))
        # all-reduced, so every replica holds the same gradient: take this host's first
        return self.strategy.gather(elbo, axis=0), self.strategy.experimental_local_results(grads)[0]

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
