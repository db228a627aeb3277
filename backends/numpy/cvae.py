"""The conditional VAE in NumPy float64, with its gradient written by hand: the reference (common/models/cvae.py).

    x = image[observed], y = image[predicted]   (the fixed quadrant split of spec.quadrants)
    [loc_q | scale_arg_q] = recognition(image),  [loc_p | scale_arg_p] = prior(x),  scale = softplus(scale_arg)
    z = loc_q + scale_q * eps                     eps (k, n, L)
    log q(z|x,y) = sum(-eps^2/2 - log scale_q - log(2 pi)/2)
    log p(z|x)   = sum(-u^2/2 - log scale_p - log(2 pi)/2),   u = (z - loc_p) / scale_p
    logits = generation(z, x): layer 0 is z @ W0 + x @ C0 + b0 (x's part once per example), then the MLP
    log p(y|x,z) = sum(y * logits - softplus(logits))
    log w = log p(y|x,z) + log p(z|x) - log q(z|x,y);  training objective: mean_k log w or logmeanexp_k log w.
"""

from __future__ import annotations

import numpy as np

from backends.numpy.vae import ACTIVATIONS, HALF_LOG_2PI, logmeanexp, objective, objective_weights, sigmoid, softplus
from common.models.cvae import observed_pixels, predicted_pixels
from common.spec import Spec


def log_normal(v: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """sum over the last axis of log N(loc + scale v; loc, scale^2), for the standardised v."""
    return np.sum(-0.5 * v**2 - np.log(scale) - HALF_LOG_2PI, axis=-1)


class CVAE:
    """forward(image (n, 784), eps (k, n, L)) -> log w (k, n); backward(d log w) -> d every parameter."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        self.spec, self.L = spec, spec.latent_size
        self.p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.act, self.act_grad = ACTIVATIONS[spec.activation]
        self.observed, self.predicted = observed_pixels(spec), predicted_pixels(spec)

    def depth(self, part: str) -> int:
        return len(self.spec.decoder if part == "generation" else self.spec.encoder)

    def dense(self, name: str, a: np.ndarray) -> np.ndarray:
        return a @ self.p[name + ".kernel"] + self.p[name + ".bias"]

    def layers_after_first(self, part: str, pre: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """From layer 0's pre-activation to the output: (output, every hidden layer's activation)."""
        hidden = []
        for i in range(1, self.depth(part) + 1):
            hidden.append(self.act(pre))
            pre = self.dense(f"{part}.l{i}", hidden[-1])
        return pre, hidden

    def gaussian(self, part: str, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """(loc, scale_arg, scale, hidden) of the recognition or prior network."""
        out, hidden = self.layers_after_first(part, self.dense(f"{part}.l0", a))
        scale_arg = out[:, self.L:]
        return out[:, :self.L], scale_arg, softplus(scale_arg), hidden

    def generation(self, z: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits of p(y | x, z) (k, n, D_y), and the hidden activations."""
        context = x @ self.p["generation.l0.context"]  # once per example, shared by its k samples
        return self.layers_after_first("generation", self.dense("generation.l0", z) + context)

    def forward(self, image: np.ndarray, eps: np.ndarray) -> np.ndarray:
        image = np.asarray(image, np.float64)
        x, y = image[:, self.observed], image[:, self.predicted]
        loc_q, scale_arg_q, scale_q, hidden_q = self.gaussian("recognition", image)
        loc_p, scale_arg_p, scale_p, hidden_p = self.gaussian("prior", x)
        z = loc_q + scale_q * eps
        u = (z - loc_p) / scale_p
        logits, hidden_g = self.generation(z, x)
        log_p_y_given_xz = np.sum(y * logits - softplus(logits), axis=-1)
        self.tape = dict(image=image, x=x, y=y, eps=eps, z=z, u=u, logits=logits, hidden_q=hidden_q,
                         hidden_p=hidden_p, hidden_g=hidden_g, scale_arg_q=scale_arg_q, scale_q=scale_q,
                         scale_arg_p=scale_arg_p, scale_p=scale_p)
        return log_p_y_given_xz + log_normal(u, scale_p) - log_normal(eps, scale_q)

    # --- the gradient, by hand ---------------------------------------------------------------

    def dense_backward(self, name: str, a_in: np.ndarray, d_out: np.ndarray, grads: dict) -> np.ndarray:
        """Accumulate d kernel and d bias of `name` over every leading dim; return d a_in."""
        grads[name + ".kernel"] = a_in.reshape(-1, a_in.shape[-1]).T @ d_out.reshape(-1, d_out.shape[-1])
        grads[name + ".bias"] = d_out.reshape(-1, d_out.shape[-1]).sum(axis=0)
        return d_out @ self.p[name + ".kernel"].T

    def backward_to_first(self, part: str, hidden: list[np.ndarray], d_out: np.ndarray, grads: dict) -> np.ndarray:
        """Through layers l{depth}..l1: d of layer 0's pre-activation."""
        d = d_out
        for i in reversed(range(1, len(hidden) + 1)):
            d = self.dense_backward(f"{part}.l{i}", hidden[i - 1], d, grads) * self.act_grad(hidden[i - 1])
        return d

    def gaussian_backward(self, part: str, a_in: np.ndarray, d_loc: np.ndarray, d_scale: np.ndarray,
                          scale_arg: np.ndarray, hidden: list[np.ndarray], grads: dict) -> None:
        d_out = np.concatenate([d_loc, d_scale * sigmoid(scale_arg)], axis=-1)  # softplus' = sigmoid
        self.dense_backward(f"{part}.l0", a_in, self.backward_to_first(part, hidden, d_out, grads), grads)

    def backward(self, d_log_w: np.ndarray) -> dict[str, np.ndarray]:
        """d(sum_kn d_log_w * log w)/d params for the last forward()."""
        tp, grads = self.tape, {}
        g = d_log_w[..., None]
        d_logits = g * (tp["y"] - sigmoid(tp["logits"]))
        d_pre = self.backward_to_first("generation", tp["hidden_g"], d_logits, grads)
        grads["generation.l0.context"] = tp["x"].T @ d_pre.sum(axis=0)
        # log p(z|x) = sum(-u^2/2 - log scale_p): d/dz = -u / scale_p, d/d loc_p = u / scale_p,
        # d/d scale_p = (u^2 - 1) / scale_p
        d_log_p_z = g * tp["u"] / tp["scale_p"]
        d_z = self.dense_backward("generation.l0", tp["z"], d_pre, grads) - d_log_p_z
        d_scale_p = (g * (tp["u"] ** 2 - 1.0) / tp["scale_p"]).sum(axis=0)
        self.gaussian_backward("prior", tp["x"], d_log_p_z.sum(axis=0), d_scale_p, tp["scale_arg_p"],
                               tp["hidden_p"], grads)
        # z = loc_q + scale_q eps; -log q(z|x,y) contributes +sum log scale_q
        d_scale_q = (d_z * tp["eps"]).sum(axis=0) + d_log_w.sum(axis=0)[:, None] / tp["scale_q"]
        self.gaussian_backward("recognition", tp["image"], d_z.sum(axis=0), d_scale_q, tp["scale_arg_q"],
                               tp["hidden_q"], grads)
        return {k: grads[k] for k in self.p}

    # --- pieces the figures and the table use ----------------------------------------------------

    def prior(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(loc, scale) of p(z | x) for the observed part of each image."""
        loc, _, scale, _ = self.gaussian("prior", np.asarray(image, np.float64)[:, self.observed])
        return loc, scale

    def complete(self, image: np.ndarray, z: np.ndarray) -> np.ndarray:
        """The images with y's pixels replaced by p(y | x, z)'s Bernoulli means; z (n, L) or (k, n, L)."""
        image = np.asarray(image, np.float64)
        logits, _ = self.generation(z, image[:, self.observed])
        out = np.broadcast_to(image, logits.shape[:-1] + image.shape[-1:]).copy()
        out[..., self.predicted] = sigmoid(logits)
        return out

    def log_p_y_given_xz(self, image: np.ndarray, z: np.ndarray) -> np.ndarray:
        """(k, n) log p(y | x, z) for z (k, n, L)."""
        image = np.asarray(image, np.float64)
        logits, _ = self.generation(z, image[:, self.observed])
        return np.sum(image[:, self.predicted] * logits - softplus(logits), axis=-1)


def weights(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log w, per-sample ELBO), both (k, n): the ELBO of a sample is its log-weight."""
    log_w = CVAE(spec, params).forward(x, eps)
    return log_w, log_w


def objective_and_grads(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray):
    """Per-example training objective (n,) for eps (k, n, L), and the gradient of its sum."""
    model = CVAE(spec, params)
    log_w = model.forward(x, eps)
    return objective(spec, log_w), model.backward(objective_weights(spec, log_w))


def prior_sampled_log_likelihood(spec: Spec, params: dict, images: np.ndarray, samples: int,
                                 rng: np.random.Generator, chunk: int = 100) -> np.ndarray:
    """(n,) logmeanexp_s log p(y | x, z_s), z_s ~ p(z | x): Monte Carlo from the prior network, no proposal."""
    model, out = CVAE(spec, params), []
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        loc, scale = model.prior(part)
        z = loc + scale * rng.standard_normal((samples, *loc.shape))
        out.append(logmeanexp(model.log_p_y_given_xz(part, z), axis=0))
    return np.concatenate(out)
