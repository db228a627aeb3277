"""The figures of a VAE with a 2-D latent space (the `vae-2d` presets): where the test digits land, and how the
variational posterior stands against the true one.

- latent_scatter.png: the mean of q(z|x) for the test digits, coloured by digit (labels: common.data.test_labels).
- isocontours.png: for a few test digits whose bottom half is hidden, the true posterior of z given the top half
  alone, p(z | top) ∝ p(top | z) p(z), located on a 101×101 grid over [−6, 6]² and drawn (filled contours) on a
  101×101 grid around its mass (five of its standard deviations each way), beside the Gaussian
  q(z) = N(μ, diag σ²) fitted to the top half by stochastic variational inference on the trained decoder (the
  procedure of the inpainting figure, report/figures.py: fit_observed; red ellipses at 1, 2 and 3 σ), and the
  digit completed from μ.

Drawn from each backend's saved parameters with the NumPy reference model and one fixed seed (the same SVI noise
for every backend). No framework is imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.numpy import vae as reference
from common.data import test_labels
from common.params import load_params
from common.spec import Spec
from report.figures import bernoulli_mean, fit_observed, pick, pyplot
from report.runs import run_folder

GRID, BOX = 101, 6.0  # the grid of the true posterior: GRID points per axis over [-BOX, BOX]
DIGITS = 3  # test digits in the isocontours figure
TOP = np.arange(784) < 392  # rows 0-13 observed
CAPTIONS = {
    "latent_scatter.png": "2-D VAE: the mean of q(z|x) for every test digit, coloured by digit",
    "isocontours.png": "2-D VAE: the true posterior p(z | top half of x) (filled contours, 101×101 grid around its "
                       "mass) and the Gaussian fitted to the top half by SVI (red: 1, 2, 3 σ), with the digit "
                       "completed from its mean (right of each pair)",
}


def runs_2d(run_dir: Path, results: dict) -> list[dict]:
    """Finished VAE runs with L = 2 of the first seed whose parameters were kept."""
    runs = [r for r in results["runs"] if r.get("model", "vae") == "vae" and r["status"] == "ok"
            and r["spec"]["latent_size"] == 2]
    first_seed = runs[0].get("seed") if runs else None
    return [r for r in runs if r.get("seed") == first_seed and (run_folder(run_dir, r) / "params.safetensors").exists()]


def true_log_posterior(model: reference.VAE, x: np.ndarray, observed: np.ndarray, center=(0.0, 0.0),
                       half: float = BOX) -> np.ndarray:
    """log p(observed pixels of x | z) + log p(z) on a GRID x GRID grid over center ± half (default [-BOX, BOX]²),
    rows from the top (z2 = center + half) down; normalised so that its exponent sums to one over the grid."""
    z1, z2 = np.meshgrid(np.linspace(center[0] - half, center[0] + half, GRID),
                         np.linspace(center[1] + half, center[1] - half, GRID))
    z = np.stack([z1.ravel(), z2.ravel()], axis=1)
    logits = model.decode(z)[0]
    log_lik = np.sum(observed * (x * logits - reference.softplus(logits)), axis=1)
    log_post = log_lik - 0.5 * np.sum(z**2, axis=1)
    log_post -= log_post.max() + np.log(np.sum(np.exp(log_post - log_post.max())))
    return log_post.reshape(GRID, GRID)


def zoom(model: reference.VAE, x: np.ndarray, observed: np.ndarray) -> tuple[tuple[float, float], float]:
    """Where the true posterior's mass is, from the [-BOX, BOX]² grid: its mean, and a half-width of five of its
    standard deviations (at least 0.5), so that a trained model's narrow posterior is drawn large enough to see."""
    post = np.exp(true_log_posterior(model, x, observed))
    axis = np.linspace(-BOX, BOX, GRID)
    p1, p2 = post.sum(axis=0), post.sum(axis=1)[::-1]
    mean = (float(p1 @ axis), float(p2 @ axis))
    sd = max(np.sqrt(p1 @ (axis - mean[0]) ** 2), np.sqrt(p2 @ (axis - mean[1]) ** 2))
    return mean, float(min(BOX, max(5.0 * sd, 0.5)))


def figures(run_dir: Path, results: dict, test_x: np.ndarray | None) -> list[str]:
    runs = runs_2d(run_dir, results)
    if not runs or test_x is None:
        return []
    plt = pyplot()
    models = [(r["backend"], reference.VAE(Spec.from_dict(r["spec"]), load_params(run_folder(run_dir, r) /
                                                                                  "params.safetensors")))
              for r in runs]
    # the test digits in class colours
    labels = test_labels()
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 4.2), squeeze=False)
    for ax, (backend, model) in zip(axes[0], models, strict=True):
        means = np.concatenate([model.encoder_mean(test_x[i:i + 2000]) for i in range(0, len(test_x), 2000)])
        points = ax.scatter(means[:, 0], means[:, 1], c=labels[:len(means)], cmap="tab10", s=2, vmin=-0.5,
                            vmax=9.5)
        ax.set_title(backend, fontsize=9)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2")
    fig.colorbar(points, ax=axes[0].tolist(), ticks=range(10), label="digit")
    fig.savefig(run_dir / "latent_scatter.png", dpi=110)
    plt.close(fig)
    # the true posterior of the top half beside the variational one, and the completion
    x = pick(test_x, DIGITS, offset=8)
    observed = TOP.astype(np.float64)
    fig, axes = plt.subplots(len(models), 2 * DIGITS, figsize=(2.4 * 2 * DIGITS, 2.5 * len(models)), squeeze=False,
                             gridspec_kw=dict(width_ratios=[1.6, 1] * DIGITS))
    theta = np.linspace(0, 2 * np.pi, 200)
    for row, (backend, model) in enumerate(models):
        mu, scale = fit_observed(model, x, observed)
        completed = np.where(observed > 0, x, bernoulli_mean(model, mu))
        for d in range(DIGITS):
            ax = axes[row, 2 * d]
            (c1, c2), half = zoom(model, x[d], observed)
            ax.contourf(np.linspace(c1 - half, c1 + half, GRID), np.linspace(c2 + half, c2 - half, GRID),
                        np.exp(true_log_posterior(model, x[d], observed, (c1, c2), half)), levels=12, cmap="Blues")
            for n_sigma in (1, 2, 3):
                ax.plot(mu[d, 0] + n_sigma * scale[d, 0] * np.cos(theta),
                        mu[d, 1] + n_sigma * scale[d, 1] * np.sin(theta), color="C3", linewidth=0.8)
            ax.set_xlim(c1 - half, c1 + half)
            ax.set_ylim(c2 - half, c2 + half)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
            ax.set_title(f"{backend} · digit {d + 1}", fontsize=8)
            image = np.concatenate([np.where(observed > 0, x[d], 0.5).reshape(28, 28), np.ones((1, 28)),
                                    completed[d].reshape(28, 28)])
            axes[row, 2 * d + 1].imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            axes[row, 2 * d + 1].axis("off")
    fig.tight_layout()
    fig.savefig(run_dir / "isocontours.png", dpi=110)
    plt.close(fig)
    return ["latent_scatter.png", "isocontours.png"]
