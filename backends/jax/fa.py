"""Factor analysis as flax.linen modules, the math of backends/numpy/fa.py (the model: common/models/fa.py).

The parameter tree is the canonical layout: {encoder: {loc: {kernel, bias}, scale_tril}, decoder: {loc: {kernel,
bias}, log_scale}}, its paths joined with ".".
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from backends.jax.vae import HALF_LOG_2PI
from common.spec import Spec


class Posterior(nn.Module):
    """q(z|x) = N(M x + c, C C^T), C = tril(A, -1) + diag(exp(diag A)) the same for every x."""

    latent_size: int

    @nn.compact
    def __call__(self, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
        """z = M x + c + C eps for eps (k, n, L), and log q(z|x) (k, n)."""
        L = self.latent_size
        a = self.param("scale_tril", nn.initializers.zeros, (L, L), x.dtype)
        scale_tril = jnp.tril(a, -1) + jnp.diag(jnp.exp(jnp.diag(a)))
        z = nn.Dense(L, name="loc")(x) + eps @ scale_tril.T
        log_q_z = jnp.sum(-0.5 * eps**2 - HALF_LOG_2PI, axis=-1) - jnp.sum(jnp.diag(a))  # log |det C| = sum diag A
        return z, log_q_z


class Likelihood(nn.Module):
    """log p(x|z) = log N(x; W z + b, diag sigma^2), sigma = exp(log_scale)."""

    data_dim: int

    @nn.compact
    def __call__(self, x: jax.Array, z: jax.Array) -> jax.Array:
        log_scale = self.param("log_scale", nn.initializers.zeros, (1, self.data_dim), z.dtype)
        residual = (x - nn.Dense(self.data_dim, name="loc")(z)) * jnp.exp(-log_scale)
        return jnp.sum(-0.5 * residual**2 - log_scale - HALF_LOG_2PI, axis=-1)


class FactorAnalysis(nn.Module):
    """x (n, D), eps (k, n, L) -> log w (k, n) = log p(x|z) + log p(z) - log q(z|x)."""

    spec: Spec

    @nn.compact
    def __call__(self, x: jax.Array, eps: jax.Array) -> jax.Array:
        z, log_q_z = Posterior(self.spec.latent_size, name="encoder")(x, eps)
        log_p_z = jnp.sum(-0.5 * z**2 - HALF_LOG_2PI, axis=-1)
        return Likelihood(self.spec.fa_dim, name="decoder")(x, z) + log_p_z - log_q_z
