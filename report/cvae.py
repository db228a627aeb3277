"""The conditional VAE's figure: completions of the same test digits by every backend.

Drawn from each backend's saved params.safetensors with the NumPy reference model and one fixed seed, so every
backend completes the same digits from the same noise; what differs between the panels is only what that
framework's training produced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.numpy.cvae import CVAE
from common.data import test_labels
from common.params import load_params
from common.spec import Spec
from report.figures import IMAGE_SEED, grid, pick, pyplot
from report.runs import run_folder

ROWS = ("observed", "truth", "prior mean", "sample", "sample")
CAPTIONS = {"cvae_completions.png": "Conditional VAE: the same test digits (one of each class) completed by every "
                                    "backend from the observed quadrants: observed (y grey), truth, y's Bernoulli "
                                    "means at the prior network's mean z, and at two draws z ~ p(z|x) (the same "
                                    "draws for every backend)"}


def digits(test_x: np.ndarray) -> np.ndarray:
    """One fixed test digit of each class (the whole, class-sorted test split), else ten spread ones."""
    labels = test_labels()
    if len(test_x) != len(labels):
        return pick(test_x, 10)
    rng = np.random.default_rng(IMAGE_SEED)
    rows = [rng.choice(np.flatnonzero(labels == digit)) for digit in range(10)]
    return test_x[rows].astype(np.float64)


def completions(model: CVAE, images: np.ndarray) -> np.ndarray:
    """(5 * n, 784): the rows of ROWS, each n images."""
    loc, scale = model.prior(images)
    draws = np.random.default_rng(IMAGE_SEED).standard_normal((2, *loc.shape))
    observed = images.copy()
    observed[:, model.predicted] = 0.5
    return np.concatenate([observed, images, model.complete(images, loc),
                           *model.complete(images, loc + scale * draws)])


def panels(run_dir: Path, results: dict, test_x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(backend, grid image) for every CVAE run of the first seed whose parameters are kept."""
    runs = [r for r in results["runs"] if r.get("model") == "cvae" and r["status"] == "ok"]
    first_seed = runs[0].get("seed") if runs else None
    images, out = digits(test_x), []
    for run in runs:
        path = run_folder(run_dir, run) / "params.safetensors"
        if run.get("seed") == first_seed and path.exists():
            model = CVAE(Spec.from_dict(run["spec"]), load_params(path))
            out.append((run["backend"], grid(completions(model, images), len(images))))
    return out


def figures(run_dir: Path, results: dict, test_x: np.ndarray | None) -> list[str]:
    if test_x is None:
        return []
    items = panels(run_dir, results, test_x)
    if not items:
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(items), squeeze=False, figsize=(3.4 * len(items) + 0.6, 2.3))
    for ax, (backend, image) in zip(axes[0], items, strict=True):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(backend, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks(14 + 29 * np.arange(len(ROWS)), ROWS if ax is axes[0, 0] else [], fontsize=7)
    fig.tight_layout()
    fig.savefig(run_dir / "cvae_completions.png", dpi=110)
    plt.close(fig)
    return ["cvae_completions.png"]
