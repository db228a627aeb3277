"""The conditional VAE (common/models/cvae.py) in every backend against its NumPy float64 reference.

float64, the same parameters, data and noise: per-example objective, log-weights and the gradient of every
parameter to relative 1e-10, 20 optimizer steps to 1e-8 (parameters and optimizer state), fast mode equal to
parity mode; the reference's hand-written gradient against central finite differences; and the properties of
the family: the quadrant split, the prior network seeing x alone, and importance sampling with q(z|x,y)
estimating the same log p(y|x) as plain Monte Carlo from p(z|x).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS
from helpers import assert_close, binary, make

from backends.numpy import cvae, optim
from common.models import cvae as description
from common.optim import SLOTS, learning_rates
from common.params import init_params, param_shapes
from common.spec import Spec

TINY = dict(model="cvae", encoder=(16,), decoder=(12,), latent_size=4, batch_size=8, dtype="float64")
# (split, architecture, objective): each backend's values and gradients for every one. 20 optimizer steps run with
# the first (Adam, the family's default): the update itself is the VAE's, held for every optimizer in test_parity.py
VARIANTS = {
    "q1-relu-elbo": dict(quadrants=1, optimizer="adam", learning_rate=3e-3),
    "q2-tanh-deep-iwae-k3": dict(quadrants=2, activation="tanh", encoder=(16, 12), decoder=(10, 14),
                                 objective="iwae", train_k=3),
    "q3-softplus-linear-generation-elbo-k2": dict(quadrants=3, activation="softplus", decoder=(), train_k=2),
}
N_TRAIN = 24


def spec_of(variant: str) -> Spec:
    return Spec(**(TINY | VARIANTS[variant]))


def reference_train(spec: Spec, params: dict, train_x, indices, noise):
    params, state, means = dict(params), optim.init_state(spec, params), []
    for idx, eps, lr in zip(indices, noise, learning_rates(spec, 0, len(indices), len(train_x)), strict=True):
        value, grads = cvae.objective_and_grads(spec, params, train_x[idx], eps)
        params = optim.update(spec, params, {k: -g for k, g in grads.items()}, state, lr)
        means.append(value.mean())
    return params, state, np.array(means)


def assert_values_and_gradients_match_reference(backend, spec: Spec, params: dict, rng) -> None:
    x, eps = binary(rng, 10), rng.standard_normal((spec.train_k, 10, spec.latent_size))
    value, grads = backend.objective_and_grads(x, eps)
    ref_value, ref_grads = cvae.objective_and_grads(spec, params, x, eps)
    assert_close(value, ref_value, 1e-10, f"per-example {spec.objective}")
    assert set(grads) == set(ref_grads) == set(param_shapes(spec))
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-10, f"d {spec.objective} / d {k}")
    k_eps = rng.standard_normal((6, 10, spec.latent_size))
    log_w, elbo = backend.log_weights(x, 6, noise=k_eps)
    ref_log_w, ref_elbo = cvae.weights(spec, params, x, k_eps)
    assert_close(log_w, ref_log_w, 1e-10, "log w")
    assert_close(elbo, ref_elbo, 1e-10, "per-sample ELBO")


@pytest.mark.parametrize("variant", list(VARIANTS)[1:])
@pytest.mark.parametrize("name", BACKENDS)
def test_values_and_gradients_of_every_split_and_architecture_match_reference_float64(name, variant, rng):
    spec = spec_of(variant)
    params = init_params(spec)
    assert_values_and_gradients_match_reference(make(name, spec, params, binary(rng, N_TRAIN)), spec, params, rng)


@pytest.mark.parametrize("name", BACKENDS)
def test_values_gradients_twenty_steps_and_fast_mode_match_reference_float64(name, rng):
    """Parity mode against the reference (values, gradients, 20 Adam steps with the noise fast mode draws), and
    fast mode (noise drawn on the device, the compiled loop) ending where parity mode ends."""
    spec = spec_of("q1-relu-elbo")
    params, train_x = init_params(spec), binary(rng, N_TRAIN)
    indices = rng.integers(0, N_TRAIN, size=(20, spec.batch_size))
    fast = make(name, spec, params, train_x)
    noise = fast.preview_noise(20)
    assert noise.shape == (20, spec.train_k, spec.batch_size, spec.latent_size)
    fast_mean = fast.train(indices)
    parity = make(name, spec, params, train_x)
    assert_values_and_gradients_match_reference(parity, spec, params, rng)
    mean = parity.train(indices, noise)
    assert mean == pytest.approx(fast_mean, rel=1e-12)
    ref_params, ref_state, ref_means = reference_train(spec, params, train_x, indices, noise)
    assert mean == pytest.approx(ref_means.mean(), rel=1e-10)
    trained, state, fast_params = parity.params(), parity.optimizer_state(), fast.params()
    assert int(state["step"]) == int(fast.optimizer_state()["step"]) == 20
    for k in ref_params:
        assert_close(trained[k], ref_params[k], 1e-8, f"{k} after 20 steps")
        assert_close(fast_params[k], trained[k], 1e-12, f"{k}, fast mode against parity mode")
        for slot in SLOTS[spec.optimizer]:
            assert_close(state[slot][k], ref_state[slot][k], 1e-8, f"{slot} of {k}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_gradient_matches_finite_differences(variant, rng):
    spec = spec_of(variant)
    # small weights keep the objective near 100 nats, so rounding in the differences stays below 1e-8
    params = {k: 0.1 * rng.standard_normal(s) for k, s in param_shapes(spec).items()}
    x = binary(rng, 4).astype(float)
    eps = rng.standard_normal((spec.train_k, 4, spec.latent_size))
    _, grads = cvae.objective_and_grads(spec, params, x, eps)
    h = 1e-5

    def total() -> float:
        return cvae.objective_and_grads(spec, params, x, eps)[0].sum()

    for name, value in params.items():
        flat = value.ravel()
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = total()
            flat[i] = old - h
            down = total()
            flat[i] = old
            assert grads[name].ravel()[i] == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-5), (name, i)


def test_quadrant_split_is_the_papers():
    """x: bottom-left (1 quadrant), left half (2), all but bottom-right (3); y the rest; nested as x grows."""
    image = np.arange(784).reshape(28, 28)
    bottom_left, left, top = image[14:, :14].ravel(), image[:, :14].ravel(), image[:14].ravel()
    expected = {1: bottom_left, 2: left, 3: np.union1d(left, top)}
    for q, pixels in expected.items():
        spec = Spec(model="cvae", quadrants=q)
        observed, predicted = description.observed_pixels(spec), description.predicted_pixels(spec)
        np.testing.assert_array_equal(observed, np.sort(pixels))
        assert len(observed) == 196 * q and len(np.union1d(observed, predicted)) == 784
        assert len(np.intersect1d(observed, predicted)) == 0
    with pytest.raises(ValueError, match="quadrants must be 1, 2 or 3"):
        Spec(model="cvae", quadrants=4)


def test_prior_network_sees_x_alone_and_recognition_sees_y(rng):
    spec = spec_of("q1-relu-elbo")
    model = cvae.CVAE(spec, init_params(spec))
    image = binary(rng, 6).astype(float)
    changed = image.copy()
    changed[:, description.predicted_pixels(spec)] = 1 - changed[:, description.predicted_pixels(spec)]
    for a, b in zip(model.prior(image), model.prior(changed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(model.gaussian("recognition", image)[0], model.gaussian("recognition", changed)[0])


def recognition_as_prior(spec: Spec, params: dict) -> dict:
    """The recognition network made to compute the prior network's function: y's inputs weigh nothing."""
    out = dict(params)
    for name in params:
        if name.startswith("prior."):
            out[name.replace("prior.", "recognition.", 1)] = params[name]
    first = np.zeros((784, params["prior.l0.kernel"].shape[1]))
    first[description.observed_pixels(spec)] = params["prior.l0.kernel"]
    out["recognition.l0.kernel"] = first
    return out


def test_log_weight_is_the_likelihood_when_q_is_the_prior(rng):
    """With q(z|x,y) = p(z|x) the density terms cancel: log w = log p(y|x,z) exactly, and the importance-sampled
    log p(y|x) is the prior-sampled Monte Carlo estimate with the same draws."""
    spec = spec_of("q2-tanh-deep-iwae-k3")
    params = recognition_as_prior(spec, init_params(spec))
    image, eps = binary(rng, 5).astype(float), rng.standard_normal((7, 5, spec.latent_size))
    model = cvae.CVAE(spec, params)
    log_w = model.forward(image, eps)
    loc, scale = model.prior(image)
    assert_close(log_w, model.log_p_y_given_xz(image, loc + scale * eps), 1e-13, "log w = log p(y|x,z)")
    monte_carlo = cvae.prior_sampled_log_likelihood(spec, params, image, 7, np.random.default_rng(3))
    drawn = np.random.default_rng(3).standard_normal((7, 5, spec.latent_size))
    assert_close(monte_carlo, cvae.logmeanexp(model.forward(image, drawn), axis=0), 1e-13, "log p(y|x)")


def test_importance_and_prior_sampling_estimate_the_same_log_p_y_given_x(rng):
    """q(z|x,y) differs from p(z|x) here, yet both estimators find the same log p(y|x): small weights keep the
    likelihood smooth in z, so 4,000 draws pin both down to a few thousandths of a nat."""
    spec = Spec(**(TINY | dict(latent_size=2, quadrants=3)))
    params = {k: 0.05 * rng.standard_normal(s) for k, s in param_shapes(spec).items()}
    image = binary(rng, 4).astype(float)
    model = cvae.CVAE(spec, params)
    importance = cvae.logmeanexp(model.forward(image, rng.standard_normal((4000, 4, 2))), axis=0)
    monte_carlo = cvae.prior_sampled_log_likelihood(spec, params, image, 4000, rng, chunk=4)
    np.testing.assert_allclose(importance, monte_carlo, atol=0.015)
    elbo = model.forward(image, rng.standard_normal((4000, 4, 2))).mean(axis=0)
    assert np.all(elbo < importance - 0.03)  # q is not the posterior: the bound is strictly below


def test_completion_figure_and_table_columns_for_every_backend(tmp_path, rng):
    from types import SimpleNamespace

    from common.params import save_params
    from report import cvae as report

    spec = Spec(**(TINY | dict(quadrants=1)))
    params, runs = init_params(spec), []
    for backend in ("torch", "jax"):
        folder = tmp_path / f"{backend}-cvae"
        folder.mkdir()
        save_params(folder / "params.safetensors", params)
        runs.append(dict(backend=backend, family="cvae", model="cvae", status="ok", spec=spec.to_dict(),
                         folder=folder.name))
    test_x = binary(rng, 10_000)
    written = report.figures(tmp_path, {"runs": runs}, test_x)
    assert written == ["cvae_completions.png"] and (tmp_path / written[0]).stat().st_size > 0
    assert set(written) <= set(report.CAPTIONS)
    extra = description.extra_metrics(None, cvae, spec, params, SimpleNamespace(test=test_x), np.arange(2000))
    assert extra["observed"] == "the bottom-left quadrant"
    prior_sampled = extra[f"log p(y|x) from p(z|x), S={description.PRIOR_SAMPLES}"]
    assert np.isfinite(prior_sampled) and prior_sampled < 0
