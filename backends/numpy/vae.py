"""The VAE in NumPy float64, with its gradient written by hand: the reference every backend is held to.

Conventions shared by every backend (README.md, "The model"):
  eps ~ N(0, I) of shape (k, n, L): k samples for each of n examples;
  z0 = loc + scale * eps,  log q0 = sum(-eps^2/2 - log scale - log(2 pi)/2),
    scale = softplus(scale_arg), or exp(scale_arg) with --encoder-scale exp (log scale = scale_arg then);
  IAF step t (z reversed before every step but the first):
    [m | s] = MADE_t(z, context),  sigma = sigmoid(s + 2),  z <- sigma z + (1 - sigma) m,
    log q <- log q - sum(log sigma)      (log sigma = -softplus(-(s + 2)), exact where sigma underflows);
  log p(x|z) = sum(x * logits - softplus(logits)),  log p(z) = sum(-z^2/2 - log(2 pi)/2);
  log w = log p(x|z) + log p(z) - log q(z|x);
  training objective per example: mean_k log w (ELBO) or logmeanexp_k log w (IWAE bound).
"""

from __future__ import annotations

import numpy as np

from common.params import masks
from common.spec import Spec

HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


def softplus(a: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, a)


def sigmoid(a: np.ndarray) -> np.ndarray:
    return np.exp(-softplus(-a))


# activation, and its derivative written in terms of the activation's output
ACTIVATIONS = {
    "relu": (lambda a: np.maximum(a, 0.0), lambda out: (out > 0).astype(np.float64)),
    "tanh": (np.tanh, lambda out: 1.0 - out * out),
    "softplus": (softplus, lambda out: -np.expm1(-out)),  # sigmoid(a) = 1 - exp(-softplus(a))
}


def encoder_scale(spec: Spec, scale_arg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, log scale) of q0(z|x) from the encoder's output a: softplus(a), or exp(a) whose log is a itself."""
    if spec.encoder_scale == "exp":
        return np.exp(scale_arg), scale_arg
    scale = softplus(scale_arg)
    return scale, np.log(scale)


def logmeanexp(a: np.ndarray, axis: int = 0) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(peak, axis) + np.log(np.mean(np.exp(a - peak), axis=axis))


def objective(spec: Spec, log_w: np.ndarray) -> np.ndarray:
    """(k, n) log-weights -> (n,) training objective per example."""
    return log_w.mean(axis=0) if spec.objective == "elbo" else logmeanexp(log_w, axis=0)


def objective_weights(spec: Spec, log_w: np.ndarray) -> np.ndarray:
    """d objective / d log w_k: 1/k (ELBO), the normalized importance weights (IWAE)."""
    if spec.objective == "elbo":
        return np.full_like(log_w, 1.0 / log_w.shape[0])
    w = np.exp(log_w - log_w.max(axis=0, keepdims=True))
    return w / w.sum(axis=0, keepdims=True)


class VAE:
    """forward(x (n, 784), eps (k, n, L)) -> log w (k, n); backward(d log w) -> d every parameter."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.masks = masks(spec)
        self.p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        # masked kernels, as every backend multiplies them in the forward pass
        self.w = {k: self.p[k] * self.masks[k] if k in self.masks else self.p[k] for k in self.p}
        self.act, self.act_grad = ACTIVATIONS[spec.activation]

    def dense(self, name: str, a: np.ndarray) -> np.ndarray:
        return a @ self.w[name + ".kernel"] + self.p[name + ".bias"]

    def mlp(self, part: str, a: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Hidden layers with the activation, then the linear output layer; returns (output, hidden outputs)."""
        hidden = []
        for i in range(len(self.spec.encoder if part == "encoder" else self.spec.decoder)):
            a = self.act(self.dense(f"{part}.l{i}", a))
            hidden.append(a)
        return self.dense(f"{part}.l{len(hidden)}", a), hidden

    def made(self, t: int, z: np.ndarray, context: np.ndarray) -> tuple[np.ndarray, ...]:
        p = f"flow.{t}"
        a0 = self.act(z @ self.w[f"{p}.l0.kernel"] + self.p[f"{p}.l0.bias"] + context @ self.p[f"{p}.l0.context"])
        a1 = self.act(a0 @ self.w[f"{p}.l1.kernel"] + self.p[f"{p}.l1.bias"] + context @ self.p[f"{p}.l1.context"])
        ms = self.dense(f"{p}.out", a1)
        L = self.spec.latent_size
        return a0, a1, ms[..., :L], ms[..., L:]

    def forward(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        spec, L = self.spec, self.spec.latent_size
        x = np.asarray(x, np.float64)
        out, enc_hidden = self.mlp("encoder", x)
        loc, scale_arg, context = out[:, :L], out[:, L:2 * L], out[:, 2 * L:]
        scale, log_scale = encoder_scale(spec, scale_arg)
        z = loc + scale * eps
        log_q_z = np.sum(-0.5 * eps**2 - log_scale - HALF_LOG_2PI, axis=-1)
        flow = []
        for t in range(spec.flow_steps if spec.variational == "iaf" else 0):
            if t > 0:
                z = z[..., ::-1]
            a0, a1, m, s = self.made(t, z, context)
            sigma = sigmoid(s + 2.0)
            flow.append(dict(z_in=z, a0=a0, a1=a1, m=m, sigma=sigma))
            z = sigma * z + (1.0 - sigma) * m
            log_q_z = log_q_z + np.sum(softplus(-(s + 2.0)), axis=-1)
        logits, dec_hidden = self.mlp("decoder", z)
        log_p_x_given_z = np.sum(x * logits - softplus(logits), axis=-1)
        log_p_z = np.sum(-0.5 * z**2 - HALF_LOG_2PI, axis=-1)
        self.tape = dict(x=x, eps=eps, enc_hidden=enc_hidden, scale_arg=scale_arg, scale=scale, context=context,
                         flow=flow, z=z, dec_hidden=dec_hidden, logits=logits)
        return log_p_x_given_z + log_p_z - log_q_z

    # --- the gradient, by hand ---------------------------------------------------------------

    def dense_backward(self, name: str, a_in: np.ndarray, d_out: np.ndarray, grads: dict) -> np.ndarray:
        """Accumulate d kernel and d bias of `name` over every leading dim; return d a_in."""
        kernel = name + ".kernel"
        g = a_in.reshape(-1, a_in.shape[-1]).T @ d_out.reshape(-1, d_out.shape[-1])
        grads[kernel] = g * self.masks[kernel] if kernel in self.masks else g
        grads[name + ".bias"] = d_out.reshape(-1, d_out.shape[-1]).sum(axis=0)
        return d_out @ self.w[kernel].T

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
        tp, grads = self.tape, {}
        g = d_log_w[..., None]
        d_logits = g * (tp["x"] - sigmoid(tp["logits"]))
        d_z = self.mlp_backward("decoder", tp["z"], tp["dec_hidden"], d_logits, grads) - g * tp["z"]
        context, d_context = tp["context"], np.zeros_like(tp["context"])
        for t in reversed(range(len(tp["flow"]))):
            f, p = tp["flow"][t], f"flow.{t}"
            sigma = f["sigma"]
            d_m = d_z * (1.0 - sigma)
            # through z_out, and through -log q = +sum log sigma, whose d/ds is 1 - sigma
            d_s = d_z * (f["z_in"] - f["m"]) * sigma * (1.0 - sigma) + g * (1.0 - sigma)
            d_a1 = self.dense_backward(f"{p}.out", f["a1"], np.concatenate([d_m, d_s], -1), grads)
            d_a1 = d_a1 * self.act_grad(f["a1"])
            d_a0 = self.dense_backward(f"{p}.l1", f["a0"], d_a1, grads) * self.act_grad(f["a0"])
            d_z_in = d_z * sigma + self.dense_backward(f"{p}.l0", f["z_in"], d_a0, grads)
            # the context enters every sample's MADE once per example: sum over the samples
            sum_a1, sum_a0 = d_a1.sum(axis=0), d_a0.sum(axis=0)
            grads[f"{p}.l1.context"] = context.T @ sum_a1
            grads[f"{p}.l0.context"] = context.T @ sum_a0
            d_context = d_context + sum_a1 @ self.p[f"{p}.l1.context"].T + sum_a0 @ self.p[f"{p}.l0.context"].T
            d_z = d_z_in[..., ::-1] if t > 0 else d_z_in
        # z0 = loc + scale eps; -log q0 contributes +sum log scale
        d_loc = d_z.sum(axis=0)
        d_scale = (d_z * tp["eps"]).sum(axis=0) + d_log_w.sum(axis=0)[:, None] / tp["scale"]
        d_scale_arg = tp["scale"] if self.spec.encoder_scale == "exp" else sigmoid(tp["scale_arg"])
        d_out = [d_loc, d_scale * d_scale_arg]
        if self.spec.variational == "iaf":
            d_out.append(d_context)
        self.mlp_backward("encoder", tp["x"], tp["enc_hidden"], np.concatenate(d_out, -1), grads)
        return {k: grads[k] for k in self.p}

    # --- pieces the figures use ----------------------------------------------------------------

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Bernoulli logits of p(x|z), and the hidden activations (for decode_backward)."""
        return self.mlp("decoder", np.asarray(z, np.float64))

    def decode_backward(self, hidden: list[np.ndarray], z: np.ndarray, d_logits: np.ndarray) -> np.ndarray:
        """d/dz through the decoder, parameters fixed."""
        return self.mlp_backward("decoder", z, hidden, d_logits, {})

    def posterior_z(self, x: np.ndarray) -> np.ndarray:
        """z at eps = 0: the posterior mean for mean-field, its image under the flow for the IAF."""
        self.forward(x, np.zeros((1, len(x), self.spec.latent_size)))
        return self.tape["z"][0]

    def encoder_mean(self, x: np.ndarray) -> np.ndarray:
        """loc of q0(z|x) (= E_q[z] for mean-field), (n, L)."""
        return self.mlp("encoder", np.asarray(x, np.float64))[0][:, :self.spec.latent_size]


def log_weights(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """(k, n) log-weights for eps (k, n, L)."""
    return VAE(spec, params).forward(x, eps)


def weights(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log w, per-sample ELBO), both (k, n): for the VAE the ELBO of a sample is its log-weight."""
    log_w = log_weights(spec, params, x, eps)
    return log_w, log_w


def objective_and_grads(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray):
    """Per-example training objective (n,) for eps (k, n, L), and the gradient of its sum."""
    model = VAE(spec, params)
    log_w = model.forward(x, eps)
    return objective(spec, log_w), model.backward(objective_weights(spec, log_w))
