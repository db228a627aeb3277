"""The conditional VAE (Sohn, Lee & Yan 2015): structured output prediction on binarized MNIST.

Each 28x28 digit is cut into four 14x14 quadrants; spec.quadrants of them are the observed input x, the
rest the output y to predict (the split of the paper's MNIST experiment, as Pyro's reproduction draws it):
  1: x = bottom-left;  2: x = left half;  3: x = all but bottom-right.
The backends receive the whole image (784 pixels) and split it with the fixed masks below.

    recognition  q(z | x, y) = N(loc_q, scale_q^2)   the whole image -> encoder widths -> [loc | scale_arg]
    prior        p(z | x)    = N(loc_p, scale_p^2)   x -> encoder widths -> [loc | scale_arg]
    generation   p(y | x, z) = Bernoulli(logits)     [z | x] -> decoder widths -> logits of y's pixels
    scale = softplus(scale_arg);  z = loc_q + scale_q * eps,  eps ~ N(0, I) of shape (k, n, L)
    log w = log p(y | x, z) + log p(z | x) - log q(z | x, y)
Evaluation estimates log p(y | x) = logmeanexp_k log w: importance sampling with q(z | x, y) as the proposal.

Canonical names (dense kernels (in, out)):
  recognition.l{i}.{kernel,bias}   784 -> encoder[0] -> ... -> 2L
  prior.l{i}.{kernel,bias}         D_x -> encoder[0] -> ... -> 2L
  generation.l{i}.{kernel,bias}    L -> decoder[0] -> ... -> D_y  (the z side; once per sample)
  generation.l0.context            (D_x, decoder[0] or D_y): x's part of the first layer, no bias, computed
                                   once per example and added to every sample's (the IAF's context convention)
with D_x = 196 * quadrants observed pixels and D_y = 784 - D_x predicted ones, each in the image's row-major order.
"""

from __future__ import annotations

import numpy as np

from common.models.vae import Layer, mlp
from common.spec import N_PIXELS, Spec

LABEL = "CVAE"
METRIC = "log p(y|x)"
# Pyro's reproduction of the paper's MNIST experiment: three 500-500 ReLU networks, z of 200, Adam 1e-3
DEFAULTS: dict = dict(encoder=(500, 500), decoder=(500, 500), latent_size=200, optimizer="adam", learning_rate=1e-3)
# sized for a 2-core CPU: smoke under a minute per backend, quick a few minutes
PRESETS: dict[str, dict] = {
    "smoke": dict(encoder=(256,), decoder=(256,), latent_size=32, steps=600, eval_every=300, eval_k=50,
                  valid_examples=500, test_examples=1000),
}
SIDE, HALF = 28, 14
OBSERVED = {1: "the bottom-left quadrant", 2: "the left half", 3: "all but the bottom-right quadrant"}
PRIOR_SAMPLES = 100  # S of the prior-sampled (Monte Carlo) estimate of log p(y|x) that the table adds
PRIOR_EXAMPLES = 1000  # test digits it is computed on (a nested subset of the run's test subset)


def check(spec: Spec) -> list[str]:
    problems = []
    if spec.quadrants not in OBSERVED:
        problems.append(f"quadrants must be 1, 2 or 3 (observed quadrants of the digit), got {spec.quadrants}")
    if spec.variational != "mean-field":
        problems.append("the conditional VAE's q(z|x,y) is mean-field; --variational iaf is the VAE's")
    return problems


def observed_mask(spec: Spec) -> np.ndarray:
    """(784,) bool: the pixels of x."""
    bottom_left = np.zeros((SIDE, SIDE), bool)
    bottom_left[HALF:, :HALF] = True
    image = {1: bottom_left, 2: np.zeros((SIDE, SIDE), bool), 3: np.ones((SIDE, SIDE), bool)}[spec.quadrants]
    if spec.quadrants == 2:
        image[:, :HALF] = True
    if spec.quadrants == 3:
        image[HALF:, HALF:] = False
    return image.ravel()


def observed_pixels(spec: Spec) -> np.ndarray:
    """Indices of x's pixels in the flattened image, ascending."""
    return np.flatnonzero(observed_mask(spec))


def predicted_pixels(spec: Spec) -> np.ndarray:
    """Indices of y's pixels in the flattened image, ascending."""
    return np.flatnonzero(~observed_mask(spec))


def layers(spec: Spec) -> list[Layer]:
    """Every parameterised map, in the canonical drawing order of the initial parameters."""
    L, d_x = spec.latent_size, len(observed_pixels(spec))
    d_y, first = N_PIXELS - d_x, (spec.decoder[0] if spec.decoder else N_PIXELS - d_x)
    out = mlp("recognition", [N_PIXELS, *spec.encoder, 2 * L], per_sample=False)
    out += mlp("prior", [d_x, *spec.encoder, 2 * L], per_sample=False)
    out += mlp("generation", [L, *spec.decoder, d_y], per_sample=True)
    out.append(Layer("generation.l0.context", d_x, first, False, False, "generation.l0.context"))
    return out


def masks(spec: Spec) -> dict[str, np.ndarray]:
    return {}


def zero_at_init(layer: Layer) -> bool:
    return False


def data_dim(spec: Spec) -> int:
    return N_PIXELS


def noise_shape(spec: Spec, k: int, n: int) -> tuple[int, ...]:
    return (k, n, spec.latent_size)


# layers whose input is data: training computes their weight gradient only
DATA_INPUT = ("recognition.l0", "prior.l0", "generation.l0.context")


def flops_per_example(spec: Spec, k: int, training: bool) -> float:
    """Matmul FLOPs of one example with k samples, as every backend computes them: the recognition and prior
    networks and x's part of the generation network once per example, the rest of the generation network
    once per sample. Forward 2*m*n per map; training adds the backward, 4*m*n (2*m*n where the input is data)."""
    total = 0.0
    for layer in layers(spec):
        forward = 2.0 * layer.fan_in * layer.fan_out * (k if layer.per_sample else 1)
        backward = 0.0 if not training else (forward if layer.name in DATA_INPUT else 2 * forward)
        total += forward + backward
    return total


def describe(spec: Spec) -> str:
    """One line: the split, the three networks, then the objective and optimizer as the VAE says them."""
    d_x = len(observed_pixels(spec))
    widths = "-".join(map(str, spec.encoder))
    training = spec.replace(model="vae").describe().split("; ", 1)[1]
    return (f"x = {OBSERVED[spec.quadrants]} ({d_x} pixels), y = the rest ({N_PIXELS - d_x}); recognition "
            f"784-{widths}, prior {d_x}-{widths}, generation [z|x]-{'-'.join(map(str, spec.decoder))} "
            f"{spec.activation}, L = {spec.latent_size}; {training}")


def extra_metrics(backend, reference, spec: Spec, params: dict[str, np.ndarray], dataset,
                  test_rows: np.ndarray) -> dict:
    """The split, and log p(y|x) estimated by plain Monte Carlo from the prior network (Sohn et al.'s other
    estimator: logmeanexp_s log p(y|x, z_s), z_s ~ p(z|x)), in the NumPy reference with the same noise for
    every backend, on a nested subset of the test digits."""
    from common import data, streams

    prior_sampled_log_likelihood = reference.prior_sampled_log_likelihood

    rows = data.subset_rows("test", min(PRIOR_EXAMPLES, len(test_rows)), len(dataset.test))
    rng = np.random.default_rng(streams.seed_of(spec.seed, "test", 2))
    log_py = prior_sampled_log_likelihood(spec, params, dataset.test[rows], PRIOR_SAMPLES, rng)
    return {"observed": OBSERVED[spec.quadrants],
            f"log p(y|x) from p(z|x), S={PRIOR_SAMPLES}": float(np.mean(log_py))}
