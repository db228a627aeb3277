"""The Gaussian-mixture VAE as flax.linen modules, the math of backends/numpy/gmvae.py (the model:
common/models/gmvae.py). The parameter tree is the canonical layout: {classifier, encoder, decoder} -> layer ->
{kernel, bias} (encoder.l0 also label), and {prior: {loc, scale_arg}}, its paths joined with ".".
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from backends.jax.vae import ACTIVATIONS, HALF_LOG_2PI, MLP
from common.spec import N_PIXELS, Spec


class LabelledDense(nn.Module):
    """The first layer of q(z|x, y) on [x, one-hot y]: x @ kernel + bias + label[y] for every y at once, x's
    product computed once per example; label (C, out) holds the kernel's rows for y."""

    features: int
    components: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(n, in) -> (n, C, out)."""
        kernel = self.param("kernel", nn.initializers.zeros, (x.shape[-1], self.features), x.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), x.dtype)
        label = self.param("label", nn.initializers.zeros, (self.components, self.features), x.dtype)
        return (x @ kernel + bias)[:, None, :] + label


class Encoder(nn.Module):
    """q(z|x, y) for every y: [loc | scale_arg], (n, C, 2L)."""

    spec: Spec

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        widths = (*self.spec.encoder, 2 * self.spec.latent_size)
        a = LabelledDense(widths[0], self.spec.components, name="l0")(x)
        for i, width in enumerate(widths[1:], start=1):
            a = nn.Dense(width, name=f"l{i}")(ACTIVATIONS[self.spec.activation](a))
        return a


class Prior(nn.Module):
    """log p(z_y | y) = log N(z_y; loc[y], diag softplus(scale_arg[y])^2) for each component y."""

    components: int
    latent_size: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        """z (..., C, L) -> (..., C)."""
        shape = (self.components, self.latent_size)
        loc = self.param("loc", nn.initializers.zeros, shape, z.dtype)
        scale = nn.softplus(self.param("scale_arg", nn.initializers.zeros, shape, z.dtype))
        return jnp.sum(-0.5 * ((z - loc) / scale) ** 2 - jnp.log(scale) - HALF_LOG_2PI, axis=-1)


class GMVAE(nn.Module):
    """x (n, 784), eps (k, n, C, L) -> (log w, elbo), both (k, n)."""

    spec: Spec

    @nn.compact
    def __call__(self, x: jax.Array, eps: jax.Array) -> tuple[jax.Array, jax.Array]:
        spec, L = self.spec, self.spec.latent_size
        log_q_y = jax.nn.log_softmax(MLP(spec.encoder, spec.components, spec.activation, name="classifier")(x))
        out = Encoder(spec, name="encoder")(x)
        loc, scale = out[..., :L], nn.softplus(out[..., L:])
        z = loc + scale * eps                                                          # (k, n, C, L)
        log_q_z = jnp.sum(-0.5 * eps**2 - jnp.log(scale) - HALF_LOG_2PI, axis=-1)      # (k, n, C)
        logits = MLP(spec.decoder, N_PIXELS, spec.activation, name="decoder")(z)
        log_p_x_given_z = jnp.sum(x[:, None, :] * logits - nn.softplus(logits), axis=-1)
        log_p_z = Prior(spec.components, L, name="prior")(z)
        f = log_p_x_given_z + log_p_z - log_q_z
        log_p_y = -math.log(spec.components)
        elbo = jnp.sum(jnp.exp(log_q_y) * (f + log_p_y - log_q_y), axis=-1)
        log_w = jax.nn.logsumexp(f, axis=-1) + log_p_y
        return log_w, elbo
