"""Small helpers the tests share."""

from __future__ import annotations

import numpy as np

import backends
from common.params import init_params, masks
from common.spec import Spec


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
    for k in params:
        if ".out." in k:
            params[k] = 0.05 * rng.standard_normal(params[k].shape) * masks(spec).get(k, 1.0)
    return params


def binary(rng, n: int) -> np.ndarray:
    return (rng.random((n, 784)) < 0.3).astype(np.uint8)


def compare(*args: str, timeout: int = 1200, env: dict | None = None):
    """Run compare.py in a child process, as a user would."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "compare.py"), *args], cwd=root,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=timeout)


def reference_train(reference, spec: Spec, params: dict, train_x: np.ndarray, indices, noise):
    """The float64 reference's training loop (reference: backends/numpy/<model>.py): (params, optimizer state)."""
    from backends.numpy import optim
    from common.optim import learning_rates

    params, state = dict(params), optim.init_state(spec, params)
    for idx, eps, lr in zip(indices, noise, learning_rates(spec, 0, len(indices), len(train_x)), strict=True):
        _, grads = reference.objective_and_grads(spec, params, train_x[idx], eps)
        params = optim.update(spec, params, {k: -g for k, g in grads.items()}, state, lr)
    return params, state


def assert_fast_is_parity_and_twenty_steps_match(name: str, spec: Spec, reference, params: dict,
                                                 train_x: np.ndarray, rng) -> None:
    """Ten steps in fast mode equal ten in parity mode fed the noise fast mode draws; ten more in parity mode
    reach the reference's parameters and optimizer state after twenty steps (float64: 1e-12 and 1e-8)."""
    import pytest

    from common.models import family

    indices = rng.integers(0, len(train_x), size=(20, spec.batch_size))
    fast = make(name, spec, params, train_x)
    previewed = fast.preview_noise(10)
    assert previewed.shape == (10, *family(spec).noise_shape(spec, spec.train_k, spec.batch_size))
    steps_noise = np.concatenate([previewed, rng.standard_normal(previewed.shape)])
    fast_value = fast.train(indices[:10])
    parity = make(name, spec, params, train_x)
    assert parity.train(indices[:10], steps_noise[:10]) == pytest.approx(fast_value, rel=1e-12)
    for k, v in fast.params().items():
        assert_close(v, parity.params()[k], 1e-12, f"{k}, fast vs parity")
    parity.train(indices[10:], steps_noise[10:])
    assert_twenty_steps_like_reference(parity, spec, *reference_train(reference, spec, params, train_x, indices,
                                                                     steps_noise))


def assert_twenty_steps_like_reference(backend, spec: Spec, ref_params: dict, ref_state: dict) -> None:
    """After 20 steps: the backend's parameters and every optimizer slot equal the reference's to 1e-8."""
    from common.optim import SLOTS

    trained, state = backend.params(), backend.optimizer_state()
    assert int(state["step"]) == 20
    for k in ref_params:
        assert_close(trained[k], ref_params[k], 1e-8, f"{k} after 20 steps")
        for slot in SLOTS[spec.optimizer]:
            assert_close(state[slot][k], ref_state[slot][k], 1e-8, f"{slot} of {k}")
