"""The JAX backend: the VAE as flax.linen modules, centered RMSprop from optax.

One step function serves both modes; a train() call is one jitted lax.scan over its steps,
whose noise is either read from the given array (parity) or drawn with jax.random on the
device (fast). Parameters live as a flax params tree whose paths, joined with ".", are the
canonical names (e.g. params["flow"]["0"]["l0"]["context"] is flow.0.l0.context).

On N devices (spec.devices > 1) the same functions are jitted over a 1-D device mesh: parameters,
optimizer state and train_x replicated, each step's batch rows and noise split along the batch axis,
so each device computes its share of the batch and GSPMD inserts the all-reduce that sums the
gradient over the global batch. Fast mode draws the noise of the global batch as one device does
(threefry is partitionable: the same values however they are split), so N devices train the very
run one device does, up to the order of the sums.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from functools import cache, partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.init import check_params, made_masks
from common.launch import HOST_DEVICES_FLAG
from common.spec import Spec

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)  # a Python float, so it never promotes float32
EVAL_SAMPLES_PER_CHUNK = 2048  # examples * K per device and call: intermediates stay in cache (~1.3x 32768)
DATA_AXIS = "data"

PyTree = Any


# ----------------------------------------------------------------------------- the model


@cache
def made_layer_masks(spec: Spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z -> hidden, hidden -> hidden, hidden -> [m | s]) masks; the same for every flow step."""
    masks = made_masks(spec.replace(flow_steps=1))
    return masks["flow.0.l0.kernel"], masks["flow.0.l1.kernel"], masks["flow.0.out.kernel"]


class MLP(nn.Module):
    """Dense-relu-dense-relu-dense: the encoder and the decoder."""

    hidden_size: int
    out_size: int

    @nn.compact
    def __call__(self, a: jax.Array) -> jax.Array:
        a = nn.relu(nn.Dense(self.hidden_size, name="l0")(a))
        a = nn.relu(nn.Dense(self.hidden_size, name="l1")(a))
        return nn.Dense(self.out_size, name="l2")(a)


class MadeDense(nn.Module):
    """a @ (mask * kernel) + bias [+ context @ context_kernel]: one autoregressive MADE layer."""

    features: int
    mask: np.ndarray

    @nn.compact
    def __call__(self, a: jax.Array, context: jax.Array | None = None) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.zeros, (a.shape[-1], self.features), a.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), a.dtype)
        # masking in the forward pass also zeroes the gradient of the masked entries
        y = a @ (kernel * jnp.asarray(self.mask, a.dtype)) + bias
        if context is not None:
            context_kernel = self.param("context", nn.initializers.zeros,
                                        (context.shape[-1], self.features), a.dtype)
            y = y + context @ context_kernel
        return y


class IafStep(nn.Module):
    """z <- sigma z + (1 - sigma) m with [m | s] = MADE(z, context), sigma = sigmoid(s + 2)."""

    spec: Spec

    @nn.compact
    def __call__(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        H, L = self.spec.hidden_size, self.spec.latent_size
        mask_in, mask_hidden, mask_out = made_layer_masks(self.spec)
        a0 = nn.relu(MadeDense(H, mask_in, name="l0")(z, context))
        a1 = nn.relu(MadeDense(H, mask_hidden, name="l1")(a0, context))
        m, s = jnp.split(MadeDense(2 * L, mask_out, name="out")(a1), 2, axis=-1)
        sigma = nn.sigmoid(s + 2.0)
        minus_log_det = jnp.sum(nn.softplus(-(s + 2.0)), axis=-1)  # = -sum log sigma
        return sigma * z + (1.0 - sigma) * m, minus_log_det


class IafFlow(nn.Module):
    """spec.flow_steps IAF steps, z reversed before every step but the first."""

    spec: Spec

    @nn.compact
    def __call__(self, z: jax.Array, log_q_z: jax.Array, context: jax.Array):
        for t in range(self.spec.flow_steps):
            if t > 0:
                z = z[..., ::-1]
            z, minus_log_det = IafStep(self.spec, name=str(t))(z, context)
            log_q_z = log_q_z + minus_log_det
        return z, log_q_z


class VAE(nn.Module):
    """Per-sample ELBO = log p(x|z) + log p(z) - log q(z|x), z = flow(loc + scale * eps).

    x is (..., 784); eps is (..., L) with extra leading sample dims broadcast against x.
    """

    spec: Spec

    @nn.compact
    def __call__(self, x: jax.Array, eps: jax.Array) -> jax.Array:
        spec, L = self.spec, self.spec.latent_size
        h = MLP(spec.hidden_size, spec.encoder_out, name="encoder")(x)
        loc, scale_arg = h[..., :L], h[..., L:2 * L]
        scale = nn.softplus(scale_arg)
        z = loc + scale * eps
        log_q_z = jnp.sum(-0.5 * eps**2 - jnp.log(scale) - HALF_LOG_2PI, axis=-1)
        if spec.variational == "iaf":
            z, log_q_z = IafFlow(spec, name="flow")(z, log_q_z, context=h[..., 2 * L:])
        logits = MLP(spec.hidden_size, x.shape[-1], name="decoder")(z)
        log_p_x_given_z = jnp.sum(x * logits - nn.softplus(logits), axis=-1)
        log_p_z = jnp.sum(-0.5 * z**2 - HALF_LOG_2PI, axis=-1)
        return log_p_x_given_z + log_p_z - log_q_z


# ----------------------------------------------------------------- canonical <-> flax tree


def to_tree(flat: dict[str, np.ndarray], dtype: np.dtype, place: Callable | None = None) -> PyTree:
    """The flax tree of flat, each array put on the device(s) by place (default: one device)."""
    # jnp.array copies, so donating these buffers later never touches the caller's arrays
    place = place or partial(jnp.array, dtype=dtype, copy=True)
    return traverse_util.unflatten_dict({k: place(np.asarray(v, dtype)) for k, v in flat.items()}, sep=".")


def to_flat(tree: PyTree, dtype: np.dtype) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(jax.device_get(tree), sep=".")
    return {k: np.asarray(v, dtype) for k, v in flat.items()}


def digest(flat: dict[str, np.ndarray]) -> np.ndarray:
    """sha256 of names and values as 8 uint32: enough for hosts to tell whether they hold the same arrays."""
    h = hashlib.sha256()
    for k in sorted(flat):
        h.update(k.encode() + np.ascontiguousarray(flat[k]).tobytes())
    return np.frombuffer(h.digest(), np.uint32)


# ------------------------------------------------------------------ compiled computations


def sum_elbo_and_grads(model: VAE, params: PyTree, x: jax.Array, eps: jax.Array):
    """(per-example ELBO, d sum ELBO / d params)."""
    def sum_elbo(p):
        elbo = model.apply({"params": p}, x, eps)
        return jnp.sum(elbo), elbo

    (_, elbo), grads = jax.value_and_grad(sum_elbo, has_aux=True)(params)
    return elbo, grads


def rmsprop_step(model: VAE, tx: optax.GradientTransformation, params: PyTree,
                 opt_state: PyTree, x: jax.Array, eps: jax.Array):
    """One step on -sum ELBO; returns (params, opt_state, batch-mean ELBO)."""
    elbo, grads = sum_elbo_and_grads(model, params, x, eps)
    loss_grads = jax.tree.map(jnp.negative, grads)
    updates, opt_state = tx.update(loss_grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, jnp.mean(elbo)


def train_chunk(model: VAE, tx: optax.GradientTransformation, noise_of: Callable, split_batch: Callable,
                params: PyTree, opt_state: PyTree, train_x: jax.Array,
                batch_indices: jax.Array, noise_inputs: jax.Array):
    """lax.scan of rmsprop_step over S steps; noise_of maps a step's noise input to its eps,
    split_batch lays a step's rows and eps out across the devices (the identity on one)."""
    def body(carry, step_inputs):
        idx, noise_input = step_inputs
        x, eps = split_batch(train_x[idx]), split_batch(noise_of(noise_input))
        params, opt_state, mean_elbo = rmsprop_step(model, tx, *carry, x, eps)
        return (params, opt_state), mean_elbo

    (params, opt_state), mean_elbos = jax.lax.scan(body, (params, opt_state),
                                                   (batch_indices, noise_inputs))
    return params, opt_state, jnp.mean(mean_elbos)


def elbo_and_log_px(model: VAE, params: PyTree, x: jax.Array, eps: jax.Array):
    """eps (K, n, L) -> (mean_k log w_k, logsumexp_k log w_k - log K), log w = ELBO sample."""
    log_w = model.apply({"params": params}, x, eps)
    k = log_w.shape[0]
    return jnp.mean(log_w, axis=0), jax.nn.logsumexp(log_w, axis=0) - math.log(k)


def elbo_and_log_px_drawn(model: VAE, split_examples: Callable, params: PyTree, x: jax.Array,
                          key: jax.Array, k: int):
    """As elbo_and_log_px with eps drawn; split_examples lays it out like x (the identity on one device)."""
    eps = split_examples(jax.random.normal(key, (k, x.shape[0], model.spec.latent_size), x.dtype))
    return elbo_and_log_px(model, params, x, eps)


def unchanged(a: Any) -> Any:
    return a


def pad_rows(a: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Zero-pad axis to length n, so every chunk has one shape and compiles once."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, n - a.shape[axis])
    return np.pad(a, widths)


# ------------------------------------------------------------------------ data parallelism


def start_distributed() -> None:
    """jax.distributed.initialize(), once, when JAX_COORDINATOR_ADDRESS says this is one of several hosts.

    JAX reads the coordinator's host:port from that variable itself, and the process count and index from
    Slurm or Open MPI when they started the processes; for a launch by hand we pass JAX_NUM_PROCESSES
    and JAX_PROCESS_ID. It must run before JAX touches a device.
    """
    if "JAX_COORDINATOR_ADDRESS" not in os.environ or jax.distributed.is_initialized():
        return
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)


class DataParallel:
    """A 1-D mesh over the first N devices: arrays replicated on it, or split along one axis."""

    def __init__(self, devices: int) -> None:
        visible = jax.devices()  # every host's devices, when several hosts run together
        if len(visible) < devices:
            raise RuntimeError(
                f"{devices} devices asked for, but JAX sees {len(visible)} ({visible[0].platform}): on a CPU set "
                f"XLA_FLAGS={HOST_DEVICES_FLAG}={devices} before jax is imported (compare.py does); on GPUs "
                "make that many visible, or join several hosts with JAX_COORDINATOR_ADDRESS")
        if jax.process_count() > 1 and devices != len(visible):
            raise RuntimeError(f"on {jax.process_count()} hosts the mesh must span all {len(visible)} devices "
                               f"(every host computes a share), but devices = {devices}")
        self.mesh = Mesh(np.array(visible[:devices]), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def along(self, axis: int) -> NamedSharding:
        """Split along axis (the batch or example axis), replicated along the others."""
        return NamedSharding(self.mesh, PartitionSpec(*[None] * axis, DATA_AXIS))

    def put(self, a: np.ndarray, sharding: NamedSharding) -> jax.Array:
        # every process holds all of a and gives each of its devices its block (the jax docs' way to pass
        # the same NumPy array to jit on several hosts: there a plain NumPy input may only be replicated);
        # np.array copies, so donating these buffers later never touches the caller's arrays
        return jax.make_array_from_callback(a.shape, sharding, lambda index: np.array(a[index]))

    def constraint(self, axis: int) -> Callable:
        """Inside jit: split an array along axis; GSPMD then splits the ops that compute it too."""
        return partial(jax.lax.with_sharding_constraint, shardings=self.along(axis))


def compile_steps(model: VAE, tx: optax.GradientTransformation, dtype: np.dtype,
                  parallel: DataParallel | None) -> tuple[Callable, ...]:
    """(train with given noise, train with drawn noise, grads, evaluate given, evaluate drawn), jitted."""
    draw = partial(jax.random.normal, shape=(model.spec.batch_size, model.spec.latent_size), dtype=dtype)
    if parallel is None:
        chunk = partial(jax.jit, donate_argnums=(0, 1))
        return (chunk(partial(train_chunk, model, tx, unchanged, unchanged)),
                chunk(partial(train_chunk, model, tx, draw, unchanged)),
                jax.jit(partial(sum_elbo_and_grads, model)),
                jax.jit(partial(elbo_and_log_px, model)),
                jax.jit(partial(elbo_and_log_px_drawn, model, unchanged), static_argnums=3))
    # rows: x (B or n, 784) and elbo_and_grads' noise (B, L), split along axis 0; steps: batch indices
    # (S, B) and noise (S, B, L) or (K, n, L), split along axis 1. Every output is replicated, so that
    # any process can read it whole.
    whole, rows, steps = parallel.replicated, parallel.along(0), parallel.along(1)
    chunk = partial(jax.jit, donate_argnums=(0, 1), out_shardings=whole)
    sharded = partial(jax.jit, out_shardings=whole)
    split_batch = parallel.constraint(0)
    return (chunk(partial(train_chunk, model, tx, unchanged, split_batch),
                  in_shardings=(whole, whole, whole, steps, steps)),
            chunk(partial(train_chunk, model, tx, draw, split_batch),
                  in_shardings=(whole, whole, whole, steps, whole)),
            sharded(partial(sum_elbo_and_grads, model), in_shardings=(whole, rows, rows)),
            sharded(partial(elbo_and_log_px, model), in_shardings=(whole, rows, steps)),
            sharded(partial(elbo_and_log_px_drawn, model, parallel.constraint(1)), static_argnums=3,
                    in_shardings=(whole, rows, whole)))


# ------------------------------------------------------------------------------- backend


class Backend:
    name = "jax"

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        start_distributed()
        if spec.dtype == "float64":
            jax.config.update("jax_enable_x64", True)  # before any float64 array exists
        check_params(spec, params)
        self.spec, self.dtype = spec, np.dtype(spec.dtype)
        self.is_main = jax.process_index() == 0  # with several hosts, only the first writes results
        self._parallel = DataParallel(spec.devices) if spec.devices > 1 else None
        self.model = VAE(spec)
        # optax's centered rmsprop with eps_in_sqrt=False is exactly torch's RMSprop(centered=True)
        self.tx = optax.rmsprop(spec.learning_rate, decay=spec.rmsprop_decay, eps=spec.rmsprop_eps,
                                eps_in_sqrt=False, centered=True)
        self._params = self._tree(params)
        self._opt_state = self.tx.init(self._params)  # zeros laid out like the parameters
        if self._parallel is None:
            self._train_x = jnp.asarray(train_x).astype(self.dtype)  # on the device, cast once
        else:
            self._train_x = self._parallel.put(np.asarray(train_x, self.dtype), self._parallel.replicated)
        train_key, eval_key = jax.random.split(jax.random.key(spec.seed))
        self._train_key, self._eval_key = train_key, eval_key
        (self._train_given, self._train_drawn, self._grads, self._eval_given,
         self._eval_drawn) = compile_steps(self.model, self.tx, self.dtype, self._parallel)

    def _tree(self, flat: dict[str, np.ndarray]) -> PyTree:
        if self._parallel is None:
            return to_tree(flat, self.dtype)
        flat = {k: np.asarray(v, self.dtype) for k, v in flat.items()}
        if jax.process_count() > 1:  # a host that resumed another checkpoint would silently train another run
            multihost_utils.assert_equal(digest(flat), "the hosts load different parameters or optimizer "
                                                       "states; their results folder must be one shared folder")
        return to_tree(flat, self.dtype, partial(self._parallel.put, sharding=self._parallel.replicated))

    def _split(self, a: np.ndarray, axis: int) -> jax.Array:
        """a on the device; on N devices split along axis (its batch or example axis) across them."""
        if self._parallel is None:
            return jnp.asarray(a)
        return self._parallel.put(a, self._parallel.along(axis))

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        batch_indices = self._split(np.asarray(batch_indices, np.int32), axis=1)
        if noise is None:
            # the global batch's noise, as on one device; the compiled step splits it
            self._train_key, chunk_key = jax.random.split(self._train_key)
            noise_inputs, step = jax.random.split(chunk_key, len(batch_indices)), self._train_drawn
        else:
            noise_inputs, step = self._split(np.asarray(noise, self.dtype), axis=1), self._train_given
        self._params, self._opt_state, mean_elbo = step(
            self._params, self._opt_state, self._train_x, batch_indices, noise_inputs)
        return float(mean_elbo)

    def preview_noise(self, steps: int) -> np.ndarray:
        _, chunk_key = jax.random.split(self._train_key)  # as train() splits it
        shape = (self.spec.batch_size, self.spec.latent_size)
        return np.stack([np.asarray(jax.random.normal(key, shape, self.dtype))
                         for key in jax.random.split(chunk_key, steps)])

    def evaluate(self, x: np.ndarray, k: int,
                 noise: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, self.dtype)
        devices = self.spec.devices  # a chunk's examples are split evenly across them
        n = devices * min(-(-len(x) // devices), max(1, EVAL_SAMPLES_PER_CHUNK // k))
        self._eval_key, call_key = jax.random.split(self._eval_key)
        results = []  # dispatched asynchronously; one wait at the end
        for i, start in enumerate(range(0, len(x), n)):
            x_chunk = self._split(pad_rows(x[start:start + n], n), axis=0)
            if noise is None:
                key = jax.random.fold_in(call_key, i)
                results.append(self._eval_drawn(self._params, x_chunk, key, k))
            else:
                eps = pad_rows(np.asarray(noise[:, start:start + n], self.dtype), n, axis=1)
                results.append(self._eval_given(self._params, x_chunk, self._split(eps, axis=1)))
        elbo, log_px = (np.concatenate([np.asarray(r[j], np.float64) for r in results])[:len(x)]
                        for j in (0, 1))
        return elbo, log_px

    def elbo_and_grads(self, x: np.ndarray,
                       noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if len(x) % self.spec.devices:
            raise ValueError(f"a batch of {len(x)} does not split evenly across {self.spec.devices} devices")
        elbo, grads = self._grads(self._params, self._split(np.asarray(x, self.dtype), axis=0),
                                  self._split(np.asarray(noise, self.dtype), axis=0))
        return np.asarray(elbo, np.float64), to_flat(grads, self.dtype)

    def params(self) -> dict[str, np.ndarray]:
        return to_flat(self._params, self.dtype)

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        # optax's scale_by_stddev keeps mu = EMA of g (grad_avg) and nu = EMA of g^2 (square_avg)
        return {"square_avg": to_flat(optax.tree.get(self._opt_state, "nu"), self.dtype),
                "grad_avg": to_flat(optax.tree.get(self._opt_state, "mu"), self.dtype)}

    def rng_state(self) -> np.ndarray:
        return np.stack([np.asarray(jax.random.key_data(k)) for k in (self._train_key, self._eval_key)])

    def set_rng_state(self, state: np.ndarray) -> None:
        self._train_key, self._eval_key = (jax.random.wrap_key_data(jnp.asarray(k)) for k in state)

    def set_optimizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        self._opt_state = optax.tree.set(self._opt_state, nu=self._tree(state["square_avg"]),
                                         mu=self._tree(state["grad_avg"]))
