"""The optimizers: torch.optim's RMSprop(centered=True), Adam and Adagrad are the reference's
formulas themselves (backends/numpy/optim.py: eps outside the square root; Adagrad with lr_decay 0 and
its accumulator starting at 0), so the suite's optimizer is PyTorch's own. Burda et al.'s Adam (adam-burda),
which torch.optim has not, is written out below and its step compiled, as RMSprop's.

Adam and Adagrad take torch's fused implementation (fused=True: one ATen kernel per parameter, on a CPU as on
a GPU), RMSprop, which has none, a compiled step (torch.compile fuses its dozen elementwise passes over every
parameter into one loop, a third of an eager step on a CPU). Measured at Burda's network (0.4M parameters,
one thread): Adam's fused step 0.35 ms, its compiled step 1.46 ms, its eager foreach step 0.98 ms; the
compiled step also pays Dynamo's guards on every call. VAE_COMPARE_TORCH_COMPILE=0 runs RMSprop eagerly,
and a compiled step that fails (e.g. no C++ compiler for Inductor) falls back to the eager one, the same
math. The torch[eager] row (engine.py) takes neither: PyTorch's defaults, as a user gets them.
The learning rate is a 0-dim tensor that the step reads: a Python float would be a constant of the
compiled graph and recompile it whenever a schedule changes the rate ("Wrap the lr in a Tensor",
PyTorch recipe "Running the compiled optimizer with an LR Scheduler"). The state is torch's own:
a per-parameter "step" (our step count) and the slots of common.optim.SLOTS, under torch's names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import torch
from torch import nn

from common.optim import SLOTS, initial
from common.spec import Spec

FUSED = ("adam", "adagrad")  # the optimizers torch has a fused implementation of, on every device


class BurdaAdam(torch.optim.Optimizer):
    """Burda et al.'s Adam (backends/numpy/optim.py), which torch.optim has not: the step taken from the moments
    before this step's update, exp_avg_sq starting at one (the Optimizer below lays the state out)."""

    def __init__(self, parameters: list[nn.Parameter], lr: torch.Tensor, betas: tuple[float, float], eps: float):
        super().__init__(parameters, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        for group in self.param_groups:
            (b1, b2), eps, lr = group["betas"], group["eps"], group["lr"]
            for p in group["params"]:
                state = self.state[p]
                m, v, g = state["exp_avg"], state["exp_avg_sq"], p.grad
                t = state["step"] + 1
                scale = torch.sqrt(1 - torch.pow(b2, t)) / (1 - torch.pow(b1, t))
                step = lr.to(p.dtype) * scale * m / (torch.sqrt(v) + eps)
                new_m, new_v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                p.sub_(step)
                m.copy_(new_m)
                v.copy_(new_v)
        self.count()

    @torch._dynamo.disable
    def count(self) -> None:
        """Outside the compiled step: compiled, torch 2.13 drops this in-place increment of the 0-dim "step"."""
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["step"].add_(1)


def torch_optimizer(spec: Spec, parameters: list[nn.Parameter], lr: torch.Tensor, tuned: bool = True
                    ) -> torch.optim.Optimizer:
    """torch.optim's optimizer of spec.optimizer; tuned, Adam and Adagrad are fused (the default is not)."""
    fused = {"fused": True} if tuned and spec.optimizer in FUSED else {}
    if spec.optimizer == "rmsprop":
        # foreach: torch 2.13's compiled single-tensor RMSprop drops the increment of a float64 "step"
        return torch.optim.RMSprop(parameters, lr=lr, alpha=spec.rmsprop_decay, eps=spec.rmsprop_eps,
                                   centered=True, foreach=True)
    if spec.optimizer == "adam":
        # foreach left to torch: it takes the single-tensor path for a tensor lr (its foreach path needs capturable)
        return torch.optim.Adam(parameters, lr=lr, betas=(spec.adam_beta1, spec.adam_beta2), eps=spec.adam_eps,
                                **fused)
    if spec.optimizer == "adam-burda":
        return BurdaAdam(parameters, lr, (spec.adam_beta1, spec.adam_beta2), spec.adam_eps)
    return torch.optim.Adagrad(parameters, lr=lr, lr_decay=0.0, eps=spec.adagrad_eps, initial_accumulator_value=0.0,
                               **fused)


def compiled(step: Callable[[], object], enabled: bool = True) -> Callable[[], object]:
    if not enabled or os.environ.get("VAE_COMPARE_TORCH_COMPILE", "1") == "0":
        return step
    # isolate_recompiles: each optimizer object compiles its own step; shared, the ninth optimizer of a
    # process (a test session) would exceed Dynamo's recompile limit and silently run eagerly
    return torch.compile(step, fullgraph=False, isolate_recompiles=True)


class Optimizer:
    """spec.optimizer over named parameters; step(lr) is one update at that learning rate."""

    def __init__(self, spec: Spec, parameters: dict[str, nn.Parameter], tuned: bool = True):
        """tuned (the torch row): Adam and Adagrad fused, RMSprop's step compiled; else PyTorch's defaults."""
        self.parameters, self.slots = parameters, SLOTS[spec.optimizer]
        self.lr = torch.tensor(spec.learning_rate, dtype=torch.float64)
        self.torch_optimizer = torch_optimizer(spec, list(parameters.values()), self.lr, tuned)
        self.eager_step = self.torch_optimizer.step
        self.compiled_step = compiled(self.eager_step, tuned and spec.optimizer not in FUSED)
        for p in parameters.values():
            # the step count in the parameters' dtype: compiled, Adam's bias correction beta ** step is a tensor
            # op (torch.optim's _get_value returns the tensor under torch.compile), float64 in a float64 run
            self.torch_optimizer.state[p] = {"step": torch.zeros((), dtype=p.dtype)} | {
                slot: torch.full_like(p, initial(spec.optimizer, slot), memory_format=torch.preserve_format)
                for slot in self.slots}

    def step(self, lr: float) -> None:
        self.lr.fill_(lr)
        try:
            self.compiled_step()
        except Exception as e:  # noqa: BLE001 -- e.g. no C++ compiler for Inductor: eager is the same math
            if self.compiled_step is self.eager_step:
                raise
            print(f"torch backend: compiled optimizer step failed ({type(e).__name__}: {e}); running it eagerly",
                  file=sys.stderr)
            self.compiled_step = self.eager_step
            self.compiled_step()

    @property
    def step_count(self) -> int:
        first = next(iter(self.parameters.values()))
        return int(self.torch_optimizer.state[first]["step"])

    def state(self) -> dict:
        """{"step": int, slot: {name: tensor in the parameter's layout}}."""
        state = self.torch_optimizer.state
        return {"step": self.step_count} | {
            slot: {name: state[p][slot].detach() for name, p in self.parameters.items()} for slot in self.slots}

    @torch.no_grad()
    def set_state(self, state: dict) -> None:
        """Copied into the tensors the step already holds, so a compiled step needs no recompiling."""
        for name, p in self.parameters.items():
            mine = self.torch_optimizer.state[p]
            mine["step"].fill_(int(state["step"]))
            for slot in self.slots:
                mine[slot].copy_(state[slot][name])
