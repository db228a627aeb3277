"""The variational RNN (common/models/vrnn.py): the NumPy float64 reference against finite differences for both
cells, every backend against the reference (log-weights, gradients, twenty training steps), and its FLOP count."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS
from helpers import assert_close, assert_fast_is_parity_and_twenty_steps_match, binary, make

from backends.numpy import vrnn
from common.models import vrnn as description
from common.params import init_params, param_shapes
from common.spec import Spec

SPEC = Spec(model="vrnn", encoder=(8,), decoder=(6,), latent_size=3, rnn_hidden=5, activation="tanh",
            batch_size=6, train_k=2, optimizer="adam", learning_rate=3e-3, dtype="float64")
LSTM = SPEC.replace(rnn_cell="lstm", encoder=(), decoder=(), activation="relu")
CELLS = pytest.mark.parametrize("spec", [SPEC, LSTM], ids=["gru-tanh", "lstm-linear"])


def noise(rng, spec: Spec, k: int, n: int) -> np.ndarray:
    return rng.standard_normal(description.noise_shape(spec, k, n))


@CELLS
def test_reference_gradient_matches_finite_differences(spec, rng):
    """Backpropagation through time by hand, checked on 12 entries of every parameter (central differences)."""
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in init_params(spec).items()}
    x, eps = binary(rng, 2), noise(rng, spec, spec.train_k, 2)
    _, grads = vrnn.objective_and_grads(spec, params, x, eps)
    assert set(grads) == set(param_shapes(spec))
    for name, value in params.items():
        entries = list(np.ndindex(value.shape))
        picked = [entries[i] for i in rng.choice(len(entries), min(12, len(entries)), replace=False)]
        numeric = []
        for index in picked:
            moved = [params | {name: value.copy()} for _ in range(2)]
            moved[0][name][index] += 1e-5
            moved[1][name][index] -= 1e-5
            up, down = (vrnn.objective_and_grads(spec, p, x, eps)[0].sum() for p in moved)
            numeric.append((up - down) / 2e-5)
        assert_close([grads[name][i] for i in picked], numeric, 1e-6, f"d ELBO / d {name}")


@pytest.mark.parametrize("name", BACKENDS)
@CELLS
def test_log_weights_and_gradients_match_reference_float64(name, spec, rng):
    params, train_x = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in init_params(spec).items()}, binary(rng, 24)
    backend = make(name, spec, params, train_x)
    x, eps = train_x[:5], noise(rng, spec, 4, 5)
    log_w = backend.log_weights(x, 4, noise=eps)
    log_w = log_w[0] if isinstance(log_w, tuple) else log_w
    assert_close(log_w, vrnn.log_weights(spec, params, x, eps), 1e-10, "log w")
    value, grads = backend.objective_and_grads(x, eps[:spec.train_k])
    ref_value, ref_grads = vrnn.objective_and_grads(spec, params, x, eps[:spec.train_k])
    assert_close(value, ref_value, 1e-10, "per-example ELBO")
    assert set(grads) == set(ref_grads) == set(param_shapes(spec))
    for k in ref_grads:
        assert np.any(ref_grads[k] != 0), k
        assert_close(grads[k], ref_grads[k], 1e-10, f"d ELBO / d {k}")


@pytest.mark.parametrize("name", BACKENDS)
def test_fast_mode_is_parity_mode_and_twenty_steps_match_reference_float64(name, rng):
    """Ten steps in fast mode equal ten in parity mode fed the noise fast mode draws; ten more in parity mode
    reach the reference's parameters and Adam state after twenty steps."""
    params = init_params(SPEC)
    assert_fast_is_parity_and_twenty_steps_match(name, SPEC, vrnn, params, binary(rng, 24), rng)


def test_flops_count_every_map_once_per_step():
    """φ_x once per image and step, the rest once per trajectory and step; the training count adds the backward."""
    H, L, T = SPEC.rnn_hidden, SPEC.latent_size, 28
    per_sample = (L * H + H * 6 + 6 * 2 * L + 2 * H * 8 + 8 * 2 * L + 2 * H * 6 + 6 * 28 + 2 * H * 3 * H + H * 3 * H)
    assert description.flops_per_example(SPEC, 5, training=False) == 2 * T * (28 * H + 5 * per_sample)
    assert description.flops_per_example(SPEC, 1, training=True) == 2 * T * (2 * 28 * H + 3 * per_sample)
