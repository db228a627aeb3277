"""The variational RNN in TensorFlow: tf.Variables under canonical names, the math of backends/numpy/vrnn.py
(equations in common/models/vrnn.py), its recurrence a tf.while_loop over the 28 rows, which the engine's
tf.function(jit_compile=True) training loop compiles with XLA (evaluation runs it as a graph loop).

    prior [μ_p | s_p] = prior(h),  encoder [μ_q | s_q] = encoder([φ_x(x_t) | h]),  z = μ_q + softplus(s_q) ε_t
    logits = decoder([φ_z(z) | h]),  h' = cell([φ_x(x_t) | φ_z(z)], h),  log w = Σ_t log p(x_t|.) + log p(z_t|h) - log q
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from backends.tensorflow.vae import ACTIVATIONS, HALF_LOG_2PI, dense
from common.models.vrnn import ROW
from common.params import param_shapes
from common.spec import Spec

State = tuple[tf.Tensor, ...]  # (h,) for the GRU, (h, c) for the LSTM


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


class Feature(MLP):
    """φ(a) = act(a W + b): one layer, l0."""

    def __init__(self, v: dict[str, tf.Variable], part: str, activation: str):
        super().__init__(v, part, 0, activation)

    def __call__(self, a: tf.Tensor) -> tf.Tensor:
        return self.act(super().__call__(a))


class GRU(tf.Module):
    """[r | u | n] gates, reset after the recurrent map: h' = (1 - u) n + u h."""

    def __init__(self, v: dict[str, tf.Variable]):
        super().__init__(name="rnn")
        self.input = (v["rnn.input.kernel"], v["rnn.input.bias"])
        self.recurrent = (v["rnn.recurrent.kernel"], v["rnn.recurrent.bias"])

    def __call__(self, inp: tf.Tensor, state: State) -> State:
        (h,) = state
        a_r, a_u, a_n = tf.split(dense(inp, self.input[0]) + self.input[1], 3, axis=-1)
        c_r, c_u, c_n = tf.split(dense(h, self.recurrent[0]) + self.recurrent[1], 3, axis=-1)
        r, u = tf.sigmoid(a_r + c_r), tf.sigmoid(a_u + c_u)
        n = tf.tanh(a_n + r * c_n)
        return ((1.0 - u) * n + u * h,)


class LSTM(tf.Module):
    """[i | f | g | o] gates, one bias: c' = f c + i g, h' = o tanh(c')."""

    def __init__(self, v: dict[str, tf.Variable]):
        super().__init__(name="rnn")
        self.input = (v["rnn.input.kernel"], v["rnn.input.bias"])
        self.recurrent = v["rnn.recurrent.kernel"]

    def __call__(self, inp: tf.Tensor, state: State) -> State:
        h, c = state
        a = dense(inp, self.input[0]) + self.input[1] + dense(h, self.recurrent)
        a_i, a_f, a_g, a_o = tf.split(a, 4, axis=-1)
        c_next = tf.sigmoid(a_f) * c + tf.sigmoid(a_i) * tf.tanh(a_g)
        return tf.sigmoid(a_o) * tf.tanh(c_next), c_next


def gaussian(out: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """[μ | s] -> (μ, σ = softplus(s))."""
    loc, scale_arg = tf.split(out, 2, axis=-1)
    return loc, tf.math.softplus(scale_arg)


def gaussian_log_prob(z: tf.Tensor, loc: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(-0.5 * tf.square((z - loc) / scale) - tf.math.log(scale) - HALF_LOG_2PI, -1)


class VRNN(tf.Module):
    """log_weights(x (n, 784), eps (k, n, T, L)) -> log w (k, n); `v` holds every tf.Variable by canonical name."""

    RECURRENCE = "tf.while_loop in XLA (jit_compile)"

    def __init__(self, spec: Spec, params: dict[str, np.ndarray]):
        super().__init__(name="vrnn")
        self.spec, self.dtype, act = spec, tf.as_dtype(spec.dtype), spec.activation
        self.v = {k: tf.Variable(np.asarray(params[k], spec.dtype), name=k) for k in param_shapes(spec)}
        self.phi_x, self.phi_z = Feature(self.v, "phi_x", act), Feature(self.v, "phi_z", act)
        self.prior = MLP(self.v, "prior", len(spec.decoder), act)
        self.encoder = MLP(self.v, "encoder", len(spec.encoder), act)
        self.decoder = MLP(self.v, "decoder", len(spec.decoder), act)
        self.rnn = (GRU if spec.rnn_cell == "gru" else LSTM)(self.v)

    def initial_state(self, eps: tf.Tensor) -> State:
        zeros = tf.zeros(tf.concat([tf.shape(eps)[:2], [self.spec.rnn_hidden]], 0), self.dtype)
        return (zeros,) if self.spec.rnn_cell == "gru" else (zeros, zeros)

    def step(self, x_t: tf.Tensor, fx: tf.Tensor, eps_t: tf.Tensor, state: State) -> tuple[tf.Tensor, State]:
        """One row: x_t (n, 28), fx = φ_x(x_t) (n, H), eps_t (k, n, L) -> (this step's log w (k, n), next state)."""
        h = state[0]
        # over the k trajectories; not tf.broadcast_to, whose gradient reads its shape argument, which XLA cannot
        # take as a compile-time constant inside a while loop's gradient (a sum's gradient reads the shapes itself)
        fx = fx + tf.zeros_like(h)
        loc_p, scale_p = gaussian(self.prior(h))
        loc_q, scale_q = gaussian(self.encoder(tf.concat([fx, h], -1)))
        z = loc_q + scale_q * eps_t
        fz = self.phi_z(z)
        logits = self.decoder(tf.concat([fz, h], -1))
        log_p_x_given_z = tf.reduce_sum(x_t * logits - tf.math.softplus(logits), -1)
        log_p_z = gaussian_log_prob(z, loc_p, scale_p)
        log_q_z = tf.reduce_sum(-0.5 * tf.square(eps_t) - tf.math.log(scale_q) - HALF_LOG_2PI, -1)
        return log_p_x_given_z + log_p_z - log_q_z, self.rnn(tf.concat([fx, fz], -1), state)

    def log_weights(self, x: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
        T = eps.shape[2]
        rows = tf.reshape(tf.cast(x, self.dtype), [-1, T, ROW])
        fx_all = self.phi_x(rows)  # once per image, shared by its k trajectories
        # time-major, so that step t reads element t of each
        rows_t, fx_t, eps_t = tf.transpose(rows, [1, 0, 2]), tf.transpose(fx_all, [1, 0, 2]), \
            tf.transpose(eps, [2, 0, 1, 3])

        def body(t: tf.Tensor, state: State, log_w: tf.Tensor) -> tuple[tf.Tensor, State, tf.Tensor]:
            log_w_t, state = self.step(rows_t[t], fx_t[t], eps_t[t], state)
            return t + 1, state, log_w + log_w_t

        # maximum_iterations: XLA needs the loop's trip count bounded to keep its intermediates for the gradient
        _, _, log_w = tf.while_loop(lambda t, *_: t < T, body,
                                    (tf.constant(0), self.initial_state(eps), tf.zeros(tf.shape(eps)[:2], self.dtype)),
                                    maximum_iterations=T)
        return log_w
