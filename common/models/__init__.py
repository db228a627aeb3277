"""What each model family shares across frameworks, written once and framework-free: its canonical
parameter layout, how its initial parameters are drawn, its noise shape, its data and its FLOP count.

A family module defines: LABEL, METRIC (what log p(...) its evaluation estimates), DEFAULTS (its own
defaults, applied under any preset), PRESETS (per preset, what the family changes, e.g. smaller data),
check(spec), layers(spec), masks(spec), zero_at_init(layer), data_dim(spec), noise_shape(spec, k, n)
(always (k, n, ...): k samples of n examples) and flops_per_example(spec, k, training). Optionally:
dataset(spec, data_dir) and split_sizes(spec) (default: binarized MNIST), init_params(spec, rng)
(default: layer by layer), describe(spec), and extra_metrics(backend, reference, spec, params, dataset,
test_rows) (figures a family adds to its table, e.g. the exact evidence of factor analysis; reference is the
family's float64 NumPy module, backends/numpy/<family>.py, handed in so that common/ never imports backends/).

Backends look up their own module of the same name (backends/<framework>/<family>.py) for the math: a
model whose forward pass gives the (k, n) log-weights log w = log p(x, z) - log q(z | x), or the pair
(log w, elbo) where a family's per-sample ELBO is not log w itself (the Gaussian-mixture VAE sums its
component out exactly in the ELBO but samples a stratified weight for log p(x)).
"""

from __future__ import annotations

import os
from types import ModuleType

from common import data
from common.models import cvae, fa, gmvae, vae, vrnn

FAMILIES: dict[str, ModuleType] = {"vae": vae, "cvae": cvae, "vrnn": vrnn, "fa": fa, "gmvae": gmvae}


def family(spec) -> ModuleType:
    return FAMILIES[spec.model]


def load_data(spec, data_dir: str | os.PathLike | None = None) -> data.Dataset:
    """The data a spec's model family trains on: its own (factor analysis: synthetic) or binarized MNIST."""
    make = getattr(family(spec), "dataset", None)
    return make(spec, data_dir) if make else data.load(data_dir)


def split_sizes(spec) -> dict[str, int]:
    """Train / valid / test sizes of the family's data (binarized MNIST's unless the family says otherwise)."""
    sizes = getattr(family(spec), "split_sizes", None)
    return sizes(spec) if sizes else dict(data.SPLIT_SIZES)
