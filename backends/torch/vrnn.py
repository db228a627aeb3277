"""The variational RNN in PyTorch: the math of backends/numpy/vrnn.py (equations in common/models/vrnn.py) as
nn.Modules, its recurrence a Python loop over the 28 rows run eagerly.

Module names are the canonical ones (phi_x.l0, prior.l0, rnn.input, ...); nn.Linear keeps its weight as (out, in),
the transpose of the canonical kernel. The cell is computed here from those parameters, not by nn.GRUCell or
nn.LSTMCell, whose weights the engine could not map to the canonical names.

Eager, not torch.compile: measured on this suite's 2-core CPU (float32, H = 64, batch 64), compiling the step gave
no faster training and ~40 s of compilation per new shape (README.md, "The variational RNN").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from backends.torch.vae import ACTIVATIONS, HALF_LOG_2PI, MLP, softplus
from common.models.vrnn import ROW
from common.spec import Spec

State = tuple[torch.Tensor, ...]  # (h,) for the GRU, (h, c) for the LSTM


class Feature(nn.Module):
    """φ(a) = act(a W + b): one layer, l0."""

    def __init__(self, fan_in: int, width: int, activation: str):
        super().__init__()
        self.activation = ACTIVATIONS[activation]
        self.l0 = nn.Linear(fan_in, width)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.activation(self.l0(a))


class GRU(nn.Module):
    """[r | u | n] gates, reset after the recurrent map: h' = (1 - u) n + u h."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.input = nn.Linear(input_size, 3 * hidden)
        self.recurrent = nn.Linear(hidden, 3 * hidden)

    def forward(self, inp: torch.Tensor, state: State) -> State:
        (h,) = state
        a_r, a_u, a_n = self.input(inp).chunk(3, dim=-1)
        c_r, c_u, c_n = self.recurrent(h).chunk(3, dim=-1)
        r, u = torch.sigmoid(a_r + c_r), torch.sigmoid(a_u + c_u)
        n = torch.tanh(a_n + r * c_n)
        return ((1.0 - u) * n + u * h,)


class LSTM(nn.Module):
    """[i | f | g | o] gates, one bias: c' = f c + i g, h' = o tanh(c')."""

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.input = nn.Linear(input_size, 4 * hidden)
        self.recurrent = nn.Linear(hidden, 4 * hidden, bias=False)

    def forward(self, inp: torch.Tensor, state: State) -> State:
        h, c = state
        a_i, a_f, a_g, a_o = (self.input(inp) + self.recurrent(h)).chunk(4, dim=-1)
        c_next = torch.sigmoid(a_f) * c + torch.sigmoid(a_i) * torch.tanh(a_g)
        return torch.sigmoid(a_o) * torch.tanh(c_next), c_next


def gaussian(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[μ | s] -> (μ, σ = softplus(s))."""
    loc, scale_arg = out.chunk(2, dim=-1)
    return loc, softplus(scale_arg)


def gaussian_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale).square() - scale.log() - HALF_LOG_2PI).sum(-1)


class VRNN(nn.Module):
    """forward = log_weights: x (n, 784), eps (k, n, T, L) -> log w (k, n), summed over the T steps."""

    RECURRENCE = "eager Python loop"

    def __init__(self, spec: Spec):
        super().__init__()
        H, L = spec.rnn_hidden, spec.latent_size
        self.hidden, self.cell_kind = H, spec.rnn_cell
        self.phi_x = Feature(ROW, H, spec.activation)
        self.phi_z = Feature(L, H, spec.activation)
        self.prior = MLP([H, *spec.decoder, 2 * L], spec.activation)
        self.encoder = MLP([2 * H, *spec.encoder, 2 * L], spec.activation)
        self.decoder = MLP([2 * H, *spec.decoder, ROW], spec.activation)
        self.rnn = (GRU if spec.rnn_cell == "gru" else LSTM)(2 * H, H)

    def initial_state(self, like: torch.Tensor) -> State:
        zeros = like.new_zeros((*like.shape[:2], self.hidden))
        return (zeros,) if self.cell_kind == "gru" else (zeros, zeros)

    def step(self, x_t: torch.Tensor, fx: torch.Tensor, eps_t: torch.Tensor,
             state: State) -> tuple[torch.Tensor, State]:
        """One row: x_t (n, 28), fx = φ_x(x_t) (n, H), eps_t (k, n, L) -> (this step's log w (k, n), next state)."""
        h = state[0]
        fx = fx.expand_as(h)
        loc_p, scale_p = gaussian(self.prior(h))
        loc_q, scale_q = gaussian(self.encoder(torch.cat([fx, h], -1)))
        z = loc_q + scale_q * eps_t
        fz = self.phi_z(z)
        logits = self.decoder(torch.cat([fz, h], -1))
        # x log sigmoid(l) + (1 - x) log sigmoid(-l) = x l - softplus(l), computed stably
        log_p_x_given_z = -F.binary_cross_entropy_with_logits(logits, x_t.expand_as(logits), reduction="none").sum(-1)
        log_p_z = gaussian_log_prob(z, loc_p, scale_p)
        log_q_z = (-0.5 * eps_t.square() - scale_q.log() - HALF_LOG_2PI).sum(-1)
        return log_p_x_given_z + log_p_z - log_q_z, self.rnn(torch.cat([fx, fz], -1), state)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        k, n, T, _ = eps.shape
        rows = x.reshape(n, T, ROW)
        fx_all = self.phi_x(rows)  # once per image, shared by its k trajectories
        state, log_w = self.initial_state(eps), eps.new_zeros((k, n))
        for t in range(T):
            log_w_t, state = self.step(rows[:, t], fx_all[:, t], eps[:, :, t], state)
            log_w = log_w + log_w_t
        return log_w
