"""The Gaussian-mixture VAE in TensorFlow: tf.Variables under canonical names, the math of backends/numpy/gmvae.py
(the model: common/models/gmvae.py).

    q(y|x) = softmax(classifier(x));  [loc | scale_arg] = encoder(x, y) for every y;  z = loc + softplus(scale_arg) eps
    f = log p(x|z) + log p(z|y) - log q(z|x, y)
    elbo = sum_y q(y|x) [f + log p(y) - log q(y|x)],   log w = logsumexp_y (log p(y) + f)
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from backends.tensorflow.vae import ACTIVATIONS, HALF_LOG_2PI, dense
from common.params import param_shapes
from common.spec import Spec


class MLP(tf.Module):
    """Layers l0..l{depth} of a canonical prefix: the hidden ones with the activation, the last linear."""

    def __init__(self, v: dict[str, tf.Variable], part: str, depth: int, activation: str):
        super().__init__(name=part)
        self.layers = [(v[f"{part}.l{i}.kernel"], v[f"{part}.l{i}.bias"]) for i in range(depth + 1)]
        self.act = ACTIVATIONS[activation]

    def __call__(self, a: tf.Tensor) -> tf.Tensor:
        *hidden, (kernel, bias) = self.layers
        for w, b in hidden:
            a = self.act(dense(a, w) + b)
        return dense(a, kernel) + bias


class Encoder(tf.Module):
    """q(z|x, y) for every y: [loc | scale_arg], (n, C, 2L). Its first layer on [x, one-hot y] is x's product
    once per example plus label[y], the kernel's rows for y."""

    def __init__(self, spec: Spec, v: dict[str, tf.Variable]):
        super().__init__(name="encoder")
        self.layers = [(v[f"encoder.l{i}.kernel"], v[f"encoder.l{i}.bias"]) for i in range(len(spec.encoder) + 1)]
        self.label = v["encoder.l0.label"]
        self.act = ACTIVATIONS[spec.activation]

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        (kernel, bias), *rest = self.layers
        a = (x @ kernel + bias)[:, None, :] + self.label
        for w, b in rest:
            a = dense(self.act(a), w) + b
        return a


class Prior(tf.Module):
    """log p(z_y | y) = log N(z_y; loc[y], diag softplus(scale_arg[y])^2) for each component y."""

    def __init__(self, v: dict[str, tf.Variable]):
        super().__init__(name="prior")
        self.loc, self.scale_arg = v["prior.loc"], v["prior.scale_arg"]

    def __call__(self, z: tf.Tensor) -> tf.Tensor:
        """z (..., C, L) -> (..., C)."""
        scale = tf.math.softplus(self.scale_arg)
        return tf.reduce_sum(-0.5 * tf.square((z - self.loc) / scale) - tf.math.log(scale) - HALF_LOG_2PI, -1)


class GMVAE(tf.Module):
    """log_weights(x (n, 784), eps (k, n, C, L)) -> (log w, elbo), both (k, n); `v` holds every tf.Variable."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        super().__init__(name="gmvae")
        self.spec, self.dtype = spec, tf.as_dtype(spec.dtype)
        self.v = {k: tf.Variable(np.asarray(params[k], spec.dtype), name=k) for k in param_shapes(spec)}
        self.classifier = MLP(self.v, "classifier", len(spec.encoder), spec.activation)
        self.encoder = Encoder(spec, self.v)
        self.decoder = MLP(self.v, "decoder", len(spec.decoder), spec.activation)
        self.prior = Prior(self.v)

    def log_weights(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, L = tf.cast(x, self.dtype), self.spec.latent_size
        log_q_y = tf.nn.log_softmax(self.classifier(x), -1)                           # (n, C)
        out = self.encoder(x)
        loc, scale = out[..., :L], tf.math.softplus(out[..., L:])
        z = loc + scale * eps                                                          # (k, n, C, L)
        log_q_z = tf.reduce_sum(-0.5 * tf.square(eps) - tf.math.log(scale) - HALF_LOG_2PI, -1)
        logits = self.decoder(z)
        log_p_x_given_z = tf.reduce_sum(x[:, None, :] * logits - tf.math.softplus(logits), -1)
        f = log_p_x_given_z + self.prior(z) - log_q_z
        log_p_y = -math.log(self.spec.components)
        elbo = tf.reduce_sum(tf.exp(log_q_y) * (f + log_p_y - log_q_y), -1)
        log_w = tf.reduce_logsumexp(f, -1) + log_p_y
        return log_w, elbo
