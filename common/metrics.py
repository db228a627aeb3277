"""How the suite summarises what the backends compute (the per-example math is backends/numpy).

- ELBO and log p(x) are reported as the mean over a split with the standard error over examples.
- Differences between two backends are paired over the same test examples: the s.e. of the
  per-example difference, so the image-to-image variance that both share cancels (evaluation noise,
  one seed). Across seeds, a difference carries a t-interval over the seeds (training spread).
- Throughput is training examples/s in steady state: the median over timing windows after the
  first one, leaving out windows during which other processes used the machine (LoadProbe); the
  first window's excess over steady state is reported as warm-up (compilation).
- Intervals of medians and ratios across timing rounds are 95% percentile-bootstrap intervals.
"""

from __future__ import annotations

import os
import time

import numpy as np

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         15: 2.131, 20: 2.086, 30: 2.042}  # Student's t, 97.5% quantile, by degrees of freedom
OUTSIDE_LOAD_LIMIT = 0.10  # a timing window during which other processes used > 10% of the machine is flagged


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a cgroup's cpuset), which
    is what the thread pools should be sized to, not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """mean(a - b) and its standard error, a and b per-example over the same examples."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"paired difference needs the same examples, got {np.shape(a)} and {np.shape(b)}")
    return mean_and_se(np.asarray(a, np.float64) - np.asarray(b, np.float64))


def t_quantile(dof: int) -> float:
    if dof <= 0:
        return float("nan")
    return T_975.get(dof) or T_975[max(k for k in T_975 if k <= dof)]


def t_interval(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the 95% t-interval of the mean of independent values (e.g. one per seed)."""
    values = np.asarray(values, np.float64)
    mean, se = mean_and_se(values)
    half = t_quantile(len(values) - 1) * se
    return mean, mean - half, mean + half


def bootstrap_interval(values: np.ndarray, statistic=np.median, draws: int = 4000, seed: int = 0
                       ) -> tuple[float, float, float]:
    """(statistic, low, high): the 95% percentile-bootstrap interval of statistic over values."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        v = float(statistic(values)) if len(values) else float("nan")
        return v, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    resampled = statistic(values[rng.integers(0, len(values), (draws, len(values)))], axis=1)
    return float(statistic(values)), float(np.quantile(resampled, 0.025)), float(np.quantile(resampled, 0.975))


def excludes_zero(low: float, high: float) -> bool:
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def steady_state(window_steps: list[int], window_seconds: list[float], batch_size: int,
                 clean: list[bool] | None = None) -> dict:
    """Median examples/s over the windows after the first that no outside load touched (all of them if none
    is clean, then flagged), and the first window's time beyond that steady state."""
    rates = [n * batch_size / s for n, s in zip(window_steps, window_seconds, strict=True)]
    clean = clean or [True] * len(rates)
    later = [r for r, ok in zip(rates[1:], clean[1:], strict=True) if ok]
    contaminated = not later
    later = later or rates[1:] or rates
    steady = float(np.median(later)) if later else float("nan")
    warmup = window_seconds[0] - window_steps[0] * batch_size / steady if rates else float("nan")
    return {"examples_per_s": steady, "warmup_s": max(float(warmup), 0.0), "windows": len(rates),
            "windows_used": len(later), "windows_flagged": sum(not c for c in clean),
            "all_windows_contaminated": contaminated, "examples_per_s_all_windows": rates}


class LoadProbe:
    """What else ran on the machine while we timed: the CPU time of every other process (the machine's busy
    time from /proc/stat minus this process's own, children included) and the hypervisor's steal, as
    fractions of the machine's capacity over the window. Linux only; elsewhere both read None."""

    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1  # the whole machine: what other processes took of it
        self.start()

    @staticmethod
    def machine_ticks() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        return user + nice + system + irq + softirq, steal

    @staticmethod
    def own_seconds() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def start(self) -> None:
        self._ticks, self._own, self._wall = self.machine_ticks(), self.own_seconds(), time.perf_counter()

    def stop(self) -> dict:
        ticks, own, wall = self.machine_ticks(), self.own_seconds(), time.perf_counter()
        elapsed = wall - self._wall
        if ticks is None or self._ticks is None or elapsed <= 0:
            return {"outside_load": None, "steal": None}
        hz = os.sysconf("SC_CLK_TCK")
        busy = (ticks[0] - self._ticks[0]) / hz
        capacity = elapsed * self.cores
        outside = max(0.0, busy - (own - self._own)) / capacity
        return {"outside_load": float(outside), "steal": float((ticks[1] - self._ticks[1]) / hz / capacity)}


def is_clean(probe: dict) -> bool:
    load = probe.get("outside_load")
    return load is None or load <= OUTSIDE_LOAD_LIMIT
