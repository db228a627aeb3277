"""compare.py end to end, its errors, and the exchange format between backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKENDS, FAMILIES, ROOT, data_dir

import backends
from common import reference
from common.init import init_params
from common.spec import Spec
from common.worker import load_params, save_params

FIGURES = ["learning_curves.png", "throughput.png", "samples.png", "reconstructions.png", "interpolation.png",
           "inpainting.png"]


def compare(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, BINARIZED_MNIST_DIR=str(data_dir()))
    return subprocess.run([sys.executable, str(ROOT / "compare.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("writer", BACKENDS)
def test_params_file_from_one_backend_loads_into_every_backend(writer, family, tmp_path, rng):
    spec = Spec(variational=family, dtype="float64", hidden_size=32, latent_size=8, batch_size=16)
    train_x = (rng.random((100, 784)) < 0.3).astype(np.uint8)
    source = backends.create(writer)
    source.load(spec, init_params(spec), train_x)
    source.train(rng.integers(0, 100, (3, 16)), rng.standard_normal((3, 16, 8)))  # flow output != 0
    save_params(tmp_path / "params.safetensors", source.params())
    loaded = load_params(tmp_path / "params.safetensors")
    assert all(v.dtype == np.float32 for v in loaded.values())
    x, eps = train_x[:16], rng.standard_normal((16, 8))
    expected = reference.elbo(spec, loaded, x, eps)
    for reader in backends.NAMES:
        target = backends.create(reader)
        target.load(spec, loaded, train_x)
        elbo, _ = target.elbo_and_grads(x, eps)
        np.testing.assert_allclose(elbo, expected, rtol=1e-10, err_msg=f"{writer} -> {reader}")


@pytest.mark.slow
def test_smoke_preset_runs_all_three_backends_on_real_data(tmp_path):
    out = tmp_path / "smoke"
    result = compare("--backends", "torch,jax,tf", "--preset", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["backend"] for r in results["runs"]] == ["torch", "jax", "tensorflow"]
    for run in results["runs"]:
        assert run["status"] == "ok", run
        assert -250 < run["test"]["log_px"] < -90 and run["test"]["log_px"] >= run["test"]["elbo"]
        assert run["test"]["examples"] == 1000 and run["test"]["k"] == 100
        assert run["timing"]["examples_per_s"] > 0
        folder = out / f"{run['backend']}-mean-field"
        assert {"params.safetensors", "metrics.json", "log.txt"} <= {p.name for p in folder.iterdir()}
        assert set(load_params(folder / "params.safetensors")) == set(init_params(Spec()))
    assert len(results["paired"]) == 2
    for name in ("results.md", "results.csv"):
        assert "torch" in (out / name).read_text() and "tensorflow" in (out / name).read_text()
    for column in ("test ELBO", "test log p(x)", "train ex/s"):
        assert column in result.stdout
    env = results["environment"]
    assert env["cpu_count"] and env["git_commit"] and results["runs"][1]["versions"]["jax"]

    # the tables and figures are rebuilt from the run's folder alone, without training
    generated = ["results.md", "results.csv", *FIGURES]
    assert {p.name for p in out.iterdir()} >= set(generated)
    for name in generated:
        (out / name).unlink()
    rebuilt = compare("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert {p.name for p in out.iterdir()} >= set(generated)
    markdown = (out / "results.md").read_text()
    assert "test log p(x)" in markdown and all(f"]({name})" in markdown for name in FIGURES)
    assert "[smoke](smoke/results.md)" in (tmp_path / "README.md").read_text()  # the index


def test_seeds_repeat_the_comparison_and_report_the_spread(tmp_path):
    out = tmp_path / "seeds"
    result = compare("--backends", "torch,jax", "--seeds", "2", "--preset", "smoke", "--steps", "100",
                     "--eval-every", "100", "--hidden-size", "32", "--latent-size", "2", "--eval-k", "10",
                     "--valid-examples", "100", "--test-examples", "200", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [(r["backend"], r["seed"]) for r in results["runs"]] == [("torch", 0), ("jax", 0), ("torch", 1), ("jax", 1)]
    assert {p.name for p in out.iterdir()} >= {"torch-mean-field-seed0", "jax-mean-field-seed1", "manifold.png"}
    summary = {s["backend"]: s for s in results["across_seeds"]}
    torch_runs = [r["test"]["log_px"] for r in results["runs"] if r["backend"] == "torch"]
    assert summary["torch"]["n"] == 2 and summary["torch"]["log_px_mean"] == pytest.approx(np.mean(torch_runs))
    assert summary["torch"]["log_px_std"] == pytest.approx(np.std(torch_runs, ddof=1))
    assert torch_runs[0] != torch_runs[1]  # another seed: another initial state, batch order and noise
    assert [p["seed"] for p in results["paired"]] == [0, 1]  # paired within a seed only
    assert "Across seeds" in (out / "results.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--backends", "torch,mxnet"], "unknown backend 'mxnet'"),
    (["--variational", "flow"], "unknown variational family 'flow'"),
    (["--steps", "0"], "steps must be positive"),
    (["--batch-size", "-1"], "batch-size must be positive"),
    (["--batch-size", "60000"], "exceeds the 50,000 training examples"),
    (["--learning-rate", "0"], "learning-rate must be > 0"),
    (["--eval-k", "0"], "eval-k must be positive"),
    (["--hidden-size", "0"], "hidden-size must be positive"),
    (["--latent-size", "-2"], "latent-size must be positive"),
    (["--seeds", "0"], "seeds must be positive"),
    (["--devices", "0"], "devices must be positive"),
    (["--devices", "3"], "batch-size 128 does not split evenly across 3 devices"),
    (["--data-dir", "/nonexistent"], "not found in /nonexistent"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, message, tmp_path):
    result = compare(*args, "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_existing_results_folder_is_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    result = compare("--preset", "smoke", "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (tmp_path / "run" / "results.json").read_text() == "{}"
