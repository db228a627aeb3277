"""`compare.py bench`: the interleaved, replicated timing protocol, end to end at a toy size, and its summary."""

from __future__ import annotations

import json

import pytest
from helpers import compare

import backends
from runner import bench


def test_each_rows_process_gets_its_variants_environment():
    base = {"PATH": "/bin", "KERAS_BACKEND": "wrong"}
    assert bench.worker_environment(base, "keras[jax]")["KERAS_BACKEND"] == "jax"
    assert bench.worker_environment(base, "keras[torch]")["KERAS_BACKEND"] == "torch"
    assert bench.worker_environment(base, "jax") == base


def test_rounds_rotate_the_order_so_no_row_always_runs_first():
    names = ["jax", "torch", "tensorflow"]
    firsts = [bench.rotated(names, r)[0] for r in range(3)]
    assert sorted(firsts) == sorted(names)
    assert all(sorted(bench.rotated(names, r)) == sorted(names) for r in range(5))


def round_with(rates: dict[str, float], gemm: float = 1e11) -> dict:
    """A round in bench's raw form: every row one config whose windows all ran at its rate, all clean."""
    def config(rate):
        window = dict(seconds=1.0, examples_per_s=rate, finite=True, outside_load=0.0)
        return dict(config="mean-field H8", gemm={"square_4096": gemm, "model_shape": gemm / 2}, warmup_seconds=2.0,
                    windows=[window] * 3, evals=[dict(seconds=1.0, samples_per_s=rate * 10, outside_load=0.0)] * 3,
                    train_flops_per_example=1e6, eval_flops_per_sample=1e5)
    return {"round": 0, "order": list(rates), "numpy_gemm": gemm / 4,
            "backends": {name: {"backend": name, "configs": [config(rate)]} for name, rate in rates.items()}}


def test_ratios_are_taken_within_rounds_and_keras_rows_against_their_own_engine():
    """Two rounds on a machine whose speed halves between them: the ratio within each round stays 0.5 (what the
    protocol is for), while medians over rounds would mix the two speeds; keras[jax] is divided by jax, not by the
    reference torch."""
    from common.spec import Spec

    rounds = [round_with({"torch": 1000.0, "jax": 2000.0, "keras[jax]": 1000.0}),
              round_with({"torch": 500.0, "jax": 1000.0, "keras[jax]": 500.0})]
    names = ["torch", "jax", "keras[jax]"]
    spec = Spec(encoder=(8,), decoder=(8,), latent_size=2)
    summary = bench.summarize(rounds, names, [spec], "torch")
    rows = {row["backend"]: row for row in summary["configs"][0]["backends"]}
    assert rows["jax"]["train_ratio"]["versus"] == "torch" and rows["jax"]["train_ratio"]["ratio"] == 2.0
    assert rows["keras[jax]"]["train_ratio"]["versus"] == "jax" and rows["keras[jax]"]["train_ratio"]["ratio"] == 0.5
    assert rows["torch"]["rounds_used"] == 2 and "train_ratio" not in rows["torch"]
    # % of peak against the best GEMM of each round (the square one here, not NumPy's slower one), median over rounds
    assert rows["torch"]["train_fraction_of_peak"][0] == pytest.approx((1000 + 500) / 2 * 1e6 / 1e11)


@pytest.mark.skipif(not backends.installed("keras[jax]"), reason="needs jax and keras")
def test_bench_end_to_end_times_a_native_row_and_its_keras_row_in_rotated_rounds(tmp_path):
    out = tmp_path / "bench"
    result = compare("bench", "--backends", "jax,keras[jax]", "--variational", "mean-field", "--hidden-sizes", "16",
                     "--latent-size", "4", "--batch-size", "8", "--rounds", "2", "--windows", "2", "--window-steps",
                     "5", "--eval-k", "8", "--eval-examples", "4", "--out", str(out),
                     env={"HOME": str(tmp_path / "home")}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "bench.json").read_text())
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["order"] for r in rounds] == [["jax", "keras[jax]"], ["keras[jax]", "jax"]]
    for r in rounds:  # every row's process ran in every round (keras[jax] only in a process with KERAS_BACKEND=jax)
        assert all("error" not in r["backends"][name] for name in ("jax", "keras[jax]")), r["backends"]
    rows = {row["backend"]: row for row in saved["summary"]["configs"][0]["backends"]}
    # a round whose windows were all taken by other processes is left out: on a quiet machine none is
    assert rows["jax"]["rounds_used"] + rows["jax"].get("rounds_excluded", 0) == 2
    assert rows["keras[jax]"]["rounds_used"] >= 1 and rows["keras[jax]"]["train_ratio"]["versus"] == "jax"
    assert saved["provenance"]["commit"] and (out / "bench.md").read_text().startswith("# bench")
    assert not (out / ".cache").exists() and not (tmp_path / "home").exists()  # nothing written outside --out
