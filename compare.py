"""Train the same VAE in PyTorch, JAX and TensorFlow and compare them side by side.

  python compare.py --backends torch,jax,tensorflow --preset smoke
  python compare.py --backends torch,jax --variational mean-field,iaf --preset quick
  python compare.py report results/<run>      # rebuild results.md / results.csv from results.json

Each backend and family runs in its own process (common/worker.py), one after another so
that none competes with another for the cores; the results land in results/<run>/.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import backends
from common import data, launch, peak, report
from common.metrics import paired_difference
from common.spec import FAMILIES, PRESETS, Spec

ROOT = Path(__file__).resolve().parent
FRAMEWORK_MODULE = {"torch": "torch", "jax": "flax", "tensorflow": "tensorflow"}
SPEC_FLAGS = {  # flag -> (Spec field, type, help)
    "--hidden-size": ("hidden_size", int, "width H of every hidden layer (default 512)"),
    "--latent-size": ("latent_size", int, "latent size L (default 128)"),
    "--flow-steps": ("flow_steps", int, "IAF steps T (default 2)"),
    "--batch-size": ("batch_size", int, "examples per step (default 128)"),
    "--learning-rate": ("learning_rate", float, "RMSprop learning rate (default 1e-3)"),
    "--steps": ("steps", int, "training steps"),
    "--eval-every": ("eval_every", int, "validate every this many steps"),
    "--eval-k": ("eval_k", int, "importance samples K for log p(x)"),
    "--valid-examples": ("valid_examples", int, "validation examples used for model selection"),
    "--test-examples": ("test_examples", int, "test examples evaluated"),
    "--seed": ("seed", int, "seed of the initial parameters, batch order and noise (default 0)"),
    "--dtype": ("dtype", str, "float32 (default) or float64"),
    "--devices": ("devices", int, "data-parallel devices N (default 1): the batch is split across N devices "
                  "with each framework's own engine (torch: DDP under torchrun, one process per device; jax: "
                  "a device mesh; tensorflow: MirroredStrategy); on a CPU, N logical devices share the cores"),
}


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2, nothing written."""


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,jax,tensorflow",
                        help="comma-separated subset of torch, jax, tensorflow (tf) [%(default)s]")
    parser.add_argument("--variational", default="mean-field",
                        help="posterior family: mean-field, iaf, or both comma-separated [%(default)s]")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                        help="smoke: ~1 min per backend; quick: a few minutes; paper: the reference "
                             "protocol (30,000 steps, K = 1000) [%(default)s]")
    for flag, (_, kind, text) in SPEC_FLAGS.items():
        parser.add_argument(flag, type=kind, help=text + "; overrides the preset")
    parser.add_argument("--seeds", type=int, default=1,
                        help="repeat the whole comparison over this many seeds (seed, seed+1, ...) and report "
                             "mean ± std across seeds [%(default)s]")
    parser.add_argument("--data-dir", help="folder with binarized_mnist_{train,valid,test}.amat[.gz] "
                        f"(else ${data.DIR_ENV}, else the download cache)")
    parser.add_argument("--out", help="results folder [results/<date>-<preset>]")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing results folder")
    parser.add_argument("--checkpoint-every", type=int,
                        help="steps between checkpoints (parameters, optimizer and RNG state, data position) "
                             "[the validation interval]")
    parser.add_argument("--prepare-only", action="store_true",
                        help="write the run folder and each worker's config.json, print the command that runs "
                             "each worker, and stop: for several hosts, start those commands under the framework's "
                             "launcher on every host (README.md, \"Several devices and hosts\"), then collect the "
                             "results with --resume RUN_DIR")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue a stopped run: finished backends are kept, the others continue from "
                             "their last checkpoint; the run's own settings are used")
    return parser


def build_specs(args: argparse.Namespace) -> list[Spec]:
    families = [f.strip() for f in args.variational.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise UsageError(f"unknown variational family {unknown[0] if unknown else ''!r}; "
                         f"choose from {', '.join(FAMILIES)}")
    overrides = dict(PRESETS[args.preset])
    for flag, (field, _, _) in SPEC_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides[field] = value
    if args.seeds < 1:
        raise UsageError(f"seeds must be positive, got {args.seeds}")
    try:
        specs = [Spec(variational=f, **overrides) for f in families]
    except ValueError as e:
        raise UsageError(str(e)) from e
    specs = [s.replace(seed=s.seed + i) for i in range(args.seeds) for s in specs]
    if specs[0].batch_size > data.SPLIT_SIZES["train"]:
        raise UsageError(f"batch-size {specs[0].batch_size} exceeds the "
                         f"{data.SPLIT_SIZES['train']:,} training examples")
    for name, split in (("valid_examples", "valid"), ("test_examples", "test")):
        if getattr(specs[0], name) > data.SPLIT_SIZES[split]:
            raise UsageError(f"{name.replace('_', '-')} {getattr(specs[0], name)} exceeds the "
                             f"{data.SPLIT_SIZES[split]:,} {split} examples")
    return specs


def parse_backends(text: str) -> list[str]:
    try:
        names = [backends.canonical_name(n) for n in text.split(",") if n.strip()]
    except ValueError as e:
        raise UsageError(str(e)) from e
    if not names:
        raise UsageError("--backends is empty; choose from torch, jax, tensorflow")
    return list(dict.fromkeys(names))


def git_commit() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD") or "unknown"
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    return dict(python=platform.python_version(), platform=platform.platform(), cpu=cpu_model(),
                cpu_count=os.cpu_count(), git_commit=git_commit(), gpu="none")


def folder_name(backend: str, spec: Spec, seeds: int) -> str:
    return f"{backend}-{spec.variational}" + (f"-seed{spec.seed}" if seeds > 1 else "")


def write_config(backend: str, spec: Spec, out_dir: Path, data_dir: str | None, params: Path | None = None,
                 checkpoint_every: int | None = None, resume: bool = False) -> Path:
    """The worker's whole input (common/worker.py reads it): out_dir/config.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "config.json"
    config.write_text(json.dumps(dict(backend=backend, spec=spec.to_dict(), out_dir=str(out_dir),
                                      data_dir=data_dir, params=str(params.resolve()) if params else None,
                                      checkpoint_every=checkpoint_every, resume=resume), indent=2))
    return config


def worker_launch(backend: str, spec: Spec, config: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the worker that reads config (torchrun's N processes for torch on N devices)."""
    return (launch.command(backend, spec.devices, ["-m", "common.worker", str(config)]),
            launch.environment(backend, spec.devices))


def run_worker(backend: str, spec: Spec, out_dir: Path, data_dir: str | None, params: Path | None = None,
               checkpoint_every: int | None = None, resume: bool = False) -> dict:
    """One backend and family in a child process (N processes for torch on N devices); its output is
    shown and kept in log.txt. With params: evaluate those parameters on the test set instead of training."""
    config = write_config(backend, spec, out_dir, data_dir, params, checkpoint_every, resume)
    log_path = out_dir / "log.txt"
    argv, env = worker_launch(backend, spec, config)
    with log_path.open("ab" if resume else "wb") as log:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while chunk := os.read(child.stdout.fileno(), 4096):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                log.write(chunk)
            child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
    else:
        metrics = dict(backend=backend, family=spec.variational, status="failed",
                       error=f"process ended with status {child.returncode} before writing metrics")
    metrics.update(folder=out_dir.name, seed=spec.seed)
    if metrics["status"] != "ok":
        metrics["log"] = str(log_path.relative_to(ROOT) if log_path.is_relative_to(ROOT) else log_path)
    return metrics


def per_example(run_dir: Path, run: dict):
    import numpy as np

    return np.load(report.run_folder(run_dir, run) / "test_per_example.npz")


def paired(runs: list[dict], run_dir: Path) -> list[dict]:
    """Each backend against the first successful one of its family and seed, over the same test examples."""
    out = []
    for family, seed in dict.fromkeys((r["family"], r.get("seed")) for r in runs):
        ok = [r for r in runs if r["family"] == family and r.get("seed") == seed and r["status"] == "ok"]
        if len(ok) < 2:
            continue
        base = per_example(run_dir, ok[0])
        for r in ok[1:]:
            other = per_example(run_dir, r)
            d_log_px, se_log_px = paired_difference(other["log_px"], base["log_px"])
            d_elbo, se_elbo = paired_difference(other["elbo"], base["elbo"])
            out.append(dict(family=family, seed=seed, backend=r["backend"], versus=ok[0]["backend"],
                            log_px_diff=d_log_px, log_px_diff_se=se_log_px,
                            elbo_diff=d_elbo, elbo_diff_se=se_elbo))
    return out


def across_seeds(runs: list[dict]) -> list[dict]:
    """Per backend and family: mean and standard deviation over seeds of the test figures."""
    import numpy as np

    out = []
    for family, backend in dict.fromkeys((r["family"], r["backend"]) for r in runs):
        ok = [r for r in runs if (r["family"], r["backend"]) == (family, backend) and r["status"] == "ok"]
        if not ok:
            continue

        def stats(values):
            return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        elbo_mean, elbo_std = stats([r["test"]["elbo"] for r in ok])
        log_px_mean, log_px_std = stats([r["test"]["log_px"] for r in ok])
        out.append(dict(family=family, backend=backend, n=len(ok), seeds=[r["seed"] for r in ok],
                        elbo_mean=elbo_mean, elbo_std=elbo_std, log_px_mean=log_px_mean, log_px_std=log_px_std,
                        examples_per_s_mean=float(np.mean([r["timing"]["examples_per_s"] for r in ok]))))
    return out


def assemble(run_dir: Path, specs: list[Spec], runs: list[dict], argv: list[str],
             started: datetime.datetime, machine_peak: dict, args: argparse.Namespace) -> dict:
    return dict(run=run_dir.name, command="python compare.py " + shlex.join(argv),
                created=started.isoformat(timespec="seconds"), preset=args.preset, seeds=args.seeds,
                spec=specs[0].to_dict(), families=list(dict.fromkeys(s.variational for s in specs)),
                environment=environment(), peak=machine_peak, runs=runs, paired=paired(runs, run_dir),
                across_seeds=across_seeds(runs) if args.seeds > 1 else [])


def write_results(run_dir: Path, specs: list[Spec], runs: list[dict], argv: list[str],
                  started: datetime.datetime, machine_peak: dict, args: argparse.Namespace, test_x) -> dict:
    """results.json, the tables and figures generated from it, and the results index."""
    results = assemble(run_dir, specs, runs, argv, started, machine_peak, args)
    report.write_all(run_dir, results, test_x)
    report.write_index(run_dir.parent)
    return results


def finished_run(folder: Path, spec: Spec) -> dict | None:
    """The metrics of a backend that finished in folder, or None."""
    path = folder / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    return metrics | dict(folder=folder.name, seed=spec.seed) if metrics.get("status") == "ok" else None


def resumed_plan(run_dir: Path) -> tuple[argparse.Namespace, list[str], list[Spec], list[str], str]:
    """The stopped run's own arguments, specs and backends, from its run.json."""
    plan_path = run_dir / "run.json"
    if not plan_path.exists():
        raise UsageError(f"{plan_path} not found; --resume takes a results/<run> folder that compare.py started")
    plan = json.loads(plan_path.read_text())
    args = run_parser().parse_args(plan["argv"])
    return args, plan["argv"], [Spec.from_dict(s) for s in plan["specs"]], plan["backends"], plan["started"]


def command_run(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    if args.checkpoint_every is not None and args.checkpoint_every <= 0:
        raise UsageError(f"checkpoint-every must be positive, got {args.checkpoint_every}")
    if args.resume:
        run_dir, data_dir = args.resume, args.data_dir
        args, argv, specs, names, started_text = resumed_plan(run_dir)
        args.data_dir, args.resume, args.prepare_only = data_dir or args.data_dir, run_dir, False
        started = datetime.datetime.fromisoformat(started_text)
    else:
        specs = build_specs(args)
        names = parse_backends(args.backends)
        started = datetime.datetime.now().astimezone()
        run_dir = Path(args.out) if args.out else ROOT / "results" / f"{started:%Y-%m-%d}-{args.preset}"
        if run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
            raise UsageError(f"{run_dir} already exists; pass --out NEW_FOLDER, --resume {run_dir} to continue "
                             "it, or --overwrite to replace it")
    try:
        dataset = data.load(args.data_dir)  # fail here, once, with a clear message, before any child starts
    except data.DataError as e:
        raise UsageError(str(e)) from e
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        (run_dir / "run.json").write_text(json.dumps(dict(
            argv=argv, specs=[s.to_dict() for s in specs], backends=names,
            started=started.isoformat(timespec="seconds")), indent=2))
    if args.prepare_only:
        return prepare_only(run_dir, specs, names, args)
    print("measuring this machine's float32 matmul peak ...", file=sys.stderr)
    machine_peak = peak.measure(specs[0])
    print(f"peak: {machine_peak['square_4096_flop_per_s'] / 1e9:.0f} GFLOP/s (4096² GEMM), "
          f"{machine_peak['model_shapes_flop_per_s'] / 1e9:.0f} GFLOP/s (the model's GEMMs)", file=sys.stderr)
    runs: list[dict] = []
    current = None
    try:
        for spec in specs:
            for name in names:
                if importlib.util.find_spec(FRAMEWORK_MODULE[name]) is None:
                    runs.append(dict(backend=name, family=spec.variational, seed=spec.seed, status="unavailable",
                                     error=f"not installed: pip install {backends.PACKAGES[name]}"))
                    print(f"skipping {name}: {runs[-1]['error']}", file=sys.stderr)
                    continue
                folder = run_dir / folder_name(name, spec, args.seeds)
                current = (folder, spec)
                if args.resume and (kept := finished_run(folder, spec)):
                    runs.append(kept)
                    print(f"{name} {spec.variational}: finished before, kept", file=sys.stderr)
                    continue
                runs.append(run_worker(name, spec, folder, args.data_dir, checkpoint_every=args.checkpoint_every,
                                       resume=bool(args.resume)))
    except KeyboardInterrupt:
        print("\ninterrupted: writing the results completed so far", file=sys.stderr)
        if current and not any(r.get("folder") == current[0].name for r in runs):
            if kept := finished_run(*current):  # it finished just before the interrupt
                runs.append(kept)
        results = write_results(run_dir, specs, runs, argv, started, machine_peak, args, dataset.test)
        print(report.text_table(results) if runs else "no backend finished")
        return 130
    results = write_results(run_dir, specs, runs, argv, started, machine_peak, args, dataset.test)
    print()
    print(report.text_table(results))
    print(f"\nwrote {run_dir}/results.json, results.md, results.csv")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def prepare_only(run_dir: Path, specs: list[Spec], names: list[str], args: argparse.Namespace) -> int:
    """Write every worker's config.json and print the one-host command for each (--prepare-only)."""
    for spec in specs:
        for name in names:
            folder = run_dir / folder_name(name, spec, args.seeds)
            # resume=True: a worker started again after a stop continues from its checkpoint
            config = write_config(name, spec, folder, args.data_dir, checkpoint_every=args.checkpoint_every,
                                  resume=True)
            argv, env = worker_launch(name, spec, config)
            needs = [f"{k}={shlex.quote(v)}" for k, v in env.items() if os.environ.get(k) != v]
            print(" ".join([*needs, shlex.join([Path(argv[0]).name, *argv[1:]])]))
    print(f"\nprepared {run_dir}: run each command above (on several hosts: under the framework's launcher, "
          f"README.md \"Several devices and hosts\"), then: python compare.py --resume {run_dir}", file=sys.stderr)
    return 0


def command_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compare.py report",
                                     description="Rebuild results.md and results.csv from results.json.")
    parser.add_argument("run_dir", type=Path, help="a results/<run> folder holding results.json")
    parser.add_argument("--data-dir", help="binarized MNIST folder, for the images of test digits "
                        f"(else ${data.DIR_ENV}, else the download cache)")
    args = parser.parse_args(argv)
    if not (args.run_dir / "results.json").exists():
        raise UsageError(f"{args.run_dir / 'results.json'} not found; give a results/<run> folder")
    try:
        test_x = data.load_split("test", args.data_dir)[0]
    except data.DataError as e:
        print(f"compare.py report: no test images ({e}); the image figures are skipped", file=sys.stderr)
        test_x = None
    results = report.regenerate(args.run_dir, test_x)
    report.write_index(args.run_dir.parent)
    print(report.text_table(results))
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare.py evaluate",
        description="Test ELBO and log p(x) of saved parameters in each backend: a model trained in one "
                    "framework, checked in the others. The architecture is read from the metrics.json beside "
                    "the file when there is one; flags override it.")
    parser.add_argument("params", type=Path, help="a params.safetensors (canonical names, any backend's)")
    parser.add_argument("--backends", default="torch,jax,tensorflow", help="[%(default)s]")
    parser.add_argument("--variational", help="mean-field or iaf")
    for flag in ("--hidden-size", "--latent-size", "--flow-steps", "--eval-k", "--test-examples", "--seed"):
        parser.add_argument(flag, type=int, help=SPEC_FLAGS[flag][2])
    parser.add_argument("--data-dir", help=f"binarized MNIST folder (else ${data.DIR_ENV}, else the download cache)")
    parser.add_argument("--out", type=Path, help="where to write the evaluation [a temporary folder]")
    return parser


def evaluation_spec(args: argparse.Namespace) -> Spec:
    beside = args.params.parent / "metrics.json"
    base = json.loads(beside.read_text()).get("spec", {}) if beside.exists() else {}
    overrides = {"variational": args.variational} if args.variational else {}
    for flag in ("--hidden-size", "--latent-size", "--flow-steps", "--eval-k", "--test-examples", "--seed"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            overrides[SPEC_FLAGS[flag][0]] = value
    try:
        return Spec.from_dict({**base, **overrides})
    except ValueError as e:
        raise UsageError(str(e)) from e


def command_evaluate(argv: list[str]) -> int:
    import tempfile

    from common.init import check_params
    from common.worker import load_params

    args = evaluate_parser().parse_args(argv)
    names = parse_backends(args.backends)
    if not args.params.is_file():
        raise UsageError(f"{args.params} not found; give a params.safetensors file")
    spec = evaluation_spec(args)
    try:
        check_params(spec, load_params(args.params))
    except ValueError as e:
        raise UsageError(f"{args.params} does not fit the model: {e}; set --variational / --hidden-size / "
                         "--latent-size / --flow-steps to the architecture it was trained with") from e
    except Exception as e:  # noqa: BLE001 -- safetensors' own error types: not a readable tensor file
        raise UsageError(f"{args.params} is not a readable safetensors file ({e})") from e
    out = args.out or Path(tempfile.mkdtemp(prefix="vae-compare-evaluate-"))
    runs = []
    for name in names:
        runs.append(run_worker(name, spec, out / name, args.data_dir, params=args.params))
    results = dict(runs=runs, paired=paired(runs, out))
    print()
    print(report.text_table(results))
    (out / "evaluation.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {out / 'evaluation.json'}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def main(argv: list[str]) -> int:
    commands = {"report": command_report, "evaluate": command_evaluate}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return command_run(argv)
    except UsageError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
