"""compare.py end to end, its errors, its help, and the exchange format between backends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKENDS, FAMILIES, IN_PROCESS, ROOT
from helpers import compare

import backends
from backends.numpy import vae
from common.params import init_params, load_params, save_params
from common.spec import Spec

FIGURES = ["learning_curves.png", "throughput.png", "samples.png", "reconstructions.png", "interpolation.png",
           "inpainting.png"]
TINY = ["--steps", "100", "--eval-every", "100", "--hidden", "32", "--latent-size", "4", "--eval-k", "10",
        "--valid-examples", "100", "--test-examples", "200", "--preset", "smoke"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("writer", BACKENDS)
def test_params_file_from_one_backend_loads_into_every_backend(writer, family, tmp_path, rng):
    spec = Spec(variational=family, dtype="float64", encoder=(32, 16), decoder=(16,), latent_size=8, batch_size=16)
    train_x = (rng.random((100, 784)) < 0.3).astype(np.uint8)
    source = backends.create(writer)
    source.load(spec, init_params(spec), train_x)
    source.train(rng.integers(0, 100, (3, 16)), rng.standard_normal((3, 1, 16, 8)))  # flow output != 0
    save_params(tmp_path / "params.safetensors", source.params())
    loaded = load_params(tmp_path / "params.safetensors")
    assert all(v.dtype == np.float32 for v in loaded.values())
    x, eps = train_x[:16], rng.standard_normal((1, 16, 8))
    expected = vae.log_weights(spec, loaded, x, eps)
    for reader in IN_PROCESS:
        target = backends.create(reader)
        target.load(spec, loaded, train_x)
        np.testing.assert_allclose(target.log_weights(x, 1, noise=eps)[0], expected, rtol=1e-10,
                                   err_msg=f"{writer} -> {reader}")


@pytest.mark.slow
def test_smoke_preset_runs_all_three_backends_and_writes_nothing_outside_its_folder(tmp_path):
    """The smoke preset end to end on the real data; the run writes only inside its folder: a README.md beside
    --out stays as it was, no index appears, and the frameworks' caches and temporary files (HOME and TMPDIR
    pointed at empty folders here) stay inside the run folder. Then the report is rebuilt from the folder alone."""
    beside, home, tmp = tmp_path / "README.md", tmp_path / "home", tmp_path / "tmp"
    beside.write_text("my notes\n")
    home.mkdir()
    tmp.mkdir()
    out = tmp_path / "smoke"
    contained = {"HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache")}
    result = compare("--backends", "torch,jax,tf", "--preset", "smoke", "--out", str(out), env=contained)
    assert result.returncode == 0, result.stderr[-3000:]
    assert beside.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "home", "smoke", "tmp"]
    assert list(home.iterdir()) == [] and list(tmp.iterdir()) == []
    assert not (out / ".cache").exists()  # removed once every backend finished
    results = json.loads((out / "results.json").read_text())
    assert [r["backend"] for r in results["runs"]] == ["torch", "jax", "tensorflow"]
    for run in results["runs"]:
        assert run["status"] == "ok", run
        assert -250 < run["test"]["log_px"] < -90 and run["test"]["log_px"] >= run["test"]["elbo"]
        assert run["test"]["examples"] == 1000 and run["test"]["k"] == 50
        assert run["subsets"]["test"]["examples"] == 1000 and run["timing"]["examples_per_s"] > 0
        assert 0 < run["active_units"]["count"] <= 128
        folder = out / f"{run['backend']}-mean-field"
        assert {"params.safetensors", "metrics.json", "log.txt"} <= {p.name for p in folder.iterdir()}
        assert set(load_params(folder / "params.safetensors")) == set(init_params(Spec()))
        assert "\r" not in (folder / "log.txt").read_text()  # progress bars leave one line, not thousands
        assert run["peak"]["square_flop_per_s"] > 0
    assert len(results["paired"]) == 2
    assert results["provenance"]["commit"] and "clean" in results["provenance"]
    markdown = (out / "results.md").read_text()
    assert markdown.splitlines()[2].startswith(("Made from commit", "**Made from commit"))
    for column in ("test ELBO", "test log p(x)", "train ex/s"):
        assert column in result.stdout
    assert results["runs"][1]["versions"]["jax"]
    # the tables and figures are rebuilt from the run's folder alone, without training
    generated = ["results.md", "results.csv", *FIGURES]
    assert {p.name for p in out.iterdir()} >= set(generated)
    for name in generated:
        (out / name).unlink()
    rebuilt = compare("report", str(out), env=contained)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert {p.name for p in out.iterdir()} >= set(generated)
    assert all(f"]({name})" in (out / "results.md").read_text() for name in FIGURES)
    assert beside.read_text() == "my notes\n" and list(home.iterdir()) == [] and list(tmp.iterdir()) == []
    assert compare("report", str(out), "--index").returncode == 0  # the index, when asked for
    assert "[smoke](smoke/results.md)" in beside.read_text()


def test_seeds_repeat_the_comparison_and_report_the_spread(tmp_path):
    out = tmp_path / "seeds"
    result = compare("--backends", "numpy,jax", "--dtype", "float64", "--seeds", "2", *TINY, "--latent-size", "2",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [(r["backend"], r["seed"]) for r in results["runs"]] == [("numpy", 0), ("jax", 0), ("numpy", 1), ("jax", 1)]
    assert {p.name for p in out.iterdir()} >= {"numpy-mean-field-seed0", "jax-mean-field-seed1", "manifold.png"}
    summary = {s["backend"]: s for s in results["across_seeds"]}
    numpy_runs = [r["test"]["log_px"] for r in results["runs"] if r["backend"] == "numpy"]
    jax_runs = [r["test"]["log_px"] for r in results["runs"] if r["backend"] == "jax"]
    assert summary["numpy"]["n"] == 2 and summary["numpy"]["log_px_mean"] == pytest.approx(np.mean(numpy_runs))
    half = 12.706 * np.std(numpy_runs, ddof=1) / np.sqrt(2)  # t(1) quantile: the interval is a 95% t-interval
    assert summary["numpy"]["log_px_high"] - summary["numpy"]["log_px_mean"] == pytest.approx(half)
    diffs = np.subtract(jax_runs, numpy_runs)
    assert summary["jax"]["diff"]["mean"] == pytest.approx(diffs.mean())
    assert summary["jax"]["diff"]["high"] - diffs.mean() == pytest.approx(12.706 * np.std(diffs, ddof=1) / np.sqrt(2))
    assert len(set(numpy_runs)) == 2  # another seed: another initial state, batch order and noise
    assert [p["seed"] for p in results["paired"]] == [0, 1]  # paired within a seed only
    assert "Across seeds" in (out / "results.md").read_text()


def test_every_model_runs_end_to_end_with_a_table_each(tmp_path):
    """--model with several families: one run folder per family, one table per model in results.md with the
    figures the family adds (the exact evidence of FA, GMVAE's cluster accuracy, CVAE's split); on the float64
    reference, small, so that the plumbing is what is tested here (the engines by the parity tests)."""
    out = tmp_path / "models"
    result = compare("--model", "fa,cvae,gmvae,vrnn", "--backends", "numpy", "--dtype", "float64", "--preset",
                     "smoke", "--steps", "20", "--eval-every", "10", "--eval-k", "4", "--valid-examples", "40",
                     "--test-examples", "60",
                     "--rnn-hidden", "8", "--fa-train", "200", "--fa-valid", "40", "--fa-test", "60", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted(r["model"] for r in results["runs"]) == ["cvae", "fa", "gmvae", "vrnn"]
    assert all(r["status"] == "ok" for r in results["runs"])
    table = (out / "results.md").read_text()
    for heading in ("Factor analysis", "CVAE", "Gaussian-mixture VAE", "VRNN"):
        assert heading in table, heading
    for column in ("exact log p(x)", "cluster accuracy", "observed", "log p(y\\|x)"):  # | escaped in a table
        assert column in table, column
    for run in results["runs"]:  # densities of binary images are below 1; FA's Gaussian density need not be
        assert np.isfinite(run["test"]["log_px"]) and (run["test"]["log_px"] < 0 or run["model"] == "fa")


def test_validation_settings_do_not_change_training_in_any_backend(tmp_path, dataset):
    """Float64 fast mode: two runs that differ only in how they validate (how many examples, how often, with
    which K) train the same parameters: evaluation noise never comes from the training stream."""
    from runner.worker import load_checkpoint, train_and_evaluate

    base = Spec(variational="iaf", encoder=(32,), decoder=(32,), latent_size=4, batch_size=32, steps=60,
                eval_every=20, eval_k=5, valid_examples=50, test_examples=60, dtype="float64")
    other = base.replace(eval_every=30, eval_k=9, valid_examples=77)
    for name in IN_PROCESS:
        finals = []
        for i, spec in enumerate((base, other)):
            folder = tmp_path / f"{name}-{i}"
            folder.mkdir()
            assert train_and_evaluate(name, spec, dataset, folder, checkpoint_every=60)["status"] == "ok"
            finals.append(load_checkpoint(folder)["params"])
        for k, v in finals[0].items():
            np.testing.assert_array_equal(finals[1][k], v, err_msg=f"{name}: {k}")


@pytest.mark.parametrize("args, message", [
    (["--backends", "torch,mxnet"], "unknown backend 'mxnet'"),
    (["--variational", "flow"], "unknown variational family 'flow'"),
    (["--steps", "0"], "steps must be positive"),
    (["--batch-size", "-1"], "batch-size must be positive"),
    (["--batch-size", "60000"], "exceeds the 50,000 training examples"),
    (["--learning-rate", "0"], "learning-rate must be > 0"),
    (["--eval-k", "0"], "eval-k must be positive"),
    (["--hidden-size", "0"], "encoder widths must be positive, got [0, 0]"),
    (["--encoder", "400,0"], "encoder widths must be positive, got [400, 0]"),
    (["--decoder", "4x"], "hidden widths are comma-separated integers such as 512,512, got '4x'"),
    (["--activation", "gelu"], "activation must be one of relu, tanh, softplus"),
    (["--optimizer", "sgd"], "optimizer must be one of rmsprop, adam, adagrad, adam-burda"),
    (["--objective", "vae"], "objective must be one of elbo, iwae"),
    (["--lr-schedule", "step"], "the step schedule needs lr-decay-every > 0"),
    (["--latent-size", "-2"], "latent-size must be positive"),
    (["--seeds", "0"], "seeds must be positive"),
    (["--devices", "0"], "devices must be positive"),
    (["--devices", "3"], "batch-size 128 does not split evenly across 3 devices"),
    (["--backends", "numpy"], "the numpy backend is the float64 reference: add --dtype float64"),
    (["--data-dir", "/nonexistent"], "not found in /nonexistent"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, message, tmp_path):
    result = compare(*args, "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # argparse adds its usage lines; ours is one line
    assert not (tmp_path / "run").exists()


def test_existing_results_folder_is_not_overwritten(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    result = compare("--preset", "smoke", "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (tmp_path / "run" / "results.json").read_text() == "{}"


def test_help_names_every_subcommand():
    result = compare("--help", timeout=120)
    assert result.returncode == 0
    for line in ("report    rebuild", "evaluate  evaluate saved", "bench     time backends"):
        assert line in result.stdout
    for sub in ("report", "evaluate", "bench"):
        assert compare(sub, "--help", timeout=120).returncode == 0


def test_installed_console_script_is_compare_py():
    """`vae-compare` (pip install) is the same program as `python compare.py`."""
    script = shutil.which("vae-compare") or str(Path(sys.executable).parent / "vae-compare")
    if not Path(script).exists() and os.environ.get("CI") != "true":
        pytest.skip("the package is not installed here")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=ROOT.parent)
    assert done.returncode == 0 and done.stdout == compare("--help", timeout=120).stdout


def test_import_common_and_backends_imports_no_framework():
    code = ("import sys, common, common.data, common.evaluation, common.params, common.models, backends, "
            "backends.contract, report.tables, runner.cli; "
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'flax', 'keras') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
