"""The JAX backend behind backends/contract.py: flax modules (vae.py), optax directions (optim.py), jax.jit.

One loop serves both modes: a train() call is one jitted lax.scan over its steps, parameters and optimizer state
donated, learning rates a scan input, whose noise is either the given array (parity) or, in the same compiled
call, drawn first with jax.random on the device from one key per step (fast). Evaluation chunks are padded to one
shape and draw their noise per example from the seed they are given. On N devices the same functions are jitted
over a mesh (distributed.py); every method still takes and returns the global arrays.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from backends.jax import cvae, distributed, fa, gmvae, optim, vae, vrnn
from common import streams
from common.models import family
from common.optim import SLOTS, initial, learning_rates
from common.params import check_params
from common.spec import Spec

EVAL_SAMPLES_PER_CALL = 2048  # examples * k per call: intermediates stay in cache (~1.3x 32768 on one CPU device)

PyTree = Any
# spec.model -> this framework's module of the family
MODELS = {"vae": vae.VAE, "cvae": cvae.CVAE, "fa": fa.FactorAnalysis, "gmvae": gmvae.GMVAE, "vrnn": vrnn.VRNN}


# ----------------------------------------------------------------------------- keys and noise


def key_of(seed: int) -> jax.Array:
    """The threefry key of a 63-bit seed: its two 32-bit halves, as jax.random.key makes it with x64 enabled
    (with x64 disabled jax.random.key keeps only the low half), so float32 and float64 runs draw alike."""
    return jax.random.wrap_key_data(np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32), impl="threefry2x32")


def step_keys(key: jax.Array, start: int, count: int) -> jax.Array:
    """The keys of training steps start..start+count-1: fold_in(key, step), a function of the step alone, so
    how a run is cut into windows (or stopped and resumed) never changes its noise."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(start, start + count, dtype=jnp.uint32))


def train_noise(spec: Spec, dtype: np.dtype, key: jax.Array) -> jax.Array:
    """One step's eps (train_k, B, ...) for the global batch."""
    return jax.random.normal(key, family(spec).noise_shape(spec, spec.train_k, spec.batch_size), dtype)


def example_noise(spec: Spec, key: jax.Array, k: int, n: int, dtype: np.dtype) -> jax.Array:
    """eps (k, n, ...), example j's from fold_in(key, j) alone: padding a chunk, or splitting it, changes no value."""
    _, _, *rest = family(spec).noise_shape(spec, k, 1)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n))
    return jnp.swapaxes(jax.vmap(lambda key_j: jax.random.normal(key_j, (k, *rest), dtype))(keys), 0, 1)


def pair(out: jax.Array | tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """A family's forward gives log w, or (log w, elbo) where its ELBO is not log w itself."""
    return out if isinstance(out, tuple) else (out, out)


def objective(spec: Spec, log_w: jax.Array, elbo: jax.Array) -> jax.Array:
    """(k, n) -> (n,) training objective: mean_k elbo (ELBO) or logmeanexp_k log w (IWAE bound)."""
    if spec.objective == "elbo":
        return jnp.mean(elbo, axis=0)
    return jax.nn.logsumexp(log_w, axis=0) - math.log(log_w.shape[0])


def unchanged(a: Any) -> Any:
    return a


def pad_rows(a: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Zero-pad axis to length n, so every chunk has one shape and compiles once."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, n - a.shape[axis])
    return np.pad(a, widths)


# ----------------------------------------------------------------- canonical <-> flax tree


def to_tree(flat: dict[str, Any]) -> PyTree:
    """The flax tree {module: {layer: {parameter}}}: each canonical name split at its last two dots."""
    return traverse_util.unflatten_dict({tuple(k.rsplit(".", 2)): v for k, v in flat.items()})


def to_flat(tree: PyTree, dtype: np.dtype) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype) for k, v in traverse_util.flatten_dict(jax.device_get(tree), sep=".").items()}


# ------------------------------------------------------------------ compiled computations


def objective_and_grads(model: nn.Module, params: PyTree, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, PyTree]:
    """(per-example objective (n,), d sum objective / d params)."""
    def total(p: PyTree) -> tuple[jax.Array, jax.Array]:
        value = objective(model.spec, *pair(model.apply({"params": p}, x, eps)))
        return jnp.sum(value), value

    (_, value), grads = jax.value_and_grad(total, has_aux=True)(params)
    return value, grads


def train_step(model: nn.Module, params: PyTree, opt_state: optim.State, x: jax.Array, eps: jax.Array, lr: jax.Array):
    """One optimizer step on -sum objective; returns (params, opt_state, batch-mean objective)."""
    value, grads = objective_and_grads(model, params, x, eps)
    params, opt_state = optim.update(model.spec, jax.tree.map(jnp.negative, grads), opt_state, params, lr)
    return params, opt_state, jnp.mean(value)


def train_window(model: nn.Module, rows: Callable, samples: Callable, params: PyTree, opt_state: optim.State,
                 train_x: jax.Array, batch_indices: jax.Array, noise: jax.Array, rates: jax.Array):
    """lax.scan of train_step over S steps (batch indices (S, B), noise (S, k, B, L), learning rates (S,));
    rows and samples lay each step's x and eps out across the devices (the identity on one)."""
    def body(carry, step_inputs):
        indices, eps, lr = step_inputs
        params, opt_state, mean = train_step(model, *carry, rows(train_x[indices]), samples(eps), lr)
        return (params, opt_state), mean

    (params, opt_state), means = jax.lax.scan(body, (params, opt_state), (batch_indices, noise, rates))
    return params, opt_state, jnp.mean(means)


def train_window_drawn(model: nn.Module, rows: Callable, samples: Callable, window_samples: Callable,
                       draw: Callable, params: PyTree, opt_state: optim.State, train_x: jax.Array,
                       batch_indices: jax.Array, keys: jax.Array, rates: jax.Array):
    """train_window with the window's noise drawn first, one key per step: the loop XLA compiles is then the
    parity loop itself (noise drawn inside the loop body fuses differently: 1e-12 apart after 5 steps)."""
    noise = window_samples(jax.vmap(draw)(keys))
    return train_window(model, rows, samples, params, opt_state, train_x, batch_indices, noise, rates)


def log_weights(model: nn.Module, params: PyTree, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
    return pair(model.apply({"params": params}, x, eps))


def log_weights_drawn(model: nn.Module, samples: Callable, params: PyTree, x: jax.Array, key: jax.Array, k: int):
    eps = samples(example_noise(model.spec, key, k, x.shape[0], x.dtype))
    return log_weights(model, params, x, eps)


# ------------------------------------------------------------------------------- backend


class Backend:
    name = "jax"
    is_main = True
    devices = 1
    eval_chunk_samples = EVAL_SAMPLES_PER_CALL

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        distributed.start()  # before JAX touches a device
        if spec.dtype == "float64":
            jax.config.update("jax_enable_x64", True)  # before any float64 array exists
        check_params(spec, params)
        self.spec, self.dtype, self.devices = spec, np.dtype(spec.dtype), spec.devices
        self.is_main = jax.process_index() == 0  # with several hosts, only the first writes results
        self.parallel = distributed.DataParallel(spec.devices) if spec.devices > 1 else None
        self.model = MODELS[spec.model](spec)
        self._params = self._place(self._host_tree(params))
        self.set_optimizer_state({"step": 0} | {slot: {k: np.full(np.shape(v), initial(spec.optimizer, slot))
                                                       for k, v in params.items()} for slot in SLOTS[spec.optimizer]})
        self._n_train = len(train_x)
        if self.parallel is None:
            self._train_x = jnp.asarray(train_x).astype(self.dtype)  # on the device as uint8, cast there once
        else:
            self._train_x = self.parallel.put(np.asarray(train_x, self.dtype))
        self._train_key = key_of(streams.seed_of(spec.seed, "train"))
        self._compile()

    def _compile(self) -> None:
        model, dtype = self.model, self.dtype
        # x split along its rows; noise (k, n, ...) along its example axis, a window's (S, k, B, ...) along 2
        rows, samples, window_samples = self._constraint(0), self._constraint(1), self._constraint(2)
        draw = partial(train_noise, self.spec, dtype)
        # batch indices (S, B) split along 1, given noise (S, k, B, L) along 2, keys and rates replicated
        self._train_given = self._jit(partial(train_window, model, rows, samples), (None, None, None, 1, 2, None),
                                      donate=(0, 1))
        self._train_drawn = self._jit(partial(train_window_drawn, model, rows, samples, window_samples, draw),
                                      (None, None, None, 1, None, None), donate=(0, 1))
        self._grads = self._jit(partial(objective_and_grads, model), (None, 0, 1))
        self._log_weights_given = self._jit(partial(log_weights, model), (None, 0, 1))
        self._log_weights_drawn = self._jit(partial(log_weights_drawn, model, samples), (None, 0, None), static=(3,))

    def _jit(self, fn: Callable, in_axes: tuple, donate: tuple[int, ...] = (), static: tuple[int, ...] = ()):
        if self.parallel is None:
            return jax.jit(fn, donate_argnums=donate, static_argnums=static)
        return self.parallel.jit(fn, in_axes, donate, static)

    def _constraint(self, axis: int) -> Callable:
        return unchanged if self.parallel is None else self.parallel.constraint(axis)

    def _split(self, a: np.ndarray, axis: int | None = None) -> jax.Array:
        """a on the device; on N devices split along axis (its batch or example axis), or replicated."""
        return jnp.array(a, copy=True) if self.parallel is None else self.parallel.put(a, axis)

    def _host_tree(self, flat: dict[str, np.ndarray]) -> PyTree:
        """Canonical arrays as the flax tree, in spec.dtype, still on the host."""
        return to_tree({k: np.asarray(v, self.dtype) for k, v in flat.items()})

    def _place(self, tree: PyTree) -> PyTree:
        """Every host array of tree on the device, or replicated on the N devices."""
        # jnp.array copies, so donating these buffers later never touches the caller's arrays
        if self.parallel is None:
            return jax.tree.map(partial(jnp.array, copy=True), tree)
        return self.parallel.put_same_everywhere(tree)

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        steps = len(batch_indices)
        indices = self._split(np.asarray(batch_indices, np.int32), axis=1)
        rates = learning_rates(self.spec, self._step, self._step + steps, self._n_train)
        if noise is None:
            # the global batch's noise, as on one device; the compiled step splits it
            noise_inputs, window = step_keys(self._train_key, self._step, steps), self._train_drawn
        else:
            noise_inputs, window = self._split(np.asarray(noise, self.dtype), axis=2), self._train_given
        self._params, self._opt_state, mean = window(self._params, self._opt_state, self._train_x, indices,
                                                     noise_inputs, self._split(rates.astype(self.dtype)))
        self._step += steps
        return float(mean)

    def log_weights(self, x: np.ndarray, k: int, noise: np.ndarray | None = None,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if (noise is None) == (seed is None):
            raise ValueError("log_weights needs exactly one of noise and seed")
        # padded only to split evenly across the devices: a split's chunks have at most two sizes (two compilations),
        # and no backend computes samples the FLOP count leaves out
        n = self.devices * -(-len(x) // self.devices)
        x_chunk = self._split(pad_rows(np.asarray(x, self.dtype), n), axis=0)
        if noise is None:
            weights = self._log_weights_drawn(self._params, x_chunk, key_of(seed), k)
        else:
            eps = self._split(pad_rows(np.asarray(noise, self.dtype), n, axis=1), axis=1)
            weights = self._log_weights_given(self._params, x_chunk, eps)
        return tuple(np.asarray(w)[:, :len(x)] for w in weights)

    def objective_and_grads(self, x: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if len(x) % self.devices:
            raise ValueError(f"a batch of {len(x)} does not split evenly across {self.devices} devices")
        value, grads = self._grads(self._params, self._split(np.asarray(x, self.dtype), axis=0),
                                   self._split(np.asarray(noise, self.dtype), axis=1))
        return np.asarray(value), to_flat(grads, self.dtype)

    def preview_noise(self, steps: int) -> np.ndarray:
        return np.stack([np.asarray(train_noise(self.spec, self.dtype, key))
                         for key in step_keys(self._train_key, self._step, steps)])

    def params(self) -> dict[str, np.ndarray]:
        return to_flat(self._params, self.dtype)

    def optimizer_state(self) -> dict:
        slots = optim.slots(self.spec, self._opt_state)
        return {"step": int(self._opt_state.step)} | {slot: to_flat(tree, self.dtype) for slot, tree in slots.items()}

    def set_optimizer_state(self, state: dict) -> None:
        # the step count mirrored on the host, so a window's learning rates need no read from the device
        self._step = int(state["step"])
        slots = {slot: self._host_tree(state[slot]) for slot in SLOTS[self.spec.optimizer]}
        self._opt_state = self._place(optim.restore(self.spec, self._step, slots))

    def rng_state(self) -> np.ndarray:
        return np.asarray(jax.random.key_data(self._train_key))

    def set_rng_state(self, state: np.ndarray) -> None:
        self._train_key = jax.random.wrap_key_data(np.asarray(state, np.uint32), impl="threefry2x32")

    @staticmethod
    def matmul_flop_per_s(m: int, k: int, n: int, seconds: float = 0.5) -> float:
        rng = np.random.default_rng(0)
        a, b = (jnp.asarray(rng.standard_normal(shape, np.float32)) for shape in ((m, k), (k, n)))
        matmul = jax.jit(jnp.matmul)
        matmul(a, b).block_until_ready()  # compile, warm up
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            matmul(a, b).block_until_ready()
            best = max(best, 2.0 * m * k * n / (time.perf_counter() - start))
        return best
