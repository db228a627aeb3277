"""The VAE in PyTorch, the math of backends/numpy/vae.py written as nn.Modules.

Module names follow the canonical names: encoder.l0 is encoder.l0.{kernel,bias}, flow.0.l0_context
is flow.0.l0.context. nn.Linear keeps its weight as (out, in), the transpose of the canonical kernel.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F

from common.params import masks
from common.spec import N_PIXELS, Spec

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def softplus(a: torch.Tensor) -> torch.Tensor:
    # torch's default threshold (20) returns a itself above 20, e^-20 ~ 2e-9 off log(1 + e^a), which
    # float64 parity sees; above 40 the difference is below float64's resolution
    return F.softplus(a, threshold=40.0)


ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh, "softplus": softplus}


class MLP(nn.Module):
    """Hidden layers l0..l{n-1} with the activation, then the linear output layer l{n}."""

    def __init__(self, widths: list[int], activation: str):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        for i, (fan_in, fan_out) in enumerate(pairwise(widths)):
            self.add_module(f"l{i}", nn.Linear(fan_in, fan_out))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        *hidden, output = self.children()
        for layer in hidden:
            a = self.activation(layer(a))
        return output(a)


class MaskedLinear(nn.Linear):
    """a @ (kernel * mask) + bias: masked entries neither act nor get a gradient."""

    def __init__(self, mask: torch.Tensor):
        fan_in, fan_out = mask.shape
        super().__init__(fan_in, fan_out)
        self.register_buffer("mask", mask.T.contiguous(), persistent=False)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.linear(a, self.weight * self.mask, self.bias)


class IafStep(nn.Module):
    """One MADE step conditioned on the context: z <- sigma z + (1 - sigma) m, and the step's -log det."""

    def __init__(self, spec: Spec, t: int):
        super().__init__()
        mask = {k: torch.from_numpy(v) for k, v in masks(spec).items()}
        L, F_hidden = spec.latent_size, spec.flow_hidden
        self.activation = ACTIVATIONS[spec.activation]
        self.l0 = MaskedLinear(mask[f"flow.{t}.l0.kernel"])
        self.l0_context = nn.Linear(L, F_hidden, bias=False)
        self.l1 = MaskedLinear(mask[f"flow.{t}.l1.kernel"])
        self.l1_context = nn.Linear(L, F_hidden, bias=False)
        self.out = MaskedLinear(mask[f"flow.{t}.out.kernel"])

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (k, n, L), context (n, L): the context maps run once per example, broadcast over the k samples."""
        a0 = self.activation(self.l0(z) + self.l0_context(context))
        a1 = self.activation(self.l1(a0) + self.l1_context(context))
        m, s = self.out(a1).chunk(2, dim=-1)
        sigma = torch.sigmoid(s + 2.0)
        # -log sigma = softplus(-(s + 2)), exact where sigma underflows
        return sigma * z + (1.0 - sigma) * m, -F.logsigmoid(s + 2.0).sum(-1)


class VAE(nn.Module):
    """forward = log_weights: x (n, 784), eps (k, n, L) -> log w (k, n) = log p(x|z) + log p(z) - log q(z|x)."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.latent_size = L = spec.latent_size
        self.encoder_scale = spec.encoder_scale
        self.encoder = MLP([N_PIXELS, *spec.encoder, spec.encoder_out], spec.activation)
        self.decoder = MLP([L, *spec.decoder, N_PIXELS], spec.activation)
        steps = spec.flow_steps if spec.variational == "iaf" else 0
        self.flow = nn.ModuleList(IafStep(spec, t) for t in range(steps))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        L = self.latent_size
        out = self.encoder(x)
        loc, scale_arg, context = out[:, :L], out[:, L:2 * L], out[:, 2 * L:]
        if self.encoder_scale == "exp":  # its log is scale_arg itself
            scale, log_scale = scale_arg.exp(), scale_arg
        else:
            scale = softplus(scale_arg)
            log_scale = scale.log()
        z = loc + scale * eps
        log_q_z = (-0.5 * eps.square() - log_scale - HALF_LOG_2PI).sum(-1)
        for t, step in enumerate(self.flow):
            z, minus_log_det = step(z.flip(-1) if t > 0 else z, context)
            log_q_z = log_q_z + minus_log_det
        logits = self.decoder(z)
        # x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l), computed stably
        log_p_x_given_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_p_z = (-0.5 * z.square() - HALF_LOG_2PI).sum(-1)
        return log_p_x_given_z + log_p_z - log_q_z

