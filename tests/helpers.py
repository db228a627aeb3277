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
