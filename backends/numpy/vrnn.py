"""The variational RNN in NumPy float64, with backpropagation through time written by hand: the reference every
backend is held to. The equations, the gate orders and the canonical names are common/models/vrnn.py's.

Shapes: x (n, 784) read as rows (n, T, 28); eps (k, n, T, L); the state of every trajectory (k, n, H). φ_x(x_t)
depends on the image only, so it is computed once per image, (n, T, H), and broadcast over the k trajectories.
"""

from __future__ import annotations

import numpy as np

from backends.numpy.vae import ACTIVATIONS, HALF_LOG_2PI, objective, objective_weights, sigmoid, softplus
from common.models.vrnn import ROW
from common.spec import Spec

RECURRENCE = "Python loop (NumPy)"


def gaussian(out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[μ | s] -> (μ, σ = softplus(s))."""
    loc, scale_arg = np.split(out, 2, axis=-1)
    return loc, softplus(scale_arg)


def gaussian_log_prob(z: np.ndarray, loc: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.sum(-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - HALF_LOG_2PI, axis=-1)


def flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


class VRNN:
    """forward(x, eps) -> log w (k, n); backward(d log w) -> d every parameter. The step functions (phi_x, phi_z,
    prior, posterior, likelihood, cell) are also what report/vrnn.py generates and completes digits with."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        self.spec, self.H, self.L = spec, spec.rnn_hidden, spec.latent_size
        self.p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.act, self.act_grad = ACTIVATIONS[spec.activation]
        self.depth = {"prior": len(spec.decoder), "encoder": len(spec.encoder), "decoder": len(spec.decoder)}

    # --- the networks of one step ----------------------------------------------------------------

    def dense(self, name: str, a: np.ndarray) -> np.ndarray:
        return a @ self.p[f"{name}.kernel"] + self.p[f"{name}.bias"]

    def mlp(self, part: str, a: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(output, hidden outputs): hidden layers with the activation, then the linear output layer."""
        hidden = []
        for i in range(self.depth[part]):
            a = self.act(self.dense(f"{part}.l{i}", a))
            hidden.append(a)
        return self.dense(f"{part}.l{len(hidden)}", a), hidden

    def phi_x(self, rows: np.ndarray) -> np.ndarray:
        return self.act(self.dense("phi_x.l0", rows))

    def phi_z(self, z: np.ndarray) -> np.ndarray:
        return self.act(self.dense("phi_z.l0", z))

    def prior(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(μ_p, σ_p) of p(z_t | h_{t-1})."""
        return gaussian(self.mlp("prior", h)[0])

    def posterior(self, fx: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(μ_q, σ_q) of q(z_t | x_t, h_{t-1}), from fx = φ_x(x_t)."""
        return gaussian(self.mlp("encoder", np.concatenate([fx, h], -1))[0])

    def likelihood(self, fz: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Bernoulli logits of p(x_t | z_t, h_{t-1}), from fz = φ_z(z_t)."""
        return self.mlp("decoder", np.concatenate([fz, h], -1))[0]

    def initial_state(self, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """(h_0,) for the GRU, (h_0, c_0) for the LSTM: zeros."""
        return tuple(np.zeros((*shape, self.H)) for _ in range(1 if self.spec.rnn_cell == "gru" else 2))

    def cell(self, inp: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[tuple[np.ndarray, ...], dict]:
        """(the next state, what the backward pass needs)."""
        return (gru if self.spec.rnn_cell == "gru" else lstm)(self.p, inp, state)

    # --- the sequence ----------------------------------------------------------------------------

    def forward(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        k, n, T, _ = eps.shape
        rows = np.asarray(x, np.float64).reshape(n, T, ROW)
        fx_all = self.phi_x(rows)
        state, log_w, tape = self.initial_state((k, n)), np.zeros((k, n)), []
        self.step_log_w = np.zeros((T, k, n))  # each step's term of log w (the tests' causality check)
        for t in range(T):
            h, fx = state[0], np.broadcast_to(fx_all[:, t], (k, n, self.H))
            prior_out, prior_hidden = self.mlp("prior", h)
            encoder_in = np.concatenate([fx, h], -1)
            encoder_out, encoder_hidden = self.mlp("encoder", encoder_in)
            (loc_p, scale_p), (loc_q, scale_q) = gaussian(prior_out), gaussian(encoder_out)
            z = loc_q + scale_q * eps[:, :, t]
            fz = self.phi_z(z)
            decoder_in = np.concatenate([fz, h], -1)
            logits, decoder_hidden = self.mlp("decoder", decoder_in)
            log_p_x_given_z = np.sum(rows[:, t] * logits - softplus(logits), axis=-1)
            log_p_z = gaussian_log_prob(z, loc_p, scale_p)
            log_q_z = np.sum(-0.5 * eps[:, :, t] ** 2 - np.log(scale_q) - HALF_LOG_2PI, axis=-1)
            self.step_log_w[t] = log_p_x_given_z + log_p_z - log_q_z
            log_w = log_w + self.step_log_w[t]
            state, cell_cache = self.cell(np.concatenate([fx, fz], -1), state)
            tape.append(dict(h=h, prior_out=prior_out, prior_hidden=prior_hidden, loc_p=loc_p, scale_p=scale_p,
                             encoder_in=encoder_in, encoder_out=encoder_out, encoder_hidden=encoder_hidden,
                             scale_q=scale_q, z=z, fz=fz, decoder_in=decoder_in, decoder_hidden=decoder_hidden,
                             logits=logits, cell=cell_cache))
        self.tape = dict(rows=rows, fx_all=fx_all, eps=eps, steps=tape)
        return log_w

    # --- the gradient, by hand: backpropagation through time ----------------------------------------

    def dense_backward(self, name: str, a_in: np.ndarray, d_out: np.ndarray, grads: dict) -> np.ndarray:
        """Add d kernel and d bias of `name` (summed over every leading dim) to grads; return d a_in."""
        grads[f"{name}.kernel"] += flat(a_in).T @ flat(d_out)
        grads[f"{name}.bias"] += flat(d_out).sum(axis=0)
        return d_out @ self.p[f"{name}.kernel"].T

    def mlp_backward(self, part: str, a_in: np.ndarray, hidden: list[np.ndarray], d_out: np.ndarray,
                     grads: dict) -> np.ndarray:
        d = d_out
        for i in reversed(range(len(hidden) + 1)):
            d = self.dense_backward(f"{part}.l{i}", hidden[i - 1] if i else a_in, d, grads)
            if i:
                d = d * self.act_grad(hidden[i - 1])
        return d

    def backward(self, d_log_w: np.ndarray) -> dict[str, np.ndarray]:
        """d(sum_kn d_log_w * log w)/d params for the last forward(): the objective's gradient when
        d_log_w = d objective / d log w."""
        tp, H = self.tape, self.H
        grads = {k: np.zeros_like(v) for k, v in self.p.items()}
        g = d_log_w[..., None]
        d_state = tuple(np.zeros_like(s) for s in self.initial_state(d_log_w.shape))
        d_fx_all = np.zeros_like(tp["fx_all"])
        for t in reversed(range(len(tp["steps"]))):
            s, eps_t = tp["steps"][t], tp["eps"][:, :, t]
            d_cell_in, d_state = (gru_backward if self.spec.rnn_cell == "gru" else lstm_backward)(
                self.p, s["cell"], d_state, grads)
            d_fx, d_fz = d_cell_in[..., :H], d_cell_in[..., H:]
            # log p(x_t | z_t, h_{t-1})
            d_logits = g * (tp["rows"][:, t] - sigmoid(s["logits"]))
            d_decoder_in = self.mlp_backward("decoder", s["decoder_in"], s["decoder_hidden"], d_logits, grads)
            d_fz = d_fz + d_decoder_in[..., :H]
            d_h = d_state[0] + d_decoder_in[..., H:]
            d_z = self.dense_backward("phi_z.l0", s["z"], d_fz * self.act_grad(s["fz"]), grads)
            # log p(z_t | h_{t-1}) = sum -u^2/2 - log σ_p - log(2π)/2 with u = (z - μ_p) / σ_p
            u_over_scale = (s["z"] - s["loc_p"]) / s["scale_p"] ** 2
            d_z = d_z - g * u_over_scale
            d_scale_p = g * ((s["z"] - s["loc_p"]) * u_over_scale - 1.0) / s["scale_p"]
            d_prior_out = np.concatenate([g * u_over_scale, d_scale_p * sigmoid(s["prior_out"][..., self.L:])], -1)
            d_h = d_h + self.mlp_backward("prior", s["h"], s["prior_hidden"], d_prior_out, grads)
            # z = μ_q + σ_q ε; -log q contributes + sum log σ_q
            d_scale_q = d_z * eps_t + g / s["scale_q"]
            d_encoder_out = np.concatenate([d_z, d_scale_q * sigmoid(s["encoder_out"][..., self.L:])], -1)
            d_encoder_in = self.mlp_backward("encoder", s["encoder_in"], s["encoder_hidden"], d_encoder_out, grads)
            d_fx = d_fx + d_encoder_in[..., :H]
            d_state = (d_h + d_encoder_in[..., H:], *d_state[1:])
            d_fx_all[:, t] = d_fx.sum(axis=0)  # φ_x(x_t) is shared by the k trajectories
        self.dense_backward("phi_x.l0", tp["rows"], d_fx_all * self.act_grad(tp["fx_all"]), grads)
        return grads


# --- the cells: equations in common/models/vrnn.py -------------------------------------------------------


def gru(p: dict, inp: np.ndarray, state: tuple[np.ndarray]) -> tuple[tuple[np.ndarray], dict]:
    (h,) = state
    a = inp @ p["rnn.input.kernel"] + p["rnn.input.bias"]
    c = h @ p["rnn.recurrent.kernel"] + p["rnn.recurrent.bias"]
    (a_r, a_u, a_n), (c_r, c_u, c_n) = np.split(a, 3, axis=-1), np.split(c, 3, axis=-1)
    r, u = sigmoid(a_r + c_r), sigmoid(a_u + c_u)
    n = np.tanh(a_n + r * c_n)
    return ((1.0 - u) * n + u * h,), dict(inp=inp, h=h, r=r, u=u, n=n, c_n=c_n)


def gru_backward(p: dict, cache: dict, d_state: tuple[np.ndarray], grads: dict) -> tuple[np.ndarray, tuple]:
    """(d inp, (d h,)) from d h', adding the cell's parameter gradients to grads."""
    (d_h_next,) = d_state
    r, u, n = cache["r"], cache["u"], cache["n"]
    d_n_pre = d_h_next * (1.0 - u) * (1.0 - n * n)
    d_r_pre = d_n_pre * cache["c_n"] * r * (1.0 - r)
    d_u_pre = d_h_next * (cache["h"] - n) * u * (1.0 - u)
    d_a = np.concatenate([d_r_pre, d_u_pre, d_n_pre], -1)
    d_c = np.concatenate([d_r_pre, d_u_pre, d_n_pre * r], -1)
    for name, a_in, d in (("input", cache["inp"], d_a), ("recurrent", cache["h"], d_c)):
        grads[f"rnn.{name}.kernel"] += flat(a_in).T @ flat(d)
        grads[f"rnn.{name}.bias"] += flat(d).sum(axis=0)
    d_h = d_h_next * u + d_c @ p["rnn.recurrent.kernel"].T
    return d_a @ p["rnn.input.kernel"].T, (d_h,)


def lstm(p: dict, inp: np.ndarray, state: tuple[np.ndarray, np.ndarray]) -> tuple[tuple, dict]:
    h, c = state
    a = inp @ p["rnn.input.kernel"] + p["rnn.input.bias"] + h @ p["rnn.recurrent.kernel"]
    a_i, a_f, a_g, a_o = np.split(a, 4, axis=-1)
    i, f, g, o = sigmoid(a_i), sigmoid(a_f), np.tanh(a_g), sigmoid(a_o)
    c_next = f * c + i * g
    tanh_c = np.tanh(c_next)
    return (o * tanh_c, c_next), dict(inp=inp, h=h, c=c, i=i, f=f, g=g, o=o, tanh_c=tanh_c)


def lstm_backward(p: dict, cache: dict, d_state: tuple[np.ndarray, np.ndarray], grads: dict) -> tuple:
    """(d inp, (d h, d c)) from (d h', d c'), adding the cell's parameter gradients to grads."""
    d_h_next, d_c_next = d_state
    i, f, g, o, tanh_c = cache["i"], cache["f"], cache["g"], cache["o"], cache["tanh_c"]
    d_c = d_c_next + d_h_next * o * (1.0 - tanh_c * tanh_c)
    d_a = np.concatenate([d_c * g * i * (1.0 - i), d_c * cache["c"] * f * (1.0 - f), d_c * i * (1.0 - g * g),
                          d_h_next * tanh_c * o * (1.0 - o)], -1)
    grads["rnn.input.kernel"] += flat(cache["inp"]).T @ flat(d_a)
    grads["rnn.input.bias"] += flat(d_a).sum(axis=0)
    grads["rnn.recurrent.kernel"] += flat(cache["h"]).T @ flat(d_a)
    return d_a @ p["rnn.input.kernel"].T, (d_a @ p["rnn.recurrent.kernel"].T, d_c * f)


# --- the contract of a family module -------------------------------------------------------------------


def log_weights(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """(k, n) log-weights of k whole trajectories per image, eps (k, n, T, L)."""
    return VRNN(spec, params).forward(x, eps)


def weights(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log w, per-sample ELBO), both (k, n): a trajectory's ELBO is its log-weight."""
    log_w = log_weights(spec, params, x, eps)
    return log_w, log_w


def objective_and_grads(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray):
    """Per-example training objective (n,) for eps (k, n, T, L), and the gradient of its sum."""
    model = VRNN(spec, params)
    log_w = model.forward(x, eps)
    return objective(spec, log_w), model.backward(objective_weights(spec, log_w))

