"""What users do to a run: evaluate saved parameters elsewhere, lose a framework, crash a backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
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


def crashing_torch(tmp_path) -> str:
    """A PYTHONPATH under which importing torch kills the process, as an OOM kill or a segfault would."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "torch.py").write_text("import os\nos._exit(9)\n")
    return f"{shim}{os.pathsep}{ROOT}"


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
    out = tmp_path / "run"
    result = compare("--backends", "torch,jax", *TINY, "--out", str(out), pythonpath=crashing_torch(tmp_path))
    assert result.returncode == 1
    runs = {r["backend"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["jax"]["status"] == "ok" and (out / "jax-mean-field" / "params.safetensors").exists()
    assert runs["torch"]["status"] == "failed" and "status 9" in runs["torch"]["error"]
    assert (out / runs["torch"]["log"].split("/", 1)[-1]).exists() or os.path.exists(runs["torch"]["log"])
    assert "torch-mean-field/log.txt" in result.stdout  # the table says where the log is
    assert np.isfinite(runs["jax"]["test"]["log_px"])


def test_resumed_run_ends_where_the_uninterrupted_run_ends_float64(tmp_path, dataset):
    """Stop a float64 run half way (its checkpoint is all that is left), resume it: the trained
    parameters, optimizer state and test figures equal an uninterrupted run's to 1e-10."""
    from common.worker import load_checkpoint, train_and_evaluate

    spec = Spec(variational="iaf", hidden_size=32, latent_size=4, batch_size=32, steps=60, eval_every=20,
                eval_k=5, valid_examples=50, test_examples=60, dtype="float64")
    for name in ("torch", "jax", "tensorflow"):
        whole, parts = tmp_path / f"{name}-whole", tmp_path / f"{name}-parts"
        whole.mkdir()
        parts.mkdir()
        expected = train_and_evaluate(name, spec, dataset, whole, checkpoint_every=10)
        stopped = train_and_evaluate(name, spec, dataset, parts, checkpoint_every=10, stop_after=30)
        assert stopped["status"] == "interrupted" and load_checkpoint(parts)["loop"]["step"] == 30
        resumed = train_and_evaluate(name, spec, dataset, parts, checkpoint_every=10, resume=True)
        assert resumed["resumed"] and resumed["status"] == "ok"
        a, b = load_checkpoint(whole), load_checkpoint(parts)
        for group in ("params", "best"):
            for k, v in a[group].items():
                np.testing.assert_allclose(b[group][k], v, rtol=1e-10, atol=1e-10 * np.abs(v).max(), err_msg=k)
        for k, v in a["optimizer"]["square_avg"].items():
            np.testing.assert_allclose(b["optimizer"]["square_avg"][k], v, rtol=1e-10, atol=1e-300)
        assert resumed["test"]["log_px"] == pytest.approx(expected["test"]["log_px"], rel=1e-10)
        assert [v["step"] for v in resumed["validation"]] == [20, 40, 60]


def test_non_finite_loss_stops_naming_the_steps_and_keeps_the_last_checkpoint(tmp_path, dataset):
    from common.worker import NonFiniteLoss, load_checkpoint, train_and_evaluate

    spec = Spec(hidden_size=32, latent_size=4, batch_size=32, steps=20, eval_every=20, eval_k=5,
                valid_examples=50, test_examples=50)
    assert train_and_evaluate("torch", spec, dataset, tmp_path, checkpoint_every=10)["status"] == "ok"
    before = load_checkpoint(tmp_path)
    diverging = spec.replace(steps=400, learning_rate=1e12)  # continues from step 20, then blows up
    with pytest.raises(NonFiniteLoss, match=r"training ELBO became (nan|-?inf) in steps 21\.\.30; "
                                            r"the last finite state \(step 20\) is kept in .*checkpoint"):
        train_and_evaluate("torch", diverging, dataset, tmp_path, checkpoint_every=10, resume=True)
    kept = load_checkpoint(tmp_path)
    assert kept["loop"]["step"] == 20
    for k, v in before["params"].items():
        np.testing.assert_array_equal(kept["params"][k], v)


def test_resume_continues_a_run_whose_backend_crashed(tmp_path):
    out = tmp_path / "run"
    first = compare("--backends", "jax,torch", *TINY, "--out", str(out), pythonpath=crashing_torch(tmp_path))
    assert first.returncode == 1
    jax_before = json.loads((out / "jax-mean-field" / "metrics.json").read_text())
    assert compare("--backends", "torch", *TINY, "--out", str(out)).returncode == 2  # never overwritten
    second = compare("--resume", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "jax mean-field: finished before, kept" in second.stderr
    runs = {r["backend"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["torch"]["status"] == "ok" and runs["jax"]["timing"] == jax_before["timing"]


@pytest.mark.parametrize("when", ["after the first backend", "before any backend finished"])
def test_ctrl_c_writes_the_results_completed_so_far(tmp_path, when):
    import signal
    import time

    out = tmp_path / "run"
    env = dict(os.environ, BINARIZED_MNIST_DIR=str(data_dir()))
    cmd = [sys.executable, str(ROOT / "compare.py"), "--backends", "torch,jax", *TINY,
           "--steps", "5000", "--eval-every", "5000", "--out", str(out)]  # later flags win
    # as from a terminal: a shell that starts jobs in the background (a CI runner may) leaves SIGINT ignored,
    # an ignored signal stays ignored across exec, and Python then never raises KeyboardInterrupt; a handled
    # one is reset to the default, so handle it here while the child starts
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    sign = out / "torch-mean-field" / ("metrics.json" if when == "after the first backend" else "log.txt")
    deadline = time.time() + 600
    while not sign.exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # a backend is starting or training now
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: writing the results completed so far" in stderr and "Traceback" not in stderr
    runs = json.loads((out / "results.json").read_text())["runs"]
    if when == "after the first backend":
        assert [(r["backend"], r["status"]) for r in runs] == [("torch", "ok")]
        assert "torch" in (out / "results.md").read_text() and "torch" in stdout
    else:
        assert runs == [] and (out / "results.md").exists()
