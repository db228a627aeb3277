"""One backend and one family in one process: train, validate, test, write the results.

compare.py starts `python -m runner.worker CONFIG.json` once per backend, family and seed, so
frameworks never share a process (thread pools, memory) and one crash cannot take the others
down. The worker writes, into its output folder:
  metrics.json          every figure of this backend and family (status "ok" or "failed")
  params.safetensors    the best-validation parameters, canonical names, float32
  test_per_example.npz  per-example test ELBO and log p(x) (and the test rows), for paired differences
  checkpoint/           the state to resume from, swapped in whole (never a half-written one)
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np

import backends
from common import data, evaluation, streams
from common.metrics import LoadProbe, is_clean, mean_and_se, steady_state
from common.models import family, load_data
from common.params import init_params, load_params, save_params
from common.spec import Spec
from runner import launch

TIMING_WINDOW = 100  # steps per train() call: one host sync, one progress update, one timing sample
MAX_WINDOWS = 2000  # a longer run takes longer windows: its curve and timing records stay within results/' budget
CHECKPOINT = "checkpoint"


class NonFiniteLoss(RuntimeError):
    pass


def package_versions(backend: str) -> dict[str, str]:
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for package in backends.framework(backend).distributions:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def device_info(backend_name: str) -> dict:
    """The device the backend computed on and the thread settings it ran with (for results.json)."""
    info = {"threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "OPENBLAS_CORETYPE", "XLA_FLAGS") if k in os.environ}}
    name = backends.framework(backend_name).name
    if name == "torch":
        import torch

        info["threads"]["torch.get_num_threads"] = torch.get_num_threads()
        info["accelerator"] = (torch.cuda.get_device_name(0) + f", CUDA {torch.version.cuda}"
                               if torch.cuda.is_available() else "none")
    elif name == "jax":
        import jax

        device = jax.devices()[0]
        info["accelerator"] = "none" if device.platform == "cpu" else f"{device.device_kind} ({device.platform})"
    elif name == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        info["accelerator"] = ", ".join(g.name for g in gpus) or "none"
    else:
        info["accelerator"] = "none"
    return info


SQUARE = (2048, 2048, 2048)  # large enough to reach a BLAS's peak, small enough to time in half a second


def measure_peak(backend, spec: Spec) -> dict:
    """This framework's best float32 GEMM here: a large square one and one at the model's shape."""
    # a model without hidden layers (factor analysis, a linear VAE) is timed at its latent width
    widest = max((*spec.encoder, *spec.decoder, spec.latent_size))
    return {"square_flop_per_s": backend.matmul_flop_per_s(*SQUARE, 0.5),
            "model_shape_flop_per_s": backend.matmul_flop_per_s(spec.batch_size, widest, widest, 0.3),
            "model_shape": [spec.batch_size, widest, widest], "square": list(SQUARE)}


def family_name(spec: Spec) -> str:
    """The VAE's posterior family, or the model's name: what a row of the tables is called."""
    return spec.variational if spec.model == "vae" else spec.model


def window_size(spec: Spec, checkpoint_every: int) -> int:
    """Steps per train() call: TIMING_WINDOW, or steps / MAX_WINDOWS for a run of over TIMING_WINDOW x MAX_WINDOWS
    steps (Burda's schedule: 4,100 of its 8.2 million), cut to divide the validation and checkpoint intervals and
    the run's length. Each window is one point of the training curve in results.json."""
    target = max(TIMING_WINDOW, spec.steps // MAX_WINDOWS)
    return math.gcd(target, spec.eval_every, spec.steps, checkpoint_every)


def progress_bar(total: int, desc: str, show: bool = True):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True, smoothing=0.1, disable=not show)


def evaluate_split(backend, x: np.ndarray, k: int, stream: int) -> dict:
    start = time.perf_counter()
    elbo, log_px = evaluation.evaluate(backend, x, k, stream=stream)
    seconds = time.perf_counter() - start
    elbo_mean, elbo_se = mean_and_se(elbo)
    log_px_mean, log_px_se = mean_and_se(log_px)
    return dict(elbo=elbo_mean, elbo_se=elbo_se, log_px=log_px_mean, log_px_se=log_px_se,
                examples=len(x), k=k, seconds=seconds, samples_per_s=len(x) * k / seconds,
                per_example=(elbo, log_px))


def active_units(spec: Spec, params: dict[str, np.ndarray], x: np.ndarray, threshold: float = 0.01) -> dict:
    """Burda et al.'s measure: latent unit u is active if Cov over x of E_q[z_u | x] exceeds 0.01. E_q[z|x] is
    q0's mean for mean-field, and a 16-sample average of the flow's output for the IAF (NumPy, float64)."""
    from backends.numpy import vae

    model = vae.VAE(spec, params)
    if spec.variational == "mean-field":
        means = np.concatenate([model.encoder_mean(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    else:
        rng = np.random.default_rng(streams.seed_of(spec.seed, "test", 1))
        parts = []
        for i in range(0, len(x), 500):
            model.forward(x[i:i + 500], rng.standard_normal((16, len(x[i:i + 500]), spec.latent_size)))
            parts.append(model.tape["z"].mean(axis=0))
        means = np.concatenate(parts)
    variance = means.var(axis=0)
    return {"count": int((variance > threshold).sum()), "of": spec.latent_size, "threshold": threshold,
            "variance": variance.tolist()}


def fresh_loop() -> dict:
    """Everything about a run's progress that is not a tensor; saved as JSON with each checkpoint."""
    return dict(step=0, curve=[], validation=[], window_steps=[], window_seconds=[], probes=[],
                train_seconds=0.0, best_log_px=-math.inf, best_step=0, wall_seconds=0.0)


def save_checkpoint(out_dir: Path, backend, loop: dict, best_params: dict[str, np.ndarray]) -> None:
    """Parameters, optimizer state, RNG state, best parameters (all in the run's dtype) and the loop's
    position, written into a fresh folder that then replaces the last one whole."""
    from safetensors.numpy import save_file

    final, partial, old = (out_dir / (CHECKPOINT + suffix) for suffix in ("", ".partial", ".old"))
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    state = backend.optimizer_state()
    tensors = {f"params/{k}": v for k, v in backend.params().items()}
    tensors |= {f"{slot}/{k}": v for slot, d in state.items() if slot != "step" for k, v in d.items()}
    tensors |= {f"best/{k}": v for k, v in best_params.items()}
    tensors["rng"] = backend.rng_state()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(partial / "state.safetensors"))
    (partial / "loop.json").write_text(json.dumps(loop | {"optimizer_step": int(state["step"])}))
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
            loop = json.loads((folder / "loop.json").read_text())
            optimizer = {"step": loop.pop("optimizer_step")} | {k: v for k, v in parts.items()
                                                                 if k not in ("params", "best")}
            return dict(loop=loop, params=parts["params"], optimizer=optimizer, best=parts["best"],
                        rng=tensors["rng"])
    return None


def subsets(spec: Spec, dataset: data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The validation and test examples (seeded, representative subsets) and their record for results.json."""
    valid_rows = data.subset_rows("valid", spec.valid_examples, len(dataset.valid))
    test_rows = data.subset_rows("test", spec.test_examples, len(dataset.test))
    record = {split: {"examples": len(rows), "of": len(getattr(dataset, split)), "seed": data.SUBSET_SEED,
                      "rows_sha256": data.array_digest(rows.astype(np.int64))}
              for split, rows in (("valid", valid_rows), ("test", test_rows))}
    return dataset.valid[valid_rows], dataset.test[test_rows], test_rows, record


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
        loop, best_params = fresh_loop(), init_params(spec, train=dataset.train)
        backend.load(spec, best_params, dataset.train)
    main = backend.is_main
    wall_before = loop["wall_seconds"]
    valid_x, test_x, test_rows, subset_record = subsets(spec, dataset)
    peak = measure_peak(backend, spec)
    window = window_size(spec, checkpoint_every)
    bar = progress_bar(spec.steps, f"{backend_name} {family_name(spec)}", show=main)
    bar.update(loop["step"])
    for start in range(loop["step"], spec.steps, window):
        indices = data.batch_indices(len(dataset.train), spec.batch_size, spec.seed, start, start + window,
                                     spec.batch_order)
        probe = LoadProbe()
        t0 = time.perf_counter()
        train_value = backend.train(indices)
        seconds = time.perf_counter() - t0
        step = start + window
        if not math.isfinite(train_value):
            last = f"; the last finite state (step {loop['step']}) is kept in {out_dir / CHECKPOINT}" \
                if loop["step"] else ""
            raise NonFiniteLoss(f"training {spec.objective} became {train_value} in steps {start + 1}..{step}{last}; "
                                "try a smaller --learning-rate")
        loop["probes"].append(probe.stop())
        loop["train_seconds"] += seconds
        loop["window_steps"].append(window)
        loop["window_seconds"].append(seconds)
        loop["curve"].append(dict(step=step, train_objective=train_value, train_seconds=loop["train_seconds"]))
        loop["step"] = step
        bar.set_postfix(objective=f"{train_value:.2f}", ex_s=f"{window * spec.batch_size / seconds:,.0f}")
        bar.update(window)
        if step % spec.eval_every == 0 or step == spec.steps:
            bar.set_postfix_str(f"validating on {len(valid_x)} x K={spec.eval_k}")
            result = evaluate_split(backend, valid_x, spec.eval_k, streams.seed_of(spec.seed, "valid", step))
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
                return dict(status="interrupted", backend=backend_name, family=family_name(spec),
                            error=f"stopped after step {step}; continue with --resume", step=step)
    bar.close()
    # Best-validation parameters on the test set, as the reference protocol does.
    backend.load(spec, best_params, dataset.train)
    test = evaluate_split(backend, test_x, spec.eval_k, streams.seed_of(spec.seed, "test"))
    test_elbo, test_log_px = test.pop("per_example")
    if main:
        np.savez(out_dir / "test_per_example.npz", elbo=test_elbo, log_px=test_log_px, rows=test_rows)
        save_params(out_dir / "params.safetensors", best_params)
    extra = {}
    if hasattr(family(spec), "extra_metrics"):  # reference: the family's float64 NumPy module
        reference = importlib.import_module(f"backends.numpy.{spec.model}")
        extra = family(spec).extra_metrics(backend, reference, spec, best_params, dataset, test_rows)
    clean = [is_clean(p) for p in loop["probes"]]
    timing = steady_state(loop["window_steps"], loop["window_seconds"], spec.batch_size, clean)
    model = family(spec)
    train_flops = model.flops_per_example(spec, spec.train_k, training=True)
    outside = [p["outside_load"] for p in loop["probes"] if p["outside_load"] is not None]
    steal = [p["steal"] for p in loop["probes"] if p["steal"] is not None]
    return dict(
        status="ok", backend=backend_name, family=family_name(spec), model=spec.model, spec=spec.to_dict(),
        test=test, subsets=subset_record, best_step=loop["best_step"], validation=loop["validation"],
        train_curve=loop["curve"], resumed=bool(restored), extra=extra,
        active_units=active_units(spec, best_params, test_x) if spec.model == "vae" else None,
        timing=dict(timing, protocol="single pass (the run's own training windows)",
                    train_seconds=loop["train_seconds"], window_steps=window, devices=spec.devices,
                    examples_per_s_per_device=timing["examples_per_s"] / spec.devices,
                    outside_load_median=float(np.median(outside)) if outside else None,
                    cpu_steal_fraction=float(np.median(steal)) if steal else None,
                    wall_seconds=wall_before + time.perf_counter() - started),
        flops=dict(train_per_example=train_flops,
                   eval_per_sample=model.flops_per_example(spec, spec.eval_k, training=False) / spec.eval_k,
                   train_flop_per_s=train_flops * timing["examples_per_s"]),
        peak=peak, device=device_info(backend_name), versions=package_versions(backend_name), main=main)


def evaluate_saved(backend_name: str, spec: Spec, params_path: Path, x: np.ndarray, rows: np.ndarray,
                   out_dir: Path, split: str = "test") -> dict:
    """ELBO and log p(x) of saved parameters in this backend (no training), on the images x, rows `rows` of split
    (the test set unless given); the figures sit under "test" whatever the split, and "split" names it."""
    backend = backends.create(backend_name)
    backend.load(spec, load_params(params_path), x)
    test = evaluate_split(backend, x, spec.eval_k, streams.seed_of(spec.seed, split))
    elbo, log_px = test.pop("per_example")
    if backend.is_main:
        np.savez(out_dir / f"{split}_per_example.npz", elbo=elbo, log_px=log_px, rows=rows)
    return dict(status="ok", backend=backend_name, family=family_name(spec), model=spec.model, spec=spec.to_dict(),
                split=split, test=test, params=params_path.name, device=device_info(backend_name),
                versions=package_versions(backend_name), main=backend.is_main)


def stop_on_sigterm() -> None:
    """SIGTERM (what Slurm, Kubernetes and `timeout` send) stops the worker as Ctrl-C does: the last
    checkpoint is kept and the run continues with --resume."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str]) -> int:
    stop_on_sigterm()
    config_path = Path(argv[1])
    config = json.loads(config_path.read_text())
    out_dir = config_path.parent
    spec = Spec.from_dict(config["spec"])
    try:
        if config.get("params"):
            split = config.get("split") or "test"
            images = getattr(load_data(spec, config.get("data_dir")), split)
            rows = data.subset_rows(split, spec.test_examples, len(images))
            metrics = evaluate_saved(config["backend"], spec, Path(config["params"]), images[rows], rows, out_dir,
                                     split)
        else:
            metrics = train_and_evaluate(config["backend"], spec, load_data(spec, config.get("data_dir")), out_dir,
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
    metrics.setdefault("family", family_name(spec))
    metrics.setdefault("model", spec.model)
    if not metrics.pop("main", launch.is_main_process()):  # another process of this run writes the results
        return code
    # written whole or not at all: a kill -9 mid-write must not leave a metrics.json that --resume misreads
    text = json.dumps(metrics, indent=2, default=float).encode()
    data.atomic_write(out_dir / "metrics.json", lambda f: f.write(text))
    if code:
        print(f"error: {config['backend']} {family_name(spec)}: {metrics['error']}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
