"""Factor analysis in TensorFlow: tf.Variables under canonical names, the math of backends/numpy/fa.py
(the model: common/models/fa.py).

    q(z|x):  z = M x + c + C eps,  C = tril(A, -1) + diag(exp(diag A)),
             log q = sum(-eps^2/2 - log(2 pi)/2) - sum diag A
    p(x|z):  N(W z + b, diag sigma^2),  sigma = exp(log_scale)
    log w = log p(x|z) + log p(z) - log q(z|x)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.tensorflow.vae import HALF_LOG_2PI, dense
from common.params import param_shapes
from common.spec import Spec


class Posterior(tf.Module):
    """q(z|x) = N(M x + c, C C^T), C the same for every x."""

    def __init__(self, v: dict[str, tf.Variable]):
        super().__init__(name="encoder")
        self.kernel, self.bias = v["encoder.loc.kernel"], v["encoder.loc.bias"]
        self.scale_tril = v["encoder.scale_tril"]

    def __call__(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """z = M x + c + C eps for eps (k, n, L), and log q(z|x) (k, n)."""
        a = self.scale_tril
        diagonal = tf.linalg.diag_part(a)
        scale_tril = tf.linalg.set_diag(tf.linalg.band_part(a, -1, 0), tf.exp(diagonal))
        z = x @ self.kernel + self.bias + dense(eps, tf.transpose(scale_tril))
        log_q_z = tf.reduce_sum(-0.5 * tf.square(eps) - HALF_LOG_2PI, -1) - tf.reduce_sum(diagonal)  # log |det C|
        return z, log_q_z


class Likelihood(tf.Module):
    """log p(x|z) = log N(x; W z + b, diag sigma^2), sigma = exp(log_scale)."""

    def __init__(self, v: dict[str, tf.Variable]):
        super().__init__(name="decoder")
        self.kernel, self.bias = v["decoder.loc.kernel"], v["decoder.loc.bias"]
        self.log_scale = v["decoder.log_scale"]

    def __call__(self, x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        residual = (x - (dense(z, self.kernel) + self.bias)) * tf.exp(-self.log_scale)
        return tf.reduce_sum(-0.5 * tf.square(residual) - self.log_scale - HALF_LOG_2PI, -1)


class FactorAnalysis(tf.Module):
    """log_weights(x (n, D), eps (k, n, L)) -> log w (k, n); `v` holds every tf.Variable by canonical name."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        super().__init__(name="fa")
        self.spec, self.dtype = spec, tf.as_dtype(spec.dtype)
        self.v = {k: tf.Variable(np.asarray(params[k], spec.dtype), name=k) for k in param_shapes(spec)}
        self.encoder, self.decoder = Posterior(self.v), Likelihood(self.v)

    def log_weights(self, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, self.dtype)
        z, log_q_z = self.encoder(x, eps)
        log_p_z = tf.reduce_sum(-0.5 * tf.square(z) - HALF_LOG_2PI, -1)
        return self.decoder(x, z) + log_p_z - log_q_z
