"""The pictures of a run: learning curves, throughput, and the images from the VAE literature.

Images are computed from each backend's saved params.safetensors with the NumPy reference
model and one fixed NumPy seed: every backend is drawn from the same z's and the same noise,
so what differs between its panels is only what that framework's training produced. No
framework is imported: `compare.py report` rebuilds all of this from a results folder.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np

from backends.numpy import vae as reference
from common.params import load_params
from common.spec import Spec
from report.runs import run_folder, run_peak

FIGURES = ("learning_curves", "throughput", "samples", "reconstructions", "interpolation", "inpainting",
           "manifold")
IMAGE_SEED = 0


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid(images: np.ndarray, cols: int) -> np.ndarray:
    """(n, 784) in [0, 1] -> one (rows*29-1, cols*29-1) image with 1-pixel gutters."""
    rows = -(-len(images) // cols)
    out = np.ones((rows * 29 - 1, cols * 29 - 1))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[r * 29:r * 29 + 28, c * 29:c * 29 + 28] = image.reshape(28, 28)
    return out


def pick(test_x: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    """n test digits spread over the split (its files are ordered by class), the same every time."""
    order = np.random.default_rng(IMAGE_SEED).permutation(len(test_x))
    return test_x[order[offset:offset + n]].astype(np.float64)


def bernoulli_mean(model: reference.VAE, z: np.ndarray) -> np.ndarray:
    return reference.sigmoid(model.decode(z)[0])


def posterior_mean_z(model: reference.VAE, x: np.ndarray) -> np.ndarray:
    return model.posterior_z(np.asarray(x, np.float64))


def prior_samples(model: reference.VAE, n: int = 32) -> np.ndarray:
    rng = np.random.default_rng(IMAGE_SEED)
    means = bernoulli_mean(model, rng.standard_normal((n, model.spec.latent_size)))
    binary = (rng.random(means.shape) < means).astype(float)
    return np.concatenate([means[:n // 2], binary[n // 2:]])  # top: means, bottom: binary draws


def reconstructions(model: reference.VAE, test_x: np.ndarray, n: int = 8) -> np.ndarray:
    x = pick(test_x, n)
    return np.concatenate([x, bernoulli_mean(model, posterior_mean_z(model, x))])


def interpolation(model: reference.VAE, test_x: np.ndarray, steps: int = 8) -> np.ndarray:
    rows = []
    for pair in (0, 2):
        z = posterior_mean_z(model, pick(test_x, 2, offset=pair))
        t = np.linspace(0, 1, steps)[:, None]
        rows.append(bernoulli_mean(model, (1 - t) * z[0] + t * z[1]))
    return np.concatenate(rows)


def fit_observed(model: reference.VAE, x: np.ndarray, observed: np.ndarray, iterations: int = 300,
                 samples: int = 8, lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic variational inference on the observed pixels only, the decoder fixed: q(z) = N(mu, scale^2)
    per example, scale = softplus(rho), fitted with Adam to the ELBO of the observed pixels (one fixed seed).
    Returns (mu, scale), each (n, L)."""
    rng = np.random.default_rng(IMAGE_SEED)
    n, L = len(x), model.spec.latent_size
    mu, rho = np.zeros((n, L)), np.full((n, L), np.log(np.expm1(1.0)))
    moments = [np.zeros_like(mu), np.zeros_like(mu), np.zeros_like(rho), np.zeros_like(rho)]
    for it in range(1, iterations + 1):
        eps = rng.standard_normal((samples, n, L))
        scale = reference.softplus(rho)
        z = mu + scale * eps
        logits, hidden = model.decode(z.reshape(-1, L))
        d_logits = observed * (x[None] - reference.sigmoid(logits.reshape(samples, n, 784)))
        d_z = model.decode_backward(hidden, z.reshape(-1, L), d_logits.reshape(-1, 784)).reshape(samples, n, L) - z
        grad_mu = d_z.mean(0)
        grad_rho = ((d_z * eps).mean(0) + 1.0 / scale) * reference.sigmoid(rho)  # + entropy
        for i, (param, grad) in enumerate(((mu, grad_mu), (rho, grad_rho))):
            m, v = moments[2 * i], moments[2 * i + 1]
            m[:] = 0.9 * m + 0.1 * grad
            v[:] = 0.999 * v + 0.001 * grad**2
            param += lr * (m / (1 - 0.9**it)) / (np.sqrt(v / (1 - 0.999**it)) + 1e-8)
    return mu, reference.softplus(rho)


def inpaint(model: reference.VAE, test_x: np.ndarray, n: int = 8) -> np.ndarray:
    """Fill the bottom half from the top half: fit q(z) to the observed pixels only (fit_observed), decode its
    mean. Rows: truth, what is observed (bottom half grey), the completion."""
    x = pick(test_x, n, offset=8)
    observed = np.zeros(784)
    observed[:392] = 1.0  # rows 0-13
    mu, _ = fit_observed(model, x, observed)
    filled = np.where(observed > 0, x, bernoulli_mean(model, mu))
    return np.concatenate([x, np.where(observed > 0, x, 0.5), filled])


def manifold(model: reference.VAE, size: int = 12) -> np.ndarray | None:
    """Decoded grid over the prior's quantiles; only for L = 2."""
    if model.spec.latent_size != 2:
        return None
    q = np.array([NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, size)])
    z = np.stack(np.meshgrid(q, q[::-1]), -1).reshape(-1, 2)
    return bernoulli_mean(model, z)


IMAGE_KINDS = {  # name -> (function of model and test images, columns, caption)
    "samples": (lambda m, x: prior_samples(m), 8,
                "samples from the prior: Bernoulli means (top two rows), binary draws (bottom two)"),
    "reconstructions": (reconstructions, 8, "test digits (top) and their reconstructions from the posterior mean"),
    "interpolation": (interpolation, 8, "decoded points between the posterior means of two test digits"),
    "inpainting": (lambda m, x: inpaint(m, x), 8,
                   "bottom halves filled in from the top halves by SVI on the trained decoder: "
                   "truth, observed, completion"),
    "manifold": (lambda m, x: manifold(m), 12, "the decoded 2-D latent space over the prior's quantiles (L = 2)"),
}


def image_panels(run_dir: Path, results: dict, test_x: np.ndarray) -> dict[str, list]:
    """kind -> [(title, grid image)] for every backend and family that finished."""
    panels: dict[str, list] = {k: [] for k in IMAGE_KINDS}
    vae_runs = [run for run in results["runs"] if run.get("model", "vae") == "vae"]
    first_seed = vae_runs[0].get("seed") if vae_runs else None
    for run in vae_runs:
        folder = run_folder(run_dir, run)
        if run.get("seed") != first_seed or run["status"] != "ok" or not (folder / "params.safetensors").exists():
            continue
        model = reference.VAE(Spec.from_dict(run["spec"]), load_params(folder / "params.safetensors"))
        for kind, (make, cols, _) in IMAGE_KINDS.items():
            images = make(model, test_x)
            if images is not None:
                panels[kind].append((f"{run['backend']} · {run['family']}", grid(images, cols)))
    return panels


def save_image_figures(run_dir: Path, panels: dict[str, list]) -> list[str]:
    plt = pyplot()
    written = []
    for kind, items in panels.items():
        if not items:
            continue
        families = list(dict.fromkeys(t.split(" · ")[1] for t, _ in items))
        backends = list(dict.fromkeys(t.split(" · ")[0] for t, _ in items))
        fig, axes = plt.subplots(len(families), len(backends), squeeze=False,
                                 figsize=(3.2 * len(backends), 3.6 * len(families) * items[0][1].shape[0]
                                          / items[0][1].shape[1] + 0.5 * len(families) + 0.4))
        for ax in axes.ravel():
            ax.axis("off")
        for title, image in items:
            b, f = title.split(" · ")
            ax = axes[families.index(f), backends.index(b)]
            ax.imshow(image, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
        fig.suptitle(IMAGE_KINDS[kind][2], fontsize=9)
        fig.tight_layout()
        fig.savefig(run_dir / f"{kind}.png", dpi=110)
        plt.close(fig)
        written.append(f"{kind}.png")
    return written


def label(run: dict, results: dict | None = None) -> str:
    seed = f" · seed {run['seed']}" if results and results.get("seeds", 1) > 1 else ""
    return f"{run['backend']} · {run['family']}{seed}"


def train_value(point: dict) -> float:
    return point["train_objective"] if "train_objective" in point else point["train_elbo"]  # runs before IWAE


def save_learning_curves(run_dir: Path, results: dict, model: str | None = None) -> str | None:
    runs = [r for r in results["runs"] if r["status"] == "ok" and "train_curve" in r
            and (model is None or r.get("model", "vae") == model)]
    if not runs:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(3, 2, figsize=(10, 10))
    for run in runs:
        style = dict(label=label(run, results), linestyle="-" if run["family"] == "mean-field" else "--", marker="o",
                     markersize=3)
        val, train = run["validation"], run["train_curve"]
        for col, x_key in enumerate(("step", "train_seconds")):
            axes[0, col].plot([v[x_key] for v in val], [v["elbo"] for v in val], **style)
            axes[1, col].plot([v[x_key] for v in val], [v["log_px"] for v in val], **style)
            axes[2, col].plot([t[x_key] for t in train], [train_value(t) for t in train],
                              label=label(run, results), linestyle=style["linestyle"], linewidth=1)
    for row, name in enumerate(("validation ELBO", "validation log p(x)", "training objective (window mean)")):
        axes[row, 0].set_ylabel(f"{name} (nats)")
        for col, x_name in enumerate(("step", "training seconds (wall clock)")):
            axes[row, col].set_xlabel(x_name)
            axes[row, col].grid(alpha=0.3)
    lows = [min(train_value(t) for t in r["train_curve"][len(r["train_curve"]) // 10:]) for r in runs]
    for col in range(2):
        axes[2, col].set_ylim(min(lows) - 5, max(max(train_value(t) for t in r["train_curve"]) for r in runs) + 2)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    name = f"learning_curves-{model}.png" if model else "learning_curves.png"
    fig.savefig(run_dir / name, dpi=110)
    plt.close(fig)
    return name


def save_throughput(run_dir: Path, results: dict) -> str | None:
    runs = [r for r in results["runs"] if r["status"] == "ok" and "timing" in r]
    if not runs:
        return None
    plt = pyplot()
    best = run_peak(results)
    peak = best["flop_per_s"] if best else None
    fig, ax = plt.subplots(figsize=(1.2 * len(runs) + 2, 4))
    rates = [r["timing"]["examples_per_s"] for r in runs]
    bars = ax.bar(range(len(runs)), rates, color=["C0" if r["family"] == "mean-field" else "C1" for r in runs])
    for bar, run in zip(bars, runs, strict=True):
        text = f"{run['timing']['examples_per_s']:,.0f}"
        if peak:
            text += f"\n{100 * run['flops']['train_flop_per_s'] / peak:.0f}% peak"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(range(len(runs)), [label(r, results).replace(" · ", "\n") for r in runs], fontsize=8)
    ax.set_ylabel("training examples/s (steady state)")
    ax.set_ylim(0, max(rates) * 1.25)
    ax.set_title("training throughput, single pass" + (f"; % of the {peak / 1e9:.0f} GFLOP/s best GEMM measured"
                                                       if peak else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "throughput.png", dpi=110)
    plt.close(fig)
    return "throughput.png"


# model family -> the report module that draws its own figures: figures(run_dir, results, test_x) -> [file names]
FAMILY_FIGURES: dict[str, str] = {"vae": "report.vae2d", "cvae": "report.cvae", "fa": "report.fa",
                                  "gmvae": "report.gmvae"}


def save_all(run_dir: Path, results: dict, test_x: np.ndarray | None) -> list[str]:
    """Every figure that can be drawn; image figures whose parameters are not kept (committed runs keep
    parameters only within their size budget) stay as they were drawn at the end of the run."""
    import importlib

    models = list(dict.fromkeys(r.get("model", "vae") for r in results["runs"])) or ["vae"]
    curves = [save_learning_curves(run_dir, results)] if len(models) == 1 else \
        [save_learning_curves(run_dir, results, m) for m in models]
    written = [f for f in (*curves, save_throughput(run_dir, results)) if f]
    if test_x is not None and "vae" in models:
        written += save_image_figures(run_dir, image_panels(run_dir, results, test_x))
    for model in models:
        if model in FAMILY_FIGURES:
            written += importlib.import_module(FAMILY_FIGURES[model]).figures(run_dir, results, test_x)
    kept = [p.name for p in sorted(run_dir.glob("*.png")) if p.name not in written]
    return written + kept
