"""The conditional VAE as flax.linen modules, the math of backends/numpy/cvae.py (common/models/cvae.py).

Module and parameter names are the canonical ones: {recognition, prior, generation} -> layer -> parameter, its
paths joined with "." (generation.l0.context is params["generation"]["l0"]["context"]).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from backends.jax.vae import ACTIVATIONS, HALF_LOG_2PI, MLP
from common.models.cvae import observed_pixels, predicted_pixels
from common.spec import N_PIXELS, Spec


def log_normal(v: jax.Array, scale: jax.Array) -> jax.Array:
    """sum over the last axis of log N(loc + scale v; loc, scale^2), for the standardised v."""
    return jnp.sum(-0.5 * v**2 - jnp.log(scale) - HALF_LOG_2PI, axis=-1)


class ContextDense(nn.Module):
    """z @ kernel + bias + x @ context: the generation network's first layer, x's part once per example."""

    features: int

    @nn.compact
    def __call__(self, z: jax.Array, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.zeros, (z.shape[-1], self.features), z.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), z.dtype)
        # x (n, D_x) against z's (k, n, .): broadcast over the k samples
        return z @ kernel + bias + x @ self.param("context", nn.initializers.zeros, (x.shape[-1], self.features),
                                                  z.dtype)


class Generation(nn.Module):
    """p(y | x, z): ContextDense l0, then the activation and the dense layers l1..l{n} to y's logits."""

    widths: tuple[int, ...]
    out_size: int
    activation: str

    @nn.compact
    def __call__(self, z: jax.Array, x: jax.Array) -> jax.Array:
        sizes = (*self.widths, self.out_size)
        a = ContextDense(sizes[0], name="l0")(z, x)
        for i, width in enumerate(sizes[1:], start=1):
            a = nn.Dense(width, name=f"l{i}")(ACTIVATIONS[self.activation](a))
        return a


def gaussian(out: jax.Array) -> tuple[jax.Array, jax.Array]:
    loc, scale_arg = jnp.split(out, 2, axis=-1)
    return loc, nn.softplus(scale_arg)


class CVAE(nn.Module):
    """image (n, 784), eps (k, n, L) -> log w (k, n) = log p(y|x,z) + log p(z|x) - log q(z|x,y)."""

    spec: Spec

    @nn.compact
    def __call__(self, image: jax.Array, eps: jax.Array) -> jax.Array:
        spec, L = self.spec, self.spec.latent_size
        observed, predicted = observed_pixels(spec), predicted_pixels(spec)
        x, y = image[:, observed], image[:, predicted]
        loc_q, scale_q = gaussian(MLP(spec.encoder, 2 * L, spec.activation, name="recognition")(image))
        loc_p, scale_p = gaussian(MLP(spec.encoder, 2 * L, spec.activation, name="prior")(x))
        z = loc_q + scale_q * eps
        logits = Generation(spec.decoder, N_PIXELS - len(observed), spec.activation, name="generation")(z, x)
        log_p_y_given_xz = jnp.sum(y * logits - nn.softplus(logits), axis=-1)
        log_p_z = log_normal((z - loc_p) / scale_p, scale_p)
        log_q_z = log_normal(eps, scale_q)
        return log_p_y_given_xz + log_p_z - log_q_z
