"""Factor analysis: the linear-Gaussian latent-variable model whose evidence is exact (framework-free).

The model, as in Yang's AEVB tutorial (arXiv 2208.07818, "Factor analysis"), with the means given biases:
  p(z)   = N(0, I_L)
  p(x|z) = N(W z + b, diag(sigma^2)),           sigma = exp(log_scale)
  q(z|x) = N(M x + c, C C^T),  C = tril(A, -1) + diag(exp(diag A))   (full covariance, the same for every x:
           the true posterior's covariance (I + W^T diag(sigma^-2) W)^-1 does not depend on x either)
  z = M x + c + C eps,  eps ~ N(0, I_L):  noise (k, n, L)
  log w = log p(x|z) + log p(z) - log q(z|x)
  exact evidence: log p(x) = log N(x; b, W W^T + diag(sigma^2))          (log_evidence below)

Canonical names (dense kernels are (in, out), so a kernel is the transpose of the matrix in the equations):
  encoder.loc.kernel   (D, L)  M^T        encoder.loc.bias  (L,)  c
  encoder.scale_tril   (L, L)  A: its strict lower triangle is C's, its diagonal log C's; the upper triangle
                               is masked (stored as zero, never used, no gradient)
  decoder.loc.kernel   (L, D)  W^T        decoder.loc.bias  (D,)  b
  decoder.log_scale    (1, D)  log sigma, one row broadcast over the examples
Initial values are drawn layer by layer (common/params.py), each array as a kernel of its first dimension's
fan-in: U(+-1/sqrt(fan in)) for the default rule, so sigma and C's diagonal start within e^(+-1).

The data are synthetic and the same for every backend, seed and run (dataset below): the tutorial's generator,
z ~ N(0, I_2), x = W* z + N(0, diag(0.4, 0.2, 0.3)^2) with W* = [[-0.5, -1], [-1, -1], [2, 0.5]], drawn with
NumPy's legacy RandomState(42) in the tutorial's order, so that at the default sizes (1,000 / 1,000) the training
and test sets are the tutorial's arrays exactly; the validation set (the tutorial has none) is drawn after them.
For D != 3, row d of W* and sigma*_d are the tutorial's row d mod 3 (the generator's latent stays 2-D).
"""

from __future__ import annotations

import numpy as np

from common.data import SYNTHETIC, Dataset
from common.models.vae import Layer
from common.spec import Spec

LABEL = "Factor analysis"
METRIC = "log p(x)"
# the tutorial's setting: a 2-D latent, linear maps, Adam at 1e-2 on batches of 32
DEFAULTS: dict = dict(latent_size=2, encoder=(), decoder=(), optimizer="adam", learning_rate=1e-2, batch_size=32)
_SIZES = dict(valid_examples=1000, test_examples=1000)  # the whole synthetic validation and test sets
PRESETS: dict[str, dict] = {
    "smoke": _SIZES | dict(steps=1000, eval_every=500, eval_k=100),
    "quick": _SIZES | dict(steps=5000, eval_every=1000, eval_k=1000),
    # the tutorial's run: 35 passes over 1,000 examples in batches of 32 (31 full batches each)
    "paper": _SIZES | dict(steps=35 * 31, eval_every=5 * 31, eval_k=1000),
}
IWAE_K = (1, 10, 100, 1000)  # the table's IWAE estimates, each against the exact evidence

GENERATOR_LOADINGS = np.array([[-0.5, -1.0], [-1.0, -1.0], [2.0, 0.5]])  # the tutorial's W*, (3, 2)
GENERATOR_SCALES = np.array([0.4, 0.2, 0.3])
GENERATOR_SEED = 42  # the tutorial's; fixed, not the run's --seed


def check(spec: Spec) -> list[str]:
    problems = []
    if spec.encoder or spec.decoder:
        problems.append("factor analysis is linear: give it no hidden widths (--encoder and --decoder empty)")
    if spec.variational != "mean-field":
        problems.append("factor analysis has its own Gaussian posterior; --variational does not apply")
    return problems


def describe(spec: Spec) -> str:
    opt = f"{spec.optimizer} lr {spec.learning_rate:g}" + (f", {spec.lr_schedule} schedule"
                                                           if spec.lr_schedule != "constant" else "")
    objective = "ELBO" if spec.objective == "elbo" else "IWAE bound"
    return (f"factor analysis D = {spec.fa_dim}, L = {spec.latent_size}, full-covariance amortised q(z|x); "
            f"{objective} (k = {spec.train_k}), {opt}, batch {spec.batch_size}; synthetic data "
            f"{spec.fa_train:,} / {spec.fa_valid:,} / {spec.fa_test:,}")


def layers(spec: Spec) -> list[Layer]:
    """Every parameter, in the canonical drawing order; per_sample: applied to every importance sample."""
    D, L = spec.fa_dim, spec.latent_size
    return [Layer("encoder.loc", D, L, per_sample=False),
            Layer("encoder.scale_tril", L, L, per_sample=True, bias=False, kernel_name="encoder.scale_tril"),
            Layer("decoder.loc", L, D, per_sample=True),
            Layer("decoder.log_scale", 1, D, per_sample=True, bias=False, kernel_name="decoder.log_scale")]


def masks(spec: Spec) -> dict[str, np.ndarray]:
    """C is lower-triangular: A's upper triangle is stored as zero (every backend takes its lower triangle)."""
    return {"encoder.scale_tril": np.tril(np.ones((spec.latent_size, spec.latent_size)))}


def zero_at_init(layer: Layer) -> bool:
    return False


def data_dim(spec: Spec) -> int:
    return spec.fa_dim


def noise_shape(spec: Spec, k: int, n: int) -> tuple[int, ...]:
    return (k, n, spec.latent_size)


def flops_per_example(spec: Spec, k: int, training: bool) -> float:
    """Matmul FLOPs: the posterior mean M x once per example; C eps and the decoder mean W z per sample. The
    backward pass doubles every per-sample product and the mean's (x needs no gradient: kernel only)."""
    D, L = spec.fa_dim, spec.latent_size
    per_example, per_sample = 2.0 * D * L, k * (2.0 * L * L + 2.0 * L * D)
    return per_example + per_sample + (per_example + 2 * per_sample if training else 0.0)


# --- the data -------------------------------------------------------------------------------------------


def generator(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(W* (D, 2), sigma* (D,)): the tutorial's for D = 3; row d is its row d mod 3 otherwise."""
    rows = np.arange(dim) % 3
    return GENERATOR_LOADINGS[rows], GENERATOR_SCALES[rows]


def split_sizes(spec: Spec) -> dict[str, int]:
    return {"train": spec.fa_train, "valid": spec.fa_valid, "test": spec.fa_test}


def dataset(spec: Spec, data_dir=None) -> Dataset:
    """The synthetic splits (float64), drawn in the tutorial's order: z_train, z_test, then the noise of each."""
    loadings, scales = generator(spec.fa_dim)
    rs = np.random.RandomState(GENERATOR_SEED)
    z_train = rs.normal(size=(spec.fa_train, 2))
    z_test = rs.normal(size=(spec.fa_test, 2))
    x_train = z_train @ loadings.T + rs.normal(size=(spec.fa_train, spec.fa_dim)) * scales
    x_test = z_test @ loadings.T + rs.normal(size=(spec.fa_test, spec.fa_dim)) * scales
    z_valid = rs.normal(size=(spec.fa_valid, 2))
    x_valid = z_valid @ loadings.T + rs.normal(size=(spec.fa_valid, spec.fa_dim)) * scales
    return Dataset(train=x_train, valid=x_valid, test=x_test, source=SYNTHETIC)


# --- the exact evidence -----------------------------------------------------------------------------------


def marginal(params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean b, covariance W W^T + diag sigma^2) of p(x) = integral of p(x|z) p(z) dz, float64."""
    loadings = np.asarray(params["decoder.loc.kernel"], np.float64).T  # W, (D, L)
    variances = np.exp(2.0 * np.asarray(params["decoder.log_scale"], np.float64)[0])
    return np.asarray(params["decoder.loc.bias"], np.float64), loadings @ loadings.T + np.diag(variances)


def log_evidence(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """log N(x; b, W W^T + diag sigma^2) per example, (n,), through the Cholesky factor of the covariance."""
    mean, covariance = marginal(params)
    cholesky = np.linalg.cholesky(covariance)
    white = np.linalg.solve(cholesky, (np.asarray(x, np.float64) - mean).T)  # (D, n)
    log_det = 2.0 * np.sum(np.log(np.diag(cholesky)))
    return -0.5 * np.sum(white**2, axis=0) - 0.5 * log_det - 0.5 * len(mean) * np.log(2.0 * np.pi)


def generator_params(spec: Spec) -> dict[str, np.ndarray]:
    """The generating model as decoder parameters (its 2-D latent; the evidence depends on W only through
    W W^T): its exact evidence on the test set is what a perfect fit would reach, up to sampling error."""
    loadings, scales = generator(spec.fa_dim)
    return {"decoder.loc.kernel": loadings.T, "decoder.loc.bias": np.zeros(spec.fa_dim),
            "decoder.log_scale": np.log(scales)[None, :]}


def extra_metrics(backend, reference, spec: Spec, params: dict[str, np.ndarray], dataset: Dataset,
                  test_rows: np.ndarray) -> dict[str, float]:
    """The exact test log p(x) of the trained model, and this backend's IWAE estimates of it at several K
    (through common.evaluation, each K with its own seeded test stream): they must approach the exact value."""
    from common import evaluation, streams

    test_x = dataset.test[test_rows]
    out = {"exact log p(x)": float(np.mean(log_evidence(params, test_x)))}
    for k in IWAE_K:
        _, log_px = evaluation.evaluate(backend, test_x, k, stream=streams.seed_of(spec.seed, "test", 1, k))
        out[f"IWAE K={k}"] = float(np.mean(log_px))
    out["generating model's log p(x)"] = float(np.mean(log_evidence(generator_params(spec), test_x)))
    return out
