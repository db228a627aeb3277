"""The NumPy reference itself: its hand-written gradient for every architecture, activation and
objective, its optimizers against their defining formulas, its flow's log-determinant, its masks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAMILIES

from backends.numpy import optim, vae
from common.models.vae import made_degrees
from common.optim import burda_stage, learning_rates
from common.params import init_params, masks, param_shapes
from common.spec import PRESETS, Spec

TINY = dict(encoder=(12,), decoder=(12,), latent_size=5, batch_size=4)
VARIANTS = {  # architecture and objective variations the hand-written gradient must get right
    "relu-elbo-k1": dict(),
    "tanh-deep-iwae-k3": dict(activation="tanh", encoder=(9, 7, 6), decoder=(6, 11), objective="iwae", train_k=3),
    "softplus-elbo-k3": dict(activation="softplus", encoder=(8, 10), objective="elbo", train_k=3),
    "exp-scale-iwae-k2": dict(encoder_scale="exp", objective="iwae", train_k=2),
}


def random_params(spec: Spec, rng) -> dict:
    params = {k: 0.3 * rng.standard_normal(s) for k, s in param_shapes(spec).items()}
    return {k: v * masks(spec).get(k, 1.0) for k, v in params.items()}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_hand_written_gradient_matches_finite_differences(family, variant, rng):
    spec = Spec(variational=family, **(TINY | VARIANTS[variant]))
    params = random_params(spec, rng)
    x = (rng.random((4, 784)) < 0.3).astype(float)
    eps = rng.standard_normal((spec.train_k, 4, spec.latent_size))
    _, grads = vae.objective_and_grads(spec, params, x, eps)
    h = 1e-5

    def total():
        return vae.objective(spec, vae.log_weights(spec, params, x, eps)).sum()

    for name, value in params.items():
        flat = value.ravel()
        for i in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            up = total()
            flat[i] = old - h
            down = total()
            flat[i] = old
            numeric = (up - down) / (2 * h)
            # central differences: O(h^2) truncation plus ~1e-16 * |objective| / h rounding, far below 1e-5
            assert grads[name].ravel()[i] == pytest.approx(numeric, rel=1e-5, abs=1e-5), (name, i)


def test_iwae_bound_lies_between_the_elbo_and_log_px(rng):
    """With the same k samples: mean_k log w <= logmeanexp_k log w, and k = 1 gives the ELBO itself."""
    spec = Spec(**TINY)
    params, x = random_params(spec, rng), (rng.random((6, 784)) < 0.3).astype(float)
    log_w = vae.log_weights(spec, params, x, rng.standard_normal((7, 6, spec.latent_size)))
    elbo, iwae = vae.objective(spec, log_w), vae.objective(spec.replace(objective="iwae"), log_w)
    assert np.all(iwae >= elbo) and np.all(iwae - elbo > 1e-3)
    np.testing.assert_allclose(vae.objective(spec.replace(objective="iwae"), log_w[:1]), log_w[0], rtol=1e-14)


def made_masks_path(spec: Spec) -> np.ndarray:
    m = masks(spec)
    return m["flow.0.l0.kernel"] @ m["flow.0.l1.kernel"] @ m["flow.0.out.kernel"]


def test_made_masks_are_autoregressive():
    spec = Spec(variational="iaf", encoder=(37, 37), latent_size=9)
    path = made_masks_path(spec)
    L = spec.latent_size
    for block in (path[:, :L], path[:, L:]):  # m and s
        assert np.all(np.tril(block) == 0), "output i must not see inputs >= i"
        assert np.all(block[np.triu_indices(L, 1)] > 0), "output i sees every input < i (width >= L)"
    inputs, hidden = made_degrees(L, spec.flow_hidden)
    assert hidden.min() == 1 and hidden.max() == L - 1


def flow_output(spec: Spec, params: dict, x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    model = vae.VAE(spec, params)
    model.forward(x, eps[None])
    return model.tape["z"][0]


def test_flow_step_jacobian_is_strictly_lower_triangular(rng):
    """One step, numerically: d[m, s]/dz vanishes on and above the diagonal."""
    spec = Spec(variational="iaf", flow_steps=1, **TINY)
    params = random_params(spec, rng)
    model = vae.VAE(spec, params)
    L, context = spec.latent_size, rng.standard_normal((1, spec.latent_size))

    def made(z):
        _, _, m, s = model.made(0, z, context)
        return np.concatenate([m, s], -1)[0]

    z, h = rng.standard_normal((1, L)), 1e-6
    jac = np.stack([(made(z + h * np.eye(L)[j]) - made(z - h * np.eye(L)[j])) / (2 * h)
                    for j in range(L)], axis=1)  # (2L, L): d out_i / d z_j
    for block in (jac[:L], jac[L:]):
        assert np.abs(np.triu(block)).max() < 1e-9
        assert np.abs(np.tril(block, -1)).max() > 1e-3


def test_log_q_equals_base_density_minus_log_det_of_full_jacobian(rng):
    """log q(z_T|x) = log N(eps; 0, I) - log|det dz_T/d eps|, the Jacobian taken numerically."""
    spec = Spec(variational="iaf", flow_steps=2, **TINY)
    params = random_params(spec, rng)
    x = (rng.random((3, 784)) < 0.3).astype(float)
    eps = rng.standard_normal((3, spec.latent_size))
    model = vae.VAE(spec, params)
    log_w = model.forward(x, eps[None])[0]
    log_q = -(log_w - np.sum(x * model.tape["logits"][0] - vae.softplus(model.tape["logits"][0]), -1)
              - np.sum(-0.5 * model.tape["z"][0] ** 2 - vae.HALF_LOG_2PI, -1))
    L, h = spec.latent_size, 1e-6
    for n in range(3):
        cols = []
        for j in range(L):
            step = h * np.eye(L)[j]
            up = flow_output(spec, params, x[n:n + 1], eps[n:n + 1] + step)[0]
            down = flow_output(spec, params, x[n:n + 1], eps[n:n + 1] - step)[0]
            cols.append((up - down) / (2 * h))
        sign, log_det = np.linalg.slogdet(np.stack(cols, axis=1))
        log_base = np.sum(-0.5 * eps[n] ** 2 - vae.HALF_LOG_2PI)
        assert sign != 0
        assert log_q[n] == pytest.approx(log_base - log_det, abs=1e-6)


def test_exp_encoder_scale_is_the_gaussian_density_of_sigma_exp_a(rng):
    """--encoder-scale exp: z = loc + exp(a) eps and log q(z|x) = log N(z; loc, exp(a)^2), written out here from
    the encoder's output; softplus(a) in its place (the default) gives another log w."""
    spec = Spec(encoder_scale="exp", **TINY)
    params = random_params(spec, rng)
    x = (rng.random((3, 784)) < 0.3).astype(float)
    eps = rng.standard_normal((2, 3, spec.latent_size))
    model = vae.VAE(spec, params)
    log_w = model.forward(x, eps)
    out = model.mlp("encoder", x)[0]
    loc, sigma = out[:, :spec.latent_size], np.exp(out[:, spec.latent_size:])
    z = loc + sigma * eps
    np.testing.assert_allclose(model.tape["z"], z, rtol=1e-14)
    log_q = np.sum(-0.5 * ((z - loc) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi), -1)
    logits = model.tape["logits"]
    log_p = np.sum(x * logits - np.logaddexp(0, logits), -1) + np.sum(-0.5 * z**2 - 0.5 * np.log(2 * np.pi), -1)
    np.testing.assert_allclose(log_w, log_p - log_q, rtol=1e-12)
    assert np.abs(vae.log_weights(spec.replace(encoder_scale="softplus"), params, x, eps) - log_w).max() > 1e-3
    with pytest.raises(ValueError, match="encoder-scale exp is a VAE option"):
        Spec(model="fa", encoder_scale="exp")


def test_the_seeds_estimator_takes_the_kl_of_the_encoders_own_scale(rng):
    """The seed's estimator, logmeanexp_k log p(x|z_k) - KL(q || p), with q's scale exp(a) under --encoder-scale exp:
    KL = sum(loc^2 + exp(2a) - 1 - 2a) / 2, written out here."""
    from types import SimpleNamespace

    from common import streams
    from common.models import vae as description

    spec = Spec(encoder_scale="exp", encoder=(12,), decoder=(12,), latent_size=4)
    params = random_params(spec, rng)
    x = (rng.random((6, 784)) < 0.3).astype(float)
    extra = description.extra_metrics(None, vae, spec, params, SimpleNamespace(test=x), np.arange(6))
    eps = np.random.default_rng(streams.seed_of(spec.seed, "test", 2)).standard_normal(
        (description.SEED_ESTIMATOR_K, 6, 4))
    model = vae.VAE(spec, params)
    model.forward(x, eps)
    logits = model.tape["logits"]
    out = model.mlp("encoder", x)[0]
    loc, a = out[:, :4], out[:, 4:]
    kl = 0.5 * np.sum(loc**2 + np.exp(2 * a) - 1 - 2 * a, -1)
    expected = vae.logmeanexp(np.sum(x * logits - np.logaddexp(0, logits), -1), axis=0) - kl
    assert extra[f"seed's estimator (K={description.SEED_ESTIMATOR_K})"] == pytest.approx(expected.mean(), rel=1e-12)


def test_flow_starts_near_identity():
    """Zero MADE output layer: sigma = sigmoid(2), m = 0, so z_T = sigmoid(2)^T z_0 (reversed)."""
    spec = Spec(variational="iaf", **TINY)
    rng = np.random.default_rng(0)
    x = (rng.random((2, 784)) < 0.3).astype(float)
    model = vae.VAE(spec, init_params(spec))
    model.forward(x, rng.standard_normal((1, 2, spec.latent_size)))
    sigma = 1 / (1 + np.exp(-2.0))
    np.testing.assert_allclose(model.tape["z"], sigma ** 2 * model.tape["flow"][0]["z_in"][..., ::-1], rtol=1e-12)


def test_uniform_init_follows_pytorch_linear_rule_and_seed():
    spec = Spec()
    a, b, c = init_params(spec, 0), init_params(spec, 0), init_params(spec, 1)
    for name, value in a.items():
        fan_in = param_shapes(spec)[name.replace(".bias", ".kernel")][0]
        assert np.abs(value).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(value).max() > 0.9 / np.sqrt(fan_in)  # fills the range, not a smaller one
        np.testing.assert_array_equal(value, b[name])
        assert not np.array_equal(value, c[name])


def test_glorot_init_fills_its_range_and_zeroes_the_biases():
    spec = Spec(**PRESETS["burda"])
    params = init_params(spec)
    for name, shape in param_shapes(spec).items():
        if name.endswith(".bias"):
            assert not params[name].any()
        else:
            bound = np.sqrt(6 / sum(shape))
            assert bound * 0.9 < np.abs(params[name]).max() <= bound, name



def test_glorot_logit_init_starts_the_decoder_at_each_pixels_frequency():
    """Burda et al.'s code: glorot, but the decoder's output bias at logit(mean training pixel), clipped to
    [0.001, 0.999]; so with the hidden units at zero the untrained model predicts each pixel's frequency. Every
    other tensor is glorot's draw."""
    rng = np.random.default_rng(5)
    train = (rng.random((400, 784)) < np.linspace(0.0, 0.9, 784)).astype(np.float32)  # pixel 0 never on
    spec = Spec(**{**PRESETS["burda"], "init": "glorot-logit"})
    params, glorot = init_params(spec, train=train), init_params(Spec(**PRESETS["burda"]))
    bias = params["decoder.l2.bias"]
    frequency = 1 / (1 + np.exp(-bias))
    expected = np.clip(train.mean(axis=0, dtype=np.float64), 0.001, 0.999)
    np.testing.assert_allclose(frequency[1:], expected[1:], rtol=1e-12)
    assert frequency[0] == pytest.approx(0.001)
    assert set(params) == set(glorot)
    for name in glorot:
        if name != "decoder.l2.bias":
            np.testing.assert_array_equal(params[name], glorot[name])
    with pytest.raises(ValueError, match="training images"):
        init_params(spec)
    with pytest.raises(ValueError, match="model fa has none"):
        Spec(model="fa", init="glorot-logit")

def test_burda_code_init_draws_every_kernel_afresh_from_the_seed_and_the_two_heads_equal():
    """Burda et al.'s code draws each layer from a generator started at one seed: kernels of one shape start
    equal (the encoder's and decoder's 200 x 200; q's mean and scale heads, 200 x 50 each, Glorot's bound for
    fan_out 50), the decoder's 200 x 784 is the encoder's 784 x 200 draw reshaped; biases are glorot-logit's."""
    from common import data

    train = data.load().train
    spec = Spec(**{**PRESETS["burda"], "init": "burda-code"})
    params, logit = init_params(spec, train=train), init_params(spec.replace(init="glorot-logit"), train=train)
    assert set(params) == set(logit)
    head = params["encoder.l2.kernel"]
    np.testing.assert_array_equal(head[:, :50], head[:, 50:])
    np.testing.assert_array_equal(params["encoder.l1.kernel"], params["decoder.l1.kernel"])
    np.testing.assert_array_equal(params["encoder.l0.kernel"].ravel(), params["decoder.l2.kernel"].ravel())
    first = np.random.default_rng(0).uniform(-np.sqrt(6 / 984), np.sqrt(6 / 984), size=(784, 200))
    np.testing.assert_array_equal(params["encoder.l0.kernel"], first)
    assert np.sqrt(6 / 300) < np.abs(head).max() <= np.sqrt(6 / 250)
    for name in logit:
        if name.endswith(".bias"):
            np.testing.assert_array_equal(params[name], logit[name])
    other = init_params(spec.replace(seed=1), train=train)
    assert not np.array_equal(other["encoder.l1.kernel"], params["encoder.l1.kernel"])
    with pytest.raises(ValueError, match="training images"):
        init_params(spec)
    with pytest.raises(ValueError, match="two heads"):
        Spec(**{**PRESETS["burda"], "init": "burda-code", "variational": "iaf"})


# --- the optimizers against their formulas, one step at a time from a known state ---

def one_step(optimizer: str, t: int, **spec_changes):
    spec = Spec(optimizer=optimizer, **spec_changes)
    rng = np.random.default_rng(3)
    p, g = {"w": rng.standard_normal(5)}, {"w": rng.standard_normal(5)}
    state = optim.init_state(spec, p)
    for slot in state:
        if slot != "step":
            state[slot]["w"] = np.abs(rng.standard_normal(5))
    if optimizer == "rmsprop":  # a reachable state: E[g^2] >= E[g]^2
        state["square_avg"]["w"] += state["grad_avg"]["w"] ** 2
    state["step"] = t - 1
    before = {k: (v if k == "step" else dict(v)) for k, v in state.items()}
    new = optim.update(spec, p, g, state, lr=0.01)
    assert np.all(np.isfinite(new["w"])) and np.all(new["w"] != p["w"])
    return spec, p["w"], g["w"], before, new["w"], state


def test_adam_step_is_the_bias_corrected_formula():
    spec, p, g, s, new, state = one_step("adam", t=3, adam_eps=1e-4)
    m = 0.9 * s["exp_avg"]["w"] + 0.1 * g
    v = 0.999 * s["exp_avg_sq"]["w"] + 0.001 * g * g
    m_hat, v_hat = m / (1 - 0.9**3), v / (1 - 0.999**3)
    np.testing.assert_allclose(new, p - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-4), rtol=1e-13)
    assert state["step"] == 3


def test_burda_adam_steps_with_the_moments_from_before_its_update_and_v_from_one():
    """Burda et al.'s optimizers.py: theta + alpha_t m / (sqrt(v) + 1e-4), alpha_t = lr sqrt(1 - b2^t) / (1 - b1^t),
    with m and v as they were before the step's simultaneous update (ascent there; descent on the loss here)."""
    spec, p, g, s, new, state = one_step("adam-burda", t=3, adam_beta1=0.99, adam_eps=1e-4)
    m, v = s["exp_avg"]["w"], s["exp_avg_sq"]["w"]
    alpha = 0.01 * np.sqrt(1 - 0.999**3) / (1 - 0.99**3)
    np.testing.assert_allclose(new, p - alpha * m / (np.sqrt(v) + 1e-4), rtol=1e-13)
    np.testing.assert_allclose(state["exp_avg"]["w"], 0.99 * m + 0.01 * g, rtol=1e-13)
    np.testing.assert_allclose(state["exp_avg_sq"]["w"], 0.999 * v + 0.001 * g * g, rtol=1e-13)
    assert state["step"] == 3
    fresh = optim.init_state(spec, {"w": p})
    assert np.all(fresh["exp_avg"]["w"] == 0) and np.all(fresh["exp_avg_sq"]["w"] == 1)
    unmoved = optim.update(spec, {"w": p}, {"w": g}, fresh, lr=0.01)  # the first step: m is 0
    np.testing.assert_array_equal(unmoved["w"], p)


def test_adagrad_step_accumulates_squares_and_puts_eps_outside_the_root():
    spec, p, g, s, new, state = one_step("adagrad", t=1)
    np.testing.assert_allclose(new, p - 0.01 * g / (np.sqrt(s["sum"]["w"] + g * g) + 1e-10), rtol=1e-13)


def test_centered_rmsprop_step_subtracts_the_squared_mean():
    spec, p, g, s, new, state = one_step("rmsprop", t=1)
    v = 0.99 * s["square_avg"]["w"] + 0.01 * g * g
    gbar = 0.99 * s["grad_avg"]["w"] + 0.01 * g
    np.testing.assert_allclose(new, p - 0.01 * g / (np.sqrt(v - gbar**2) + 1e-8), rtol=1e-13)


def test_burda_schedule_stages_are_3_to_the_i_passes():
    assert list(burda_stage(np.array([0, 1, 3, 4, 12, 13, 39, 40]))) == [0, 1, 1, 2, 2, 3, 3, 4]
    spec = Spec(**PRESETS["burda"])
    per_epoch = 50_000 // 20
    rates = learning_rates(spec, 0, 4 * per_epoch + 1, 50_000)
    assert rates[0] == rates[per_epoch - 1] == 1e-3
    assert rates[per_epoch] == rates[4 * per_epoch - 1] == pytest.approx(1e-3 * 10 ** (-1 / 7), rel=1e-15)
    assert rates[4 * per_epoch] == pytest.approx(1e-3 * 10 ** (-2 / 7), rel=1e-15)
    assert spec.steps == 3280 * per_epoch  # the whole schedule: sum of 3^i for i = 0..7 passes


def test_burda_code_schedule_rounds_each_stage_rate_to_two_digits():
    """Burda et al.'s code: stage i at 1e-4 * round(10^(1 - i/7), 1), the preset's stages otherwise."""
    spec = Spec(**PRESETS["burda"]).replace(lr_schedule="burda-code")
    per_epoch = 50_000 // 20
    starts = [(3**i - 1) // 2 * per_epoch for i in range(8)]
    rates = learning_rates(spec, 0, spec.steps, 50_000)
    assert list(rates[starts]) == pytest.approx([1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4],
                                                rel=1e-12)
    exact = learning_rates(spec.replace(lr_schedule="burda"), 0, spec.steps, 50_000)
    assert np.all(np.abs(rates / exact - 1) < 0.016) and np.all(np.diff(np.flatnonzero(np.diff(rates))) > 0)
    np.testing.assert_array_equal(np.flatnonzero(np.diff(rates)), np.flatnonzero(np.diff(exact)))


def test_step_schedule_decays_every_interval():
    spec = Spec(lr_schedule="step", lr_decay=0.5, lr_decay_every=10, learning_rate=0.1)
    rates = learning_rates(spec, 5, 25, 50_000)
    assert list(rates) == [0.1] * 5 + [0.05] * 10 + [0.025] * 5
