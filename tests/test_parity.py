"""Every backend against the NumPy float64 reference (backends/numpy).

float64 with the same parameters, data and noise: the backends must agree with the reference to
relative 1e-10 (values and gradients) and 1e-8 after 20 optimizer steps, for every optimizer,
schedule, objective, depth and activation; anything looser would let a wrong formula through, as
the mutation tests at the end show. The reference's own gradient is checked against finite
differences in tests/test_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, FAMILIES
from helpers import assert_close, assert_twenty_steps_like_reference, binary, make, perturbed_params

import backends
from backends.numpy import optim, vae
from common.optim import learning_rates
from common.params import init_params, masks
from common.spec import Spec

SMALL = dict(encoder=(32, 32), decoder=(32, 32), latent_size=8, batch_size=16)
# (architecture, objective) variants: each backend's gradient and 20-step training for both families
MODEL_VARIANTS = {
    "relu-elbo": dict(),
    "tanh-deep-iwae-k3": dict(activation="tanh", encoder=(32, 24, 16), decoder=(16, 40), objective="iwae",
                              train_k=3, flow_hidden=24),
    "softplus-shallow-elbo-k2": dict(activation="softplus", encoder=(32,), decoder=(24,), train_k=2),
    "exp-scale-elbo": dict(activation="tanh", encoder_scale="exp"),  # q's scale exp(a), as Burda et al.
}
# optimizers and schedules: 20 steps, mean-field (the update does not depend on the model)
OPTIMIZERS = {
    "adam": dict(optimizer="adam", learning_rate=3e-3),
    "adam-burda-schedule": dict(optimizer="adam", adam_eps=1e-4, lr_schedule="burda", learning_rate=3e-3),
    "adam-step-schedule": dict(optimizer="adam", lr_schedule="step", lr_decay=0.5, lr_decay_every=7),
    "adagrad": dict(optimizer="adagrad", learning_rate=0.02),
    # its v starting at one keeps the first steps small: a larger rate so that 20 steps move the parameters
    "adam-burda-code": dict(optimizer="adam-burda", adam_beta1=0.99, adam_eps=1e-4, lr_schedule="burda",
                            learning_rate=0.3),
}
N_TRAIN = 48  # 3 batches of 16 per epoch: the Burda schedule changes rate at steps 3 and 12 of the 20


def reference_train(spec: Spec, params: dict, train_x, indices, noise):
    """The reference's training loop: (params, optimizer state, per-step mean objective)."""
    params, state, means = dict(params), optim.init_state(spec, params), []
    for idx, eps, lr in zip(indices, noise, learning_rates(spec, 0, len(indices), len(train_x)), strict=True):
        value, grads = vae.objective_and_grads(spec, params, train_x[idx], eps)
        params = optim.update(spec, params, {k: -g for k, g in grads.items()}, state, lr)
        means.append(value.mean())
    return params, state, np.array(means)


def twenty_steps(name: str, spec: Spec, rng):
    params = init_params(spec)
    train_x = binary(rng, N_TRAIN)
    indices = rng.integers(0, len(train_x), size=(20, spec.batch_size))
    noise = rng.standard_normal((20, spec.train_k, spec.batch_size, spec.latent_size))
    backend = make(name, spec, params, train_x)
    mean = backend.train(indices, noise)
    return backend, reference_train(spec, params, train_x, indices, noise), mean


def assert_trained_like_reference(backend, spec, reference, mean):
    ref_params, ref_state, ref_means = reference
    assert mean == pytest.approx(ref_means.mean(), rel=1e-10)
    assert_twenty_steps_like_reference(backend, spec, ref_params, ref_state)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_objective_and_gradients_match_reference_float64(name, family, rng):
    spec = Spec(variational=family, dtype="float64")  # the default architecture: 512-512, L = 128
    params = perturbed_params(spec, rng)
    x, eps = binary(rng, 32), rng.standard_normal((1, 32, spec.latent_size))
    value, grads = make(name, spec, params, x).objective_and_grads(x, eps)
    ref_value, ref_grads = vae.objective_and_grads(spec, params, x, eps)
    assert_close(value, ref_value, 1e-10, "per-example ELBO")
    assert set(grads) == set(ref_grads)
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-10, f"d ELBO / d {k}")


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS)[1:])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_objective_gradients_of_every_depth_activation_and_objective_match_reference(name, family, variant, rng):
    spec = Spec(variational=family, dtype="float64", **(SMALL | MODEL_VARIANTS[variant]))
    params = perturbed_params(spec, rng)
    x, eps = binary(rng, 12), rng.standard_normal((spec.train_k, 12, spec.latent_size))
    value, grads = make(name, spec, params, x).objective_and_grads(x, eps)
    ref_value, ref_grads = vae.objective_and_grads(spec, params, x, eps)
    assert_close(value, ref_value, 1e-10, f"per-example {spec.objective}")
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-10, f"d {spec.objective} / d {k}")


@pytest.mark.parametrize("variant", list(MODEL_VARIANTS)[:2])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_log_weights_match_reference_float64(name, family, variant, rng):
    spec = Spec(variational=family, dtype="float64", **(SMALL | MODEL_VARIANTS[variant]))
    params = perturbed_params(spec, rng)
    x, eps = binary(rng, 40), rng.standard_normal((16, 40, spec.latent_size))
    log_w, elbo = make(name, spec, params, x).log_weights(x, 16, noise=eps)
    assert np.shape(log_w) == np.shape(elbo) == (16, 40)
    assert_close(log_w, vae.log_weights(spec, params, x, eps), 1e-10, "log w")


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_training_matches_reference_float64(name, family, variant, rng):
    spec = Spec(variational=family, dtype="float64", **(SMALL | MODEL_VARIANTS[variant]))
    backend, reference, mean = twenty_steps(name, spec, rng)
    assert_trained_like_reference(backend, spec, reference, mean)


@pytest.mark.parametrize("variant", ["eager", "compiled"])
@pytest.mark.parametrize("family", FAMILIES)
def test_torch_variant_rows_train_like_the_reference(variant, family, rng):
    """The torch rows beside the torch backend in the benchmark: torch[eager], PyTorch as a user gets it by
    default, with nothing compiled; torch[compiled], its training forward and backward compiled as well as its
    optimizer step. Both take the same 20 steps as the reference."""
    if not backends.installed("torch"):
        pytest.skip("torch is not installed")
    import torch

    spec = Spec(variational=family, dtype="float64", **SMALL)
    backend, reference, mean = twenty_steps(f"torch[{variant}]", spec, rng)
    assert backend.name == f"torch[{variant}]"
    compiled_step = backend.optimizer.compiled_step is not backend.optimizer.eager_step
    compiled_model = isinstance(backend.forward, torch._dynamo.eval_frame.OptimizedModule)
    assert (compiled_step, compiled_model) == ((False, False) if variant == "eager" else (True, True))
    assert_trained_like_reference(backend, spec, reference, mean)


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
@pytest.mark.parametrize("name", ["torch", "torch[eager]"])
def test_torchs_adam_and_adagrad_are_fused_as_tuned_and_default_as_eager(name, optimizer, rng):
    """The torch row steps Adam and Adagrad with torch's fused kernels (nothing compiled); torch[eager] with
    PyTorch's default implementation; both take the same 20 steps as the reference."""
    if not backends.installed("torch"):
        pytest.skip("torch is not installed")
    spec = Spec(dtype="float64", **(SMALL | OPTIMIZERS[optimizer]))
    backend, reference, mean = twenty_steps(name, spec, rng)
    optimizer_ = backend.optimizer
    assert optimizer_.torch_optimizer.defaults["fused"] is (True if name == "torch" else None)
    assert optimizer_.compiled_step is optimizer_.eager_step
    assert_trained_like_reference(backend, spec, reference, mean)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", BACKENDS)
def test_every_optimizer_and_schedule_matches_reference_float64(name, optimizer, rng):
    spec = Spec(dtype="float64", **(SMALL | OPTIMIZERS[optimizer]))
    backend, reference, mean = twenty_steps(name, spec, rng)
    assert_trained_like_reference(backend, spec, reference, mean)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_float32_matches_reference(name, family, rng):
    """float32 rounding (unit roundoff 6e-8) accumulated over sums of 784 and 512 terms stays
    below 1e-5 of the ELBO's magnitude and 1e-4 of the largest gradient; dropping a term such
    as log p(z) (~100 nats) or using softplus vs exp for the scale moves them by far more."""
    if name == "numpy":
        pytest.skip("the numpy backend is float64 only")
    spec = Spec(variational=family, dtype="float32")
    params = perturbed_params(spec, rng)
    x, eps = binary(rng, 32), rng.standard_normal((1, 32, spec.latent_size))
    backend = make(name, spec, params, x)
    value, grads = backend.objective_and_grads(x, eps)
    ref_value, ref_grads = vae.objective_and_grads(spec, params, x, eps)
    assert_close(value, ref_value, 1e-5, "float32 ELBO")
    for k in ref_grads:
        assert_close(grads[k], ref_grads[k], 1e-4, f"float32 d ELBO / d {k}")
    k_eps = rng.standard_normal((50, 32, spec.latent_size))
    log_w = backend.log_weights(x, 50, noise=k_eps)[0]
    assert_close(log_w, vae.log_weights(spec, params, x, k_eps), 1e-5, "float32 log w")


@pytest.mark.parametrize("name", BACKENDS)
def test_masked_kernel_entries_get_no_gradient(name, rng):
    spec = Spec(variational="iaf", dtype="float64", **SMALL)
    params = perturbed_params(spec, rng)
    x = binary(rng, 8)
    _, grads = make(name, spec, params, x).objective_and_grads(x, rng.standard_normal((1, 8, spec.latent_size)))
    for k, mask in masks(spec).items():
        assert np.all(grads[k][mask == 0] == 0), k
        assert np.any(grads[k][mask == 1] != 0), k


# --- The tests above can fail: the mutations a careless port makes are caught. ---

def worst_relative_difference(a: dict, b: dict) -> float:
    return max(np.abs(a[k] - b[k]).max() / np.abs(a[k]).max() for k in a)


def test_training_parity_detects_eps_inside_square_root(rng, monkeypatch):
    """Keras's RMSprop convention, sqrt(v - g^2 + eps), differs from ours by far more than 1e-8."""
    spec = Spec(dtype="float64", **SMALL)
    train_x = binary(rng, 300)
    indices = rng.integers(0, 300, size=(20, spec.batch_size))
    noise = rng.standard_normal((20, 1, spec.batch_size, spec.latent_size))
    ours, _, _ = reference_train(spec, init_params(spec), train_x, indices, noise)

    def eps_inside(spec_, p, g, state, lr):
        rho, new = spec_.rmsprop_decay, {}
        for k, gk in g.items():
            sq = state["square_avg"][k] = rho * state["square_avg"][k] + (1 - rho) * gk * gk
            ga = state["grad_avg"][k] = rho * state["grad_avg"][k] + (1 - rho) * gk
            new[k] = p[k] - lr * gk / np.sqrt(sq - ga * ga + spec_.rmsprop_eps)
        state["step"] += 1
        return new

    monkeypatch.setattr(optim, "update", eps_inside)
    theirs, _, _ = reference_train(spec, init_params(spec), train_x, indices, noise)
    assert worst_relative_difference(ours, theirs) > 1e-6


def test_training_parity_detects_other_init_batch_order_or_objective(rng):
    spec = Spec(dtype="float64", **SMALL)
    train_x = binary(rng, 300)
    indices = rng.integers(0, 300, size=(20, spec.batch_size))
    noise = rng.standard_normal((20, 3, spec.batch_size, spec.latent_size))
    base, _, _ = reference_train(spec.replace(train_k=3), init_params(spec), train_x, indices, noise)
    others = [reference_train(spec.replace(train_k=3), init_params(spec, seed=1), train_x, indices, noise),
              reference_train(spec.replace(train_k=3), init_params(spec), train_x, indices[::-1], noise),
              reference_train(spec.replace(train_k=3, objective="iwae"), init_params(spec), train_x, indices, noise)]
    for other, _, _ in others:
        assert worst_relative_difference(base, other) > 1e-4


@pytest.mark.parametrize("variant", ["relu-elbo", "tanh-deep-iwae-k3"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", BACKENDS)
def test_fast_mode_is_the_parity_step_with_its_own_noise(name, family, variant, rng):
    """Fast mode (noise drawn on the device, compiled loop) and parity mode (noise passed in)
    compute one function: fed the noise fast mode draws, parity mode ends at the same point."""
    spec = Spec(variational=family, dtype="float64", **(SMALL | MODEL_VARIANTS[variant]))
    params, train_x = init_params(spec), binary(rng, 300)
    indices = rng.integers(0, len(train_x), size=(5, spec.batch_size))
    fast = make(name, spec, params, train_x)
    noise = fast.preview_noise(5)
    assert noise.shape == (5, spec.train_k, spec.batch_size, spec.latent_size)
    fast_value = fast.train(indices)
    parity = make(name, spec, params, train_x)
    assert parity.train(indices, noise) == pytest.approx(fast_value, rel=1e-12)
    fast_params, parity_params = fast.params(), parity.params()
    for k in params:
        assert_close(fast_params[k], parity_params[k], 1e-12, k)
    assert not np.allclose(fast.preview_noise(5), noise)  # the stream moved on
