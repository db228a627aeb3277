"""Shared fixtures. The data are the copy shipped inside the package (common/data), unless
$BINARIZED_MNIST_DIR names another folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import backends

ROOT = Path(__file__).resolve().parents[1]


def backend_param(name: str):
    """Skip a backend whose framework is absent, except in CI, where that is a failure."""
    skip = not backends.installed(name) and os.environ.get("CI") != "true"
    return pytest.param(name, marks=pytest.mark.skipif(skip, reason=f"{name} not installed"))


# the frameworks the tests run inside the pytest process: not those whose variant is a process of its own (keras reads
# KERAS_BACKEND once per process; tests/test_keras.py runs each of its engines in a child process)
IN_PROCESS = [name for name in backends.NAMES if not backends.framework(name).variant_env]
ROWS = [row for name in IN_PROCESS for row in backends.expand(name)]
BACKENDS = [backend_param(n) for n in ROWS]  # the float64 reference (numpy) included
FRAMEWORKS = [backend_param(n) for n in ROWS if n != "numpy"]
FAMILIES = ["mean-field", "iaf"]


@pytest.fixture(scope="session", autouse=True)
def shared_compile_cache(tmp_path_factory):
    """One Inductor cache for every run the tests start: compare.py keeps a run's compile caches inside its
    folder unless the user names one, and a cold compile per test run costs ~15 s of torch warm-up here."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path_factory.mktemp("torchinductor")))


@pytest.fixture(scope="session")
def dataset():
    from common import data

    return data.load()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
