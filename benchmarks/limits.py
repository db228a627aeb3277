"""What limits training throughput here: every framework's GEMM, the GEMM-only ceiling, and a profile.

  python benchmarks/limits.py gemm [H]                     # each framework's best GEMM; the model's GEMMs alone
  python benchmarks/limits.py profile torch [FAMILY] [H]   # torch.profiler over 100 steps
  python benchmarks/limits.py optimizer [PRESET]           # torch's optimizer implementations, one step each

Not part of the test run; `python compare.py bench` is the timing protocol whose figures the README quotes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import backends  # noqa: E402
from common import data  # noqa: E402
from common.models import family  # noqa: E402
from common.params import init_params  # noqa: E402
from common.spec import Spec  # noqa: E402


def spec_of(family_name: str = "mean-field", width: int = 512) -> Spec:
    return Spec(variational=family_name, encoder=(width, width), decoder=(width, width))


def model_gemm_flop_per_s(spec: Spec, seconds: float = 2.0) -> float:
    """FLOP/s of one training step's forward and backward GEMMs, run back to back in NumPy's BLAS."""
    rng = np.random.default_rng(0)
    jobs = []
    for layer in family(spec).layers(spec):
        x = rng.standard_normal((spec.batch_size, layer.fan_in), np.float32)
        w = rng.standard_normal((layer.fan_in, layer.fan_out), np.float32)
        dy = rng.standard_normal((spec.batch_size, layer.fan_out), np.float32)
        jobs += [(x, w), (dy, w.T), (x.T, dy)]  # forward, input gradient, weight gradient
    flops = sum(2.0 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in jobs)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for a, b in jobs:
            a @ b
        best = max(best, flops / (time.perf_counter() - start))
    return best


def gemm(width: int) -> None:
    for name in backends.NAMES:  # each framework in its own process, as in a run
        code = (f"import backends; B = backends.create({name!r}); "
                f"print(B.matmul_flop_per_s(4096, 4096, 4096, 2.0), B.matmul_flop_per_s(128, {width}, {width}, 1.0))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout.split()
        if out:
            print(f"{name:>10}: 4096² {float(out[0]) / 1e9:6.0f} GFLOP/s, 128x{width}x{width} "
                  f"{float(out[1]) / 1e9:6.0f} GFLOP/s")
    for family_name in ("mean-field", "iaf"):
        spec = spec_of(family_name, width)
        rate = model_gemm_flop_per_s(spec)
        ceiling = rate / family(spec).flops_per_example(spec, 1, training=True)
        print(f"{family_name}: the model's GEMMs alone in NumPy {rate / 1e9:.0f} GFLOP/s -> at most "
              f"{ceiling:,.0f} examples/s with that BLAS")


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::addmm_", "aten::matmul_out")  # where torch's GEMMs run


def profile(name: str, family_name: str, width: int, steps: int = 100) -> None:
    """torch.profiler over `steps` training steps after as many of warm-up, then where the time went: the GEMMs
    (their share, and the FLOP rate they ran at against the best this framework reaches on one GEMM of the
    model's shape) and everything else, per step."""
    from torch.profiler import ProfilerActivity, profile

    from common.metrics import usable_cores
    from runner.provenance import commit_state, cpu_model

    state = commit_state()
    print(f"# python benchmarks/limits.py profile {name} {family_name} {width}")
    tree = "clean" if state["clean"] else "changed: " + ", ".join(state["changed_files"])
    print(f"# commit {state['commit']} ({tree}), {cpu_model()}, {usable_cores()} cores")
    dataset = data.load()
    spec = spec_of(family_name, width)
    backend = backends.create(name)
    backend.load(spec, init_params(spec, train=dataset.train), dataset.train)
    indices = data.batch_indices(len(dataset.train), spec.batch_size, spec.seed, 0, 2 * steps)
    backend.train(indices[:steps])  # compile, warm up
    start = time.perf_counter()
    backend.train(indices[steps:])
    seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        backend.train(indices[steps:])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
    flop = family(spec).flops_per_example(spec, 1, training=True) * spec.batch_size * steps
    best = backend.matmul_flop_per_s(spec.batch_size, width, width, 1.0)
    print(f"unprofiled: {seconds / steps * 1e3:.2f} ms per step, {steps * spec.batch_size / seconds:,.0f} examples/s")
    print(f"profiled: {total / steps * 1e3:.2f} ms per step; GEMMs {gemm / steps * 1e3:.2f} ms ({gemm / total:.0%}) at "
          f"{flop / gemm / 1e9:.0f} GFLOP/s, against {best / 1e9:.0f} GFLOP/s for this framework's best "
          f"{spec.batch_size}x{width}x{width} GEMM; everything else {(total - gemm) / steps * 1e3:.2f} ms per step")


def optimizer_step(preset: str = "burda", steps: int = 300, rounds: int = 5) -> None:
    """ms per step of torch's implementations of the preset's optimizer over the preset's parameters alone (the
    gradients fixed): PyTorch's default (what torch[eager] runs), that default compiled by torch.compile (what the
    torch row ran before it took the fused one) and the fused one (the torch row, for Adam and Adagrad); the
    three interleaved, `rounds` rounds of `steps` steps, the median round."""
    import torch

    from backends.torch import optim
    from common.metrics import usable_cores
    from common.spec import PRESETS
    from runner.provenance import commit_state, cpu_model

    state = commit_state()
    tree = "clean" if state["clean"] else "changed: " + ", ".join(state["changed_files"])
    print(f"# python benchmarks/limits.py optimizer {preset}")
    print(f"# commit {state['commit']} ({tree}), {cpu_model()}, {usable_cores()} cores, torch {torch.__version__}")
    spec = Spec(**{k: v for k, v in PRESETS[preset].items() if k in Spec.__dataclass_fields__})
    torch.set_num_threads(usable_cores())
    rng = np.random.default_rng(0)
    runs = {}
    for name, tuned, compile_it in (("default", False, False), ("default, compiled", False, True),
                                    ("fused", True, False)):
        params = [torch.nn.Parameter(torch.from_numpy(a.astype(np.float32))) for a in init_params(spec).values()]
        for p in params:
            p.grad = torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32) * 1e-2)
        opt = optim.torch_optimizer(spec, params, torch.tensor(spec.learning_rate, dtype=torch.float64), tuned)
        runs[name] = optim.compiled(opt.step) if compile_it else opt.step
    times = {name: [] for name in runs}
    for step in runs.values():  # warm up, compile
        for _ in range(20):
            step()
    for _ in range(rounds):
        for name, step in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    n = sum(int(np.prod(p.shape)) for p in init_params(spec).values())
    print(f"{spec.optimizer}, {n:,} float32 parameters ({preset}), median of {rounds} interleaved rounds of {steps} "
          "steps:")
    for name, t in times.items():
        print(f"optimizer step, {name}: {np.median(t) * 1e3:.3f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["gemm"]:
        gemm(int(sys.argv[2]) if len(sys.argv) > 2 else 512)
    elif sys.argv[1:2] == ["optimizer"]:
        optimizer_step(sys.argv[2] if len(sys.argv) > 2 else "burda")
    elif sys.argv[1:2] == ["profile"]:
        profile(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "mean-field",
                int(sys.argv[4]) if len(sys.argv) > 4 else 512)
    else:
        sys.exit(__doc__)
