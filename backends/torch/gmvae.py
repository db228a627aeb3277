"""The Gaussian-mixture VAE in PyTorch, the math of backends/numpy/gmvae.py (the model: common/models/gmvae.py).

Module names follow the canonical names: classifier.l0 is classifier.l0.{kernel,bias}; encoder.l0.label and the
prior's prior.loc, prior.scale_arg are plain parameters in their canonical layout.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from backends.torch.vae import ACTIVATIONS, HALF_LOG_2PI, MLP, softplus
from common.spec import N_PIXELS, Spec


class LabelledLinear(nn.Linear):
    """The first layer of q(z|x, y) on [x, one-hot y]: x @ kernel + bias + label[y] for every y at once, x's
    product computed once per example; label (C, out) holds the kernel's rows for y."""

    def __init__(self, fan_in: int, fan_out: int, components: int):
        super().__init__(fan_in, fan_out)
        self.label = nn.Parameter(torch.zeros(components, fan_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, in) -> (n, C, out)."""
        return super().forward(x)[:, None, :] + self.label


class Encoder(nn.Module):
    """q(z|x, y) for every y: [loc | scale_arg], (n, C, 2L)."""

    def __init__(self, spec: Spec):
        super().__init__()
        widths = [N_PIXELS, *spec.encoder, 2 * spec.latent_size]
        self.activation = ACTIVATIONS[spec.activation]
        self.l0 = LabelledLinear(widths[0], widths[1], spec.components)
        for i in range(1, len(widths) - 1):
            self.add_module(f"l{i}", nn.Linear(widths[i], widths[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, *rest = self.children()
        a = first(x)
        for layer in rest:
            a = layer(self.activation(a))
        return a


class Prior(nn.Module):
    """p(z|y) = N(loc[y], diag softplus(scale_arg[y])^2)."""

    def __init__(self, components: int, latent_size: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(components, latent_size))
        self.scale_arg = nn.Parameter(torch.zeros(components, latent_size))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., C, L): log p(z_y | y) for each component y, (..., C)."""
        scale = softplus(self.scale_arg)
        return (-0.5 * ((z - self.loc) / scale).square() - scale.log() - HALF_LOG_2PI).sum(-1)


class GMVAE(nn.Module):
    """forward: x (n, 784), eps (k, n, C, L) -> (log w, elbo), both (k, n)."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.latent_size, self.components = spec.latent_size, spec.components
        self.classifier = MLP([N_PIXELS, *spec.encoder, spec.components], spec.activation)
        self.encoder = Encoder(spec)
        self.decoder = MLP([spec.latent_size, *spec.decoder, N_PIXELS], spec.activation)
        self.prior = Prior(spec.components, spec.latent_size)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.latent_size
        log_q_y = F.log_softmax(self.classifier(x), dim=-1)                          # (n, C)
        out = self.encoder(x)
        loc, scale = out[..., :L], softplus(out[..., L:])
        z = loc + scale * eps                                                         # (k, n, C, L)
        log_q_z = (-0.5 * eps.square() - scale.log() - HALF_LOG_2PI).sum(-1)          # (k, n, C)
        logits = self.decoder(z)
        x_each = x[:, None, :].expand_as(logits)
        log_p_x_given_z = -F.binary_cross_entropy_with_logits(logits, x_each, reduction="none").sum(-1)
        f = log_p_x_given_z + self.prior.log_prob(z) - log_q_z
        log_p_y = -math.log(self.components)
        elbo = (log_q_y.exp() * (f + log_p_y - log_q_y)).sum(-1)
        log_w = torch.logsumexp(f, dim=-1) + log_p_y
        return log_w, elbo
