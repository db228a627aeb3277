"""The conditional VAE in TensorFlow: tf.Variables under canonical names, the math of backends/numpy/cvae.py.

    x, y = the image's observed and predicted pixels (common/models/cvae.py)
    q(z|x,y) = N(recognition(image)),  p(z|x) = N(prior(x)),  z = loc_q + softplus(scale_arg_q) * eps
    log w = log p(y|x,z) + log p(z|x) - log q(z|x,y),  p(y|x,z) = Bernoulli(generation(z, x))
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.tensorflow.vae import ACTIVATIONS, HALF_LOG_2PI, dense
from common.models.cvae import observed_pixels, predicted_pixels
from common.params import param_shapes
from common.spec import Spec


def log_normal(v: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """sum over the last axis of log N(loc + scale v; loc, scale^2), for the standardised v."""
    return tf.reduce_sum(-0.5 * tf.square(v) - tf.math.log(scale) - HALF_LOG_2PI, -1)


class MLP(tf.Module):
    """Hidden layers l0..l{depth-1} with the activation, then the linear output layer l{depth}."""

    def __init__(self, v: dict[str, tf.Variable], part: str, depth: int, activation: str):
        super().__init__(name=part)
        self.layers = [(v[f"{part}.l{i}.kernel"], v[f"{part}.l{i}.bias"]) for i in range(depth + 1)]
        self.act = ACTIVATIONS[activation]

    def __call__(self, a: tf.Tensor) -> tf.Tensor:
        *hidden, (kernel, bias) = self.layers
        for w, b in hidden:
            a = self.act(dense(a, w) + b)
        return dense(a, kernel) + bias


class Generation(MLP):
    """p(y | x, z): layer 0 is z @ W0 + b0 + x @ context, x's part once per example; then the MLP to y's logits."""

    def __init__(self, v: dict[str, tf.Variable], depth: int, activation: str):
        super().__init__(v, "generation", depth, activation)
        self.context = v["generation.l0.context"]

    def __call__(self, z: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
        (kernel, bias), *rest = self.layers
        a = dense(z, kernel) + bias + x @ self.context  # (n, F) broadcast over the k samples
        for w, b in rest:
            a = dense(self.act(a), w) + b
        return a


def gaussian(out: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    loc, scale_arg = tf.split(out, 2, axis=-1)
    return loc, tf.math.softplus(scale_arg)


class CVAE(tf.Module):
    """log_weights(image (n, 784), eps (k, n, L)) -> log w (k, n); `v` holds every tf.Variable by canonical name."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        super().__init__(name="cvae")
        self.spec, self.dtype = spec, tf.as_dtype(spec.dtype)
        self.v = {k: tf.Variable(np.asarray(params[k], spec.dtype), name=k) for k in param_shapes(spec)}
        self.observed, self.predicted = observed_pixels(spec), predicted_pixels(spec)
        self.recognition = MLP(self.v, "recognition", len(spec.encoder), spec.activation)
        self.prior = MLP(self.v, "prior", len(spec.encoder), spec.activation)
        self.generation = Generation(self.v, len(spec.decoder), spec.activation)

    def log_weights(self, image: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        image = tf.cast(image, self.dtype)
        x, y = tf.gather(image, self.observed, axis=1), tf.gather(image, self.predicted, axis=1)
        loc_q, scale_q = gaussian(self.recognition(image))
        loc_p, scale_p = gaussian(self.prior(x))
        z = loc_q + scale_q * eps
        logits = self.generation(z, x)
        log_p_y_given_xz = tf.reduce_sum(y * logits - tf.math.softplus(logits), -1)
        log_p_z = log_normal((z - loc_p) / scale_p, scale_p)
        log_q_z = log_normal(eps, scale_q)
        return log_p_y_given_xz + log_p_z - log_q_z
