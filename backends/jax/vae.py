"""The VAE as flax.linen modules, the math of backends/numpy/vae.py (README.md, "The model").

Module and parameter names are the canonical ones: the tree {encoder, decoder, flow.t} -> layer -> parameter,
its paths joined with ".", is common/params.py's layout (flow.0.l0.context is params["flow.0"]["l0"]["context"]).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from common.params import masks
from common.spec import N_PIXELS, Spec

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)  # a Python float, so it never promotes float32
ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "softplus": nn.softplus}


class MLP(nn.Module):
    """Hidden layers l0..l{n-1} with the activation, then the linear output layer l{n}."""

    widths: tuple[int, ...]
    out_size: int
    activation: str

    @nn.compact
    def __call__(self, a: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            a = ACTIVATIONS[self.activation](nn.Dense(width, name=f"l{i}")(a))
        return nn.Dense(self.out_size, name=f"l{len(self.widths)}")(a)


class MadeLayer(nn.Module):
    """a @ (mask * kernel) + bias [+ context @ context_kernel]: one autoregressive layer of the MADE."""

    features: int
    mask: np.ndarray

    @nn.compact
    def __call__(self, a: jax.Array, context: jax.Array | None = None) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.zeros, (a.shape[-1], self.features), a.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), a.dtype)
        # masking in the forward pass also zeroes the gradient of the masked entries
        y = a @ (kernel * jnp.asarray(self.mask, a.dtype)) + bias
        if context is None:
            return y
        # context (n, L) against z's (k, n, .): the map is computed once per example and broadcast over k
        return y + context @ self.param("context", nn.initializers.zeros, (context.shape[-1], self.features), a.dtype)


class IafStep(nn.Module):
    """[m | s] = MADE(z, context), sigma = sigmoid(s + 2): returns (sigma z + (1 - sigma) m, -log det)."""

    spec: Spec

    @nn.compact
    def __call__(self, z: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        F, L, act = self.spec.flow_hidden, self.spec.latent_size, ACTIVATIONS[self.spec.activation]
        mask = masks(self.spec.replace(flow_steps=1))  # every step has flow.0's masks
        a0 = act(MadeLayer(F, mask["flow.0.l0.kernel"], name="l0")(z, context))
        a1 = act(MadeLayer(F, mask["flow.0.l1.kernel"], name="l1")(a0, context))
        m, s = jnp.split(MadeLayer(2 * L, mask["flow.0.out.kernel"], name="out")(a1), 2, axis=-1)
        sigma = nn.sigmoid(s + 2.0)
        minus_log_det = jnp.sum(nn.softplus(-(s + 2.0)), axis=-1)  # -sum log sigma, exact where sigma underflows
        return sigma * z + (1.0 - sigma) * m, minus_log_det


class VAE(nn.Module):
    """x (n, 784), eps (k, n, L) -> log w (k, n) = log p(x|z) + log p(z) - log q(z|x)."""

    spec: Spec

    @nn.compact
    def __call__(self, x: jax.Array, eps: jax.Array) -> jax.Array:
        spec, L = self.spec, self.spec.latent_size
        out = MLP(spec.encoder, spec.encoder_out, spec.activation, name="encoder")(x)
        loc, scale_arg, context = out[:, :L], out[:, L:2 * L], out[:, 2 * L:]
        if spec.encoder_scale == "exp":  # its log is scale_arg itself
            scale, log_scale = jnp.exp(scale_arg), scale_arg
        else:
            scale = nn.softplus(scale_arg)
            log_scale = jnp.log(scale)
        z = loc + scale * eps
        log_q_z = jnp.sum(-0.5 * eps**2 - log_scale - HALF_LOG_2PI, axis=-1)
        for t in range(spec.flow_steps if spec.variational == "iaf" else 0):
            if t > 0:
                z = z[..., ::-1]
            z, minus_log_det = IafStep(spec, name=f"flow.{t}")(z, context)
            log_q_z = log_q_z + minus_log_det
        logits = MLP(spec.decoder, N_PIXELS, spec.activation, name="decoder")(z)
        log_p_x_given_z = jnp.sum(x * logits - nn.softplus(logits), axis=-1)
        log_p_z = jnp.sum(-0.5 * z**2 - HALF_LOG_2PI, axis=-1)
        return log_p_x_given_z + log_p_z - log_q_z

