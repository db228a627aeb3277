"""This machine's float32 matmul peak, measured with NumPy's BLAS at the start of a run.

Throughput is reported as a fraction of it: a figure of examples/s means little until it is
set against what the cores can do. Two measurements: a large square GEMM (the practical
peak) and the GEMMs of one training step at the model's shapes (what a perfect backend
could reach with this BLAS at this batch size).
"""

from __future__ import annotations

import time

import numpy as np

from common.init import layer_shapes
from common.spec import Spec


def gemm_flop_per_s(m: int, k: int, n: int, seconds: float = 0.5, dtype=np.float32) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    out = np.empty((m, n), dtype)
    np.matmul(a, b, out=out)  # warm-up: threads, caches
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = max(best, 2.0 * m * k * n / (time.perf_counter() - start))
    return best


def model_gemm_flop_per_s(spec: Spec, seconds: float = 1.0) -> float:
    """FLOP/s of the forward and backward GEMMs of one training step, run back to back."""
    rng = np.random.default_rng(0)
    B = spec.batch_size
    jobs = []
    for _, fan_in, fan_out, _ in layer_shapes(spec):
        x, w = rng.standard_normal((B, fan_in), np.float32), rng.standard_normal((fan_in, fan_out), np.float32)
        dy = rng.standard_normal((B, fan_out), np.float32)
        jobs += [(x, w), (dy, w.T), (x.T, dy)]  # forward, input gradient, weight gradient
    flops = sum(2.0 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in jobs)
    for a, b in jobs:
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for a, b in jobs:
            a @ b
        best = max(best, flops / (time.perf_counter() - start))
    return best


def measure(spec: Spec) -> dict:
    return dict(square_4096_flop_per_s=gemm_flop_per_s(4096, 4096, 4096, seconds=2.0),
                model_shapes_flop_per_s=model_gemm_flop_per_s(spec),
                library="numpy " + np.__version__, dtype="float32")
