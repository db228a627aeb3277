"""Factor analysis in PyTorch, the math of backends/numpy/fa.py (the model: common/models/fa.py).

Module names follow the canonical names: encoder.loc (nn.Linear) is encoder.loc.{kernel,bias}, encoder.scale_tril
and decoder.log_scale are plain parameters in their canonical layout.
"""

from __future__ import annotations

import torch
from torch import nn

from backends.torch.vae import HALF_LOG_2PI
from common.spec import Spec


class Posterior(nn.Module):
    """q(z|x) = N(M x + c, C C^T), C = tril(A, -1) + diag(exp(diag A)) the same for every x."""

    def __init__(self, data_dim: int, latent_size: int):
        super().__init__()
        self.loc = nn.Linear(data_dim, latent_size)
        self.scale_tril = nn.Parameter(torch.zeros(latent_size, latent_size))

    def sample(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z = M x + c + C eps for eps (k, n, L), and log q(z|x) (k, n)."""
        a = self.scale_tril
        scale_tril = torch.tril(a, -1) + torch.diag(a.diagonal().exp())
        z = self.loc(x) + eps @ scale_tril.T
        log_q_z = (-0.5 * eps.square() - HALF_LOG_2PI).sum(-1) - a.diagonal().sum()  # log |det C| = sum diag A
        return z, log_q_z


class Likelihood(nn.Module):
    """p(x|z) = N(W z + b, diag sigma^2), sigma = exp(log_scale)."""

    def __init__(self, latent_size: int, data_dim: int):
        super().__init__()
        self.loc = nn.Linear(latent_size, data_dim)
        self.log_scale = nn.Parameter(torch.zeros(1, data_dim))

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        residual = (x - self.loc(z)) * torch.exp(-self.log_scale)
        return (-0.5 * residual.square() - self.log_scale - HALF_LOG_2PI).sum(-1)


class FactorAnalysis(nn.Module):
    """forward = log_weights: x (n, D), eps (k, n, L) -> log w (k, n) = log p(x|z) + log p(z) - log q(z|x)."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.encoder = Posterior(spec.fa_dim, spec.latent_size)
        self.decoder = Likelihood(spec.latent_size, spec.fa_dim)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        z, log_q_z = self.encoder.sample(x, eps)
        log_p_z = (-0.5 * z.square() - HALF_LOG_2PI).sum(-1)
        return self.decoder.log_prob(x, z) + log_p_z - log_q_z
