"""One backend and one family in one process: train, validate, test, write the results.

compare.py starts `python -m common.worker CONFIG.json` once per backend and family, so
frameworks never share a process (thread pools, memory) and one crash cannot take the
others down. The worker writes, into its output folder:
  metrics.json        every figure of this backend and family (status "ok" or "failed")
  params.safetensors  the best-validation parameters, canonical names, float32
  test_per_example.npz  per-example test ELBO and log p(x), for paired differences
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np

import backends
from common import data, launch
from common.init import init_params
from common.metrics import (
    cpu_times,
    eval_flops_per_sample,
    mean_and_se,
    steady_state,
    steal_fraction,
    train_flops_per_example,
)
from common.spec import Spec

TIMING_WINDOW = 100  # steps per train() call: one host sync, one progress update, one timing sample
FRAMEWORK_PACKAGES = {"torch": ["torch"], "jax": ["jax", "jaxlib", "flax", "optax"],
                      "tensorflow": ["tensorflow-cpu", "tensorflow"]}


class NonFiniteLoss(RuntimeError):
    pass


def package_versions(backend: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for package in FRAMEWORK_PACKAGES[backend]:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def window_size(spec: Spec) -> int:
    return math.gcd(TIMING_WINDOW, spec.eval_every, spec.steps)


def progress_bar(total: int, desc: str, show: bool = True):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True, smoothing=0.1, disable=not show)


def is_main(backend) -> bool:
    """Whether this process writes the results: all but one process of a run on several processes
    (torch's ranks 1..N-1, JAX's and TensorFlow's other hosts) compute without writing."""
    return getattr(backend, "is_main", True)


def evaluate_split(backend, x: np.ndarray, k: int) -> dict:
    start = time.perf_counter()
    elbo, log_px = backend.evaluate(x, k)
    seconds = time.perf_counter() - start
    elbo_mean, elbo_se = mean_and_se(elbo)
    log_px_mean, log_px_se = mean_and_se(log_px)
    return dict(elbo=elbo_mean, elbo_se=elbo_se, log_px=log_px_mean, log_px_se=log_px_se,
                examples=len(x), k=k, seconds=seconds, samples_per_s=len(x) * k / seconds,
                per_example=(elbo, log_px))


CHECKPOINT = "checkpoint"


def fresh_loop() -> dict:
    """Everything about a run's progress that is not a tensor; saved as JSON with each checkpoint."""
    return dict(step=0, curve=[], validation=[], window_steps=[], window_seconds=[], steal=[],
                train_seconds=0.0, best_log_px=-math.inf, best_step=0, wall_seconds=0.0)


def save_checkpoint(out_dir: Path, backend, loop: dict, best_params: dict[str, np.ndarray]) -> None:
    """Parameters, optimizer state, RNG state, best parameters (all in the run's dtype) and the loop's
    position, written into a fresh folder that then replaces the last one whole."""
    from safetensors.numpy import save_file

    final, partial, old = (out_dir / (CHECKPOINT + suffix) for suffix in ("", ".partial", ".old"))
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    tensors = {f"params/{k}": v for k, v in backend.params().items()}
    tensors |= {f"{slot}/{k}": v for slot, d in backend.optimizer_state().items() for k, v in d.items()}
    tensors |= {f"best/{k}": v for k, v in best_params.items()}
    tensors["rng"] = backend.rng_state()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(partial / "state.safetensors"))
    (partial / "loop.json").write_text(json.dumps(loop))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(out_dir: Path) -> dict | None:
    """The newest complete checkpoint (a crash between the two renames leaves it as .old), or None."""
    from safetensors.numpy import load_file

    for folder in (out_dir / CHECKPOINT, out_dir / (CHECKPOINT + ".old")):
        if (folder / "loop.json").exists() and (folder / "state.safetensors").exists():
            tensors = load_file(str(folder / "state.safetensors"))
            parts: dict[str, dict] = {}
            for key, value in tensors.items():
                if "/" in key:
                    group, name = key.split("/", 1)
                    parts.setdefault(group, {})[name] = value
            return dict(loop=json.loads((folder / "loop.json").read_text()), params=parts["params"],
                        optimizer={"square_avg": parts["square_avg"], "grad_avg": parts["grad_avg"]},
                        best=parts["best"], rng=tensors["rng"])
    return None


def train_and_evaluate(backend_name: str, spec: Spec, dataset: data.Dataset, out_dir: Path,
                       checkpoint_every: int | None = None, resume: bool = False,
                       stop_after: int | None = None) -> dict:
    """Train with validation and checkpoints, then test the best-validation parameters.

    resume: continue from out_dir's checkpoint when there is one (same parameters, optimizer
    state, RNG state and data-stream position as if never stopped). stop_after: stop once the
    checkpoint at that step is written (what an interruption leaves; used by the tests)."""
    started = time.perf_counter()
    backend = backends.create(backend_name)
    checkpoint_every = checkpoint_every or spec.eval_every
    restored = load_checkpoint(out_dir) if resume else None
    if restored:
        loop, best_params = restored["loop"], restored["best"]
        backend.load(spec, restored["params"], dataset.train)
        backend.set_optimizer_state(restored["optimizer"])
        backend.set_rng_state(restored["rng"])
    else:
        loop, best_params = fresh_loop(), init_params(spec)
        backend.load(spec, best_params, dataset.train)
    wall_before = loop["wall_seconds"]
    valid_x, test_x = dataset.valid[:spec.valid_examples], dataset.test[:spec.test_examples]
    window = math.gcd(window_size(spec), checkpoint_every)
    main = is_main(backend)
    bar = progress_bar(spec.steps, f"{backend_name} {spec.variational}", show=main)
    bar.update(loop["step"])
    for start in range(loop["step"], spec.steps, window):
        indices = data.batch_indices(len(dataset.train), spec.batch_size, spec.seed, start, start + window)
        ticks, t0 = cpu_times(), time.perf_counter()
        train_elbo = backend.train(indices)
        seconds = time.perf_counter() - t0
        step = start + window
        if not math.isfinite(train_elbo):
            last = f"; the last finite state (step {loop['step']}) is kept in {out_dir / CHECKPOINT}" \
                if loop["step"] else ""
            raise NonFiniteLoss(f"training ELBO became {train_elbo} in steps {start + 1}..{step}{last}; "
                                "try a smaller --learning-rate")
        loop["steal"].append(steal_fraction(ticks, cpu_times()))
        loop["train_seconds"] += seconds
        loop["window_steps"].append(window)
        loop["window_seconds"].append(seconds)
        loop["curve"].append(dict(step=step, train_elbo=train_elbo, train_seconds=loop["train_seconds"]))
        loop["step"] = step
        bar.set_postfix(elbo=f"{train_elbo:.2f}", ex_s=f"{window * spec.batch_size / seconds:,.0f}")
        bar.update(window)
        if step % spec.eval_every == 0 or step == spec.steps:
            bar.set_postfix_str(f"validating on {len(valid_x)} x K={spec.eval_k}")
            result = evaluate_split(backend, valid_x, spec.eval_k)
            result.pop("per_example")
            loop["validation"].append(dict(step=step, train_seconds=loop["train_seconds"], **result))
            if result["log_px"] > loop["best_log_px"]:
                loop["best_log_px"], loop["best_step"], best_params = result["log_px"], step, backend.params()
        if step % checkpoint_every == 0 or step == spec.steps:
            if main:
                loop["wall_seconds"] = wall_before + time.perf_counter() - started
                save_checkpoint(out_dir, backend, loop, best_params)
            if stop_after is not None and step >= stop_after and step < spec.steps:  # every process stops
                bar.close()
                return dict(status="interrupted", backend=backend_name, family=spec.variational,
                            error=f"stopped after step {step}; continue with --resume", step=step)
    bar.close()
    # Best-validation parameters on the test set, as the reference protocol does.
    backend.load(spec, best_params, dataset.train)
    test = evaluate_split(backend, test_x, spec.eval_k)
    test_elbo, test_log_px = test.pop("per_example")
    if main:
        np.savez(out_dir / "test_per_example.npz", elbo=test_elbo, log_px=test_log_px)
        save_params(out_dir / "params.safetensors", best_params)
    timing = steady_state(loop["window_steps"], loop["window_seconds"], spec.batch_size)
    flops = train_flops_per_example(spec)
    steal = loop["steal"]
    return dict(
        status="ok", backend=backend_name, family=spec.variational, spec=spec.to_dict(),
        test=test, best_step=loop["best_step"], validation=loop["validation"], train_curve=loop["curve"],
        resumed=bool(restored),
        timing=dict(timing, train_seconds=loop["train_seconds"], window_steps=window, devices=spec.devices,
                    examples_per_s_per_device=timing["examples_per_s"] / spec.devices,
                    cpu_steal_fraction=float(np.median(steal)) if steal and None not in steal else None,
                    wall_seconds=wall_before + time.perf_counter() - started),
        flops=dict(train_per_example=flops, eval_per_sample=eval_flops_per_sample(spec),
                   train_flop_per_s=flops * timing["examples_per_s"]),
        versions=package_versions(backend_name), main=main)


def save_params(path: Path, params: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}, str(path))


def load_params(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def evaluate_saved(backend_name: str, spec: Spec, params_path: Path, test_x: np.ndarray, out_dir: Path) -> dict:
    """Test ELBO and log p(x) of saved parameters in this backend (no training)."""
    backend = backends.create(backend_name)
    backend.load(spec, load_params(params_path), test_x)
    test = evaluate_split(backend, test_x, spec.eval_k)
    elbo, log_px = test.pop("per_example")
    if is_main(backend):
        np.savez(out_dir / "test_per_example.npz", elbo=elbo, log_px=log_px)
    return dict(status="ok", backend=backend_name, family=spec.variational, spec=spec.to_dict(), test=test,
                params=str(params_path), versions=package_versions(backend_name), main=is_main(backend))


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[1]).read_text())
    out_dir = Path(config["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = Spec.from_dict(config["spec"])
    try:
        if config.get("params"):
            test_x = data.load_split("test", config.get("data_dir"))[0][:spec.test_examples]
            metrics = evaluate_saved(config["backend"], spec, Path(config["params"]), test_x, out_dir)
        else:
            metrics = train_and_evaluate(config["backend"], spec, data.load(config.get("data_dir")), out_dir,
                                         checkpoint_every=config.get("checkpoint_every"),
                                         resume=config.get("resume", False))
        code = 0
    except backends.BackendUnavailable as e:
        metrics, code = dict(status="unavailable", error=str(e)), 3
    except KeyboardInterrupt:
        metrics, code = dict(status="interrupted", error="interrupted; continue with --resume"), 130
    except Exception as e:  # noqa: BLE001 -- recorded, shown in the table; the other backends go on
        traceback.print_exc()
        metrics, code = dict(status="failed", error=f"{type(e).__name__}: {e}"), 1
    metrics.setdefault("backend", config["backend"])
    metrics.setdefault("family", spec.variational)
    if not metrics.pop("main", launch.is_main_process()):  # another process of this run writes the results
        return code
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    if code:
        print(f"error: {config['backend']} {spec.variational}: {metrics['error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
