"""The Gaussian-mixture VAE's figures: generations from every component, and how the test digits spread over them.

Drawn from each backend's saved params.safetensors with the NumPy reference model and one fixed seed, so every
backend's panel uses the same eps. Components are shown in the order of the digit each is matched to (the Hungarian
matching behind the table's cluster accuracy), so row i of every backend's panel is "its" digit i; a component
matched to no digit comes last. No framework is imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.numpy import gmvae as reference
from common.data import subset_rows, test_labels
from common.models import gmvae as description
from common.params import load_params
from common.spec import Spec
from report.figures import IMAGE_SEED, grid, pyplot
from report.runs import run_folder

PER_COMPONENT = 10  # generations per component
CAPTIONS = {
    "gmvae_components.png": "Gaussian-mixture VAE: Bernoulli means of p(x|z), z ~ p(z|y), for every component y "
                            "(one row each, in the order of the digit it is matched to; the same eps for every "
                            "backend)",
    "gmvae_usage.png": "Gaussian-mixture VAE: the share of test digits whose most probable component under q(y|x) "
                       "is each component, labelled with the digit it is matched to",
}


def gmvae_runs(run_dir: Path, results: dict) -> list[dict]:
    """The finished GMVAE runs of the first seed whose parameters were kept."""
    runs = [r for r in results["runs"] if r.get("model") == "gmvae" and r["status"] == "ok"]
    first_seed = runs[0].get("seed") if runs else None
    return [r for r in runs if r.get("seed") == first_seed and (run_folder(run_dir, r) / "params.safetensors").exists()]


def clustering(model: reference.GMVAE, test_x: np.ndarray | None) -> tuple:
    """(component order by matched digit, matched digit per component, accuracy, share of the test digits per
    component) on the run's test examples; without test images, the components' own order and no matching."""
    C = model.spec.components
    if test_x is None:
        return np.arange(C), np.full(C, -1), None, None
    rows = subset_rows("test", model.spec.test_examples, len(test_x))
    clusters = np.concatenate([model.cluster_probabilities(test_x[rows[i:i + 1000]]).argmax(axis=1)
                               for i in range(0, len(rows), 1000)])
    accuracy, matched = description.matched_accuracy(clusters, test_labels()[rows], C)
    order = np.argsort(np.where(matched >= 0, matched, C + np.arange(C)))
    return order, matched, accuracy, np.bincount(clusters, minlength=C) / len(clusters)


def figures(run_dir: Path, results: dict, test_x: np.ndarray | None) -> list[str]:
    runs = gmvae_runs(run_dir, results)
    if not runs:
        return []
    panels = []
    for run in runs:
        params = load_params(run_folder(run_dir, run) / "params.safetensors")
        model = reference.GMVAE(Spec.from_dict(run["spec"]), params)
        order, matched, accuracy, share = clustering(model, test_x)
        images = model.generate(np.random.default_rng(IMAGE_SEED), PER_COMPONENT)[order]
        panels.append((run["backend"], grid(images.reshape(-1, 784), PER_COMPONENT), order, matched, accuracy, share))
    written = [save_components(run_dir, panels)]
    if test_x is not None:
        written.append(save_usage(run_dir, panels))
    return written


def save_components(run_dir: Path, panels: list) -> str:
    plt = pyplot()
    image = panels[0][1]
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(3.4 * len(panels), 3.4 * image.shape[0] / image.shape[1] + 0.6))
    for ax, (backend, image, order, matched, accuracy, _) in zip(axes[0], panels, strict=True):
        ax.imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(np.arange(len(order)) * 29 + 14, [str(matched[c]) if matched[c] >= 0 else "–" for c in order],
                      fontsize=7)
        ax.set_xticks([])
        ax.set_title(backend + (f" · accuracy {accuracy:.3f}" if accuracy is not None else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "gmvae_components.png", dpi=110)
    plt.close(fig)
    return "gmvae_components.png"


def save_usage(run_dir: Path, panels: list) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(panels[0][2]) * len(panels) / 2), 3.5))
    width = 0.8 / len(panels)
    for i, (backend, _, order, _, _, share) in enumerate(panels):
        ax.bar(np.arange(len(order)) + i * width, 100 * share[order], width=width, label=backend)
    order, matched = panels[0][2], panels[0][3]  # position j holds each backend's component matched to digit j
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2,
                  [str(matched[c]) if matched[c] >= 0 else "–" for c in order])
    ax.set_xlabel("the component matched to digit (–: matched to none)")
    ax.set_ylabel("% of test digits")
    ax.axhline(100 / len(order), color="gray", linestyle=":", linewidth=1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "gmvae_usage.png", dpi=110)
    plt.close(fig)
    return "gmvae_usage.png"
