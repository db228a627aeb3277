"""The conditional VAE in PyTorch, the math of backends/numpy/cvae.py written as nn.Modules.

Module names follow the canonical names (common/models/cvae.py): recognition.l0 is recognition.l0.{kernel,bias},
generation.l0_context is generation.l0.context. nn.Linear keeps its weight as (out, in), the transpose of the
canonical kernel.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

from backends.torch.vae import ACTIVATIONS, HALF_LOG_2PI, MLP, softplus
from common.models.cvae import observed_pixels, predicted_pixels
from common.spec import N_PIXELS, Spec


def log_normal(v: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """sum over the last axis of log N(loc + scale v; loc, scale^2), for the standardised v."""
    return (-0.5 * v.square() - scale.log() - HALF_LOG_2PI).sum(-1)


class Generation(nn.Module):
    """p(y | x, z): layer 0 is l0(z) + l0_context(x), x's part once per example; then the MLP to y's logits."""

    def __init__(self, widths: list[int], context_size: int, activation: str):
        super().__init__()
        self.activation, self.depth = ACTIVATIONS[activation], len(widths) - 1
        for i, (fan_in, fan_out) in enumerate(pairwise(widths)):
            self.add_module(f"l{i}", nn.Linear(fan_in, fan_out))
        self.l0_context = nn.Linear(context_size, widths[1], bias=False)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """z (k, n, L), x (n, D_x) -> logits (k, n, D_y)."""
        a = self.l0(z) + self.l0_context(x)
        for i in range(1, self.depth):
            a = getattr(self, f"l{i}")(self.activation(a))
        return a


class CVAE(nn.Module):
    """forward: image (n, 784), eps (k, n, L) -> log w (k, n) = log p(y|x,z) + log p(z|x) - log q(z|x,y)."""

    def __init__(self, spec: Spec):
        super().__init__()
        L, observed = spec.latent_size, observed_pixels(spec)
        d_y = N_PIXELS - len(observed)
        self.latent_size = L
        self.register_buffer("observed", torch.from_numpy(observed), persistent=False)
        self.register_buffer("predicted", torch.from_numpy(predicted_pixels(spec)), persistent=False)
        self.recognition = MLP([N_PIXELS, *spec.encoder, 2 * L], spec.activation)
        self.prior = MLP([len(observed), *spec.encoder, 2 * L], spec.activation)
        self.generation = Generation([L, *spec.decoder, d_y], len(observed), spec.activation)

    def gaussian(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale_arg = out.chunk(2, dim=-1)
        return loc, softplus(scale_arg)

    def forward(self, image: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x, y = image[:, self.observed], image[:, self.predicted]
        loc_q, scale_q = self.gaussian(self.recognition(image))
        loc_p, scale_p = self.gaussian(self.prior(x))
        z = loc_q + scale_q * eps
        logits = self.generation(z, x)
        # y log sigmoid(l) + (1 - y) log sigmoid(-l) = y l - softplus(l), computed stably
        log_p_y_given_xz = -F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").sum(-1)
        log_p_z = log_normal((z - loc_p) / scale_p, scale_p)
        log_q_z = log_normal(eps, scale_q)
        return log_p_y_given_xz + log_p_z - log_q_z
