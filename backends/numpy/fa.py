"""Factor analysis in NumPy float64 with its gradient written by hand: the reference (common/models/fa.py has
the model, the canonical names and the exact evidence).

  C = tril(A, -1) + diag(exp(diag A)),  z = M x + c + C eps
  log q(z|x)   = sum(-eps^2/2 - log(2 pi)/2) - sum(diag A)              (log |det C| = sum diag A)
  log p(z)     = sum(-z^2/2 - log(2 pi)/2)
  log p(x|z)   = sum(-(x - W z - b)^2 / (2 sigma^2) - log sigma - log(2 pi)/2),  log sigma = decoder.log_scale
  log w = log p(x|z) + log p(z) - log q(z|x)
"""

from __future__ import annotations

import numpy as np

from backends.numpy.vae import HALF_LOG_2PI, objective, objective_weights
from common.models.fa import log_evidence
from common.spec import Spec

__all__ = ["FactorAnalysis", "log_evidence", "objective_and_grads", "weights"]


class FactorAnalysis:
    """forward(x (n, D), eps (k, n, L)) -> log w (k, n); backward(d log w) -> d every parameter."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        self.spec = spec
        self.p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}

    def scale_tril(self) -> np.ndarray:
        """C, the Cholesky factor of q's covariance."""
        a = self.p["encoder.scale_tril"]
        return np.tril(a, -1) + np.diag(np.exp(np.diag(a)))

    def posterior_loc(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.p["encoder.loc.kernel"] + self.p["encoder.loc.bias"]

    def forward(self, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        scale_tril = self.scale_tril()
        z = self.posterior_loc(x) + eps @ scale_tril.T
        log_q_z = np.sum(-0.5 * eps**2 - HALF_LOG_2PI, axis=-1) - np.sum(np.diag(self.p["encoder.scale_tril"]))
        log_p_z = np.sum(-0.5 * z**2 - HALF_LOG_2PI, axis=-1)
        x_loc = z @ self.p["decoder.loc.kernel"] + self.p["decoder.loc.bias"]
        log_scale = self.p["decoder.log_scale"][0]
        residual = (x - x_loc) * np.exp(-log_scale)  # (x - W z - b) / sigma
        log_p_x_given_z = np.sum(-0.5 * residual**2 - log_scale - HALF_LOG_2PI, axis=-1)
        self.tape = dict(x=x, eps=eps, scale_tril=scale_tril, z=z, residual=residual)
        return log_p_x_given_z + log_p_z - log_q_z

    def backward(self, d_log_w: np.ndarray) -> dict[str, np.ndarray]:
        """d(sum_kn d_log_w * log w)/d params for the last forward()."""
        tp, L = self.tape, self.spec.latent_size
        g = d_log_w[..., None]
        # d log p(x|z) / d x_loc = (x - x_loc) / sigma^2;  / d log sigma = residual^2 - 1
        d_x_loc = g * tp["residual"] * np.exp(-self.p["decoder.log_scale"][0])
        grads = {"decoder.log_scale": np.sum(g * (tp["residual"] ** 2 - 1.0), axis=(0, 1))[None, :],
                 "decoder.loc.kernel": tp["z"].reshape(-1, L).T @ d_x_loc.reshape(-1, d_x_loc.shape[-1]),
                 "decoder.loc.bias": d_x_loc.sum(axis=(0, 1))}
        d_z = d_x_loc @ self.p["decoder.loc.kernel"].T - g * tp["z"]
        d_loc = d_z.sum(axis=0)
        grads["encoder.loc.kernel"] = tp["x"].T @ d_loc
        grads["encoder.loc.bias"] = d_loc.sum(axis=0)
        d_scale_tril = d_z.reshape(-1, L).T @ tp["eps"].reshape(-1, L)  # d C_ij = sum d z_i eps_j
        # the diagonal through exp, and -log q's + sum diag A
        d_a = np.tril(d_scale_tril, -1) + np.diag(np.diag(d_scale_tril) * np.diag(tp["scale_tril"]) + d_log_w.sum())
        grads["encoder.scale_tril"] = d_a
        return {k: grads[k] for k in self.p}


def weights(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log w, per-sample ELBO), both (k, n): a sample's ELBO is its log-weight."""
    log_w = FactorAnalysis(spec, params).forward(x, eps)
    return log_w, log_w


def objective_and_grads(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray):
    """Per-example training objective (n,) for eps (k, n, L), and the gradient of its sum."""
    model = FactorAnalysis(spec, params)
    log_w = model.forward(x, eps)
    return objective(spec, log_w), model.backward(objective_weights(spec, log_w))
