"""Factor analysis's figure: the IWAE estimate of the test log p(x) against K, converging to the exact evidence.

Drawn from each backend's saved params.safetensors with the NumPy reference model and one fixed seed, so every
backend's curve uses the same noise; the K-sample estimate takes the first K of the same 1,000 samples (nested),
so each curve is the convergence of one estimator run, not K independent runs. No framework is imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.numpy import fa as reference
from backends.numpy.vae import logmeanexp
from common.data import subset_rows
from common.models import fa as description
from common.params import load_params
from common.spec import Spec
from report.figures import IMAGE_SEED, pyplot
from report.runs import run_folder

K_GRID = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
CAPTIONS = {
    "fa_iwae_convergence.png": "Factor analysis: each backend's IWAE estimate of the mean test log p(x) against K "
                               "(nested samples, one fixed seed for every backend), against the trained model's "
                               "exact evidence log N(x; b, W Wᵀ + diag σ²) (dashed) and the generating model's "
                               "(dotted); right: the gap to the exact evidence",
}


def fa_runs(run_dir: Path, results: dict) -> list[dict]:
    """The finished factor-analysis runs of the first seed whose parameters were kept."""
    runs = [r for r in results["runs"] if r.get("model") == "fa" and r["status"] == "ok"]
    first_seed = runs[0].get("seed") if runs else None
    return [r for r in runs if r.get("seed") == first_seed and (run_folder(run_dir, r) / "params.safetensors").exists()]


def convergence(spec: Spec, params: dict[str, np.ndarray]) -> tuple[np.ndarray, float, float]:
    """(mean IWAE estimate at each K of K_GRID, exact mean log p(x), the generating model's), on the run's test
    examples, chunked so that the 1,000 samples of every example fit in memory."""
    rows = subset_rows("test", spec.test_examples, spec.fa_test)
    test_x = description.dataset(spec).test[rows]
    rng = np.random.default_rng(IMAGE_SEED)
    estimates = []
    for start in range(0, len(test_x), 250):
        x = test_x[start:start + 250]
        log_w = reference.weights(spec, params, x, rng.standard_normal((K_GRID[-1], len(x), spec.latent_size)))[0]
        estimates.append([logmeanexp(log_w[:k], axis=0) for k in K_GRID])
    per_k = np.concatenate(estimates, axis=1).mean(axis=1)
    exact = float(np.mean(description.log_evidence(params, test_x)))
    return per_k, exact, float(np.mean(description.log_evidence(description.generator_params(spec), test_x)))


def figures(run_dir: Path, results: dict, test_x: np.ndarray | None) -> list[str]:
    runs = fa_runs(run_dir, results)
    if not runs:
        return []
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, run in enumerate(runs):
        spec = Spec.from_dict(run["spec"])
        per_k, exact, truth = convergence(spec, load_params(run_folder(run_dir, run) / "params.safetensors"))
        color = f"C{i}"
        left.plot(K_GRID, per_k, marker="o", markersize=3, color=color, label=f"{run['backend']}: IWAE estimate")
        left.axhline(exact, color=color, linestyle="--", linewidth=1, label=f"{run['backend']}: exact {exact:.3f}")
        right.plot(K_GRID, exact - per_k, marker="o", markersize=3, color=color, label=run["backend"])
    left.axhline(truth, color="black", linestyle=":", linewidth=1, label=f"generating model {truth:.3f}")
    right.plot(K_GRID, (exact - per_k)[0] / np.asarray(K_GRID), color="gray", linestyle=":", label="∝ 1/K")
    left.set_ylabel("mean test log p(x) (nats)")
    right.set_ylabel("exact − IWAE estimate (nats)")
    right.set_yscale("symlog", linthresh=1e-4)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("K (importance samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "fa_iwae_convergence.png", dpi=110)
    plt.close(fig)
    return ["fa_iwae_convergence.png"]
