"""The experiment spec: one frozen dataclass that every backend reads and none may change.

Defaults are the reference protocol (altosaar/variational-autoencoder, PyTorch script):
two ReLU hidden layers of 512 in the encoder and in the decoder, L = 128, batch 128, centered
RMSprop (lr 1e-3, decay 0.99, eps 1e-8 outside the square root), 30,000 steps, K = 1000
importance samples at evaluation. Presets (below) hold the other published configurations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

N_PIXELS = 784
MODELS = ("vae", "fa", "cvae", "gmvae", "vrnn")  # common/models/<model>.py describes each
FAMILIES = ("mean-field", "iaf")
ACTIVATIONS = ("relu", "tanh", "softplus")
SCALES = ("softplus", "exp")  # q(z|x)'s scale from the encoder's output a: softplus(a) | exp(a) (Burda et al.)
INITS = ("uniform", "glorot", "glorot-logit", "burda-code")  # PyTorch's nn.Linear rule | Glorot & Bengio (2010),
# zero biases | the same, with the VAE decoder's output bias at the logit of the mean training pixel (Burda et al.'s
# code) | that, drawn as their code draws it (common/params.py)
OBJECTIVES = ("elbo", "iwae")
OPTIMIZERS = ("rmsprop", "adam", "adagrad", "adam-burda")
SCHEDULES = ("constant", "step", "burda", "burda-code")  # burda-code: the stage rates rounded as in Burda et al.'s code
ORDERS = ("shuffled", "fixed")  # a new order of the training images each pass | file order every pass (Burda et al.)
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Spec:
    model: str = "vae"
    variational: str = "mean-field"  # "mean-field" | "iaf"
    # architecture: hidden widths of the encoder (x -> ... -> q's parameters) and decoder (z -> ... -> logits)
    encoder: tuple[int, ...] = (512, 512)
    decoder: tuple[int, ...] = (512, 512)
    activation: str = "relu"  # every hidden layer, the IAF's MADE included
    latent_size: int = 128
    flow_steps: int = 2  # IAF only
    flow_hidden: int = 0  # width of the MADE's two hidden layers; 0: the encoder's last width
    init: str = "uniform"
    encoder_scale: str = "softplus"  # VAE only: q(z|x)'s scale is softplus(a) or exp(a) of the encoder's output a
    # objective: per example, the k-sample ELBO (mean_k log w_k) or the IWAE bound (logmeanexp_k log w_k)
    objective: str = "elbo"
    train_k: int = 1
    # optimizer (the update of each one is written out in backends/numpy/optim.py)
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"  # "step": x lr_decay every lr_decay_every steps; "burda": Burda et al.'s
    # (common/optim.py: learning_rates)
    lr_decay: float = 0.1
    lr_decay_every: int = 0
    rmsprop_decay: float = 0.99
    rmsprop_eps: float = 1e-8
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    adagrad_eps: float = 1e-10
    batch_size: int = 128
    batch_order: str = "shuffled"  # common/data.py: batch_indices
    steps: int = 30_000
    eval_every: int = 10_000  # validation log p(x) every this many steps
    eval_k: int = 1000  # importance samples for evaluation
    valid_examples: int = 10_000  # a seeded, representative subset of the validation split (common/data.py)
    test_examples: int = 10_000  # a seeded, representative subset of the test split
    seed: int = 0
    dtype: str = "float32"
    # --- per family (common/models/<model>.py says what each means; the others ignore them)
    fa_dim: int = 3  # factor analysis: data width D (synthetic data, common/models/fa.py)
    fa_train: int = 1000  # factor analysis: synthetic examples in the training / validation / test sets
    fa_valid: int = 1000
    fa_test: int = 1000
    quadrants: int = 1  # conditional VAE: how many quadrants of the digit are observed (1, 2 or 3)
    components: int = 10  # Gaussian-mixture VAE: mixture components
    rnn_cell: str = "gru"  # variational RNN: the recurrent cell (its equations: common/models/vrnn.py)
    rnn_hidden: int = 256  # variational RNN: width of the recurrent state h
    # data parallelism: the global batch is split across this many devices (processes for torch);
    # the gradient is that of the summed objective over the global batch, as on one device
    devices: int = 1

    def __post_init__(self) -> None:
        for name in ("encoder", "decoder"):  # lists from JSON or the command line
            object.__setattr__(self, name, tuple(int(w) for w in getattr(self, name)))
        if self.flow_hidden == 0:
            object.__setattr__(self, "flow_hidden", self.encoder[-1] if self.encoder else self.latent_size)
        problems = []
        for name, allowed in (("model", MODELS), ("variational", FAMILIES), ("activation", ACTIVATIONS),
                              ("init", INITS), ("encoder_scale", SCALES), ("objective", OBJECTIVES),
                              ("optimizer", OPTIMIZERS), ("lr_schedule", SCHEDULES), ("batch_order", ORDERS),
                              ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name.replace('_', '-')} must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
        for name in ("encoder", "decoder"):  # no hidden layer (a linear map) is allowed; a width of 0 is not
            if getattr(self, name) and min(getattr(self, name)) <= 0:
                problems.append(f"{name} widths must be positive, got {list(getattr(self, name))}")
        for name in ("latent_size", "batch_size", "steps", "eval_every", "eval_k", "valid_examples",
                     "test_examples", "devices", "train_k", "fa_dim", "fa_train", "fa_valid", "fa_test", "quadrants",
                     "components", "rnn_hidden"):
            if getattr(self, name) <= 0:
                problems.append(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.devices > 0 and self.batch_size > 0 and self.batch_size % self.devices:
            problems.append(f"batch-size {self.batch_size} does not split evenly across {self.devices} devices")
        if self.flow_steps < 0 or self.flow_hidden < 0:
            problems.append(f"flow-steps and flow-hidden must be >= 0, got {self.flow_steps}, {self.flow_hidden}")
        if self.encoder_scale != "softplus" and self.model != "vae":
            problems.append(f"encoder-scale {self.encoder_scale} is a VAE option; model {self.model} has softplus only")
        if self.init in ("glorot-logit", "burda-code") and self.model != "vae":
            problems.append(f"init {self.init} sets the VAE decoder's output bias; model {self.model} has none")
        if self.init == "burda-code" and self.variational != "mean-field":
            problems.append("init burda-code draws the mean-field encoder's two heads; the IAF's output has three")
        if self.learning_rate <= 0:
            problems.append(f"learning-rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule == "step" and (self.lr_decay_every <= 0 or not 0 < self.lr_decay <= 1):
            problems.append("the step schedule needs lr-decay-every > 0 and 0 < lr-decay <= 1")
        for name in ("rmsprop_decay", "adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        for name in ("rmsprop_eps", "adam_eps", "adagrad_eps"):
            if getattr(self, name) < 0:
                problems.append(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.model in MODELS:
            from common.models import FAMILIES as described  # the family's own constraints (e.g. quadrants 1..3)

            if self.model in described:
                problems += described[self.model].check(self)
            else:
                problems.append(f"model {self.model} has no implementation in this version")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def encoder_out(self) -> int:
        """loc | scale_arg (mean-field), loc | scale_arg | context (IAF)."""
        return (3 if self.variational == "iaf" else 2) * self.latent_size

    def replace(self, **changes) -> Spec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d | {"encoder": list(self.encoder), "decoder": list(self.decoder)}

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        """Also reads the specs of runs made before the architecture was a list (hidden_size: H)."""
        d = dict(d)
        if "hidden_size" in d:
            width = d.pop("hidden_size")
            d.setdefault("encoder", (width, width))
            d.setdefault("decoder", (width, width))
            d.setdefault("flow_hidden", width)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def describe(self) -> str:
        """One line of the architecture and training setting, for tables and logs."""
        if self.model != "vae":
            from common.models import family

            return family(self).describe(self)
        opt = {"rmsprop": f"centered RMSprop lr {self.learning_rate:g}",
               "adam": f"Adam lr {self.learning_rate:g} (β {self.adam_beta1:g}, {self.adam_beta2:g}, "
                       f"eps {self.adam_eps:g})",
               "adagrad": f"Adagrad lr {self.learning_rate:g}",
               "adam-burda": f"Burda et al.'s Adam lr {self.learning_rate:g} (β {self.adam_beta1:g}, "
                             f"{self.adam_beta2:g}, eps {self.adam_eps:g}, v from 1)"}[self.optimizer]
        if self.lr_schedule != "constant":
            opt += f", {self.lr_schedule} schedule"
        if self.batch_order == "fixed":
            opt += ", images in file order"
        objective = "ELBO" if self.objective == "elbo" else "IWAE bound"
        if self.train_k > 1:
            objective += f" (k = {self.train_k})"
        flow = f", IAF T = {self.flow_steps} (MADE {self.flow_hidden})" if self.variational == "iaf" else ""
        flow += ", σ = exp(a)" if self.encoder_scale == "exp" else ""
        return (f"encoder {'-'.join(map(str, self.encoder))}, decoder {'-'.join(map(str, self.decoder))} "
                f"{self.activation}, L = {self.latent_size}{flow}; {objective}, {opt}, batch {self.batch_size}")


def parse_widths(text: str) -> tuple[int, ...]:
    """'400' or '256,128' -> (400,) or (256, 128); ValueError on anything else."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise ValueError(f"hidden widths are comma-separated integers such as 512,512, got {text!r}") from None
    return widths


def burda_steps(stages: int, batch_size: int, n_train: int = 50_000) -> int:
    """Steps of Burda et al.'s schedule through stage stages-1: stage i is 3^i passes over the data."""
    return (3 ** stages - 1) // 2 * (n_train // batch_size)


# Presets override the defaults; explicit flags override presets. Each names its source.
PRESETS: dict[str, dict] = {
    # under a minute per backend and family on a 2-core CPU
    "smoke": dict(steps=1000, eval_every=500, eval_k=50, valid_examples=500, test_examples=1000),
    # a few minutes per backend (both families)
    "quick": dict(steps=5000, eval_every=2500, eval_k=200, valid_examples=2000, test_examples=10_000),
    # the reference protocol (altosaar/variational-autoencoder)
    "paper": dict(steps=30_000, eval_every=10_000, eval_k=1000, valid_examples=10_000, test_examples=10_000),
}
# Burda, Grosse & Salakhutdinov (2016), appendix: one stochastic layer 784-200-200-50 with tanh,
# Adam (beta1 0.9, beta2 0.999, eps 1e-4), batch 20, 3^i passes at lr 0.001 * 10^(-i/7) for i = 0..7,
# Glorot & Bengio's initialisation, log p(x) with K = 5000. IWAE: add --objective iwae --train-k 5.
_BURDA = dict(encoder=(200, 200), decoder=(200, 200), activation="tanh", latent_size=50, init="glorot",
              optimizer="adam", adam_eps=1e-4, learning_rate=1e-3, lr_schedule="burda", batch_size=20,
              valid_examples=1000, test_examples=10_000)
PRESETS["burda"] = _BURDA | dict(steps=burda_steps(8, 20), eval_every=burda_steps(8, 20) // 8, eval_k=5000)
PRESETS["burda-short"] = _BURDA | dict(steps=burda_steps(4, 20), eval_every=burda_steps(4, 20) // 4, eval_k=1000)
# A personal implementation of Kingma & Welling (2014) that the suite was seeded from: one hidden layer of
# 400 with z = 3, and 256-128 layers with z = 12; Adam 3e-4, batch 64, 200 epochs (781 steps each).
_BERGAMIN = dict(optimizer="adam", learning_rate=3e-4, batch_size=64, eval_k=100, valid_examples=2000,
                 test_examples=10_000)
PRESETS["bergamin-z3"] = _BERGAMIN | dict(encoder=(400,), decoder=(400,), latent_size=3, steps=200 * 781,
                                          eval_every=50 * 781)
PRESETS["bergamin-z12"] = _BERGAMIN | dict(encoder=(256, 128), decoder=(256, 128), latent_size=12,
                                           steps=200 * 781, eval_every=50 * 781)
PRESETS["bergamin-z3-short"] = PRESETS["bergamin-z3"] | dict(steps=20 * 781, eval_every=10 * 781)
PRESETS["bergamin-z12-short"] = PRESETS["bergamin-z12"] | dict(steps=20 * 781, eval_every=10 * 781)
# The 2-D VAE of the visual seed of this suite (a course project's VAE drawn in its latent plane): one hidden layer
# of 500 with tanh in encoder and decoder, z = 2, Adam 1e-3, batch 200 (250 steps per pass); 40 passes, or 10.
# Its figures (report/vae2d.py): the test digits' latent means by class, the decoded manifold, and the true
# posterior of a half-seen digit beside its variational fit.
_VAE_2D = dict(encoder=(500,), decoder=(500,), activation="tanh", latent_size=2, optimizer="adam",
               learning_rate=1e-3, batch_size=200, eval_k=500, valid_examples=2000, test_examples=10_000)
PRESETS["vae-2d"] = _VAE_2D | dict(steps=40 * 250, eval_every=10 * 250)
PRESETS["vae-2d-short"] = _VAE_2D | dict(steps=10 * 250, eval_every=5 * 250)
