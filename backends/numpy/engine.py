"""The NumPy backend: the float64 reference behind the backend contract, for small runs and as the
yardstick of the parity tests. No compilation, one device, float64 only; the generators are NumPy's
PCG64, seeded from common.streams like every backend's."""

from __future__ import annotations

import time

import numpy as np

from backends.numpy import cvae, fa, gmvae, optim, vae, vrnn
from common import streams
from common.models import family
from common.optim import learning_rates
from common.params import check_params
from common.spec import Spec

MODELS = {"vae": vae, "cvae": cvae, "vrnn": vrnn, "fa": fa, "gmvae": gmvae}


def generator(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


class Backend:
    name = "numpy"
    is_main = True
    devices = 1
    eval_chunk_samples = 4096

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        if spec.dtype != "float64":
            raise ValueError("the numpy backend is the float64 reference: run it with --dtype float64")
        if spec.devices != 1:
            raise ValueError("the numpy backend runs on one device")
        check_params(spec, params)
        self.spec, self.model = spec, MODELS[spec.model]
        self._params = {k: np.array(v, np.float64) for k, v in params.items()}
        self.train_x = np.asarray(train_x)
        self.state = optim.init_state(spec, self._params)
        self.rng = generator(streams.seed_of(spec.seed, "train"))

    def _noise_shape(self, k: int, n: int) -> tuple[int, ...]:
        return family(self.spec).noise_shape(self.spec, k, n)

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        spec = self.spec
        rates = learning_rates(spec, self.state["step"], self.state["step"] + len(batch_indices), len(self.train_x))
        total = 0.0
        for s, (indices, lr) in enumerate(zip(batch_indices, rates, strict=True)):
            eps = (self.rng.standard_normal(self._noise_shape(spec.train_k, len(indices))) if noise is None
                   else noise[s])
            value, grads = self.objective_and_grads(self.train_x[indices], eps)
            self._params = optim.update(spec, self._params, {k: -g for k, g in grads.items()}, self.state, lr)
            total += value.mean()
        return float(total / len(batch_indices))

    def log_weights(self, x: np.ndarray, k: int, noise: np.ndarray | None = None,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        eps = generator(seed).standard_normal(self._noise_shape(k, len(x))) if noise is None else noise
        return self.model.weights(self.spec, self._params, x, eps)

    def objective_and_grads(self, x: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self.model.objective_and_grads(self.spec, self._params, x, noise)

    def preview_noise(self, steps: int) -> np.ndarray:
        ahead = np.random.Generator(np.random.PCG64())
        ahead.bit_generator.state = self.rng.bit_generator.state
        shape = self._noise_shape(self.spec.train_k, self.spec.batch_size)
        return np.stack([ahead.standard_normal(shape) for _ in range(steps)])

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._params.items()}

    def optimizer_state(self) -> dict:
        return {k: (v if k == "step" else {n: a.copy() for n, a in v.items()}) for k, v in self.state.items()}

    def set_optimizer_state(self, state: dict) -> None:
        self.state = {k: (int(v) if k == "step" else {n: np.array(a, np.float64) for n, a in v.items()})
                      for k, v in state.items()}

    def rng_state(self) -> np.ndarray:
        """PCG64's 128-bit state and increment as four uint64 words, then the cached-value flag and value."""
        s = self.rng.bit_generator.state
        words = [s["state"]["state"], s["state"]["inc"]]
        return np.array([w >> 64 for w in words] + [w & (2**64 - 1) for w in words]
                        + [s["has_uint32"], s["uinteger"]], np.uint64)

    def set_rng_state(self, state: np.ndarray) -> None:
        w = [int(v) for v in np.asarray(state, np.uint64)]
        self.rng.bit_generator.state = {
            "bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[2], "inc": (w[1] << 64) | w[3]},
            "has_uint32": w[4], "uinteger": w[5]}

    @staticmethod
    def matmul_flop_per_s(m: int, k: int, n: int, seconds: float = 0.5) -> float:
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
        out = np.empty((m, n), np.float32)
        np.matmul(a, b, out=out)  # warm-up: threads, caches
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            np.matmul(a, b, out=out)
            best = max(best, 2.0 * m * k * n / (time.perf_counter() - start))
        return best
