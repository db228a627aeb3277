"""Shared fixtures. The data come from $BINARIZED_MNIST_DIR, else ../shared/data/binarized_mnist."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import backends

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK_MODULE = {"torch": "torch", "jax": "flax", "tensorflow": "tensorflow"}


def data_dir() -> Path:
    return Path(os.environ.get("BINARIZED_MNIST_DIR", ROOT.parent / "shared" / "data" / "binarized_mnist"))


def backend_param(name: str):
    """Skip a backend whose framework is absent, except in CI, where that is a failure."""
    installed = importlib.util.find_spec(FRAMEWORK_MODULE[name]) is not None
    skip = not installed and os.environ.get("CI") != "true"
    return pytest.param(name, marks=pytest.mark.skipif(skip, reason=f"{name} not installed"))


BACKENDS = [backend_param(n) for n in backends.NAMES]
FAMILIES = ["mean-field", "iaf"]


@pytest.fixture(scope="session")
def dataset():
    from common import data

    return data.load(data_dir())


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
