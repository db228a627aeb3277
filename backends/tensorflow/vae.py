"""The VAE in TensorFlow: tf.Variables under canonical names, the math of backends/numpy/vae.py read top to bottom.

    q0:   z = loc + softplus(scale_arg) * eps,        log q = sum(-eps^2/2 - log scale - log(2 pi)/2)
          (exp(scale_arg) for the scale with --encoder-scale exp)
    IAF:  [m | s] = MADE(z, context), sigma = sigmoid(s + 2), z <- sigma z + (1 - sigma) m, log q -= sum log sigma
    log w = log p(x|z) + log p(z) - log q(z|x)
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from common.params import masks, param_shapes
from common.spec import Spec

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.math.tanh, "softplus": tf.math.softplus}


def dense(a: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """a (..., in) @ kernel (in, out); the leading sample dims are flattened, so all samples make one GEMM."""
    if a.shape.rank == 2:
        return tf.matmul(a, kernel)
    flat = tf.matmul(tf.reshape(a, [-1, a.shape[-1]]), kernel)
    return tf.reshape(flat, tf.concat([tf.shape(a)[:-1], [kernel.shape[-1]]], 0))


class MLP(tf.Module):
    """Hidden layers l0..l{n-1} with the activation, then the linear output layer l{n}."""

    def __init__(self, spec: Spec, v: dict[str, tf.Variable], part: str):
        super().__init__(name=part)
        depth = len(spec.encoder if part == "encoder" else spec.decoder)
        self.layers = [(v[f"{part}.l{i}.kernel"], v[f"{part}.l{i}.bias"]) for i in range(depth + 1)]
        self.act = ACTIVATIONS[spec.activation]

    def __call__(self, a: tf.Tensor) -> tf.Tensor:
        *hidden, (kernel, bias) = self.layers
        for w, b in hidden:
            a = self.act(dense(a, w) + b)
        return dense(a, kernel) + bias


class IafStep(tf.Module):
    """One MADE step conditioned on the context: output i of [m | s] sees z_<i only (masked kernels)."""

    def __init__(self, spec: Spec, v: dict[str, tf.Variable], t: int):
        super().__init__(name=f"flow_{t}")
        p, mask, dtype = f"flow.{t}", masks(spec), tf.as_dtype(spec.dtype)
        self.l0, self.l1, self.out = ((v[f"{p}.{n}.kernel"], tf.constant(mask[f"{p}.{n}.kernel"], dtype),
                                       v[f"{p}.{n}.bias"]) for n in ("l0", "l1", "out"))
        self.l0_context, self.l1_context = v[f"{p}.l0.context"], v[f"{p}.l1.context"]
        self.act = ACTIVATIONS[spec.activation]

    @staticmethod
    def masked(layer: tuple[tf.Variable, tf.Tensor, tf.Variable], a: tf.Tensor) -> tf.Tensor:
        # multiplied in the forward pass, so a masked entry's gradient is exactly zero
        kernel, mask, bias = layer
        return dense(a, kernel * mask) + bias

    def __call__(self, z: tf.Tensor, context: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """z (k, n, L), context (n, L) -> the new z, and -log det dz_new/dz = -sum log sigma, (k, n)."""
        # the context maps are (n, F): once per example, broadcast over the k samples
        h = self.act(self.masked(self.l0, z) + context @ self.l0_context)
        h = self.act(self.masked(self.l1, h) + context @ self.l1_context)
        m, s = tf.split(self.masked(self.out, h), 2, axis=-1)
        sigma = tf.sigmoid(s + 2.0)
        # -log sigma = softplus(-(s + 2)): exact where sigma underflows
        return sigma * z + (1.0 - sigma) * m, tf.reduce_sum(tf.math.softplus(-(s + 2.0)), -1)


class VAE(tf.Module):
    """log_weights(x (n, 784), eps (k, n, L)) -> log w (k, n); `v` holds every tf.Variable by canonical name."""

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        super().__init__(name="vae")
        self.spec, self.dtype = spec, tf.as_dtype(spec.dtype)
        self.v = {k: tf.Variable(np.asarray(params[k], spec.dtype), name=k) for k in param_shapes(spec)}
        self.encoder, self.decoder = MLP(spec, self.v, "encoder"), MLP(spec, self.v, "decoder")
        self.flow = [IafStep(spec, self.v, t) for t in range(spec.flow_steps if spec.variational == "iaf" else 0)]

    def log_weights(self, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        x, L = tf.cast(x, self.dtype), self.spec.latent_size
        out = self.encoder(x)
        loc, scale_arg, context = out[:, :L], out[:, L:2 * L], out[:, 2 * L:]
        if self.spec.encoder_scale == "exp":  # its log is scale_arg itself
            scale, log_scale = tf.exp(scale_arg), scale_arg
        else:
            scale = tf.math.softplus(scale_arg)
            log_scale = tf.math.log(scale)
        z = loc + scale * eps
        log_q_z = tf.reduce_sum(-0.5 * tf.square(eps) - log_scale - HALF_LOG_2PI, -1)
        for t, step in enumerate(self.flow):
            z, minus_log_det = step(tf.reverse(z, [-1]) if t > 0 else z, context)  # alternate the order
            log_q_z += minus_log_det
        logits = self.decoder(z)
        log_p_x_given_z = tf.reduce_sum(x * logits - tf.math.softplus(logits), -1)
        log_p_z = tf.reduce_sum(-0.5 * tf.square(z) - HALF_LOG_2PI, -1)
        return log_p_x_given_z + log_p_z - log_q_z
