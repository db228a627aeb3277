"""Every backend against the NumPy float64 reference (common/reference.py).

float64 with the same parameters, data and noise: the backends must agree with the reference
to relative 1e-10 (values and gradients) and 1e-8 after 20 RMSprop steps; anything looser
would let a wrong formula through, as the mutation tests at the end show.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, FAMILIES

import backends
from common import reference
from common.init import init_params, made_masks
from common.spec import Spec

SMALL = dict(hidden_size=32, latent_size=8, batch_size=16)


def assert_close(actual, expected, rtol, what=""):
    """Relative to the largest magnitude of the expected array, so near-zero entries don't dominate."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.abs(expected).max(), 1e-300)
    err = np.abs(np.asarray(actual, np.float64) - expected).max() / scale
    assert err <= rtol, f"{what}: max relative error {err:.3e} > {rtol:.0e}"


def make(name: str, spec: Spec, params: dict, train_x: np.ndarray):
    backend = backends.create(name)
    backend.load(spec, params, train_x)
    return backend


def perturbed_params(spec: Spec, rng) -> dict:
    """The init, with the zero-initialised flow output layers made non-zero (masks kept), so
    every term of the flow is exercised by the gradient checks."""
    params = init_params(spec)
    masks = made_masks(spec)
    for k in params:
        if ".out." in k:
            params[k] = 0.05 * rng.standard_normal(params[k].shape) * masks.get(k, 1.0)
    return params


def binary(rng, n: int) -> np.ndarray:
    return (rng.random((n, 784)) < 0.3).astype(np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_elbo_and_gradients_match_reference_float64(name, family, rng):
    spec = Spec(variational=family, dtype="float64")  # the default architecture, H=512, L=128
    params = perturbed_params(spec, rng)
    x, eps = binary(rng, 32), rng.standard_normal((32, spec.latent_size))
    backend = make(name, spec, params, x)
    elbo, grads = backend.elbo_and_grads(x, eps)
    ref_elbo, ref_grads = reference.elbo_and_grads(spec, params, x, eps)
    assert_close(elbo, ref_elbo, 1e-10, "per-example ELBO")
    assert set(grads) == set(ref_grads)
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-10, f"d ELBO / d {k}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_importance_sampled_log_px_matches_reference_float64(name, family, rng):
    spec = Spec(variational=family, dtype="float64", **SMALL)
    params = perturbed_params(spec, rng)
    x, eps = binary(rng, 40), rng.standard_normal((16, 40, spec.latent_size))
    elbo, log_px = make(name, spec, params, x).evaluate(x, 16, eps)
    ref_elbo, ref_log_px = reference.evaluate(spec, params, x, eps)
    assert_close(elbo, ref_elbo, 1e-10, "ELBO averaged over K")
    assert_close(log_px, ref_log_px, 1e-10, "log p(x)")
    assert np.all(log_px >= elbo)  # Jensen: the importance-sampled bound is tighter


def twenty_steps(name, spec, rng):
    params = init_params(spec)
    train_x = binary(rng, 300)
    indices = rng.integers(0, len(train_x), size=(20, spec.batch_size))
    noise = rng.standard_normal((20, spec.batch_size, spec.latent_size))
    backend = make(name, spec, params, train_x)
    mean_elbo = backend.train(indices, noise)
    return backend, params, train_x, indices, noise, mean_elbo


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_rmsprop_training_matches_reference_float64(name, family, rng):
    spec = Spec(variational=family, dtype="float64", **SMALL)
    backend, params, train_x, indices, noise, mean_elbo = twenty_steps(name, spec, rng)
    ref_params, ref_state, ref_elbos = reference.train(spec, params, train_x, indices, noise)
    assert mean_elbo == pytest.approx(ref_elbos.mean(), rel=1e-10)
    trained, state = backend.params(), backend.optimizer_state()
    for k in ref_params:
        assert_close(trained[k], ref_params[k], 1e-8, f"{k} after 20 steps")
        for slot in ("square_avg", "grad_avg"):
            assert_close(state[slot][k], ref_state[slot][k], 1e-8, f"{slot} of {k}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_float32_matches_reference(name, family, rng):
    """float32 rounding (unit roundoff 6e-8) accumulated over sums of 784 and 512 terms stays
    below 1e-5 of the ELBO's magnitude and 1e-4 of the largest gradient; dropping a term such
    as log p(z) (~100 nats) or using softplus vs exp for the scale moves them by far more."""
    spec = Spec(variational=family, dtype="float32")
    params = perturbed_params(spec, rng)
    x, eps = binary(rng, 32), rng.standard_normal((32, spec.latent_size))
    backend = make(name, spec, params, x)
    elbo, grads = backend.elbo_and_grads(x, eps)
    ref_elbo, ref_grads = reference.elbo_and_grads(spec, params, x, eps)
    assert_close(elbo, ref_elbo, 1e-5, "float32 ELBO")
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-4, f"float32 d ELBO / d {k}")
    k_eps = rng.standard_normal((50, 32, spec.latent_size))
    _, log_px = backend.evaluate(x, 50, k_eps)
    assert_close(log_px, reference.evaluate(spec, params, x, k_eps)[1], 1e-5, "float32 log p(x)")


@pytest.mark.parametrize("name", BACKENDS)
def test_masked_kernel_entries_get_no_gradient(name, rng):
    spec = Spec(variational="iaf", dtype="float64", **SMALL)
    params = perturbed_params(spec, rng)
    x = binary(rng, 8)
    _, grads = make(name, spec, params, x).elbo_and_grads(x, rng.standard_normal((8, spec.latent_size)))
    for k, mask in made_masks(spec).items():
        assert np.all(grads[k][mask == 0] == 0), k
        assert np.any(grads[k][mask == 1] != 0), k


# --- The tests above can fail: the mutations a careless port makes are caught. ---

def test_training_parity_detects_eps_inside_square_root(rng):
    """Keras's RMSprop convention, sqrt(v - g^2 + eps), differs from ours by far more than 1e-8."""
    spec = Spec(dtype="float64", **SMALL)
    params = init_params(spec)
    train_x = binary(rng, 300)
    indices = rng.integers(0, 300, size=(20, spec.batch_size))
    noise = rng.standard_normal((20, spec.batch_size, spec.latent_size))
    ours, _, _ = reference.train(spec, params, train_x, indices, noise)
    original = reference.rmsprop_update

    def eps_inside(spec_, p, g, state):
        rho, new = spec_.rmsprop_decay, {}
        for k, gk in g.items():
            sq = state["square_avg"][k] = rho * state["square_avg"][k] + (1 - rho) * gk * gk
            ga = state["grad_avg"][k] = rho * state["grad_avg"][k] + (1 - rho) * gk
            new[k] = p[k] - spec_.learning_rate * gk / np.sqrt(sq - ga * ga + spec_.rmsprop_eps)
        return new

    reference.rmsprop_update = eps_inside
    try:
        theirs, _, _ = reference.train(spec, params, train_x, indices, noise)
    finally:
        reference.rmsprop_update = original
    worst = max(np.abs(ours[k] - theirs[k]).max() / np.abs(ours[k]).max() for k in ours)
    assert worst > 1e-6


def test_training_parity_detects_other_init_or_batch_order(rng):
    spec = Spec(dtype="float64", **SMALL)
    train_x = binary(rng, 300)
    indices = rng.integers(0, 300, size=(20, spec.batch_size))
    noise = rng.standard_normal((20, spec.batch_size, spec.latent_size))
    base, _, _ = reference.train(spec, init_params(spec), train_x, indices, noise)
    other_seed, _, _ = reference.train(spec, init_params(spec, seed=1), train_x, indices, noise)
    other_order, _, _ = reference.train(spec, init_params(spec), train_x, indices[::-1], noise)
    for other in (other_seed, other_order):
        assert max(np.abs(base[k] - other[k]).max() / np.abs(base[k]).max() for k in base) > 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_fast_mode_is_the_parity_step_with_its_own_noise(name, family, rng):
    """Fast mode (noise drawn on the device, compiled loop) and parity mode (noise passed in)
    compute one function: fed the noise fast mode draws, parity mode ends at the same point."""
    spec = Spec(variational=family, dtype="float64", **SMALL)
    params, train_x = init_params(spec), binary(rng, 300)
    indices = rng.integers(0, len(train_x), size=(5, spec.batch_size))
    fast = make(name, spec, params, train_x)
    noise = fast.preview_noise(5)
    fast_elbo = fast.train(indices)
    parity = make(name, spec, params, train_x)
    assert parity.train(indices, noise) == pytest.approx(fast_elbo, rel=1e-12)
    fast_params, parity_params = fast.params(), parity.params()
    for k in params:
        assert_close(fast_params[k], parity_params[k], 1e-12, k)
    assert not np.allclose(fast.preview_noise(5), noise)  # the stream moved on
