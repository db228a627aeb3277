"""How the suite summarises what the backends compute (the per-example math is common/reference.py).

- ELBO and log p(x) are reported as the mean over a split with the standard error over examples.
- Differences between two backends are paired over the same test examples: the s.e. of the
  per-example difference, so the image-to-image variance that both share cancels.
- Throughput is training examples/s in steady state: the median over timing windows after the
  first one; the first window's excess over steady state is reported as warm-up (compilation).
- FLOPs per example count the dense matmuls (2 * fan_in * fan_out per layer forward, twice
  that backward, no gradient for the input x).
"""

from __future__ import annotations

import numpy as np

from common.init import layer_shapes
from common.spec import Spec


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a - b) and its standard error, a and b per-example over the same examples."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"paired difference needs the same examples, got {np.shape(a)} and {np.shape(b)}")
    return mean_and_se(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def steady_state(window_steps: list[int], window_seconds: list[float], batch_size: int) -> dict:
    """Median examples/s over all windows but the first, and the first window's excess time."""
    rates = [n * batch_size / s for n, s in zip(window_steps, window_seconds, strict=True) if s > 0]
    steady = float(np.median(rates[1:])) if len(rates) > 1 else (rates[0] if rates else float("nan"))
    warmup = window_seconds[0] - window_steps[0] * batch_size / steady if rates else float("nan")
    return {"examples_per_s": steady, "warmup_s": max(float(warmup), 0.0),
            "windows": len(rates), "examples_per_s_all_windows": rates}


def cpu_times() -> dict[str, int] | None:
    """Cumulative CPU ticks from /proc/stat (Linux), or None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return {n: int(v) for n, v in zip(names, fields, strict=False)}


def steal_fraction(before: dict | None, after: dict | None) -> float | None:
    """Share of CPU time the hypervisor gave to other machines between two cpu_times() readings:
    on a shared host, throughput measured while this is high is not the machine's own."""
    if not before or not after:
        return None
    delta = {k: after[k] - before[k] for k in before}
    total = sum(delta.values())
    return delta.get("steal", 0) / total if total else None


def train_flops_per_example(spec: Spec) -> float:
    """Matmul FLOPs of one training example: forward 2*m*n per layer, backward 4*m*n (2*m*n for
    the first encoder layer, which needs no gradient with respect to its input x)."""
    total = 0.0
    for layer, fan_in, fan_out, _ in layer_shapes(spec):
        forward = 2.0 * fan_in * fan_out
        total += forward + (forward if layer == "encoder.l0" else 2 * forward)
    return total


def eval_flops_per_sample(spec: Spec) -> float:
    """Forward FLOPs of one importance sample; the encoder runs once per example, not per sample."""
    return sum(2.0 * fan_in * fan_out for layer, fan_in, fan_out, _ in layer_shapes(spec)
               if not layer.startswith("encoder"))
