"""Factor analysis (common/models/fa.py): every backend against the NumPy float64 reference, the reference against
finite differences, and the estimator against the exact evidence.

FA is the one family whose log p(x) is known in closed form, so it checks the importance-sampling estimator
itself: with q(z|x) the exact posterior every log-weight is log p(x); with any other q the IWAE estimate of each
backend (its own noise, through common.evaluation) climbs towards the exact evidence as K grows.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS
from helpers import assert_close, assert_fast_is_parity_and_twenty_steps_match, make

from backends.numpy import fa
from common import evaluation
from common.models import fa as description
from common.params import init_params, param_shapes
from common.spec import Spec

# D = 4 and L = 3: C's strict lower triangle has three entries; the default generator needs D's rows cycled
SPEC = Spec(model="fa", encoder=(), decoder=(), latent_size=3, fa_dim=4, fa_train=48, fa_valid=16, fa_test=200,
            batch_size=16, objective="iwae", train_k=3, optimizer="adam", learning_rate=1e-2, dtype="float64")


def exact_posterior(params: dict) -> dict:
    """Encoder parameters that make q(z|x) the model's exact posterior: N(S W^T Phi^-1 (x - b), S),
    S = (I + W^T Phi^-1 W)^-1, Phi = diag sigma^2."""
    w = params["decoder.loc.kernel"].T
    phi_inv = np.exp(-2.0 * params["decoder.log_scale"][0])
    covariance = np.linalg.inv(np.eye(w.shape[1]) + w.T @ (phi_inv[:, None] * w))
    gain = covariance @ w.T * phi_inv  # S W^T Phi^-1, (L, D)
    cholesky = np.linalg.cholesky(covariance)
    return params | {"encoder.loc.kernel": gain.T, "encoder.loc.bias": -gain @ params["decoder.loc.bias"],
                     "encoder.scale_tril": np.tril(cholesky, -1) + np.diag(np.log(np.diag(cholesky)))}


def test_data_are_the_tutorials_generator_whatever_the_run_seed():
    data = description.dataset(Spec(model="fa", encoder=(), decoder=(), latent_size=2, seed=7))
    assert data.train.shape == data.valid.shape == data.test.shape == (1000, 3)
    other_run = SPEC.replace(fa_dim=3, fa_train=1000, fa_test=1000, latent_size=2, seed=3)
    np.testing.assert_array_equal(description.dataset(other_run).test, data.test)
    loadings, scales = description.generator(3)
    np.testing.assert_array_equal(scales, [0.4, 0.2, 0.3])
    # the sample covariance of 1,000 draws is within a few standard errors of W W^T + diag sigma^2
    assert_close(np.cov(data.train.T), loadings @ loadings.T + np.diag(scales**2), 0.15, "train covariance")
    wide = description.dataset(SPEC)
    assert wide.train.shape == (48, 4) and wide.test.shape == (200, 4) and wide.valid.shape == (16, 4)
    np.testing.assert_array_equal(description.generator(4)[0][3], loadings[0])


def test_reference_gradient_matches_finite_differences(rng):
    for objective in ("elbo", "iwae"):
        spec = SPEC.replace(objective=objective)
        params, x = init_params(spec), description.dataset(spec).train[:6]
        eps = rng.standard_normal((spec.train_k, 6, spec.latent_size))
        _, grads = fa.objective_and_grads(spec, params, x, eps)
        for name, value in params.items():
            numeric = np.zeros_like(value)
            for index in np.ndindex(value.shape):
                for sign in (1.0, -1.0):
                    moved = params | {name: value.copy()}
                    moved[name][index] += sign * 1e-6
                    numeric[index] += sign * fa.objective_and_grads(spec, moved, x, eps)[0].sum() / 2e-6
            assert_close(grads[name], numeric, 1e-7, f"{objective}: d / d {name}")
        assert np.all(np.triu(grads["encoder.scale_tril"], 1) == 0)  # the masked triangle is never used


def test_exact_posterior_makes_every_log_weight_the_exact_evidence(rng):
    """log p(x|z) + log p(z) - log q(z|x) = log p(x) for every z when q is the true posterior: this ties the
    log-weight of backends/numpy/fa.py to the closed form of common/models/fa.py, both ways."""
    params = exact_posterior(init_params(SPEC))
    x = description.dataset(SPEC).test[:20]
    log_w, elbo = fa.weights(SPEC, params, x, rng.standard_normal((5, 20, SPEC.latent_size)))
    assert_close(log_w, np.broadcast_to(description.log_evidence(params, x), (5, 20)), 1e-12, "log w")
    np.testing.assert_array_equal(elbo, log_w)


@pytest.mark.parametrize("name", BACKENDS)
def test_log_weights_and_gradients_match_reference_float64(name, rng):
    params, train_x = init_params(SPEC), description.dataset(SPEC).train
    backend = make(name, SPEC, params, train_x)
    x = train_x[:12]
    eps = rng.standard_normal((16, 12, SPEC.latent_size))
    log_w, elbo = backend.log_weights(x, 16, noise=eps)
    ref_log_w, ref_elbo = fa.weights(SPEC, params, x, eps)
    assert_close(log_w, ref_log_w, 1e-10, "log w")
    assert_close(elbo, ref_elbo, 1e-10, "per-sample ELBO")
    value, grads = backend.objective_and_grads(x, eps[:SPEC.train_k])
    ref_value, ref_grads = fa.objective_and_grads(SPEC, params, x, eps[:SPEC.train_k])
    assert_close(value, ref_value, 1e-10, "per-example IWAE bound")
    assert set(grads) == set(ref_grads) == set(param_shapes(SPEC))
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-10, f"d bound / d {k}")


@pytest.mark.parametrize("name", BACKENDS)
def test_fast_mode_is_parity_mode_and_twenty_steps_match_reference_float64(name, rng):
    """Ten steps in fast mode equal ten in parity mode fed the noise fast mode draws; ten more in parity mode
    reach the reference's parameters and Adam state after twenty steps."""
    params = init_params(SPEC)
    assert_fast_is_parity_and_twenty_steps_match(name, SPEC, fa, params, description.dataset(SPEC).train, rng)


@pytest.mark.parametrize("name", BACKENDS)
def test_iwae_estimate_converges_to_the_exact_evidence(name):
    """Each backend's own K-sample estimate (common.evaluation, seeded stream) of the mean test log p(x), with q
    wider than the exact posterior and off its centre (so the weights are bounded): half a nat below the exact
    evidence at K = 1, a few hundredths at K = 10, and within 0.01 nats at K = 1000. (The thresholds are over
    six standard deviations of the evaluation noise of 200 examples away from the expected gaps, 0.50, 0.033,
    0.0016 and 0.0004 nats, measured over 40 streams.)"""
    params = exact_posterior(init_params(SPEC))
    params |= {"encoder.loc.bias": params["encoder.loc.bias"] + 0.3,
               "encoder.scale_tril": params["encoder.scale_tril"] + 0.3 * np.eye(SPEC.latent_size)}
    test_x = description.dataset(SPEC).test
    exact = description.log_evidence(params, test_x)
    backend = make(name, SPEC, params, test_x)
    gaps = [float(np.mean(exact - evaluation.evaluate(backend, test_x, k, stream=2)[1])) for k in (1, 10, 100, 1000)]
    assert gaps[0] > 0.1 and gaps[1] > 0, gaps  # below the evidence (Jensen) ...
    assert gaps[1] < gaps[0] / 2 and abs(gaps[2]) < 0.03, gaps  # ... ever less so ...
    assert abs(gaps[3]) < 0.01, gaps  # ... and at K = 1000 within 0.01 nats


def test_extra_metrics_report_exact_evidence_and_estimates(rng):
    spec = SPEC.replace(fa_test=50)
    params, data = init_params(spec), description.dataset(spec)
    backend = make("numpy", spec, params, data.train)
    extra = description.extra_metrics(backend, None, spec, params, data, np.arange(50))
    assert list(extra) == ["exact log p(x)", *(f"IWAE K={k}" for k in description.IWAE_K),
                           "generating model's log p(x)"]
    assert extra["IWAE K=1"] < extra["IWAE K=1000"] < extra["exact log p(x)"]
    assert extra["generating model's log p(x)"] > extra["exact log p(x)"]  # the untrained model fits worse


def test_check_refuses_hidden_layers():
    with pytest.raises(ValueError, match="factor analysis is linear"):
        SPEC.replace(encoder=(8,))
