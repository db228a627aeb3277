"""The NumPy reference itself: its hand-written gradient, its flow's log-determinant, its masks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAMILIES

from common import reference
from common.init import init_params, made_degrees, made_masks, param_shapes
from common.spec import Spec

TINY = dict(hidden_size=12, latent_size=5, batch_size=4)


def random_params(spec: Spec, rng) -> dict:
    params = {k: 0.3 * rng.standard_normal(s) for k, s in param_shapes(spec).items()}
    return {k: v * made_masks(spec).get(k, 1.0) for k, v in params.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_hand_written_gradient_matches_finite_differences(family, rng):
    spec = Spec(variational=family, **TINY)
    params = random_params(spec, rng)
    x = (rng.random((4, 784)) < 0.3).astype(float)
    eps = rng.standard_normal((4, spec.latent_size))
    _, grads = reference.elbo_and_grads(spec, params, x, eps)
    h = 1e-5
    for name, value in params.items():
        flat = value.ravel()
        for i in rng.choice(flat.size, size=min(8, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = reference.elbo(spec, params, x, eps).sum()
            flat[i] = old - h
            down = reference.elbo(spec, params, x, eps).sum()
            flat[i] = old
            numeric = (up - down) / (2 * h)
            # central differences: O(h^2) truncation plus ~1e-16 * |ELBO| / h rounding, far below 1e-5
            assert grads[name].ravel()[i] == pytest.approx(numeric, rel=1e-5, abs=1e-5), (name, i)


def test_made_masks_are_autoregressive():
    spec = Spec(variational="iaf", hidden_size=37, latent_size=9)
    masks = made_masks(spec)
    # connectivity input -> output through both hidden layers
    path = masks["flow.0.l0.kernel"] @ masks["flow.0.l1.kernel"] @ masks["flow.0.out.kernel"]
    L = spec.latent_size
    for block in (path[:, :L], path[:, L:]):  # m and s
        assert np.all(np.tril(block) == 0), "output i must not see inputs >= i"
        assert np.all(block[np.triu_indices(L, 1)] > 0), "output i sees every input < i (H >= L)"
    inputs, hidden = made_degrees(L, spec.hidden_size)
    assert hidden.min() == 1 and hidden.max() == L - 1


def flow_output(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return reference.Model(spec, params).forward(x, eps)["z"]


def test_flow_step_jacobian_is_strictly_lower_triangular(rng):
    """One step, numerically: d[m, s]/dz vanishes on and above the diagonal."""
    spec = Spec(variational="iaf", flow_steps=1, **TINY)
    params = random_params(spec, rng)
    model = reference.Model(spec, params)
    L, context = spec.latent_size, rng.standard_normal((1, spec.latent_size))

    def made(z):
        a0 = reference.relu(z @ model.w["flow.0.l0.kernel"] + params["flow.0.l0.bias"]
                            + context @ params["flow.0.l0.context"])
        a1 = reference.relu(a0 @ model.w["flow.0.l1.kernel"] + params["flow.0.l1.bias"]
                            + context @ params["flow.0.l1.context"])
        return model.dense("flow.0.out", a1)[0]

    z, h = rng.standard_normal((1, L)), 1e-6
    jac = np.stack([(made(z + h * np.eye(L)[j]) - made(z - h * np.eye(L)[j])) / (2 * h)
                    for j in range(L)], axis=1)  # (2L, L): d out_i / d z_j
    for block in (jac[:L], jac[L:]):
        assert np.abs(np.triu(block)).max() < 1e-9
        assert np.abs(np.tril(block, -1)).max() > 1e-3


def test_log_q_equals_base_density_minus_log_det_of_full_jacobian(rng):
    """log q(z_T|x) = log N(eps; 0, I) - log|det dz_T/d eps|, the Jacobian taken numerically."""
    spec = Spec(variational="iaf", flow_steps=2, **TINY)
    params = random_params(spec, rng)
    x = (rng.random((3, 784)) < 0.3).astype(float)
    eps = rng.standard_normal((3, spec.latent_size))
    log_q = reference.Model(spec, params).forward(x, eps)["log_q_z"]
    L, h = spec.latent_size, 1e-6
    for n in range(3):
        cols = []
        for j in range(L):
            step = h * np.eye(L)[j]
            up = flow_output(spec, params, x[n:n + 1], eps[n:n + 1] + step)[0]
            down = flow_output(spec, params, x[n:n + 1], eps[n:n + 1] - step)[0]
            cols.append((up - down) / (2 * h))
        sign, log_det = np.linalg.slogdet(np.stack(cols, axis=1))
        log_base = np.sum(-0.5 * eps[n] ** 2 - reference.HALF_LOG_2PI)
        assert sign != 0
        assert log_q[n] == pytest.approx(log_base - log_det, abs=1e-6)


def test_flow_starts_near_identity():
    """Zero MADE output layer: sigma = sigmoid(2), m = 0, so z_T = sigmoid(2)^T z_0 (reversed)."""
    spec = Spec(variational="iaf", **TINY)
    params = init_params(spec)
    rng = np.random.default_rng(0)
    x = (rng.random((2, 784)) < 0.3).astype(float)
    eps = rng.standard_normal((2, spec.latent_size))
    model = reference.Model(spec, params)
    z_t = model.forward(x, eps)["z"]
    z_0 = model.tape["flow"][0]["z_in"]
    sigma = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(z_t, sigma ** 2 * z_0[:, ::-1], rtol=1e-12)


def test_init_follows_pytorch_linear_rule_and_seed():
    spec = Spec()
    a, b, c = init_params(spec, 0), init_params(spec, 0), init_params(spec, 1)
    for name, value in a.items():
        fan_in = param_shapes(spec)[name.replace(".bias", ".kernel")][0]
        assert np.abs(value).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(value).max() > 0.9 / np.sqrt(fan_in)  # fills the range, not a smaller one
        np.testing.assert_array_equal(value, b[name])
        assert not np.array_equal(value, c[name])
