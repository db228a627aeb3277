"""pytest-benchmark: one training window and one importance-sampled evaluation batch per backend
and family, at the default spec (H=512) and at the reference PyTorch configuration (H=256).

Not part of the test run. `bash benchmarks/run.sh` runs each backend in its own process and
saves the JSON under results/benchmarks/. Each case records examples/s (or samples/s) and the
fraction of this machine's float32 matmul peak in extra_info.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backends  # noqa: E402
from common import data, peak  # noqa: E402
from common.init import init_params  # noqa: E402
from common.metrics import eval_flops_per_sample, train_flops_per_example  # noqa: E402
from common.spec import Spec  # noqa: E402

STEPS_PER_CALL = 100  # as compare.py times it: one host sync per 100 steps
EVAL_EXAMPLES, EVAL_K = 32, 1000
NAMES = os.environ.get("BENCH_BACKENDS", ",".join(backends.NAMES)).split(",")
CONFIGS = {"H512": dict(hidden_size=512), "H256": dict(hidden_size=256)}


@pytest.fixture(scope="module")
def dataset():
    root = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"
    return data.load(os.environ.get(data.DIR_ENV, root))


@pytest.fixture(scope="module")
def machine_peak():
    return peak.gemm_flop_per_s(4096, 4096, 4096, seconds=2.0)


def loaded(name: str, spec: Spec, dataset):
    backend = backends.create(name)
    backend.load(spec, init_params(spec), dataset.train)
    return backend


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("family", ["mean-field", "iaf"])
@pytest.mark.parametrize("name", NAMES)
def test_train(benchmark, name, family, config, dataset, machine_peak):
    spec = Spec(variational=family, **CONFIGS[config])
    backend = loaded(name, spec, dataset)
    windows = iter(range(10_000))

    def window():
        start = next(windows) * STEPS_PER_CALL
        return backend.train(data.batch_indices(50_000, spec.batch_size, spec.seed, start, start + STEPS_PER_CALL))

    window()  # compile
    result = benchmark.pedantic(window, rounds=7, iterations=1)
    assert np.isfinite(result)
    rate = STEPS_PER_CALL * spec.batch_size / benchmark.stats.stats.median
    benchmark.extra_info.update(examples_per_s=rate,
                                fraction_of_peak=rate * train_flops_per_example(spec) / machine_peak,
                                peak_flop_per_s=machine_peak)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("family", ["mean-field", "iaf"])
@pytest.mark.parametrize("name", NAMES)
def test_evaluate(benchmark, name, family, config, dataset, machine_peak):
    spec = Spec(variational=family, **CONFIGS[config])
    backend = loaded(name, spec, dataset)
    x = dataset.test[:EVAL_EXAMPLES]
    backend.evaluate(x, EVAL_K)  # compile
    _, log_px = benchmark.pedantic(backend.evaluate, args=(x, EVAL_K), rounds=7, iterations=1)
    assert np.all(np.isfinite(log_px))
    rate = EVAL_EXAMPLES * EVAL_K / benchmark.stats.stats.median
    benchmark.extra_info.update(samples_per_s=rate,
                                fraction_of_peak=rate * eval_flops_per_sample(spec) / machine_peak,
                                peak_flop_per_s=machine_peak)
