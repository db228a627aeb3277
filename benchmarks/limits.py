"""What limits training throughput here: the GEMM-only ceiling, and where PyTorch's step goes.

  python benchmarks/limits.py gemm            # peak, the model's GEMMs alone, the ceiling in examples/s
  python benchmarks/limits.py torch [FAMILY]  # torch.profiler over 100 steps of the default spec
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import data, peak  # noqa: E402
from common.init import init_params  # noqa: E402
from common.metrics import train_flops_per_example  # noqa: E402
from common.spec import Spec  # noqa: E402


def gemm() -> None:
    square = peak.gemm_flop_per_s(4096, 4096, 4096, seconds=2.0)
    print(f"4096² GEMM: {square / 1e9:.0f} GFLOP/s")
    for family in ("mean-field", "iaf"):
        spec = Spec(variational=family)
        model = peak.model_gemm_flop_per_s(spec, seconds=2.0)
        print(f"{family}: the model's GEMMs alone {model / 1e9:.0f} GFLOP/s ({100 * model / square:.0f}% of the "
              f"square peak) -> at most {model / train_flops_per_example(spec):,.0f} examples/s")


def torch_profile(family: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    import backends

    dataset = data.load(Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"
                        if data.DIR_ENV not in __import__("os").environ else None)
    spec = Spec(variational=family)
    backend = backends.create("torch")
    backend.load(spec, init_params(spec), dataset.train)
    indices = data.batch_indices(len(dataset.train), spec.batch_size, spec.seed, 0, 200)
    backend.train(indices[:100])  # compile, warm up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        backend.train(indices[100:])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    if sys.argv[1:2] == ["gemm"]:
        gemm()
    elif sys.argv[1:2] == ["torch"]:
        torch_profile(sys.argv[2] if len(sys.argv) > 2 else "mean-field")
    else:
        sys.exit(__doc__)
