"""One IAF step in each backend, differentiated by that framework's own autodiff: its Jacobian
dz_new/dz is lower-triangular (z_new_i depends on z_<=i only) with diagonal sigma, and the
log-determinant the backend adds to log q is the log of that diagonal's product."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS
from test_parity import make, perturbed_params

from common.spec import Spec

SPEC = Spec(variational="iaf", hidden_size=16, latent_size=6, dtype="float64")


def torch_step(backend, z, context):
    import torch

    step = backend.model.flow[0]
    z_t, c_t = torch.from_numpy(z), torch.from_numpy(context)
    jac = torch.autograd.functional.jacobian(lambda v: step(v[None], c_t)[0][0], z_t)
    return jac.numpy(), step(z_t[None], c_t)[1].item()


def jax_step(backend, z, context):
    import jax

    from backends.jax import IafStep

    step, params = IafStep(SPEC), {"params": backend._params["flow"]["0"]}
    jac = jax.jacfwd(lambda v: step.apply(params, v[None], context)[0][0])(z)
    return np.asarray(jac), -float(step.apply(params, z[None], context)[1][0])


def tensorflow_step(backend, z, context):
    import tensorflow as tf

    def step(v):
        m, s = backend.model.made(0, v, tf.constant(context))
        sigma = tf.sigmoid(s + 2.0)
        return sigma * v + (1.0 - sigma) * m, tf.reduce_sum(tf.math.log_sigmoid(s + 2.0))

    z_t = tf.Variable(z[None])
    with tf.GradientTape() as tape:
        z_new, log_det = step(z_t)
    return tape.jacobian(z_new, z_t).numpy()[0, :, 0, :], float(log_det)


@pytest.mark.parametrize("name", BACKENDS)
def test_flow_step_jacobian_is_triangular_and_matches_log_det(name):
    rng = np.random.default_rng(7)
    params = perturbed_params(SPEC, rng)
    backend = make(name, SPEC, params, np.zeros((1, 784), np.uint8))
    z, context = rng.standard_normal(SPEC.latent_size), rng.standard_normal((1, SPEC.latent_size))
    jac, log_det = {"torch": torch_step, "jax": jax_step, "tensorflow": tensorflow_step}[name](backend, z, context)
    assert np.abs(np.triu(jac, 1)).max() == 0, "z_new_i must not depend on z_j, j > i"
    assert np.abs(np.tril(jac, -1)).max() > 1e-3, "the flow is not the identity"
    sign, log_abs_det = np.linalg.slogdet(jac)
    assert sign > 0 and log_abs_det == pytest.approx(log_det, rel=1e-12)
    assert np.all((np.diag(jac) > 0) & (np.diag(jac) < 1))  # sigma
