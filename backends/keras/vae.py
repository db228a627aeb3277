"""The VAE written once in Keras 3, keras.layers and keras.ops only: the math of backends/numpy/vae.py, run by
whichever engine KERAS_BACKEND names (jax, torch or tensorflow).

    q0:   z = loc + softplus(scale_arg) * eps,        log q = sum(-eps^2/2 - log scale - log(2 pi)/2)
          (exp(scale_arg) for the scale with --encoder-scale exp)
    IAF:  [m | s] = MADE(z, context), sigma = sigmoid(s + 2), z <- sigma z + (1 - sigma) m, log q -= sum log sigma
    log w = log p(x|z) + log p(z) - log q(z|x)

Layer names are the canonical ones: a weight's path inside the VAE, "/" read as ".", is its canonical name
(encoder/l0/kernel is encoder.l0.kernel, flow_1/l0/context is flow.1.l0.context: torch allows no dot in a layer's
name). keras.layers.Dense keeps its
kernel as (in, out), the canonical layout, so nothing is transposed.

Some keras.ops lose float64 on some engines in Keras 3.15 (measured against NumPy, float64 operands): on torch
ops.matmul and ops.tensordot return float32 (relative error 5e-8); on jax ops.tanh returns float32 (1e-7); on jax
and torch ops.mean sums in float32 and casts back (1e-7); on torch ops.power of a Python float base computes in
float32 (2e-6); and on torch ops.softplus is F.softplus, which returns its argument itself above 20 (e^-20 ~ 2e-9
off log(1 + e^a)). The functions below (and optim.py) avoid them, on every engine alike, so that the one model holds
float64 parity on all three.

The training objective and the noise are written here once too: objective() in keras.ops, normal() with
keras.random seeded statelessly (the engine module chooses the seed state, see engine.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from common.params import masks
from common.spec import N_PIXELS, Spec

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)  # a Python float: it never promotes float32


def softplus(a):
    # log(1 + e^a) = -log sigmoid(-a): ops.log_sigmoid is exact, in float64, on all three engines
    return -ops.log_sigmoid(-a)


def tanh(a):
    # 2 sigmoid(2a) - 1 is tanh; ops.sigmoid keeps float64 on every engine (ops.tanh does not on jax)
    return 2.0 * ops.sigmoid(2.0 * a) - 1.0


def linear(a, kernel):
    """a (..., in) @ kernel (in, out), as one 2-D product. ops.einsum keeps float64 on every engine (ops.matmul and
    ops.tensordot do not on torch); given 2-D operands, TensorFlow computes it as one matrix product (with "..."
    over a 3-D operand, the default VAE's gradient took about 10x as long there, measured)."""
    shape = ops.shape(a)
    out = ops.einsum("ni,io->no", ops.reshape(a, (-1, shape[-1])), kernel)
    return ops.reshape(out, (*shape[:-1], kernel.shape[-1]))


ACTIVATIONS: dict[str, Callable] = {"relu": ops.relu, "tanh": tanh, "softplus": softplus}


class Dense(keras.layers.Dense):
    """keras.layers.Dense, its product taken by linear() so that float64 stays float64 on every engine."""

    def call(self, inputs, training=None):
        return self.activation(linear(inputs, self.kernel) + self.bias)


class MLP(keras.layers.Layer):
    """Hidden layers l0..l{n-1} with the activation, then the linear output layer l{n}."""

    def __init__(self, widths: tuple[int, ...], out_size: int, activation: str, **kwargs):
        super().__init__(**kwargs)
        act, policy = ACTIVATIONS[activation], self.dtype_policy
        # zeros: the weights are assigned (the canonical initial parameters, common/params.py)
        dense = dict(kernel_initializer="zeros", dtype=policy)
        self.hidden = [Dense(w, activation=act, name=f"l{i}", **dense) for i, w in enumerate(widths)]
        self.out = Dense(out_size, name=f"l{len(widths)}", **dense)

    def call(self, a):
        for layer in self.hidden:
            a = layer(a)
        return self.out(a)


class MadeLayer(keras.layers.Layer):
    """a @ (mask * kernel) + bias [+ context @ context_kernel]: one autoregressive layer of the MADE."""

    def __init__(self, mask: np.ndarray, context_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.mask_array, self.context_size = mask, context_size
        # a constant made here, eagerly, on the device once (not in build(), which Keras may trace in a scratch graph)
        self.mask = ops.convert_to_tensor(mask, self.compute_dtype)

    def build(self, input_shape) -> None:
        fan_in, fan_out = self.mask_array.shape
        self.kernel = self.add_weight(shape=(fan_in, fan_out), initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(fan_out,), initializer="zeros", name="bias")
        self.context = (self.add_weight(shape=(self.context_size, fan_out), initializer="zeros", name="context")
                        if self.context_size else None)

    def call(self, a, context=None):
        # masking in the forward pass also zeroes the gradient of the masked entries
        y = linear(a, self.kernel * self.mask) + self.bias
        if self.context is None:
            return y
        # context (n, L) against a's (k, n, .): the map is computed once per example and broadcast over the k samples
        return y + linear(context, self.context)


class IafStep(keras.layers.Layer):
    """[m | s] = MADE(z, context), sigma = sigmoid(s + 2): returns (sigma z + (1 - sigma) m, -log det)."""

    def __init__(self, spec: Spec, **kwargs):
        super().__init__(**kwargs)
        mask, L, policy = masks(spec.replace(flow_steps=1)), spec.latent_size, self.dtype_policy  # flow.0's masks
        self.act = ACTIVATIONS[spec.activation]
        self.l0 = MadeLayer(mask["flow.0.l0.kernel"], L, name="l0", dtype=policy)
        self.l1 = MadeLayer(mask["flow.0.l1.kernel"], L, name="l1", dtype=policy)
        self.out = MadeLayer(mask["flow.0.out.kernel"], name="out", dtype=policy)

    def call(self, z, context):
        a0 = self.act(self.l0(z, context))
        a1 = self.act(self.l1(a0, context))
        m, s = ops.split(self.out(a1), 2, axis=-1)
        sigma = ops.sigmoid(s + 2.0)
        minus_log_det = ops.sum(softplus(-(s + 2.0)), axis=-1)  # -sum log sigma, exact where sigma underflows
        return sigma * z + (1.0 - sigma) * m, minus_log_det


class VAE(keras.Model):
    """(x (n, 784), eps (k, n, L)) -> log w (k, n) = log p(x|z) + log p(z) - log q(z|x)."""

    def __init__(self, spec: Spec, **kwargs):
        super().__init__(dtype=spec.dtype, **kwargs)
        self.spec, policy = spec, self.dtype_policy
        self.encoder = MLP(spec.encoder, spec.encoder_out, spec.activation, name="encoder", dtype=policy)
        self.decoder = MLP(spec.decoder, N_PIXELS, spec.activation, name="decoder", dtype=policy)
        steps = spec.flow_steps if spec.variational == "iaf" else 0
        # flow_t, not flow.t: torch registers a layer as a submodule, whose name may not hold a dot
        self.flow = [IafStep(spec, name=f"flow_{t}", dtype=policy) for t in range(steps)]

    def call(self, inputs):
        x, eps = inputs
        L = self.spec.latent_size
        x = ops.cast(x, self.compute_dtype)  # binary pixels may come as uint8
        out = self.encoder(x)
        loc, scale_arg, context = out[:, :L], out[:, L:2 * L], out[:, 2 * L:]
        if self.spec.encoder_scale == "exp":  # its log is scale_arg itself
            scale, log_scale = ops.exp(scale_arg), scale_arg
        else:
            scale = softplus(scale_arg)
            log_scale = ops.log(scale)
        z = loc + scale * eps
        log_q_z = ops.sum(-0.5 * eps**2 - log_scale - HALF_LOG_2PI, axis=-1)
        for t, step in enumerate(self.flow):
            z, minus_log_det = step(ops.flip(z, axis=-1) if t > 0 else z, context)  # alternate the order
            log_q_z = log_q_z + minus_log_det
        logits = self.decoder(z)
        log_p_x_given_z = ops.sum(x * logits - softplus(logits), axis=-1)
        log_p_z = ops.sum(-0.5 * z**2 - HALF_LOG_2PI, axis=-1)
        return log_p_x_given_z + log_p_z - log_q_z

    def build_for(self) -> None:
        """Create the weights (zeros, to be assigned): one symbolic call, which computes nothing."""
        dtype = self.compute_dtype
        L = self.spec.latent_size
        self((keras.KerasTensor((None, N_PIXELS), dtype), keras.KerasTensor((None, None, L), dtype)))

    def canonical_names(self) -> list[str]:
        """The canonical name of each of trainable_variables, in that order: its path below the model, "/" read
        as "." (and flow_t as flow.t)."""
        return [re.sub(r"^flow_(\d+)\.", r"flow.\1.", v.path.split("/", 1)[1].replace("/", "."))
                for v in self.trainable_variables]


def objective(spec: Spec, log_w):
    """(k, n) log-weights -> (n,) training objective: mean_k log w (ELBO) or logmeanexp_k log w (IWAE bound)."""
    k = ops.cast(ops.shape(log_w)[0], log_w.dtype)  # ops.shape: k may be known only when the step runs (tensorflow)
    if spec.objective == "elbo":
        return ops.sum(log_w, axis=0) / k  # not ops.mean: float32 inside on jax and torch
    return ops.logsumexp(log_w, axis=0) - ops.log(k)


def normal(shape, state, dtype: str, generator: keras.random.SeedGenerator):
    """eps ~ N(0, I) of shape, drawn by keras.random.normal from the seed state given (2 words), statelessly: the
    generator only names the state, which keras.StatelessScope maps to `state`; nothing is advanced."""
    with keras.StatelessScope(state_mapping=[(generator.state, state)]):
        return keras.random.normal(shape, dtype=dtype, seed=generator)
