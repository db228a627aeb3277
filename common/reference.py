"""The NumPy float64 reference: the model's math written once, with its gradient by hand.

Every backend is held to these functions in the parity tests. Conventions shared by all:
  noise eps ~ N(0, I) of shape (B, L) for a training step and (K, N, L) for evaluation;
  z0 = loc + softplus(scale_arg) * eps, log q0 = sum(-eps^2/2 - log scale - log(2 pi)/2);
  IAF step t (z reversed before every step but the first):
    [m | s] = MADE_t(z, context); sigma = sigmoid(s + 2); z <- sigma z + (1 - sigma) m;
    log q <- log q - sum(log sigma);
  log p(x|z) = sum(x * logits - softplus(logits)); log p(z) = sum(-z^2/2 - log(2 pi)/2);
  ELBO = log p(x|z) + log p(z) - log q(z|x);   training minimizes -sum_batch ELBO.
"""

from __future__ import annotations

import numpy as np

from common.init import made_masks
from common.spec import Spec

HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


def softplus(a: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, a)


def sigmoid(a: np.ndarray) -> np.ndarray:
    return np.exp(-softplus(-a))


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


def logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(peak, axis) + np.log(np.sum(np.exp(a - peak), axis=axis))


class Model:
    """Forward pass (any leading sample dims) and hand-written backward pass (one batch)."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.masks = made_masks(spec)
        self.p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        # masked kernels, as every backend multiplies them in the forward pass
        self.w = {k: self.p[k] * self.masks[k] if k in self.masks else self.p[k] for k in self.p}

    def dense(self, name: str, a: np.ndarray) -> np.ndarray:
        return a @ self.w[name + ".kernel"] + self.p[name + ".bias"]

    def forward(self, x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
        L, tape = self.spec.latent_size, {}
        e0 = relu(self.dense("encoder.l0", x))
        e1 = relu(self.dense("encoder.l1", e0))
        out = self.dense("encoder.l2", e1)
        loc, scale_arg = out[..., :L], out[..., L:2 * L]
        scale = softplus(scale_arg)
        z = loc + scale * eps
        log_q = np.sum(-0.5 * eps**2 - np.log(scale) - HALF_LOG_2PI, axis=-1)
        tape.update(x=x, eps=eps, e0=e0, e1=e1, scale_arg=scale_arg, scale=scale, flow=[])
        if self.spec.variational == "iaf":
            context = out[..., 2 * L:]
            tape["context"] = context
            for t in range(self.spec.flow_steps):
                if t > 0:
                    z = z[..., ::-1]
                a0 = relu(z @ self.w[f"flow.{t}.l0.kernel"] + self.p[f"flow.{t}.l0.bias"]
                          + context @ self.p[f"flow.{t}.l0.context"])
                a1 = relu(a0 @ self.w[f"flow.{t}.l1.kernel"] + self.p[f"flow.{t}.l1.bias"]
                          + context @ self.p[f"flow.{t}.l1.context"])
                ms = self.dense(f"flow.{t}.out", a1)
                m, s = ms[..., :L], ms[..., L:]
                sigma = sigmoid(s + 2.0)
                tape["flow"].append(dict(z_in=z, a0=a0, a1=a1, m=m, sigma=sigma))
                z = sigma * z + (1.0 - sigma) * m
                log_q = log_q + np.sum(softplus(-(s + 2.0)), axis=-1)  # -= sum log sigma
        d0 = relu(self.dense("decoder.l0", z))
        d1 = relu(self.dense("decoder.l1", d0))
        logits = self.dense("decoder.l2", d1)
        log_p_x_given_z = np.sum(x * logits - softplus(logits), axis=-1)
        log_p_z = np.sum(-0.5 * z**2 - HALF_LOG_2PI, axis=-1)
        tape.update(z=z, d0=d0, d1=d1, logits=logits)
        self.tape = tape
        return dict(elbo=log_p_x_given_z + log_p_z - log_q, log_p_x_given_z=log_p_x_given_z,
                    log_p_z=log_p_z, log_q_z=log_q, z=z)

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Bernoulli logits of p(x|z), and the hidden activations (for decode_backward)."""
        d0 = relu(self.dense("decoder.l0", z))
        d1 = relu(self.dense("decoder.l1", d0))
        return self.dense("decoder.l2", d1), [d0, d1]

    def decode_backward(self, hidden: list[np.ndarray], d_logits: np.ndarray) -> np.ndarray:
        """d/dz through the decoder, parameters fixed."""
        d0, d1 = hidden
        d_d1 = d_logits @ self.w["decoder.l2.kernel"].T * (d1 > 0)
        d_d0 = d_d1 @ self.w["decoder.l1.kernel"].T * (d0 > 0)
        return d_d0 @ self.w["decoder.l0.kernel"].T

    def dense_backward(self, name: str, a_in: np.ndarray, d_out: np.ndarray,
                       grads: dict[str, np.ndarray]) -> np.ndarray:
        """Accumulate d kernel, d bias of `name`; return d a_in."""
        kernel = name + ".kernel"
        g = a_in.T @ d_out
        grads[kernel] = g * self.masks[kernel] if kernel in self.masks else g
        grads[name + ".bias"] = d_out.sum(axis=0)
        return d_out @ self.w[kernel].T

    def grad_elbo_sum(self) -> dict[str, np.ndarray]:
        """d(sum over the batch of ELBO)/d params, for the last forward() on a (B, ...) batch."""
        tp, grads = self.tape, {}
        d_logits = tp["x"] - sigmoid(tp["logits"])
        d_d1 = self.dense_backward("decoder.l2", tp["d1"], d_logits, grads) * (tp["d1"] > 0)
        d_d0 = self.dense_backward("decoder.l1", tp["d0"], d_d1, grads) * (tp["d0"] > 0)
        d_z = self.dense_backward("decoder.l0", tp["z"], d_d0, grads) - tp["z"]
        d_context = 0.0
        for t in reversed(range(len(tp["flow"]))):
            f = tp["flow"][t]
            sigma = f["sigma"]
            d_m = d_z * (1.0 - sigma)
            # through z_out and through -log q = +sum log sigma, whose d/ds is 1 - sigma
            d_s = d_z * (f["z_in"] - f["m"]) * sigma * (1.0 - sigma) + (1.0 - sigma)
            d_a1 = self.dense_backward(f"flow.{t}.out", f["a1"], np.concatenate([d_m, d_s], -1), grads)
            d_a1 = d_a1 * (f["a1"] > 0)
            d_a0 = self.dense_backward(f"flow.{t}.l1", f["a0"], d_a1, grads) * (f["a0"] > 0)
            d_z_in = d_z * sigma + self.dense_backward(f"flow.{t}.l0", f["z_in"], d_a0, grads)
            grads[f"flow.{t}.l1.context"] = tp["context"].T @ d_a1
            grads[f"flow.{t}.l0.context"] = tp["context"].T @ d_a0
            d_context = d_context + d_a1 @ self.p[f"flow.{t}.l1.context"].T \
                + d_a0 @ self.p[f"flow.{t}.l0.context"].T
            d_z = d_z_in[..., ::-1] if t > 0 else d_z_in
        # z0 = loc + scale eps; -log q0 contributes +sum log scale
        d_scale = d_z * tp["eps"] + 1.0 / tp["scale"]
        d_out = [d_z, d_scale * sigmoid(tp["scale_arg"])]
        if self.spec.variational == "iaf":
            d_out.append(d_context + np.zeros_like(d_z))
        d_e1 = self.dense_backward("encoder.l2", tp["e1"], np.concatenate(d_out, -1), grads)
        d_e0 = self.dense_backward("encoder.l1", tp["e0"], d_e1 * (tp["e1"] > 0), grads)
        self.dense_backward("encoder.l0", tp["x"], d_e0 * (tp["e0"] > 0), grads)
        return {k: grads[k] for k in self.p}


def elbo(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return Model(spec, params).forward(np.asarray(x, np.float64), eps)["elbo"]


def elbo_and_grads(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray):
    """Per-example ELBO (B,) and the gradient of its sum with respect to every parameter."""
    model = Model(spec, params)
    values = model.forward(np.asarray(x, np.float64), eps)["elbo"]
    return values, model.grad_elbo_sum()


def evaluate(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """eps (K, N, L) -> per-example ELBO averaged over K, and log p(x) = logsumexp_k(w_k) - log K."""
    log_w = Model(spec, params).forward(np.asarray(x, np.float64), eps)["elbo"]  # (K, N)
    return log_w.mean(axis=0), logsumexp(log_w, axis=0) - np.log(log_w.shape[0])


def rmsprop_init(params: dict) -> dict:
    return {"square_avg": {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()},
            "grad_avg": {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}}


def rmsprop_update(spec: Spec, params: dict, grads: dict, state: dict) -> dict:
    """Centered RMSprop as torch.optim.RMSprop(centered=True): eps outside the square root."""
    rho, new = spec.rmsprop_decay, {}
    for k, g in grads.items():
        sq = state["square_avg"][k] = rho * state["square_avg"][k] + (1 - rho) * g * g
        ga = state["grad_avg"][k] = rho * state["grad_avg"][k] + (1 - rho) * g
        new[k] = params[k] - spec.learning_rate * g / (np.sqrt(sq - ga * ga) + spec.rmsprop_eps)
    return new


def train(spec: Spec, params: dict, train_x: np.ndarray, batch_indices: np.ndarray,
          noise: np.ndarray, state: dict | None = None):
    """len(batch_indices) steps on -sum ELBO; returns (params, state, per-step mean ELBO)."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    state = rmsprop_init(params) if state is None else state
    elbos = []
    for idx, eps in zip(batch_indices, noise, strict=True):
        values, grads = elbo_and_grads(spec, params, train_x[idx], eps)
        params = rmsprop_update(spec, params, {k: -g for k, g in grads.items()}, state)
        elbos.append(values.mean())
    return params, state, np.array(elbos)
