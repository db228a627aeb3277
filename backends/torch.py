"""PyTorch backend: nn.Modules that read like the equations, torch.optim.RMSprop(centered=True).

torch.optim.RMSprop with centered=True is the reference update itself (eps outside the square
root), so the suite's optimizer is PyTorch's own. Its step is compiled (torch.compile fuses
its dozen elementwise passes over every parameter into one loop, a third of an eager step on
this CPU); set VAE_COMPARE_TORCH_COMPILE=0 to run it eagerly. nn.Linear stores weight as
(out, in); the canonical layout is (in, out), so kernels are transposed on the way in and out.

With spec.devices = N > 1 the backend is one of N processes started by torchrun (common/launch.py)
and the model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on GPU): each process
takes its rows of the global batch and of the global noise, and DDP all-reduces the gradient.
Every contract method still takes and returns the global arrays. The device is the GPU of the
process's LOCAL_RANK when CUDA is available, else the CPU (VAE_COMPARE_TORCH_DEVICE overrides).
"""

from __future__ import annotations

import atexit
import math
import os
import sys

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from common.init import made_masks
from common.spec import N_PIXELS, Spec

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
EVAL_SAMPLES_PER_CHUNK = 4096  # samples per evaluation call: intermediates stay in cache (measured: 4096 ~1.5x 32768)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MaskedLinear(nn.Linear):
    def __init__(self, mask: np.ndarray):
        fan_in, fan_out = mask.shape
        super().__init__(fan_in, fan_out)
        self.register_buffer("mask", torch.from_numpy(mask.T.copy()))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return F.linear(a, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """MADE conditioned on the encoder's context h: [m | s] = MADE(z, h)."""

    def __init__(self, spec: Spec, masks: dict[str, np.ndarray], t: int):
        super().__init__()
        H, L = spec.hidden_size, spec.latent_size
        self.l0 = MaskedLinear(masks[f"flow.{t}.l0.kernel"])
        self.l0_context = nn.Linear(L, H, bias=False)
        self.l1 = MaskedLinear(masks[f"flow.{t}.l1.kernel"])
        self.l1_context = nn.Linear(L, H, bias=False)
        self.out = MaskedLinear(masks[f"flow.{t}.out.kernel"])

    @staticmethod
    def with_context(layer: MaskedLinear, context_map: nn.Linear, a: torch.Tensor,
                     context: torch.Tensor) -> torch.Tensor:
        """a @ (W*M) + b + context @ C as one matmul over [a | context]: fewer, larger GEMMs."""
        weight = torch.cat([layer.weight * layer.mask, context_map.weight], dim=1)
        return F.linear(torch.cat([a, context.expand(*a.shape[:-1], -1)], dim=-1), weight, layer.bias)

    def forward(self, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a0 = F.relu(self.with_context(self.l0, self.l0_context, z, context))
        a1 = F.relu(self.with_context(self.l1, self.l1_context, a0, context))
        m, s = self.out(a1).chunk(2, dim=-1)
        sigma = torch.sigmoid(s + 2.0)
        # log sigma = -softplus(-(s + 2)), exact where sigma underflows
        return sigma * z + (1.0 - sigma) * m, -F.softplus(-(s + 2.0)).sum(-1)


class VAE(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        H, L = spec.hidden_size, spec.latent_size
        self.spec = spec
        self.encoder = mlp([N_PIXELS, H, H, spec.encoder_out])
        self.decoder = mlp([L, H, H, N_PIXELS])
        masks = made_masks(spec)
        n_flow = spec.flow_steps if spec.variational == "iaf" else 0
        self.flow = nn.ModuleList([IAFStep(spec, masks, t) for t in range(n_flow)])

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-example ELBO; eps (..., N, L) broadcasts over x (N, 784)."""
        L = self.spec.latent_size
        out = self.encoder(x)
        loc, scale_arg, context = out[..., :L], out[..., L:2 * L], out[..., 2 * L:]
        scale = F.softplus(scale_arg)
        z = loc + scale * eps
        log_q_z = (-0.5 * eps.square() - scale.log() - HALF_LOG_2PI).sum(-1)
        for t, step in enumerate(self.flow):
            if t > 0:
                z = z.flip(-1)
            z, log_sigma = step(z, context)
            log_q_z = log_q_z - log_sigma
        logits = self.decoder(z)
        log_p_x_given_z = -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none").sum(-1)
        log_p_z = (-0.5 * z.square() - HALF_LOG_2PI).sum(-1)
        return log_p_x_given_z + log_p_z - log_q_z


def canonical_to_module(spec: Spec) -> dict[str, str]:
    """canonical name -> state_dict key."""
    names = {}
    for part in ("encoder", "decoder"):
        for i in range(3):
            names[f"{part}.l{i}.kernel"] = f"{part}.{2 * i}.weight"
            names[f"{part}.l{i}.bias"] = f"{part}.{2 * i}.bias"
    if spec.variational == "iaf":
        for t in range(spec.flow_steps):
            for layer in ("l0", "l1", "out"):
                names[f"flow.{t}.{layer}.kernel"] = f"flow.{t}.{layer}.weight"
                names[f"flow.{t}.{layer}.bias"] = f"flow.{t}.{layer}.bias"
            for layer in ("l0", "l1"):
                names[f"flow.{t}.{layer}.context"] = f"flow.{t}.{layer}_context.weight"
    return names


def join_process_group(devices: int) -> tuple[int, int, int, int]:
    """(rank, world size, local rank, processes on this host) of this torchrun process."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError(f"torch on {devices} devices runs one process per device under torchrun: "
                           f"torchrun --nproc-per-node {devices} ... (compare.py --devices {devices} starts it so)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(dist.destroy_process_group)
    if dist.get_world_size() != devices:
        raise RuntimeError(f"spec asks for {devices} devices but torchrun started {dist.get_world_size()} processes")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", devices))
    return dist.get_rank(), devices, int(os.environ.get("LOCAL_RANK", 0)), local_world


def pick_device(local_rank: int) -> torch.device:
    name = os.environ.get("VAE_COMPARE_TORCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name, local_rank) if name == "cuda" else torch.device(name)


def gather(arrays: tuple[np.ndarray, ...], world: int) -> tuple[np.ndarray, ...]:
    """Every process's arrays concatenated in rank order (all processes get the result)."""
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, arrays)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(arrays)))


class Backend:
    name = "torch"

    def load(self, spec: Spec, params: dict[str, np.ndarray], train_x: np.ndarray) -> None:
        self.rank, self.world, local_rank, local_world = (
            join_process_group(spec.devices) if spec.devices > 1 else (0, 1, 0, 1))
        self.is_main = self.rank == 0
        self.device = pick_device(local_rank)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        self.spec = spec
        self.dtype = getattr(torch, spec.dtype)
        self.model = VAE(spec).to(self.device, self.dtype)
        self.names = canonical_to_module(spec)
        self.load_params(params)
        self.train_x = torch.from_numpy(np.asarray(train_x)).to(self.device, self.dtype)
        self.generator = torch.Generator(self.device).manual_seed(spec.seed)
        self.forward = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # DDP averages the gradient over processes; the loss is scaled by world size to make it the sum
            self.forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False)  # the only buffers are the fixed MADE masks, the same everywhere
        self.optimizer = torch.optim.RMSprop(
            self.model.parameters(), lr=spec.learning_rate, alpha=spec.rmsprop_decay,
            eps=spec.rmsprop_eps, centered=True, foreach=True)
        self.optimizer_step = self.optimizer.step
        if os.environ.get("VAE_COMPARE_TORCH_COMPILE", "1") != "0":
            self.optimizer_step = torch.compile(self.optimizer.step, fullgraph=False)

    def step_optimizer(self) -> None:
        try:
            self.optimizer_step()
        except Exception as e:  # noqa: BLE001 -- e.g. no C++ compiler for Inductor: eager is the same math
            if self.optimizer_step == self.optimizer.step:
                raise
            print(f"torch backend: compiled optimizer step failed ({type(e).__name__}: {e}); "
                  "running it eagerly", file=sys.stderr)
            self.optimizer_step = self.optimizer.step
            self.optimizer_step()

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        state = self.model.state_dict()
        with torch.no_grad():
            for canonical, key in self.names.items():
                value = self.tensor(params[canonical])
                state[key].copy_(value.T if value.ndim == 2 else value)

    def params(self) -> dict[str, np.ndarray]:
        state = self.model.state_dict()
        return {c: (state[k].T if state[k].ndim == 2 else state[k]).detach().cpu().numpy().copy()
                for c, k in self.names.items()}

    def noise(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(*shape, generator=generator or self.generator, dtype=self.dtype, device=self.device)

    def tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=self.spec.dtype)).to(self.device)

    def preview_noise(self, steps: int) -> np.ndarray:
        generator = torch.Generator(self.device)
        generator.set_state(self.generator.get_state())
        shape = (self.spec.batch_size, self.spec.latent_size)
        return np.stack([self.noise(*shape, generator=generator).cpu().numpy() for _ in range(steps)])

    def my_rows(self, n: int) -> slice:
        """This process's rows of n: equal contiguous parts (the last ones one shorter), in rank order."""
        sizes = [len(part) for part in np.array_split(np.arange(n), self.world)]
        start = sum(sizes[:self.rank])
        return slice(start, start + sizes[self.rank])

    def train(self, batch_indices: np.ndarray, noise: np.ndarray | None = None) -> float:
        indices = torch.from_numpy(np.asarray(batch_indices, dtype=np.int64)).to(self.device)
        rows = self.my_rows(indices.shape[1])
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for s in range(len(indices)):
            x = self.train_x.index_select(0, indices[s, rows])
            # the global batch's noise, drawn whole on every process, so N processes train the 1-process run
            eps = (self.noise(indices.shape[1], self.spec.latent_size) if noise is None
                   else self.tensor(noise[s]))[rows]
            elbo = self.forward(x, eps)
            self.optimizer.zero_grad(set_to_none=True)
            loss = -elbo.sum()
            (loss * self.world if self.world > 1 else loss).backward()
            self.step_optimizer()
            total += elbo.detach().mean()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
            total /= self.world
        return total.item() / len(indices)  # one host sync per call

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, k: int, noise: np.ndarray | None = None):
        """Each process evaluates its rows of x; with N > 1 and no noise given, process r draws from
        its own generator, seeded from one draw of the shared one (so a checkpoint's RNG state fixes it)."""
        generator = None
        if self.world > 1 and noise is None:
            seed = int(torch.randint(2**62, (1,), generator=self.generator, device=self.device))
            generator = torch.Generator(self.device).manual_seed(seed + self.rank)
        rows = self.my_rows(len(x))
        x = torch.from_numpy(np.asarray(x[rows])).to(self.device, self.dtype)
        chunk = max(1, EVAL_SAMPLES_PER_CHUNK // k)
        elbos, log_pxs = [], []
        for start in range(0, len(x), chunk):
            xc = x[start:start + chunk]
            eps = (self.noise(k, len(xc), self.spec.latent_size, generator=generator) if noise is None else
                   self.tensor(noise[:, rows][:, start:start + chunk]))
            log_w = self.model(xc, eps)  # (K, n)
            elbos.append(log_w.mean(0))
            log_pxs.append(torch.logsumexp(log_w, 0) - math.log(k))
        out = tuple(torch.cat(parts).double().cpu().numpy() for parts in (elbos, log_pxs))
        return gather(out, self.world) if self.world > 1 else out

    def elbo_and_grads(self, x: np.ndarray, noise: np.ndarray):
        rows = self.my_rows(len(x))
        self.model.zero_grad(set_to_none=True)
        elbo = self.forward(torch.from_numpy(np.asarray(x[rows])).to(self.device, self.dtype),
                            self.tensor(noise[rows]))
        (elbo.sum() * self.world if self.world > 1 else elbo.sum()).backward()
        grads = dict(self.model.named_parameters())
        out = {c: (grads[k].grad.T if grads[k].grad.ndim == 2 else grads[k].grad).cpu().numpy().copy()
               for c, k in self.names.items()}
        self.model.zero_grad(set_to_none=True)
        elbo = elbo.detach().cpu().numpy()
        return (gather((elbo,), self.world)[0] if self.world > 1 else elbo), out

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        params = dict(self.model.named_parameters())
        out: dict[str, dict[str, np.ndarray]] = {"square_avg": {}, "grad_avg": {}}
        for c, k in self.names.items():
            slot = self.optimizer.state.get(params[k], {})
            for name in out:
                value = slot.get(name, torch.zeros_like(params[k])).detach()
                out[name][c] = (value.T if value.ndim == 2 else value).cpu().numpy().copy()
        return out

    def rng_state(self) -> np.ndarray:
        return self.generator.get_state().cpu().numpy().copy()

    def set_rng_state(self, state: np.ndarray) -> None:
        self.generator.set_state(torch.from_numpy(np.asarray(state, np.uint8)))

    def set_optimizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        params = dict(self.model.named_parameters())
        for c, k in self.names.items():
            slot = self.optimizer.state[params[k]]
            slot["step"] = torch.tensor(1.0)
            for name in ("square_avg", "grad_avg"):
                value = self.tensor(state[name][c])
                slot[name] = (value.T if value.ndim == 2 else value).clone()
