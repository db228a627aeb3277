"""The VAE's canonical parameters, MADE masks, noise shape and FLOP count (framework-free).

Canonical names (dense kernels are (in, out); README.md shows the table):
  encoder.l{i}.{kernel,bias}   784 -> encoder[0] -> ... -> encoder[-1] -> 2L (mean-field) | 3L (IAF:
                               loc, scale_arg, context)
  decoder.l{i}.{kernel,bias}   L -> decoder[0] -> ... -> decoder[-1] -> 784
  flow.{t}.l0.{kernel,bias,context}  MADE layer 1: z (L) -> F, masked; context (L, F), no bias
  flow.{t}.l1.{kernel,bias,context}  MADE layer 2: F -> F, masked; context (L, F), no bias
  flow.{t}.out.{kernel,bias}         MADE output: F -> 2L = [m | s], masked, zero at init
with F = spec.flow_hidden. Masked entries are stored as zero; every backend multiplies by the mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.spec import N_PIXELS, Spec

LABEL = "VAE"  # how tables and figures name the family
METRIC = "log p(x)"  # what its importance-sampled estimate is of
DEFAULTS: dict = {}  # the family's own defaults, under any preset
PRESETS: dict[str, dict] = {}  # per preset, what the family changes of it (e.g. smaller data)


SEED_ESTIMATOR_K = 100  # the personal seed's README: "100 importance-weighted samples"


def check(spec: Spec) -> list[str]:
    """Problems with a spec for this family (empty: fine)."""
    return []


def extra_metrics(backend, reference, spec: Spec, params: dict, dataset, test_rows) -> dict:
    """For the small-latent mean-field configurations of the personal seed (bergamin-z3, -z12): its own
    log-likelihood estimator beside the importance-weighted one, on the same parameters, examples and samples.

    The seed reported logmeanexp_k log p(x | z_k) - KL(q(z|x) || p(z)), z_k ~ q(z|x): not a bound on log p(x) and
    not an importance-sampling estimate (it leaves out the weights p(z_k) / q(z_k|x)). Computed with the NumPy
    reference in float64 on at most 2,000 of the test examples."""
    if spec.variational != "mean-field" or spec.latent_size > 16:
        return {}
    import numpy as np

    from common import streams

    vae = reference

    x = np.asarray(dataset.test[test_rows[:2000]], np.float64)
    model = vae.VAE(spec, params)
    eps = np.random.default_rng(streams.seed_of(spec.seed, "test", 2)).standard_normal(
        (SEED_ESTIMATOR_K, len(x), spec.latent_size))
    log_w = model.forward(x, eps)
    log_p_x_given_z = np.sum(x * model.tape["logits"] - vae.softplus(model.tape["logits"]), axis=-1)
    out = model.mlp("encoder", x)[0]
    loc = out[:, :spec.latent_size]
    scale, log_scale = vae.encoder_scale(spec, out[:, spec.latent_size:2 * spec.latent_size])
    kl = 0.5 * np.sum(loc**2 + scale**2 - 1.0 - 2.0 * log_scale, axis=-1)
    seed = vae.logmeanexp(log_p_x_given_z, axis=0) - kl
    iwae = vae.logmeanexp(log_w, axis=0)
    return {f"seed's estimator (K={SEED_ESTIMATOR_K})": float(seed.mean()),
            f"IWAE (K={SEED_ESTIMATOR_K}, same samples)": float(iwae.mean()),
            "seed's estimator − IWAE": float((seed - iwae).mean())}


@dataclass(frozen=True)
class Layer:
    name: str
    fan_in: int
    fan_out: int
    per_sample: bool  # applied to every importance sample (z's side), not once per example (x's side)
    bias: bool = True
    kernel_name: str = ""  # canonical name of the kernel; default name + ".kernel"

    @property
    def kernel(self) -> str:
        return self.kernel_name or f"{self.name}.kernel"


def mlp(prefix: str, sizes: list[int], per_sample: bool) -> list[Layer]:
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    return [Layer(f"{prefix}.l{i}", a, b, per_sample) for i, (a, b) in enumerate(pairs)]


def layers(spec: Spec) -> list[Layer]:
    """Every parameterised map, in the canonical drawing order of the initial parameters."""
    L, F = spec.latent_size, spec.flow_hidden
    out = mlp("encoder", [N_PIXELS, *spec.encoder, spec.encoder_out], per_sample=False)
    out += mlp("decoder", [L, *spec.decoder, N_PIXELS], per_sample=True)
    if spec.variational == "iaf":
        for t in range(spec.flow_steps):
            p = f"flow.{t}"
            out += [Layer(f"{p}.l0", L, F, True), Layer(f"{p}.l0.context", L, F, False, False, f"{p}.l0.context"),
                    Layer(f"{p}.l1", F, F, True), Layer(f"{p}.l1.context", L, F, False, False, f"{p}.l1.context"),
                    Layer(f"{p}.out", F, 2 * L, True)]
    return out


def hidden_count(spec: Spec, part: str) -> int:
    return len(spec.encoder if part == "encoder" else spec.decoder)


def zero_at_init(layer: Layer) -> bool:
    # the MADE output layer starts at zero: sigma = sigmoid(2), m = 0, so the flow starts near the identity
    return layer.name.startswith("flow.") and layer.name.endswith(".out")


def made_degrees(latent_size: int, hidden_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Input degrees 1..L left to right; hidden degrees spread evenly over 1..L-1 (MADE's "equal")."""
    inputs = np.arange(1, latent_size + 1)
    span = max(latent_size - 1, 1)
    hidden = 1 + (np.arange(hidden_size) * span) // hidden_size
    return inputs, hidden


def masks(spec: Spec) -> dict[str, np.ndarray]:
    """0/1 masks keyed by the kernel they multiply; output i (of m and of s) sees only z_<i."""
    if spec.variational != "iaf":
        return {}
    inputs, hidden = made_degrees(spec.latent_size, spec.flow_hidden)
    m_in = (hidden[None, :] >= inputs[:, None]).astype(np.float64)      # (L, F)
    m_hid = (hidden[None, :] >= hidden[:, None]).astype(np.float64)     # (F, F)
    m_out = (inputs[None, :] > hidden[:, None]).astype(np.float64)      # (F, L)
    m_out = np.concatenate([m_out, m_out], axis=1)                      # (F, 2L): [m | s]
    out = {}
    for t in range(spec.flow_steps):
        out |= {f"flow.{t}.l0.kernel": m_in, f"flow.{t}.l1.kernel": m_hid, f"flow.{t}.out.kernel": m_out}
    return out


def data_dim(spec: Spec) -> int:
    """Width of one example as the backends receive it."""
    return N_PIXELS


def noise_shape(spec: Spec, k: int, n: int) -> tuple[int, ...]:
    """eps ~ N(0, I) for k samples of each of n examples."""
    return (k, n, spec.latent_size)


def flops_per_example(spec: Spec, k: int, training: bool) -> float:
    """Matmul FLOPs of one example with k samples, as every backend computes it: the encoder and the
    flow's context maps once per example, the MADE and the decoder once per sample. Forward 2*m*n per
    layer; training adds the backward, 4*m*n (2*m*n for encoder.l0, whose input x needs no gradient)."""
    total = 0.0
    for layer in layers(spec):
        forward = 2.0 * layer.fan_in * layer.fan_out * (k if layer.per_sample else 1)
        backward = 0.0 if not training else (forward if layer.name == "encoder.l0" else 2 * forward)
        total += forward + backward
    return total
