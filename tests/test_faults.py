"""What users do to a run: evaluate saved parameters elsewhere, lose a framework, crash a backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import ROOT, data_dir

from common.init import init_params
from common.spec import Spec
from common.worker import save_params

TINY = ["--steps", "100", "--eval-every", "100", "--hidden-size", "32", "--latent-size", "4", "--eval-k", "10",
        "--valid-examples", "100", "--test-examples", "200", "--preset", "smoke"]


def compare(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, BINARIZED_MNIST_DIR=str(data_dir()))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, str(ROOT / "compare.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_saved_parameters_are_evaluated_in_every_backend(tmp_path):
    spec = Spec(variational="iaf", hidden_size=32, latent_size=4)
    folder = tmp_path / "torch-iaf"
    folder.mkdir()
    save_params(folder / "params.safetensors", init_params(spec))
    (folder / "metrics.json").write_text(json.dumps({"spec": spec.to_dict()}))
    result = compare("evaluate", str(folder / "params.safetensors"), "--eval-k", "20", "--test-examples", "300",
                     "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    runs = evaluation["runs"]
    assert [r["backend"] for r in runs] == ["torch", "jax", "tensorflow"]
    # the same parameters on the same images: only the Monte Carlo noise differs, so each paired
    # difference is within 4 of its standard errors (a false alarm once in ~16,000 runs)
    assert len(evaluation["paired"]) == 2
    for p in evaluation["paired"]:
        assert abs(p["log_px_diff"]) < 4 * p["log_px_diff_se"], p
    assert all(r["test"]["examples"] == 300 and r["test"]["k"] == 20 for r in runs)


def test_parameters_of_another_architecture_name_the_tensor(tmp_path):
    save_params(tmp_path / "params.safetensors", init_params(Spec(hidden_size=32, latent_size=4)))
    result = compare("evaluate", str(tmp_path / "params.safetensors"), "--hidden-size", "64", "--latent-size", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "parameter encoder.l0.kernel has shape (784, 32), the spec needs (784, 64)" in result.stderr
    result = compare("evaluate", str(tmp_path / "params.safetensors"), "--variational", "iaf",
                     "--hidden-size", "32", "--latent-size", "4")
    assert result.returncode == 2 and "parameter encoder.l2.kernel has shape (32, 8)" in result.stderr


def test_missing_framework_is_named_and_the_other_backends_still_run(tmp_path):
    shim = tmp_path / "shim"
    (shim / "flax").mkdir(parents=True)  # a flax that cannot be imported, as when it is not installed
    (shim / "flax" / "__init__.py").write_text("raise ModuleNotFoundError('no flax', name='flax')\n")
    out = tmp_path / "run"
    result = compare("--backends", "torch,jax", *TINY, "--out", str(out), pythonpath=f"{shim}{os.pathsep}{ROOT}")
    assert result.returncode == 1
    runs = {r["backend"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["torch"]["status"] == "ok"
    assert runs["jax"]["status"] == "unavailable" and "pip install jax==" in runs["jax"]["error"]
    assert "unavailable" in result.stdout and "flax" in result.stdout


def test_a_crashed_backend_loses_nothing_of_the_others(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "torch.py").write_text("import os\nos._exit(9)  # dies like a killed process\n")
    out = tmp_path / "run"
    result = compare("--backends", "torch,jax", *TINY, "--out", str(out), pythonpath=f"{shim}{os.pathsep}{ROOT}")
    assert result.returncode == 1
    runs = {r["backend"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["jax"]["status"] == "ok" and (out / "jax-mean-field" / "params.safetensors").exists()
    assert runs["torch"]["status"] == "failed" and "status 9" in runs["torch"]["error"]
    assert (out / runs["torch"]["log"].split("/", 1)[-1]).exists() or os.path.exists(runs["torch"]["log"])
    assert "torch-mean-field/log.txt" in result.stdout  # the table says where the log is
    assert np.isfinite(runs["jax"]["test"]["log_px"])
