"""The JAX backend: the VAE as flax.linen modules, centered RMSprop from optax.

One step function serves both modes; a train() call is one jitted lax.scan over its steps,
whose noise is either read from the given array (parity) or drawn with jax.random on the
device (fast). Parameters live as a flax params tree whose paths, joined with ".", are the
canonical names (e.g. params["flow"]["0"]["l0"]["context"] is flow.0.l0.context).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from common.init import check_params, made_masks
from common.spec import Spec

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)  # a Python float, so it never promotes float32
EVAL_SAMPLES_PER_CHUNK = 2048  # chunk_examples * K per call: intermediates stay in cache (measured ~1.3x 32768)

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


def to_tree(flat: dict[str, np.ndarray], dtype: np.dtype) -> PyTree:
    # jnp.array copies, so donating these buffers later never touches the caller's arrays
    return traverse_util.unflatten_dict(
        {k: jnp.array(np.asarray(v, dtype), dtype=dtype, copy=True) for k, v in flat.items()},
        sep=".")


def to_flat(tree: PyTree, dtype: np.dtype) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(jax.device_get(tree), sep=".")
    return {k: np.asarray(v, dtype) for k, v in flat.items()}


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


def train_chunk(model: VAE, tx: optax.GradientTransformation, noise_of: Callable,
                params: PyTree, opt_state: PyTree, train_x: jax.Array,
                batch_indices: jax.Array, noise_inputs: jax.Array):
    """lax.scan of rmsprop_step over S steps; noise_of maps a step's noise input to its eps."""
    def body(carry, step_inputs):
        idx, noise_input = step_inputs
        params, opt_state, mean_elbo = rmsprop_step(model, tx, *carry, train_x[idx],
                                                    noise_of(noise_input))
        return (params, opt_state), mean_elbo

    (params, opt_state), mean_elbos = jax.lax.scan(body, (params, opt_state),
                                                   (batch_indices, noise_inputs))
    return params, opt_state, jnp.mean(mean_elbos)


def elbo_and_log_px(model: VAE, params: PyTree, x: jax.Array, eps: jax.Array):
    """eps (K, n, L) -> (mean_k log w_k, logsumexp_k log w_k - log K), log w = ELBO sample."""
    log_w = model.apply({"params": params}, x, eps)
    k = log_w.shape[0]
    return jnp.mean(log_w, axis=0), jax.nn.logsumexp(log_w, axis=0) - math.log(k)


def elbo_and_log_px_drawn(model: VAE, params: PyTree, x: jax.Array, key: jax.Array, k: int):
    eps = jax.random.normal(key, (k, x.shape[0], model.spec.latent_size), x.dtype)
    return elbo_and_log_px(model, params, x, eps)


def pad_rows(a: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Zero-pad axis to length n, so every chunk has one shape and compiles once."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, n - a.shape[axis])
    return np.pad(a, widths)


# ------------------------------------------------------------------------------- backend


class Backend:
    name = "jax"

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        if spec.dtype == "float64":
            jax.config.update("jax_enable_x64", True)  # before any float64 array exists
        check_params(spec, params)
        self.spec, self.dtype = spec, np.dtype(spec.dtype)
        self.model = VAE(spec)
        # optax's centered rmsprop with eps_in_sqrt=False is exactly torch's RMSprop(centered=True)
        self.tx = optax.rmsprop(spec.learning_rate, decay=spec.rmsprop_decay, eps=spec.rmsprop_eps,
                                eps_in_sqrt=False, centered=True)
        self._params = to_tree(params, self.dtype)
        self._opt_state = self.tx.init(self._params)
        self._train_x = jnp.asarray(train_x).astype(self.dtype)  # on the device, cast once
        train_key, eval_key = jax.random.split(jax.random.key(spec.seed))
        self._train_key, self._eval_key = train_key, eval_key

        draw = partial(jax.random.normal, shape=(spec.batch_size, spec.latent_size),
                       dtype=self.dtype)
        chunk = partial(jax.jit, donate_argnums=(0, 1))
        self._train_given = chunk(partial(train_chunk, self.model, self.tx, lambda eps: eps))
        self._train_drawn = chunk(partial(train_chunk, self.model, self.tx, draw))
        self._grads = jax.jit(partial(sum_elbo_and_grads, self.model))
        self._eval_given = jax.jit(partial(elbo_and_log_px, self.model))
        self._eval_drawn = jax.jit(partial(elbo_and_log_px_drawn, self.model), static_argnums=3)

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        batch_indices = jnp.asarray(np.asarray(batch_indices), jnp.int32)
        if noise is None:
            self._train_key, chunk_key = jax.random.split(self._train_key)
            noise_inputs, step = jax.random.split(chunk_key, len(batch_indices)), self._train_drawn
        else:
            noise_inputs, step = jnp.asarray(np.asarray(noise, self.dtype)), self._train_given
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
        n = min(len(x), max(1, EVAL_SAMPLES_PER_CHUNK // k))
        self._eval_key, call_key = jax.random.split(self._eval_key)
        results = []  # dispatched asynchronously; one wait at the end
        for i, start in enumerate(range(0, len(x), n)):
            x_chunk = pad_rows(x[start:start + n], n)
            if noise is None:
                key = jax.random.fold_in(call_key, i)
                results.append(self._eval_drawn(self._params, x_chunk, key, k))
            else:
                eps = pad_rows(np.asarray(noise[:, start:start + n], self.dtype), n, axis=1)
                results.append(self._eval_given(self._params, x_chunk, eps))
        elbo, log_px = (np.concatenate([np.asarray(r[j], np.float64) for r in results])[:len(x)]
                        for j in (0, 1))
        return elbo, log_px

    def elbo_and_grads(self, x: np.ndarray,
                       noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        elbo, grads = self._grads(self._params, np.asarray(x, self.dtype),
                                  np.asarray(noise, self.dtype))
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
        self._opt_state = optax.tree.set(self._opt_state,
                                         nu=to_tree(state["square_avg"], self.dtype),
                                         mu=to_tree(state["grad_avg"], self.dtype))
