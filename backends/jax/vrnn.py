"""The variational RNN as flax.linen modules: the math of backends/numpy/vrnn.py (equations in common/models/vrnn.py),
its recurrence a lax.scan over the 28 rows (flax's lifted nn.scan, the parameters broadcast to every step), compiled
with the rest of the step by the engine's jax.jit.

Module and parameter names are the canonical ones: the tree {phi_x, phi_z, prior, encoder, decoder, rnn} -> layer
-> parameter, its paths joined with ".", is common/params.py's layout (rnn.recurrent.kernel is
params["rnn"]["recurrent"]["kernel"]). The cell is computed here from those parameters, not by nn.GRUCell or
nn.OptimizedLSTMCell, whose parameter trees differ.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from backends.jax.vae import ACTIVATIONS, HALF_LOG_2PI, MLP
from common.models.vrnn import ROW
from common.spec import Spec

State = tuple[jax.Array, ...]  # (h,) for the GRU, (h, c) for the LSTM


class Feature(nn.Module):
    """φ(a) = act(a W + b): one layer, l0."""

    width: int
    activation: str

    @nn.compact
    def __call__(self, a: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.activation](nn.Dense(self.width, name="l0")(a))


class GRU(nn.Module):
    """[r | u | n] gates, reset after the recurrent map: h' = (1 - u) n + u h."""

    hidden: int

    @nn.compact
    def __call__(self, inp: jax.Array, state: State) -> State:
        (h,) = state
        a_r, a_u, a_n = jnp.split(nn.Dense(3 * self.hidden, name="input")(inp), 3, axis=-1)
        c_r, c_u, c_n = jnp.split(nn.Dense(3 * self.hidden, name="recurrent")(h), 3, axis=-1)
        r, u = nn.sigmoid(a_r + c_r), nn.sigmoid(a_u + c_u)
        n = jnp.tanh(a_n + r * c_n)
        return ((1.0 - u) * n + u * h,)


class LSTM(nn.Module):
    """[i | f | g | o] gates, one bias: c' = f c + i g, h' = o tanh(c')."""

    hidden: int

    @nn.compact
    def __call__(self, inp: jax.Array, state: State) -> State:
        h, c = state
        a = nn.Dense(4 * self.hidden, name="input")(inp) + nn.Dense(4 * self.hidden, use_bias=False,
                                                                     name="recurrent")(h)
        a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=-1)
        c_next = nn.sigmoid(a_f) * c + nn.sigmoid(a_i) * jnp.tanh(a_g)
        return nn.sigmoid(a_o) * jnp.tanh(c_next), c_next


def gaussian(out: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[μ | s] -> (μ, σ = softplus(s))."""
    loc, scale_arg = jnp.split(out, 2, axis=-1)
    return loc, nn.softplus(scale_arg)


def gaussian_log_prob(z: jax.Array, loc: jax.Array, scale: jax.Array) -> jax.Array:
    return jnp.sum(-0.5 * ((z - loc) / scale) ** 2 - jnp.log(scale) - HALF_LOG_2PI, axis=-1)


class VRNN(nn.Module):
    """x (n, 784), eps (k, n, T, L) -> log w (k, n), summed over the T steps."""

    spec: Spec
    RECURRENCE = "lax.scan (flax nn.scan) under jit"

    def setup(self) -> None:
        spec, H, L = self.spec, self.spec.rnn_hidden, self.spec.latent_size
        self.phi_x = Feature(H, spec.activation)
        self.phi_z = Feature(H, spec.activation)
        self.prior = MLP(spec.decoder, 2 * L, spec.activation)
        self.encoder = MLP(spec.encoder, 2 * L, spec.activation)
        self.decoder = MLP(spec.decoder, ROW, spec.activation)
        self.rnn = (GRU if spec.rnn_cell == "gru" else LSTM)(H)

    def initial_state(self, k: int, n: int, dtype: jnp.dtype) -> State:
        zeros = jnp.zeros((k, n, self.spec.rnn_hidden), dtype)
        return (zeros,) if self.spec.rnn_cell == "gru" else (zeros, zeros)

    def step(self, state: State, x_t: jax.Array, fx: jax.Array, eps_t: jax.Array) -> tuple[State, jax.Array]:
        """One row: x_t (n, 28), fx = φ_x(x_t) (n, H), eps_t (k, n, L) -> (next state, this step's log w (k, n)),
        in lax.scan's carry-and-output form."""
        h = state[0]
        fx = jnp.broadcast_to(fx, h.shape)
        loc_p, scale_p = gaussian(self.prior(h))
        loc_q, scale_q = gaussian(self.encoder(jnp.concatenate([fx, h], -1)))
        z = loc_q + scale_q * eps_t
        fz = self.phi_z(z)
        logits = self.decoder(jnp.concatenate([fz, h], -1))
        log_p_x_given_z = jnp.sum(x_t * logits - nn.softplus(logits), axis=-1)
        log_p_z = gaussian_log_prob(z, loc_p, scale_p)
        log_q_z = jnp.sum(-0.5 * eps_t**2 - jnp.log(scale_q) - HALF_LOG_2PI, axis=-1)
        return self.rnn(jnp.concatenate([fx, fz], -1), state), log_p_x_given_z + log_p_z - log_q_z

    def __call__(self, x: jax.Array, eps: jax.Array) -> jax.Array:
        k, n, T, _ = eps.shape
        rows = x.reshape(n, T, ROW)
        fx_all = self.phi_x(rows)  # once per image, shared by its k trajectories
        # the lifted scan keeps the parameters where they are (no extra level in the tree) and shares them
        scan = nn.scan(VRNN.step, variable_broadcast="params", split_rngs={"params": False}, in_axes=(1, 1, 2))
        _, log_w_steps = scan(self, self.initial_state(k, n, eps.dtype), rows, fx_all, eps)
        return jnp.sum(log_w_steps, axis=0)
