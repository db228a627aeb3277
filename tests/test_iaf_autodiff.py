"""One IAF step in each backend, differentiated by that framework's own autodiff: its Jacobian
dz_new/dz is lower-triangular (z_new_i depends on z_<=i only) with diagonal sigma, and the
log-determinant the backend adds to log q is the log of that diagonal's product."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FRAMEWORKS
from helpers import make, perturbed_params

from common.spec import Spec

SPEC = Spec(variational="iaf", encoder=(16, 16), decoder=(16, 16), latent_size=6, dtype="float64")


def torch_step(backend, z, context):
    import torch

    step = backend.model.flow[0]  # IafStep: (z, context) -> (new z, -log det)
    z_t, c_t = torch.from_numpy(z), torch.from_numpy(context)
    jac = torch.autograd.functional.jacobian(lambda v: step(v[None], c_t)[0][0], z_t)
    return jac.numpy(), -step(z_t[None], c_t)[1].item()


def jax_step(backend, z, context):
    import jax
    from flax import traverse_util

    from backends.jax.vae import IafStep

    flat = {k.removeprefix("flow.0."): v for k, v in backend.params().items() if k.startswith("flow.0.")}
    step, params = IafStep(SPEC), {"params": traverse_util.unflatten_dict(flat, sep=".")}
    jac = jax.jacfwd(lambda v: step.apply(params, v[None], context)[0][0])(z)
    return np.asarray(jac), -float(step.apply(params, z[None], context)[1][0])


def tensorflow_step(backend, z, context):
    import tensorflow as tf

    step = backend.model.flow[0]
    z_t = tf.Variable(z[None])
    with tf.GradientTape() as tape:
        z_new, minus_log_det = step(z_t, tf.constant(context))
    return tape.jacobian(z_new, z_t).numpy()[0, :, 0, :], -float(minus_log_det[0])


@pytest.mark.parametrize("name", FRAMEWORKS)
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
