"""The experiment spec: one frozen dataclass that every backend reads and none may change.

Defaults are the reference protocol (altosaar/variational-autoencoder, PyTorch script):
H = 512, L = 128, batch 128, centered RMSprop (lr 1e-3, decay 0.99, eps 1e-8 outside the
square root), 30,000 steps, K = 1000 importance samples at evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

N_PIXELS = 784
FAMILIES = ("mean-field", "iaf")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Spec:
    variational: str = "mean-field"  # "mean-field" | "iaf"
    hidden_size: int = 512
    latent_size: int = 128
    flow_steps: int = 2  # IAF only
    batch_size: int = 128
    learning_rate: float = 1e-3
    rmsprop_decay: float = 0.99
    rmsprop_eps: float = 1e-8
    steps: int = 30_000
    eval_every: int = 10_000  # validation log p(x) every this many steps
    eval_k: int = 1000  # importance samples for evaluation
    valid_examples: int = 10_000  # first n of the validation split used for model selection
    test_examples: int = 10_000  # first n of the test split used for the reported numbers
    seed: int = 0
    dtype: str = "float32"
    # data parallelism: the global batch is split across this many devices (processes for torch);
    # the gradient is that of the summed ELBO over the global batch, as on one device
    devices: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.variational not in FAMILIES:
            problems.append(f"variational must be one of {', '.join(FAMILIES)}, got {self.variational!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("hidden_size", "latent_size", "batch_size", "steps", "eval_every", "eval_k",
                     "valid_examples", "test_examples", "devices"):
            if getattr(self, name) <= 0:
                problems.append(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.devices > 0 and self.batch_size > 0 and self.batch_size % self.devices:
            problems.append(f"batch-size {self.batch_size} does not split evenly across {self.devices} devices")
        if self.flow_steps < 0:
            problems.append(f"flow-steps must be >= 0, got {self.flow_steps}")
        if self.learning_rate <= 0:
            problems.append(f"learning-rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.rmsprop_decay < 1:
            problems.append(f"rmsprop-decay must be in [0, 1), got {self.rmsprop_decay}")
        if self.rmsprop_eps < 0:
            problems.append(f"rmsprop-eps must be >= 0, got {self.rmsprop_eps}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def encoder_out(self) -> int:
        """loc | scale_arg (mean-field), loc | scale_arg | context (IAF)."""
        return (3 if self.variational == "iaf" else 2) * self.latent_size

    def replace(self, **changes) -> Spec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Spec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Presets override the defaults; explicit flags override presets.
PRESETS: dict[str, dict] = {
    # about a minute per backend and family on a 2-core CPU
    "smoke": dict(steps=2000, eval_every=1000, eval_k=100, valid_examples=500, test_examples=1000),
    # a few minutes per backend (both families)
    "quick": dict(steps=5000, eval_every=2500, eval_k=200, valid_examples=2000, test_examples=10_000),
    # the reference protocol
    "paper": dict(steps=30_000, eval_every=10_000, eval_k=1000, valid_examples=10_000,
                  test_examples=10_000),
}
