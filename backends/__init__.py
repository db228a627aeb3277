"""Backends: one module per framework, each a complete translation of one small contract.

A backend module imports its framework only when it is used, so `import backends` and
`import common` import none; a missing framework becomes BackendUnavailable, naming the
package to install, and the other backends still run.

The contract (every array crossing it is NumPy; names and layouts are canonical, see common/init.py):

    class Backend:
        name: str
        def load(self, spec, params, train_x) -> None
            # params: dict name -> array (any float dtype), cast to spec.dtype;
            # train_x: (N, 784) uint8, kept on the device; the optimizer state starts at zero.
        def train(self, batch_indices, noise=None) -> float
            # len(batch_indices) centered-RMSprop steps on -sum_batch ELBO, batch s = train_x[batch_indices[s]];
            # noise (S, B, L) given => parity mode (it is the eps of each step); None => the
            # framework's own RNG on the device. Returns the mean over steps of the batch-mean ELBO.
        def evaluate(self, x, k, noise=None) -> (elbo, log_px)
            # x (N, 784); noise (K, N, L) or None; per-example ELBO averaged over the K samples and
            # log p(x) = logsumexp_k(log p(x, z_k) - log q(z_k|x)) - log K, both (N,) float64.
        def elbo_and_grads(self, x, noise) -> (elbo, grads)
            # noise (B, L); per-example ELBO (B,) and d(sum ELBO)/d param for every canonical name.
        def preview_noise(self, steps) -> np.ndarray
            # (steps, B, L): the eps the next fast-mode train() call of that many steps will draw,
            # without drawing it; lets a test prove fast mode and parity mode are one function.
        def params(self) -> dict[str, np.ndarray]
            # canonical names and layout, in spec.dtype.
        def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]
            # {"square_avg": {name: array}, "grad_avg": {name: array}}, as common.reference keeps it.
        def set_optimizer_state(self, state) -> None
        def rng_state(self) -> np.ndarray
        def set_rng_state(self, state) -> None
            # the framework RNG(s) behind fast mode, so a resumed run draws the noise it would have
        is_main: bool
            # optional (default True): False in the processes of a several-process run that must not
            # write files (torch's ranks 1..N-1, JAX's and TensorFlow's other hosts)

With spec.devices = N > 1 every method above still takes and returns the global arrays; the
backend splits each batch (and each evaluation chunk) across its N devices with its framework's
own engine (torch DDP under torchrun, a JAX device mesh, tf.distribute), sums the gradient over
the global batch, and draws fast-mode training noise for the global batch, so the N-device run
is the 1-device run up to the order of the sums (tests/test_distributed.py).
"""

from __future__ import annotations

import importlib

NAMES = ("torch", "jax", "tensorflow")
ALIASES = {"tf": "tensorflow", "pytorch": "torch"}
PACKAGES = {  # what to install when the framework is missing
    "torch": "torch==2.13.0",
    "jax": "jax==0.10.2 flax==0.12.8 optax==0.2.8",
    "tensorflow": "tensorflow-cpu==2.21.0",
}


class BackendUnavailable(Exception):
    """The framework behind a backend is not installed."""


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(NAMES)} (or tf)")
    return key


def create(name: str):
    """A fresh backend object; BackendUnavailable if its framework is not importable."""
    key = canonical_name(name)
    try:
        module = importlib.import_module(f"backends.{key}")
        return module.Backend()
    except ModuleNotFoundError as e:
        raise BackendUnavailable(
            f"backend {key!r} needs {e.name!r}, which is not installed: pip install {PACKAGES[key]}") from e
