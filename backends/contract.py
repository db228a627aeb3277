"""The backend contract, as code: every backend (backends/<framework>/engine.py: Backend) satisfies
`Backend` below, and tests/test_conformance.py holds each one to it.

Every array crossing the contract is NumPy; names and layouts are canonical (common/params.py).
Noise conventions (common/models/<family>.py: noise_shape): eps ~ N(0, I) of shape (k, n, L) for k
samples of n examples; a training step uses (train_k, B, L), a window of S steps (S, train_k, B, L).

- Parity mode: the noise is passed in. A backend must then reproduce the NumPy float64 reference
  (backends/numpy) to relative 1e-10 for values and gradients, and to 1e-8 after 20 optimizer steps.
- Fast mode: noise=None. The backend draws the noise on its device with its own RNG: training noise from
  the stream of common.streams.seed_of(spec.seed, "train"), step after step, so that how the steps are
  grouped into train() calls (which follows the validation interval) never changes it; each evaluation
  chunk's statelessly from the seed it is given, so no evaluation can move the training stream. The whole
  step runs compiled; preview_noise lets a test prove that fast mode computes what parity mode computes.
- With spec.devices = N > 1 every method still takes and returns the global arrays; the backend splits
  each batch and chunk across its N devices with its framework's own engine.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from common.spec import Spec


@runtime_checkable
class Backend(Protocol):
    name: str
    is_main: bool  # False in the processes of a several-process run that must not write files
    devices: int
    eval_chunk_samples: int  # samples (examples x k) per log_weights call that suit this backend

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        """params (any float dtype) cast to spec.dtype; train_x (N, 784) uint8 kept on the device;
        the optimizer state starts at zero, its step count at 0."""

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        """len(batch_indices) optimizer steps on -sum_batch objective, batch s = train_x[batch_indices[s]],
        learning rate of each step from common.optim.learning_rates. Returns the mean over steps of the
        batch-mean objective (the ELBO, or the k-sample bound of spec.objective)."""

    def log_weights(self, x: np.ndarray, k: int, noise: np.ndarray | None = None,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(log w, elbo), both (k, n): log w_j = log p(x, z_j) - log q(z_j | x) for k samples of each example of
        x (n, data width), and each sample's ELBO estimate (log w itself for every family but the GMVAE);
        exactly one of noise (k, n, ...) and seed (the backend draws the noise from it) is given.
        common.evaluation chunks the examples and reduces: ELBO = mean_k elbo, log p(x) = logmeanexp_k log w."""

    def objective_and_grads(self, x: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """noise (train_k, B, ...); the per-example training objective (B,) and the gradient of its sum for
        every canonical parameter name. The objective: mean_k elbo (spec.objective "elbo") or logmeanexp_k log w
        ("iwae")."""

    def preview_noise(self, steps: int) -> np.ndarray:
        """(steps, train_k, B, L): the noise the next fast-mode train() call of that many steps will draw,
        without drawing it."""

    def params(self) -> dict[str, np.ndarray]:
        """Canonical names and layout, in spec.dtype."""

    def optimizer_state(self) -> dict:
        """{"step": int, slot: {name: array}} with common.optim.SLOTS[spec.optimizer], as the reference keeps it."""

    def set_optimizer_state(self, state: dict) -> None: ...

    def rng_state(self) -> np.ndarray:
        """The training generator's state as an array (for checkpoints: a resumed run draws what it would have)."""

    def set_rng_state(self, state: np.ndarray) -> None: ...

    @staticmethod
    def matmul_flop_per_s(m: int, k: int, n: int, seconds: float) -> float:
        """The best float32 GEMM rate (a (m, k) @ (k, n)) this framework reaches here: one of the candidates
        for the machine's peak."""
