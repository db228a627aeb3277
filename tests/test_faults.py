"""What users and schedulers do to a run: evaluate saved parameters elsewhere, lose a framework, crash a
backend, press Ctrl-C, send SIGTERM, kill -9 it, resume it, resume it with other flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT
from helpers import compare

from common.params import init_params, save_params
from common.spec import Spec

TINY = ["--steps", "100", "--eval-every", "100", "--hidden", "32", "--latent-size", "4", "--eval-k", "10",
        "--valid-examples", "100", "--test-examples", "200", "--preset", "smoke"]


def crashing_torch(tmp_path) -> str:
    """A PYTHONPATH under which importing torch kills the process, as an OOM kill or a segfault would."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "torch.py").write_text("import os\nos._exit(9)\n")
    return f"{shim}{os.pathsep}{ROOT}"


def test_saved_parameters_are_evaluated_in_every_backend(tmp_path):
    spec = Spec(variational="iaf", encoder=(32, 32), decoder=(32, 32), latent_size=4)
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


def test_saved_parameters_are_evaluated_on_the_split_asked_for(tmp_path):
    """--split train: the same parameters on a representative subset of the training images (how well a model
    fits what it learned from, against the test set), recorded as such; a split that does not exist is refused."""
    from common import data

    spec = Spec(encoder=(32, 32), decoder=(32, 32), latent_size=4)
    save_params(tmp_path / "params.safetensors", init_params(spec))
    flags = ["--hidden-size", "32", "--latent-size", "4", "--eval-k", "5", "--test-examples", "200",
             "--backends", "jax"]
    for split in ("train", "test"):
        result = compare("evaluate", str(tmp_path / "params.safetensors"), *flags, "--split", split,
                         "--out", str(tmp_path / split))
        assert result.returncode == 0, result.stderr[-3000:]
        # the printed table names the split its columns hold
        header = next(line for line in result.stdout.splitlines() if line.startswith("family"))
        other = {"train": "test", "test": "train"}[split]
        assert f"{split} ELBO" in header and f"{split} log p(x)" in header and f"{other} ELBO" not in header
    (train,), (test,) = (json.loads((tmp_path / s / "evaluation.json").read_text())["runs"] for s in ("train", "test"))
    assert (train["split"], test["split"]) == ("train", "test")
    arrays = {s: np.load(tmp_path / s / "jax" / f"{s}_per_example.npz") for s in ("train", "test")}
    np.testing.assert_array_equal(arrays["train"]["rows"], data.subset_rows("train", 200))
    assert arrays["train"]["rows"].max() >= 10_000  # drawn from all 50,000 training images
    dataset = data.load()
    # untrained parameters: log p(x) follows the images' pixel counts, so the two splits' figures differ
    assert train["test"]["log_px"] != test["test"]["log_px"]
    assert abs(np.mean(dataset.train[arrays["train"]["rows"]]) - np.mean(dataset.train)) < 0.01
    result = compare("evaluate", str(tmp_path / "params.safetensors"), *flags, "--split", "training",
                     "--out", str(tmp_path / "bad"))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--split" in result.stderr
    assert not (tmp_path / "bad").exists()


def test_parameters_of_another_architecture_name_the_tensor(tmp_path):
    save_params(tmp_path / "params.safetensors", init_params(Spec(encoder=(32, 32), decoder=(32, 32), latent_size=4)))
    out = ["--out", str(tmp_path / "eval")]
    result = compare("evaluate", str(tmp_path / "params.safetensors"), "--hidden-size", "64", "--latent-size", "4",
                     *out)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "parameter encoder.l0.kernel has shape (784, 32), the spec needs (784, 64)" in result.stderr
    result = compare("evaluate", str(tmp_path / "params.safetensors"), "--variational", "iaf",
                     "--hidden-size", "32", "--latent-size", "4", *out)
    assert result.returncode == 2 and "parameter encoder.l2.kernel has shape (32, 8)" in result.stderr
    assert not (tmp_path / "eval").exists()


def test_missing_framework_is_named_and_the_other_backends_still_run(tmp_path):
    shim = tmp_path / "shim"
    (shim / "flax").mkdir(parents=True)  # a flax that cannot be imported, as when it is not installed
    (shim / "flax" / "__init__.py").write_text("raise ModuleNotFoundError('no flax', name='flax')\n")
    out = tmp_path / "run"
    result = compare("--backends", "torch,jax", *TINY, "--out", str(out),
                     env={"PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"})
    assert result.returncode == 1
    runs = {r["backend"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["torch"]["status"] == "ok"
    assert runs["jax"]["status"] == "unavailable" and "pip install jax==" in runs["jax"]["error"]
    assert "unavailable" in result.stdout and "flax" in result.stdout


def checkpoints_equal(a_dir, b_dir) -> None:
    from runner.worker import load_checkpoint

    a, b = load_checkpoint(a_dir), load_checkpoint(b_dir)
    for group in ("params", "best"):
        for k, v in a[group].items():
            np.testing.assert_allclose(b[group][k], v, rtol=1e-10, atol=1e-10 * np.abs(v).max(), err_msg=k)
    assert int(a["optimizer"]["step"]) == int(b["optimizer"]["step"])
    for slot, arrays in a["optimizer"].items():
        if slot != "step":
            for k, v in arrays.items():
                np.testing.assert_allclose(b["optimizer"][slot][k], v, rtol=1e-10, atol=1e-300, err_msg=f"{slot} {k}")


def test_resumed_run_ends_where_the_uninterrupted_run_ends_float64(tmp_path, dataset):
    """Stop a float64 run half way (its checkpoint is all that is left), resume it: the trained
    parameters, optimizer state and test figures equal an uninterrupted run's to 1e-10."""
    from runner.worker import load_checkpoint, train_and_evaluate

    spec = Spec(variational="iaf", encoder=(32, 32), decoder=(32, 32), latent_size=4, batch_size=32, steps=60,
                eval_every=20, eval_k=5, valid_examples=50, test_examples=60, dtype="float64", optimizer="adam",
                lr_schedule="step", lr_decay=0.5, lr_decay_every=25)
    for name in ("numpy", "torch", "jax", "tensorflow"):
        whole, parts = tmp_path / f"{name}-whole", tmp_path / f"{name}-parts"
        whole.mkdir()
        parts.mkdir()
        expected = train_and_evaluate(name, spec, dataset, whole, checkpoint_every=10)
        stopped = train_and_evaluate(name, spec, dataset, parts, checkpoint_every=10, stop_after=30)
        assert stopped["status"] == "interrupted" and load_checkpoint(parts)["loop"]["step"] == 30
        resumed = train_and_evaluate(name, spec, dataset, parts, checkpoint_every=10, resume=True)
        assert resumed["resumed"] and resumed["status"] == "ok"
        checkpoints_equal(whole, parts)
        assert resumed["test"]["log_px"] == pytest.approx(expected["test"]["log_px"], rel=1e-10)
        assert [v["step"] for v in resumed["validation"]] == [20, 40, 60]


@pytest.mark.parametrize("order", ["shuffled", "fixed"])
def test_a_run_trains_on_the_batch_order_its_spec_names(tmp_path, dataset, monkeypatch, order):
    """The training loop hands the backend the batches of spec.batch_order: file order every pass under fixed,
    the seed's permutations under shuffled."""
    from backends.numpy.engine import Backend
    from common import data
    from runner.worker import train_and_evaluate

    seen = []
    original = Backend.train
    monkeypatch.setattr(Backend, "train", lambda self, indices, noise=None: seen.append(indices) or
                        original(self, indices, noise))
    spec = Spec(encoder=(8,), decoder=(8,), latent_size=2, batch_size=25_000, steps=4, eval_every=4, eval_k=2,
                valid_examples=20, test_examples=20, batch_order=order, dtype="float64")
    assert train_and_evaluate("numpy", spec, dataset, tmp_path, checkpoint_every=2)["status"] == "ok"
    trained = np.concatenate(seen)
    np.testing.assert_array_equal(trained, data.batch_indices(50_000, 25_000, 0, 0, 4, order))
    assert np.array_equal(trained.ravel(), np.tile(np.arange(50_000), 2)) == (order == "fixed")


def test_non_finite_loss_stops_naming_the_steps_and_keeps_the_last_checkpoint(tmp_path, dataset):
    from runner.worker import NonFiniteLoss, load_checkpoint, train_and_evaluate

    spec = Spec(encoder=(32, 32), decoder=(32, 32), latent_size=4, batch_size=32, steps=20, eval_every=20, eval_k=5,
                valid_examples=50, test_examples=50)
    assert train_and_evaluate("torch", spec, dataset, tmp_path, checkpoint_every=10)["status"] == "ok"
    before = load_checkpoint(tmp_path)
    diverging = spec.replace(steps=400, learning_rate=1e12)  # continues from step 20, then blows up
    with pytest.raises(NonFiniteLoss, match=r"training elbo became (nan|-?inf) in steps 21\.\.30; "
                                            r"the last finite state \(step 20\) is kept in .*checkpoint"):
        train_and_evaluate("torch", diverging, dataset, tmp_path, checkpoint_every=10, resume=True)
    kept = load_checkpoint(tmp_path)
    assert kept["loop"]["step"] == 20
    for k, v in before["params"].items():
        np.testing.assert_array_equal(kept["params"][k], v)


def test_a_crashed_backend_loses_nothing_of_the_others_and_resume_continues_it(tmp_path):
    out = tmp_path / "run"
    first = compare("--backends", "jax,torch", *TINY, "--out", str(out), env={"PYTHONPATH": crashing_torch(tmp_path)})
    assert first.returncode == 1
    runs = {r["backend"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["jax"]["status"] == "ok" and (out / "jax-mean-field" / "params.safetensors").exists()
    assert np.isfinite(runs["jax"]["test"]["log_px"])
    assert runs["torch"]["status"] == "failed" and "status 9" in runs["torch"]["error"]
    assert (out / "torch-mean-field" / "log.txt").exists()
    assert "torch-mean-field/log.txt" in first.stdout  # the table says where the log is
    jax_before = json.loads((out / "jax-mean-field" / "metrics.json").read_text())
    assert compare("--backends", "torch", *TINY, "--out", str(out)).returncode == 2  # never overwritten
    second = compare("--resume", str(out))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "jax mean-field: finished before, kept" in second.stderr
    results = json.loads((out / "results.json").read_text())
    runs = {r["backend"]: r for r in results["runs"]}
    assert runs["torch"]["status"] == "ok" and runs["jax"]["timing"] == jax_before["timing"]
    # the continuation's commit and machine are recorded beside the start's
    (resumed,) = results["provenance"]["resumes"]
    assert resumed["commit"] == results["provenance"]["commit"] and resumed["cpu"] == results["environment"]["cpu"]
    assert results["environment_at_start"]["cpu"] == resumed["cpu"]
    assert f"Resumed 1 time: {resumed['started'][:10]}" in (out / "results.md").read_text()


def test_a_run_resumed_from_other_code_or_elsewhere_says_so_in_bold():
    from report.tables import provenance_lines

    env = dict(cpu="Intel Xeon", cpu_count=2)
    resume = dict(started="2026-12-06T01:00:00+00:00", commit="aaaaaaaaaaaa", clean=True, changed_files=[],
                  cpu="Intel Xeon", cpu_count=2, gpus=["none"])
    results = dict(created="2026-12-05T02:00:00+00:00", environment=env, environment_at_start=env,
                   provenance=dict(commit="aaaaaaaaaaaa", clean=True, resumes=[resume]))
    lines = provenance_lines(results)
    assert lines[1] == "Resumed 1 time: 2026-12-06 01:00 from commit `aaaaaaaaaaaa` on Intel Xeon, 2 cores."
    assert len(lines) == 2
    other = dict(resume, commit="bbbbbbbbbbbb", cpu="AMD EPYC")
    lines = provenance_lines(results | dict(environment=dict(cpu="AMD EPYC", cpu_count=2),
                                            provenance=dict(commit="aaaaaaaaaaaa", clean=True, resumes=[other])))
    assert lines[2].startswith("**Part of this run ran from other code than the commit it started from**")
    assert lines[3].startswith("**It trained on more than one machine** (Intel Xeon, 2 cores; AMD EPYC, 2 cores)")


def test_resume_refuses_flags_that_would_silently_lose_meaning(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    for flags in (["--steps", "5000"], ["--backends", "torch"], ["--eval-k=50"]):
        result = compare("--resume", str(out), *flags, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"{flags[0].split('=')[0]} cannot be given with it (only --data-dir can)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """compare.py in its own process group; SIGINT handled (not ignored) so the child sees it as a terminal's."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, str(ROOT / "compare.py"), *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env=dict(os.environ, **(env or {})))
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_for(path, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.parametrize("how", ["ctrl-c after the first backend", "ctrl-c before any backend finished",
                                 "sigterm while a backend trains"])
def test_a_stop_writes_the_results_completed_so_far(tmp_path, how):
    out = tmp_path / "run"
    proc = start(["--backends", "torch,jax", *TINY, "--steps", "5000", "--eval-every", "5000", "--out", str(out)])
    first_done = how.startswith("ctrl-c after")
    wait_for(out / "torch-mean-field" / ("metrics.json" if first_done else "log.txt"))
    time.sleep(1.0)  # a backend is starting or training now
    if how.startswith("sigterm"):
        proc.send_signal(signal.SIGTERM)  # to compare.py only, as `timeout` or Slurm sends it
    else:
        os.killpg(proc.pid, signal.SIGINT)  # to the whole process group, as a terminal sends it
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == (143 if how.startswith("sigterm") else 130), stderr[-2000:]
    assert "writing the results completed so far" in stderr and "Traceback" not in stderr
    runs = json.loads((out / "results.json").read_text())["runs"]
    if first_done:
        assert [(r["backend"], r["status"]) for r in runs] == [("torch", "ok")]
        assert "torch" in (out / "results.md").read_text() and "torch" in stdout
    else:
        assert runs == [] and (out / "results.md").exists()
        assert "--resume" in stderr


def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_result(tmp_path):
    """SIGKILL to the whole run (no handler runs) at a random moment after training started, then --resume:
    float64 parameters and test figures equal those of a run never stopped. The runner's checkpoints are what is
    tested (the backends' own state round trip is tests/test_conformance.py's), so the fast-starting numpy
    backend runs it: two families, so the kill can land in either, or between them."""
    args = ["--backends", "numpy", "--variational", "mean-field,iaf", "--preset", "smoke", "--steps", "600",
            "--eval-every", "200", "--hidden", "16", "--latent-size", "4", "--eval-k", "5", "--valid-examples", "50",
            "--test-examples", "100", "--dtype", "float64", "--checkpoint-every", "20", "--optimizer", "adam"]
    whole = compare(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "killed"
    proc = start([*args, "--out", str(out)])
    wait_for(out / "numpy-mean-field" / "checkpoint" / "loop.json")
    time.sleep(np.random.default_rng().uniform(0.0, 4.0))  # anywhere: training, checkpointing, the next family
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = compare("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "whole" / "results.json").read_text())["runs"]
    b = json.loads((out / "results.json").read_text())["runs"]
    for x, y in zip(a, b, strict=True):
        assert x["test"]["log_px"] == pytest.approx(y["test"]["log_px"], rel=1e-10), x["family"]
        checkpoints_equal(tmp_path / "whole" / f"numpy-{x['family']}", out / f"numpy-{y['family']}")


def test_a_long_run_trains_in_longer_windows_so_its_records_stay_small():
    from common.spec import PRESETS
    from runner.worker import MAX_WINDOWS, window_size

    burda = Spec(**PRESETS["burda"])  # 8.2 million steps
    assert window_size(burda, burda.eval_every) == burda.steps // MAX_WINDOWS == 4100
    assert window_size(burda, 205_000) == 4100
    assert window_size(burda, 100_000) == 100  # a checkpoint interval the long window does not divide
    for name in ("paper", "burda-short", "smoke"):  # up to 200,000 steps: the 100-step window, as before
        spec = Spec(**PRESETS[name])
        assert window_size(spec, spec.eval_every) == 100
