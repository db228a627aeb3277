"""The torch backend behind the contract (backends/contract.py): the VAE of vae.py, the optimizers of optim.py.

One device: forward and backward run eagerly, the optimizer tuned (optim.py: Adam and Adagrad fused, RMSprop's
step compiled); the torch[eager] row takes PyTorch's defaults and compiles nothing (PyTorch as a user gets
it); the torch[compiled] row also compiles the training forward, and with it the backward (torch.compile of
the model: Inductor's fused kernels around the GEMMs, AOTAutograd's backward graph), the lever of compiling
the whole step, measured beside the others by `compare.py bench`. A train() call moves
its batch indices (and, in parity mode, its noise) to the device once, loops over its steps, each at the
rate common.optim.learning_rates gives it, and syncs with the host once, for its result. Fast mode draws
each step's noise (train_k, B, L) on the device from a torch.Generator seeded with
common.streams.seed_of(spec.seed, "train"); parity mode reads it from the given array; both run the one
_step. nn.Linear keeps weights as (out, in), the canonical kernels are (in, out): they are transposed on
the way in and out. With spec.devices = N > 1 the backend is one of N torchrun processes
(distributed.py); every method still takes and returns the global arrays.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from backends.torch import cvae, distributed, fa, gmvae, optim, vae, vrnn
from common import streams
from common.metrics import usable_cores
from common.models import family
from common.optim import learning_rates
from common.params import check_params
from common.spec import Spec

EVAL_SAMPLES_PER_CHUNK = 4096  # samples per evaluation call: intermediates stay in cache (measured: 4096 ~1.5x 32768)


# spec.model -> this framework's module of the family
MODELS = {"vae": vae.VAE, "cvae": cvae.CVAE, "vrnn": vrnn.VRNN, "fa": fa.FactorAnalysis, "gmvae": gmvae.GMVAE}


def canonical(module_name: str, linear: bool) -> str:
    """nn.Module parameter name -> canonical name: encoder.l0.weight -> encoder.l0.kernel, flow.0.l0_context.weight
    -> flow.0.l0.context; a parameter that is no nn.Linear's keeps its module path."""
    if not linear:
        return module_name
    return module_name.replace("_context.weight", ".context").replace(".weight", ".kernel")


def layout(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Parameter, bool]]:
    """canonical name -> (parameter, transposed): nn.Linear keeps its weight as (out, in), the transpose of the
    canonical kernel (in, out); every other parameter is stored as its canonical array."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return {canonical(name, id(p) in linear): (p, id(p) in linear) for name, p in model.named_parameters()}


def pair(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A family's forward gives log w, or (log w, elbo) where its ELBO is not log w itself."""
    return out if isinstance(out, tuple) else (out, out)


def objective(kind: str, log_w: torch.Tensor, elbo: torch.Tensor) -> torch.Tensor:
    """(k, n) -> (n,) training objective: mean_k elbo (ELBO) or logmeanexp_k log w (IWAE bound)."""
    if kind == "elbo":
        return elbo.mean(0)
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


class Backend:
    name = "torch"
    is_main = True
    devices = 1
    eval_chunk_samples = EVAL_SAMPLES_PER_CHUNK

    def __init__(self, variant: str | None = None):
        """variant "eager" (the row torch[eager]): PyTorch as a user gets it by default, nothing compiled, the
        default BLAS, PyTorch's default optimizer implementations; "compiled" (torch[compiled]): the training
        forward and backward compiled as well; the same math as the torch row, which tunes the optimizer only."""
        if variant not in (None, "eager", "compiled"):
            raise ValueError(f"unknown torch variant {variant!r}")
        self.tuned_optimizer = variant != "eager"
        self.compile_model = variant == "compiled"
        if variant:
            self.name = f"torch[{variant}]"

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        check_params(spec, params)
        self.spec, self.devices = spec, spec.devices
        self.processes = distributed.Processes(spec.devices)
        self.is_main = self.processes.rank == 0
        self.device, self.dtype = self.processes.device(), getattr(torch, spec.dtype)
        torch.set_num_threads(max(1, usable_cores() // self.processes.local_world))
        self.model = MODELS[spec.model](spec).to(self.device, self.dtype)
        self.layout = layout(self.model)
        self.parameters = {name: p for name, (p, _) in self.layout.items()}
        with torch.no_grad():
            for name, p in self.parameters.items():
                p.copy_(self.to_module(name, self.tensor(params[name])))
        self.forward = self.processes.data_parallel(self.model, self.device)
        if self.compile_model:
            self.forward = optim.compiled(self.forward)  # evaluation (log_weights) keeps the eager model
        self.optimizer = optim.Optimizer(spec, self.parameters, self.tuned_optimizer)
        self.train_x = self.tensor(train_x)
        self.generator = torch.Generator(self.device).manual_seed(streams.seed_of(spec.seed, "train"))

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a, dtype=self.spec.dtype), device=self.device)

    def to_module(self, name: str, t: torch.Tensor) -> torch.Tensor:
        return t.T if self.layout[name][1] else t

    def numpy(self, name: str, t: torch.Tensor) -> np.ndarray:
        """A parameter-shaped tensor (the parameter, its gradient, an optimizer slot) in the canonical layout."""
        return self.to_module(name, t.detach()).cpu().numpy().copy()

    def normal(self, k: int, n: int, generator: torch.Generator) -> torch.Tensor:
        shape = family(self.spec).noise_shape(self.spec, k, n)
        return torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)

    def objective(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return objective(self.spec.objective, *pair(self.forward(x, eps)))

    # --- training ---------------------------------------------------------------------------------

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        indices = torch.as_tensor(np.asarray(batch_indices, np.int64), device=self.device)
        steps, batch = indices.shape
        start = self.optimizer.step_count
        rates = learning_rates(self.spec, start, start + steps, len(self.train_x))
        given = None if noise is None else self.tensor(noise)
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for s in range(steps):
            eps = self.normal(self.spec.train_k, batch, self.generator) if given is None else given[s]
            total += self._step(indices[s], eps, float(rates[s]))
        return self.processes.mean(total).item() / steps  # one host sync per call

    def _step(self, indices: torch.Tensor, eps: torch.Tensor, lr: float) -> torch.Tensor:
        """One optimizer step on -sum of the objective over the batch train_x[indices] with noise eps (k, B, L), the
        global batch's; returns this process's batch-mean objective. Fast mode and parity mode both run it."""
        rows = self.processes.rows(len(indices))
        objective = self.objective(self.train_x[indices[rows]], eps[:, rows])
        self.optimizer.torch_optimizer.zero_grad(set_to_none=True)
        (-objective.sum() * self.processes.loss_scale()).backward()
        self.optimizer.step(lr)
        return objective.detach().mean()

    def preview_noise(self, steps: int) -> np.ndarray:
        ahead = torch.Generator(self.device)
        ahead.set_state(self.generator.get_state())
        draws = [self.normal(self.spec.train_k, self.spec.batch_size, ahead) for _ in range(steps)]
        return torch.stack(draws).cpu().numpy()

    def objective_and_grads(self, x: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        rows = self.processes.rows(len(x))
        self.model.zero_grad(set_to_none=True)
        objective = self.objective(self.tensor(x[rows]), self.tensor(noise[:, rows]))
        (objective.sum() * self.processes.loss_scale()).backward()
        grads = {name: self.numpy(name, p.grad) for name, p in self.parameters.items()}
        self.model.zero_grad(set_to_none=True)
        return self.processes.concatenate(objective.detach().cpu().numpy(), axis=0), grads

    # --- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def log_weights(self, x: np.ndarray, k: int, noise: np.ndarray | None = None,
                    seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        if (noise is None) == (seed is None):
            raise ValueError("log_weights needs exactly one of noise and seed")
        rows = self.processes.rows(len(x))
        if noise is None:
            # the chunk's whole noise from its own seed (never the training generator), then this process's rows
            eps = self.normal(k, len(x), torch.Generator(self.device).manual_seed(seed))[:, rows]
        else:
            eps = self.tensor(noise[:, rows])
        log_w, elbo = pair(self.model(self.tensor(x[rows]), eps))
        return tuple(self.processes.concatenate(t.cpu().numpy(), axis=1) for t in (log_w, elbo))

    # --- state ------------------------------------------------------------------------------------

    def params(self) -> dict[str, np.ndarray]:
        return {name: self.numpy(name, p) for name, p in self.parameters.items()}

    def optimizer_state(self) -> dict:
        state = self.optimizer.state()
        return {"step": state["step"]} | {slot: {name: self.numpy(name, t) for name, t in state[slot].items()}
                                          for slot in self.optimizer.slots}

    def set_optimizer_state(self, state: dict) -> None:
        self.optimizer.set_state({"step": int(state["step"])} | {
            slot: {name: self.to_module(name, self.tensor(a)) for name, a in state[slot].items()}
            for slot in self.optimizer.slots})

    def rng_state(self) -> np.ndarray:
        return self.generator.get_state().numpy().copy()

    def set_rng_state(self, state: np.ndarray) -> None:
        self.generator.set_state(torch.from_numpy(np.array(state, np.uint8)))

    @staticmethod
    def matmul_flop_per_s(m: int, k: int, n: int, seconds: float = 0.5) -> float:
        """The best of torch's GEMM paths: matmul, F.linear on nn.Linear's (out, in) weight, and (unless
        VAE_COMPARE_TORCH_COMPILE=0) the Inductor-compiled matmul; the seconds are shared between them."""
        device = distributed.pick_device(int(os.environ.get("LOCAL_RANK", 0)))
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        out, weight = torch.empty(m, n, device=device), b.T.contiguous()
        paths: dict[str, Callable[[], object]] = {"matmul": lambda: torch.matmul(a, b, out=out),
                                                   "linear": lambda: F.linear(a, weight)}
        if os.environ.get("VAE_COMPARE_TORCH_COMPILE", "1") != "0":
            compiled = torch.compile(torch.matmul, dynamic=False, isolate_recompiles=True)
            paths["compiled"] = lambda: compiled(a, b)
        rates = []
        for path in paths.values():
            try:
                rates.append(best_rate(path, 2.0 * m * k * n, seconds / len(paths), device))
            except Exception:  # noqa: BLE001 -- e.g. no C++ compiler for Inductor: the other paths still count
                continue
        return max(rates)


def best_rate(run: Callable[[], object], flop: float, seconds: float, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run()  # warm-up: threads, caches, compilation
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        sync()
        best = max(best, flop / (time.perf_counter() - start))
    return best
