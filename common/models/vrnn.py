"""The variational RNN (Chung et al. 2015) on binarized MNIST read row by row: the canonical parameters, the cell's
equations, the noise shape and the FLOP count (framework-free).

An image x is T = 28 rows x_1..x_T of 28 pixels. With H = spec.rnn_hidden, L = spec.latent_size, h_0 = 0 (and
c_0 = 0 for the LSTM), "act" the spec's activation and [a | b] a concatenation, step t computes

  features   φ_x(x_t) = act(x_t W_φx + b_φx),  φ_z(z_t) = act(z_t W_φz + b_φz)           (both H wide)
  prior      [μ_p | s_p] = prior(h_{t-1}),             σ_p = softplus(s_p)                  p(z_t | h_{t-1})
  encoder    [μ_q | s_q] = encoder([φ_x(x_t) | h_{t-1}]), σ_q = softplus(s_q)             q(z_t | x_t, h_{t-1})
  sample     z_t = μ_q + σ_q ⊙ ε_t,  ε_t ~ N(0, I)   (reparameterised: the encoder gets a gradient through z_t)
  decoder    logits_t = decoder([φ_z(z_t) | h_{t-1}])                                      p(x_t | z_t, h_{t-1})
  recurrence h_t = cell([φ_x(x_t) | φ_z(z_t)], h_{t-1})

and one trajectory z_1..z_T has the importance log-weight
  log w = Σ_t [log p(x_t | z_t, h_{t-1}) + log p(z_t | h_{t-1}) − log q(z_t | x_t, h_{t-1})]
with log p(x_t | .) = Σ x_t logits_t − softplus(logits_t) (Bernoulli) and Gaussian log-densities summed over z's L
units. The per-sample ELBO is log w itself: the ELBO is mean_k log w_k, log p(x) is estimated by logmeanexp_k log w_k
over K whole trajectories per image (the engines and common/evaluation.py do both). Both are in nats per image,
summed over all 784 pixels, as the VAE's are.

prior, encoder and decoder are MLPs: hidden layers with the activation, a linear output layer. The encoder's hidden
widths are spec.encoder; the decoder's and the prior's (both of the generative model) spec.decoder; either may be
empty (a linear map). The last cell update h_T is computed (every step is the same) and unused.

The cell, with σ the logistic sigmoid and its gates in this fixed order:
  GRU  [r | u | n] (u, the update gate, is PyTorch's z; cuDNN's "reset after" form, as PyTorch's GRUCell):
       a = inp W_in + b_in,  c = h W_rec + b_rec                                  (each 3H: [r | u | n])
       r = σ(a_r + c_r),  u = σ(a_u + c_u),  n = tanh(a_n + r ⊙ c_n),  h' = (1 − u) ⊙ n + u ⊙ h
  LSTM [i | f | g | o] (PyTorch's LSTMCell order; one bias, no recurrent bias):
       a = inp W_in + b_in + h W_rec                                              (4H: [i | f | g | o])
       i = σ(a_i), f = σ(a_f), g = tanh(a_g), o = σ(a_o),  c' = f ⊙ c + i ⊙ g,  h' = o ⊙ tanh(c')

Canonical names (dense kernels (in, out); G = 3 for the GRU, 4 for the LSTM):
  phi_x.l0.{kernel,bias}        (28, H), (H,)
  phi_z.l0.{kernel,bias}        (L, H), (H,)
  prior.l{i}.{kernel,bias}      H -> decoder widths -> 2L, outputs [μ_p | s_p]
  encoder.l{i}.{kernel,bias}    2H, rows [φ_x | h] -> encoder widths -> 2L, outputs [μ_q | s_q]
  decoder.l{i}.{kernel,bias}    2H, rows [φ_z | h] -> decoder widths -> 28 logits
  rnn.input.{kernel,bias}       (2H, GH), rows [φ_x | φ_z]; (GH,)
  rnn.recurrent.kernel          (H, GH)
  rnn.recurrent.bias            (3H,), the GRU only
Initial values: every layer by spec.init from its own fan-in (common/params.py), the cell's two kernels included.
Noise: eps (k, n, T, L), one ε_t per step of each of k trajectories of each of n images.
"""

from __future__ import annotations

from common.models.vae import Layer, mlp
from common.spec import N_PIXELS, Spec

ROWS, ROW = 28, 28  # an image is read as ROWS steps of ROW pixels
CELLS = {"gru": 3, "lstm": 4}  # the cell -> its gate count G
LABEL = "VRNN"
METRIC = "log p(x)"
# Sized to train in minutes on a 2-core CPU: H = 64, one hidden layer of 64 in each network, L = 16; Adam 1e-3
DEFAULTS: dict = dict(encoder=(64,), decoder=(64,), latent_size=16, rnn_hidden=64, optimizer="adam",
                      learning_rate=1e-3, batch_size=64)
PRESETS: dict[str, dict] = {
    "smoke": dict(steps=500, eval_every=250, eval_k=20, valid_examples=200, test_examples=500),
    "quick": dict(steps=5000, eval_every=2500, eval_k=100, valid_examples=1000, test_examples=10_000),
}


def check(spec: Spec) -> list[str]:
    problems = []
    if spec.rnn_cell not in CELLS:
        problems.append(f"rnn-cell must be one of {', '.join(CELLS)}, got {spec.rnn_cell!r}")
    if spec.variational != "mean-field":
        problems.append("the VRNN's posterior is a Gaussian per step: variational must be mean-field")
    return problems


def layers(spec: Spec) -> list[Layer]:
    """Every parameterised map, in the canonical drawing order of the initial parameters."""
    H, L, gates = spec.rnn_hidden, spec.latent_size, CELLS[spec.rnn_cell] * spec.rnn_hidden
    out = [Layer("phi_x.l0", ROW, H, per_sample=False), Layer("phi_z.l0", L, H, per_sample=True)]
    out += mlp("prior", [H, *spec.decoder, 2 * L], per_sample=True)
    out += mlp("encoder", [2 * H, *spec.encoder, 2 * L], per_sample=True)
    out += mlp("decoder", [2 * H, *spec.decoder, ROW], per_sample=True)
    out += [Layer("rnn.input", 2 * H, gates, per_sample=True),
            Layer("rnn.recurrent", H, gates, per_sample=True, bias=spec.rnn_cell == "gru")]
    return out


def masks(spec: Spec) -> dict:
    return {}


def zero_at_init(layer: Layer) -> bool:
    return False


def data_dim(spec: Spec) -> int:
    return N_PIXELS


def noise_shape(spec: Spec, k: int, n: int) -> tuple[int, ...]:
    """One ε_t ~ N(0, I) per step of each trajectory."""
    return (k, n, ROWS, spec.latent_size)


def flops_per_example(spec: Spec, k: int, training: bool) -> float:
    """Matmul FLOPs of one image with k trajectories, as every backend computes them: φ_x once per image and
    step, every other map once per trajectory and step (T cell updates). Forward 2*m*n per map; training adds
    the backward, 4*m*n (2*m*n for φ_x, whose input x needs no gradient)."""
    total = 0.0
    for layer in layers(spec):
        forward = 2.0 * layer.fan_in * layer.fan_out * (k if layer.per_sample else 1)
        backward = 0.0 if not training else (forward if layer.name == "phi_x.l0" else 2 * forward)
        total += ROWS * (forward + backward)
    return total


def describe(spec: Spec) -> str:
    opt = {"rmsprop": "centered RMSprop", "adam": "Adam", "adagrad": "Adagrad",
           "adam-burda": "Burda et al.'s Adam"}[spec.optimizer]
    objective = "ELBO" if spec.objective == "elbo" else "IWAE bound"
    if spec.train_k > 1:
        objective += f" (k = {spec.train_k})"
    widths = {part: "-".join(map(str, getattr(spec, part))) or "linear" for part in ("encoder", "decoder")}
    return (f"VRNN over 28 rows, {spec.rnn_cell.upper()} H = {spec.rnn_hidden}, L = {spec.latent_size}, encoder "
            f"{widths['encoder']}, decoder and prior {widths['decoder']} {spec.activation}; {objective}, {opt} lr "
            f"{spec.learning_rate:g}, batch {spec.batch_size}")


def extra_metrics(backend, reference, spec: Spec, params: dict, dataset, test_rows) -> dict:
    """How this backend runs the recurrence (each framework's model says it: RECURRENCE)."""
    return {"recurrence": getattr(backend.model, "RECURRENCE", "–")}
