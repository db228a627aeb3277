"""The figures that carry a computation of their own: the 2-D VAE's true posterior and its SVI fit
(report/vae2d.py, report/figures.py: fit_observed)."""

from __future__ import annotations

import numpy as np
from helpers import binary

from backends.numpy import vae as reference
from common.params import init_params, save_params
from common.spec import PRESETS, Spec
from report import figures, vae2d

SPEC_2D = Spec(**{k: v for k, v in PRESETS["vae-2d"].items() if k in ("encoder", "decoder", "activation",
                                                                       "latent_size")} | dict(encoder=(16,),
                                                                                               decoder=(16,)))


def deaf_decoder_params(rng) -> dict:
    """Parameters whose decoder ignores z (its first layer's kernel is zero): p(x | z) is the same for every z."""
    params = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in init_params(SPEC_2D).items()}
    params["decoder.l0.kernel"] = np.zeros_like(params["decoder.l0.kernel"])
    return params


def test_true_posterior_is_the_prior_when_the_decoder_ignores_z(rng):
    """With p(top | z) constant, p(z | top) is N(0, I) restricted to the grid: the figure's grid values are the
    normalised standard normal density, exactly; and SVI on the top half finds q ≈ N(0, I)."""
    model = reference.VAE(SPEC_2D, deaf_decoder_params(rng))
    x = binary(rng, 2).astype(np.float64)
    observed = vae2d.TOP.astype(np.float64)
    log_post = vae2d.true_log_posterior(model, x[0], observed)
    axis = np.linspace(-vae2d.BOX, vae2d.BOX, vae2d.GRID)
    z1, z2 = np.meshgrid(axis, axis[::-1])
    prior = np.exp(-0.5 * (z1**2 + z2**2))
    np.testing.assert_allclose(np.exp(log_post), prior / prior.sum(), rtol=1e-10, atol=1e-300)
    mu, scale = figures.fit_observed(model, x, observed, iterations=400)
    assert np.all(np.abs(mu) < 0.15) and np.all(np.abs(scale - 1) < 0.15), (mu, scale)


def test_true_posterior_follows_the_likelihood(rng):
    """A decoder that reads only z1 and turns pixels on for z1 > 0: a top half full of ink puts the posterior's
    mass at z1 > 0, an empty one at z1 < 0; z2 keeps the prior's symmetry."""
    params = deaf_decoder_params(rng)
    params["decoder.l0.kernel"][0] = 3.0  # z1 drives every hidden unit
    params["decoder.l0.bias"][:] = 0.0
    params["decoder.l1.kernel"] = np.abs(params["decoder.l1.kernel"]) + 0.5  # tanh(3 z1) > 0 -> more ink
    params["decoder.l1.bias"][:] = 0.0
    model = reference.VAE(SPEC_2D, params)
    observed = vae2d.TOP.astype(np.float64)
    axis = np.linspace(-vae2d.BOX, vae2d.BOX, vae2d.GRID)
    for ink, sign in ((1.0, 1), (0.0, -1)):
        post = np.exp(vae2d.true_log_posterior(model, np.full(784, ink), observed))
        mean_z1 = np.sum(post.sum(axis=0) * axis)
        assert sign * mean_z1 > 0.5, mean_z1  # the prior alone gives 0
        np.testing.assert_allclose(post, post[::-1], rtol=1e-9, atol=1e-300)  # symmetric in z2


def test_the_2d_figures_are_drawn_for_every_backend(tmp_path, rng):
    params, runs = init_params(SPEC_2D), []
    for backend in ("torch", "jax", "tensorflow"):
        folder = tmp_path / f"{backend}-mean-field"
        folder.mkdir()
        save_params(folder / "params.safetensors", params)
        runs.append(dict(backend=backend, family="mean-field", model="vae", status="ok", spec=SPEC_2D.to_dict(),
                         folder=folder.name))
    written = vae2d.figures(tmp_path, {"runs": runs}, binary(rng, 10_000))
    assert written == ["latent_scatter.png", "isocontours.png"]
    assert all((tmp_path / name).stat().st_size > 10_000 for name in written)
    assert set(written) <= set(vae2d.CAPTIONS)
    wide = Spec(latent_size=3, encoder=(16,), decoder=(16,))
    runs = [r | dict(spec=wide.to_dict()) for r in runs]
    assert vae2d.figures(tmp_path, {"runs": runs}, binary(rng, 100)) == []  # only for L = 2
