"""The Gaussian-mixture VAE in NumPy float64 with its gradient written by hand: the reference (common/models/gmvae.py
has the model and the canonical names). Shapes: x (n, 784), eps (k, n, C, L); per component y:
  pi = softmax(classifier(x))                                         q(y|x), (n, C)
  [loc | scale_arg] = encoder(x, y), its first layer x @ K0 + b0 + label[y]   (n, C, 2L)
  z = loc + softplus(scale_arg) * eps                                 (k, n, C, L)
  f = log p(x|z) + log p(z|y) - log q(z|x, y)                         (k, n, C)
  elbo  = sum_y pi [f + log p(y) - log pi],  log w = logsumexp_y (log p(y) + f)      (k, n)
"""

from __future__ import annotations

import numpy as np

from backends.numpy.vae import ACTIVATIONS, HALF_LOG_2PI, logmeanexp, sigmoid, softplus
from common.spec import Spec


def log_softmax(a: np.ndarray, axis: int = -1) -> np.ndarray:
    peak = a.max(axis=axis, keepdims=True)
    return a - peak - np.log(np.sum(np.exp(a - peak), axis=axis, keepdims=True))


class GMVAE:
    """forward(x, eps) -> (log w, elbo), both (k, n); backward(d log w, d elbo) -> d every parameter."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.act, self.act_grad = ACTIVATIONS[spec.activation]

    # --- networks: (output, hidden activations) --------------------------------------------------

    def dense(self, name: str, a: np.ndarray) -> np.ndarray:
        return a @ self.p[name + ".kernel"] + self.p[name + ".bias"]

    def layers_after(self, part: str, a: np.ndarray, first: int, depth: int, hidden: list) -> np.ndarray:
        """Layers first..depth of part (hidden ones activated, appended to hidden), the last one linear."""
        for i in range(first, depth + 1):
            a = self.dense(f"{part}.l{i}", a)
            if i < depth:
                a = self.act(a)
                hidden.append(a)
        return a

    def classifier(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        hidden: list = []
        return self.layers_after("classifier", x, 0, len(self.spec.encoder), hidden), hidden

    def encoder(self, x: np.ndarray) -> tuple[np.ndarray, list]:
        """[loc | scale_arg] for every component, (n, C, 2L): l0 on [x, one-hot y] is x's rows once, plus y's row."""
        depth, hidden = len(self.spec.encoder), []
        a = self.dense("encoder.l0", x)[:, None, :] + self.p["encoder.l0.label"]
        if depth:
            a = self.act(a)
            hidden.append(a)
        return self.layers_after("encoder", a, 1, depth, hidden), hidden

    def decoder(self, z: np.ndarray) -> tuple[np.ndarray, list]:
        hidden: list = []
        return self.layers_after("decoder", z, 0, len(self.spec.decoder), hidden), hidden

    # --- the model ------------------------------------------------------------------------------------

    def forward(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        L, C = self.spec.latent_size, self.spec.components
        x = np.asarray(x, np.float64)
        logits_y, cls_hidden = self.classifier(x)
        log_q_y = log_softmax(logits_y)                                          # (n, C)
        out, enc_hidden = self.encoder(x)
        loc, scale_arg = out[..., :L], out[..., L:]
        scale = softplus(scale_arg)
        z = loc + scale * eps                                                    # (k, n, C, L)
        log_q_z = np.sum(-0.5 * eps**2 - np.log(scale) - HALF_LOG_2PI, axis=-1)  # (k, n, C)
        prior_scale = softplus(self.p["prior.scale_arg"])                        # (C, L)
        prior_white = (z - self.p["prior.loc"]) / prior_scale
        log_p_z = np.sum(-0.5 * prior_white**2 - np.log(prior_scale) - HALF_LOG_2PI, axis=-1)
        logits_x, dec_hidden = self.decoder(z)
        log_p_x_given_z = np.sum(x[:, None, :] * logits_x - softplus(logits_x), axis=-1)
        f = log_p_x_given_z + log_p_z - log_q_z
        log_p_y = -np.log(C)
        q_y = np.exp(log_q_y)
        elbo = np.sum(q_y * (f + log_p_y - log_q_y), axis=-1)
        log_w = log_p_y + np.log(np.sum(np.exp(f - f.max(-1, keepdims=True)), -1)) + f.max(-1)
        self.tape = dict(x=x, eps=eps, cls_hidden=cls_hidden, log_q_y=log_q_y, q_y=q_y, enc_hidden=enc_hidden,
                         scale_arg=scale_arg, scale=scale, z=z, prior_scale=prior_scale, prior_white=prior_white,
                         logits_x=logits_x, dec_hidden=dec_hidden, f=f, log_p_y=log_p_y)
        return log_w, elbo

    # --- the gradient, by hand ----------------------------------------------------------------------

    def dense_backward(self, name: str, a_in: np.ndarray, d_out: np.ndarray, grads: dict) -> np.ndarray:
        """Accumulate d kernel and d bias of `name` over every leading dim; return d a_in."""
        grads[name + ".kernel"] = a_in.reshape(-1, a_in.shape[-1]).T @ d_out.reshape(-1, d_out.shape[-1])
        grads[name + ".bias"] = d_out.reshape(-1, d_out.shape[-1]).sum(axis=0)
        return d_out @ self.p[name + ".kernel"].T

    def mlp_backward(self, part: str, a_in: np.ndarray, hidden: list, d_out: np.ndarray, grads: dict) -> np.ndarray:
        """Back through layers len(hidden)..0 of part (input a_in); returns d a_in."""
        d = d_out
        for i in reversed(range(len(hidden) + 1)):
            d = self.dense_backward(f"{part}.l{i}", hidden[i - 1] if i else a_in, d, grads)
            if i:
                d = d * self.act_grad(hidden[i - 1])
        return d

    def backward(self, d_log_w: np.ndarray, d_elbo: np.ndarray) -> dict[str, np.ndarray]:
        """d(sum_kn d_log_w * log w + d_elbo * elbo)/d params for the last forward()."""
        tp, grads = self.tape, {}
        q_y, log_q_y, f = tp["q_y"], tp["log_q_y"], tp["f"]
        # d/d f: through log w the responsibilities softmax_y f, through the ELBO q(y|x)
        d_f = d_log_w[..., None] * np.exp(log_softmax(f)) + d_elbo[..., None] * q_y              # (k, n, C)
        # d ELBO / d logits of q(y|x) = pi (u - sum pi u), u_y = sum_k d_elbo (f + log p(y) - log pi)
        u = np.sum(d_elbo[..., None] * (f + tp["log_p_y"] - log_q_y), axis=0)                    # (n, C)
        d_logits_y = q_y * (u - np.sum(q_y * u, axis=-1, keepdims=True))
        self.mlp_backward("classifier", tp["x"], tp["cls_hidden"], d_logits_y, grads)
        g = d_f[..., None]
        d_logits_x = g * (tp["x"][:, None, :] - sigmoid(tp["logits_x"]))
        d_z = self.mlp_backward("decoder", tp["z"], tp["dec_hidden"], d_logits_x, grads)
        # log p(z|y): d z -= (z - mu) / s^2; d mu = +(z - mu) / s^2; d s = ((z - mu)^2 / s^2 - 1) / s
        prior_scale, white = tp["prior_scale"], tp["prior_white"]
        d_z = d_z - g * white / prior_scale
        grads["prior.loc"] = np.sum(g * white / prior_scale, axis=(0, 1))
        d_prior_scale = np.sum(g * (white**2 - 1.0), axis=(0, 1)) / prior_scale
        grads["prior.scale_arg"] = d_prior_scale * sigmoid(self.p["prior.scale_arg"])
        # z = loc + scale eps; -log q(z|x, y) contributes + sum log scale
        d_loc = d_z.sum(axis=0)
        d_scale = (d_z * tp["eps"]).sum(axis=0) + d_f.sum(axis=0)[..., None] / tp["scale"]
        d_out = np.concatenate([d_loc, d_scale * sigmoid(tp["scale_arg"])], axis=-1)            # (n, C, 2L)
        self.encoder_backward(d_out, grads)
        return {k: grads[k] for k in self.p}

    def encoder_backward(self, d_out: np.ndarray, grads: dict) -> None:
        """Through the encoder's layers depth..1 (per component), then l0: x's rows get the gradient summed over
        the components, y's row (label) the gradient summed over the examples."""
        hidden, depth = self.tape["enc_hidden"], len(self.spec.encoder)
        d = d_out
        for i in reversed(range(1, depth + 1)):
            d = self.dense_backward(f"encoder.l{i}", hidden[i - 1], d, grads) * self.act_grad(hidden[i - 1])
        d_first = d.sum(axis=1)                                                                   # (n, H)
        grads["encoder.l0.kernel"] = self.tape["x"].T @ d_first
        grads["encoder.l0.bias"] = d_first.sum(axis=0)
        grads["encoder.l0.label"] = d.sum(axis=0)

    # --- pieces the figures use ---------------------------------------------------------------------

    def cluster_probabilities(self, x: np.ndarray) -> np.ndarray:
        """q(y|x), (n, C)."""
        return np.exp(log_softmax(self.classifier(np.asarray(x, np.float64))[0]))

    def generate(self, rng: np.random.Generator, per_component: int) -> np.ndarray:
        """Bernoulli means of p(x|z), z ~ p(z|y), per_component of each y: (C, per_component, 784)."""
        eps = rng.standard_normal((per_component, self.spec.components, self.spec.latent_size))
        z = self.p["prior.loc"] + softplus(self.p["prior.scale_arg"]) * eps
        return np.swapaxes(sigmoid(self.decoder(z)[0]), 0, 1)


def objective_weights(spec: Spec, log_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d objective / d log w, d objective / d elbo): the ELBO's mean over k (the only objective check() allows)."""
    k = log_w.shape[0]
    if spec.objective == "elbo":
        return np.zeros_like(log_w), np.full_like(log_w, 1.0 / k)
    w = np.exp(log_w - log_w.max(axis=0, keepdims=True))
    return w / w.sum(axis=0, keepdims=True), np.zeros_like(log_w)


def weights(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log w, per-sample ELBO), both (k, n), for eps (k, n, C, L)."""
    return GMVAE(spec, params).forward(x, eps)


def objective_and_grads(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray):
    """Per-example training objective (n,) for eps (k, n, C, L), and the gradient of its sum."""
    model = GMVAE(spec, params)
    log_w, elbo = model.forward(x, eps)
    d_log_w, d_elbo = objective_weights(spec, log_w)
    value = elbo.mean(axis=0) if spec.objective == "elbo" else logmeanexp(log_w, axis=0)
    return value, model.backward(d_log_w, d_elbo)
