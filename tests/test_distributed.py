"""Data parallelism: N devices compute what one device computes (float64, fixed noise).

Each backend runs tests/distributed_run.py (both families) twice, on 1 and on 2 devices, launched as compare.py
launches a worker (runner/launch.py): torch as two gloo processes under torchrun, JAX with two
XLA host devices, TensorFlow with MirroredStrategy over two logical CPU devices. The 2-device
gradient must equal the 1-device gradient to relative 1e-10, and 20 optimizer steps to 1e-8:
only the order of the cross-device sum differs.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import FAMILIES, FRAMEWORKS, ROOT
from helpers import assert_close, compare

from runner import launch

SCRIPT = ROOT / "tests" / "distributed_run.py"


def run(backend: str, devices: int, out_dir) -> dict[str, dict[str, np.ndarray]]:
    """{family: arrays} of one harness process (both families) for backend on devices."""
    out_dir.mkdir()
    target = [str(SCRIPT), backend, str(devices), str(out_dir)]
    done = subprocess.run(launch.command(backend, devices, target), cwd=ROOT, capture_output=True, text=True,
                          env=launch.environment(backend, devices), timeout=600)
    assert done.returncode == 0, f"{backend} on {devices} devices failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    out = {}
    for family in FAMILIES:
        with np.load(out_dir / f"{family}.npz") as f:
            out[family] = dict(f)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache: dict[str, tuple[dict, dict]] = {}

    def get(backend: str, family: str):
        if backend not in cache:
            folder = tmp_path_factory.mktemp(backend)
            cache[backend] = run(backend, 1, folder / "one"), run(backend, 2, folder / "two")
        one, two = cache[backend]
        return one[family], two[family]
    return get


def group(arrays: dict, prefix: str) -> dict:
    return {k: v for k, v in arrays.items() if k.startswith(prefix)}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", FRAMEWORKS)
def test_two_device_gradient_equals_one_device(name, family, runs):
    one, two = runs(name, family)
    assert_close(two["value"], one["value"], 1e-10, "per-example objective")
    grads = group(one, "grad/")
    assert grads and grads.keys() == group(two, "grad/").keys()
    for k in grads:
        assert_close(two[k], one[k], 1e-10, k)
    # evaluation is split across the devices too (11 examples: an uneven split)
    assert_close(two["eval_elbo"], one["eval_elbo"], 1e-10, "evaluation ELBO")
    assert_close(two["eval_log_px"], one["eval_log_px"], 1e-10, "evaluation log p(x)")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", FRAMEWORKS)
def test_twenty_steps_on_two_devices_equal_one_device(name, family, runs):
    one, two = runs(name, family)
    assert_close(two["train_mean"], one["train_mean"], 1e-8, "mean training objective")
    assert int(two["step"]) == int(one["step"]) == 20
    slots = {"mean-field": ("square_avg/", "grad_avg/"), "iaf": ("exp_avg/", "exp_avg_sq/")}[family]
    for prefix in ("param/", *slots):
        keys = group(one, prefix)
        assert keys and keys.keys() == group(two, prefix).keys()
        for k in keys:
            assert_close(two[k], one[k], 1e-8, k)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", FRAMEWORKS)
def test_fast_mode_on_two_devices_is_the_one_device_run(name, family, runs):
    """The backend's own noise is drawn for the global batch (or evaluation chunk) and split, so --devices 2
    trains and evaluates the very run --devices 1 does."""
    one, two = runs(name, family)
    assert_close(two["fast_mean"], one["fast_mean"], 1e-8, "fast-mode mean training objective")
    for k in group(one, "fast_param/"):
        assert_close(two[k], one[k], 1e-8, k)
    for key in ("fast_elbo", "fast_log_px"):
        assert_close(two[key], one[key], 1e-8, key)
    # importance sampling: log p(x) >= the K-sample ELBO average, example by example
    assert (two["fast_log_px"] >= two["fast_elbo"] - 1e-9).all()


@pytest.mark.slow
def test_smoke_run_on_two_devices_for_every_backend(tmp_path):
    out = tmp_path / "two-devices"
    result = compare("--backends", "torch,jax,tf", "--preset", "smoke", "--devices", "2", "--steps", "200",
                     "--eval-every", "100", "--hidden", "128", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [r["backend"] for r in results["runs"]] == ["torch", "jax", "tensorflow"]
    for run in results["runs"]:
        assert run["status"] == "ok", run
        assert run["spec"]["devices"] == 2 and run["timing"]["devices"] == 2
        assert run["timing"]["examples_per_s_per_device"] == pytest.approx(run["timing"]["examples_per_s"] / 2)
        assert -250 < run["test"]["log_px"] < -90 and run["test"]["log_px"] >= run["test"]["elbo"]
        assert run["test"]["examples"] == 1000
        assert (out / f"{run['backend']}-mean-field" / "params.safetensors").exists()
    for column in ("devices", "train ex/s per device"):
        assert column in result.stdout and column in (out / "results.md").read_text()


def test_prepare_only_writes_each_workers_config_and_its_launch_command(tmp_path):
    """The several-host path: --prepare-only prints what to start on every host; nothing is trained."""
    out = tmp_path / "prepared"
    result = compare("--backends", "torch,jax,tf", "--variational", "mean-field,iaf", "--devices", "2",
                     "--preset", "smoke", "--prepare-only", "--out", str(out), timeout=120)
    assert result.returncode == 0, result.stderr
    commands = result.stdout.strip().splitlines()
    assert len(commands) == 6 and "--resume" in result.stderr
    torch_line = next(c for c in commands if "torch-mean-field" in c)
    assert "torch.distributed.run" in torch_line and "--nproc-per-node=2" in torch_line
    assert "xla_force_host_platform_device_count=2" in next(c for c in commands if "jax-iaf" in c)
    for folder in ("torch-mean-field", "jax-iaf", "tensorflow-mean-field"):
        config = json.loads((out / folder / "config.json").read_text())
        assert config["spec"]["devices"] == 2 and config["resume"] is True
    assert (out / "run.json").exists() and not (out / "results.json").exists()


@pytest.mark.parametrize("env, main", [
    ({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False), ({"JAX_PROCESS_ID": "1"}, False),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}'}, True),
    ({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'}, False),
    ({"TF_CONFIG": '{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "worker", "index": 0}}'},
     False),
])
def test_only_the_main_process_of_a_launcher_writes(env, main):
    assert launch.is_main_process(env) is main
