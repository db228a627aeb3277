"""The command line: `python compare.py` (or `vae-compare`) and its subcommands.

Each backend, family and seed runs in its own process (runner/worker.py), one after another, so that
frameworks never share thread pools or memory, none competes with another for the cores, and one crash
does not take the others down. A run writes only inside its folder.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import backends
from common import data
from common.models import load_data, split_sizes
from common.spec import FAMILIES, PRESETS, Spec, parse_widths
from report import index, tables
from runner import launch, provenance
from runner.launch import child_environment, contained
from runner.usage import Parser, UsageError
from runner.worker import SQUARE, family_name

ROOT = provenance.ROOT
RESULTS = ROOT / "results"
DESCRIPTION = """Train the same latent-variable models in PyTorch, JAX and TensorFlow and compare them side by side.

  python compare.py --backends torch,jax,tensorflow --preset smoke
  python compare.py --backends torch,jax --variational mean-field,iaf --preset quick --out results/my-run
"""
SUBCOMMANDS = """subcommands (python compare.py SUBCOMMAND --help for each):
  (none)    train and compare: the options above
  report    rebuild a run's tables, figures and the results index from its results.json, without training
  evaluate  evaluate saved parameters (a params.safetensors from any backend) in every backend
  bench     time backends interleaved and replicated: rounds in fresh processes, rotated order, peak and
            outside load measured in every round; medians and within-round ratios with 95% intervals
"""
WIDTHS = "comma-separated hidden widths, e.g. 512,512 or 400"


def widths(text: str) -> tuple[int, ...]:
    try:
        return parse_widths(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

# flag -> (Spec field, type, help); every one overrides the preset
SPEC_FLAGS: dict[str, tuple[str, object, str]] = {
    "--encoder": ("encoder", widths, f"encoder hidden widths ({WIDTHS}) [512,512]"),
    "--decoder": ("decoder", widths, f"decoder hidden widths ({WIDTHS}) [512,512]"),
    "--hidden": ("hidden", widths, "the same hidden widths for encoder and decoder"),
    "--hidden-size": ("hidden_size", int, "H: two hidden layers of H in encoder and decoder (same as --hidden H,H)"),
    "--activation": ("activation", str, "relu, tanh or softplus, in every hidden layer [relu]"),
    "--latent-size": ("latent_size", int, "latent size L [128]"),
    "--flow-steps": ("flow_steps", int, "IAF steps T [2]"),
    "--flow-hidden": ("flow_hidden", int, "width of the IAF's MADE layers [the encoder's last width]"),
    "--encoder-scale": ("encoder_scale", str, "the VAE's q(z|x) scale from the encoder's output a: softplus(a), or "
                        "exp(a) as Burda et al. [softplus]"),
    "--init": ("init", str, "initial parameters: uniform (PyTorch's nn.Linear rule), glorot, glorot-logit "
              "(glorot, the decoder's output bias at the logit of the mean training pixel, as Burda et al.'s code), "
              "or burda-code (glorot-logit drawn as their code draws it: every kernel from the seed afresh, so "
              "that kernels of one shape start equal, q's mean and scale heads among them) [uniform]"),
    "--objective": ("objective", str, "elbo or iwae (the importance-weighted bound) [elbo]"),
    "--train-k": ("train_k", int, "samples per example in training (IWAE's k) [1]"),
    "--optimizer": ("optimizer", str, "rmsprop (centered), adam, adagrad, or adam-burda (the Adam of Burda et "
                    "al.'s code: second moments start at 1, each step uses the moments from before it; their code "
                    "runs it with --adam-beta1 0.99) [rmsprop]"),
    "--learning-rate": ("learning_rate", float, "learning rate [1e-3]"),
    "--lr-schedule": ("lr_schedule", str, "constant, step (x lr-decay every lr-decay-every steps), burda "
                                          "(stages of 3^i passes at lr * 10^(-i/7)) or burda-code (the same, "
                                          "10^(-i/7) to two significant digits as Burda et al.'s code) [constant]"),
    "--lr-decay": ("lr_decay", float, "factor of the step schedule [0.1]"),
    "--lr-decay-every": ("lr_decay_every", int, "steps between decays of the step schedule"),
    "--adam-beta1": ("adam_beta1", float, "Adam's beta1 [0.9]"),
    "--adam-beta2": ("adam_beta2", float, "Adam's beta2 [0.999]"),
    "--adam-eps": ("adam_eps", float, "Adam's eps, outside the square root [1e-8]"),
    "--rmsprop-decay": ("rmsprop_decay", float, "RMSprop's decay rho [0.99]"),
    "--rmsprop-eps": ("rmsprop_eps", float, "RMSprop's eps, outside the square root [1e-8]"),
    "--adagrad-eps": ("adagrad_eps", float, "Adagrad's eps, outside the square root [1e-10]"),
    "--batch-size": ("batch_size", int, "examples per step [128]"),
    "--batch-order": ("batch_order", str, "shuffled (a new order of the training images each pass, from the seed) "
                                          "or fixed (file order every pass, as Burda et al.'s code) [shuffled]"),
    "--steps": ("steps", int, "training steps"),
    "--eval-every": ("eval_every", int, "validate every this many steps"),
    "--eval-k": ("eval_k", int, "importance samples K for log p(x)"),
    "--valid-examples": ("valid_examples", int, "validation examples for model selection: a fixed, seeded, "
                                                "representative subset"),
    "--test-examples": ("test_examples", int, "test examples: a fixed, seeded, representative subset"),
    "--seed": ("seed", int, "seed of the initial parameters, batch order and noise [0]"),
    "--dtype": ("dtype", str, "float32 or float64 [float32]"),
    "--fa-dim": ("fa_dim", int, "factor analysis: data width D [3]"),
    "--fa-train": ("fa_train", int, "factor analysis: synthetic training examples [1000]"),
    "--fa-valid": ("fa_valid", int, "factor analysis: synthetic validation examples [1000]"),
    "--fa-test": ("fa_test", int, "factor analysis: synthetic test examples [1000]"),
    "--quadrants": ("quadrants", int, "conditional VAE: observed quadrants of the digit, 1, 2 or 3 [1]"),
    "--components": ("components", int, "Gaussian-mixture VAE: mixture components [10]"),
    "--rnn-cell": ("rnn_cell", str, "variational RNN: gru or lstm [gru]"),
    "--rnn-hidden": ("rnn_hidden", int, "variational RNN: width of the recurrent state [256]"),
    "--devices": ("devices", int, "data-parallel devices N [1]: the batch is split across N devices with each "
                                  "framework's own engine (torch: DDP under torchrun; jax: a device mesh; "
                                  "tensorflow: MirroredStrategy); on a CPU, N logical devices share the cores"),
}
RESUME_MAY_CHANGE = ("--data-dir", "--resume")


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm, Kubernetes, `timeout`): handled as Ctrl-C is."""


def run_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="compare.py", description=DESCRIPTION, epilog=SUBCOMMANDS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(backends.DEFAULT),
                        help="comma-separated: " + ", ".join(backends.NAMES) + " (numpy: the float64 reference, "
                             "for small runs; keras: its three engines' rows keras[jax], keras[torch], "
                             "keras[tensorflow]; torch[eager]: torch with nothing compiled; torch[compiled]: its "
                             "forward and backward compiled too) [%(default)s]")
    parser.add_argument("--model", default="vae",
                        help="model families, comma-separated: vae, fa (factor analysis), cvae (conditional VAE), "
                             "gmvae (Gaussian-mixture VAE), vrnn (variational RNN); one table each [%(default)s]")
    parser.add_argument("--variational", default="mean-field",
                        help="the VAE's posterior: mean-field, iaf, or both comma-separated [%(default)s]")
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS), metavar="PRESET",
                        help="smoke: ~1 min per backend; quick: a few minutes; paper: the reference protocol; "
                             "burda, bergamin-z3, bergamin-z12: the literature's configurations, each with a "
                             "-short variant (README.md, Presets) [%(default)s]")
    model = parser.add_argument_group("model, objective and optimizer (override the preset)")
    for flag, (_, kind, text) in SPEC_FLAGS.items():
        model.add_argument(flag, type=kind, help=text)
    run = parser.add_argument_group("the run")
    run.add_argument("--seeds", type=int, default=1,
                     help="repeat the whole comparison over this many seeds (seed, seed+1, ...) and report the mean "
                          "with its interval across seeds [%(default)s]")
    run.add_argument("--data-dir", help="folder with binarized_mnist_{train,valid,test}.amat[.gz] "
                     f"[${data.DIR_ENV}, else the copy shipped with the package]")
    run.add_argument("--out", help="results folder [results/<date>-<preset>]")
    run.add_argument("--overwrite", action="store_true", help="replace an existing results folder")
    run.add_argument("--checkpoint-every", type=int,
                     help="steps between checkpoints (parameters, optimizer and RNG state, data position); "
                          "a run of over 200,000 steps trains in windows of steps/2000 (burda: 4,100), and an "
                          "interval they do not divide brings it back to 100-step windows [the validation interval]")
    run.add_argument("--index", action="store_true",
                     help="also write the results index (README.md) beside the run folder; it is written "
                          "by default only for folders in the project's results/")
    run.add_argument("--prepare-only", action="store_true",
                     help="write the run folder and each worker's config.json, print the command that runs "
                          "each worker, and stop: for several hosts (README.md, \"Several devices and hosts\"); "
                          "collect the results afterwards with --resume RUN_DIR")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue a stopped run with its own settings: finished backends are kept, the others "
                          "continue from their last checkpoint. Only --data-dir may be given with it")
    return parser


def flag_value(args: argparse.Namespace, flag: str):
    return getattr(args, flag[2:].replace("-", "_"))


def spec_overrides(args: argparse.Namespace) -> dict:
    """The flags given, as Spec fields (--hidden and --hidden-size set encoder and decoder)."""
    overrides = {}
    for flag, (field, _, _) in SPEC_FLAGS.items():
        value = flag_value(args, flag)
        if value is None:
            continue
        if field == "hidden":
            overrides.update(encoder=value, decoder=value)
        elif field == "hidden_size":
            overrides.update(encoder=(value, value), decoder=(value, value))
        else:
            overrides[field] = value
    return overrides


def model_specs(model: str, families: list[str], args: argparse.Namespace) -> list[Spec]:
    """One spec per VAE family (one for any other model): Spec defaults < the model's own defaults < the preset
    < what the model changes of that preset (e.g. its data sizes) < the flags."""
    from common.models import FAMILIES as described

    if model not in described:
        raise UsageError(f"unknown model {model!r}; choose from {', '.join(described)}")
    module = described[model]
    fields = module.DEFAULTS | PRESETS[args.preset] | module.PRESETS.get(args.preset, {}) | spec_overrides(args)
    try:
        return [Spec(model=model, variational=f, **fields) for f in (families if model == "vae" else ["mean-field"])]
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e


def build_specs(args: argparse.Namespace) -> list[Spec]:
    families = [f.strip() for f in args.variational.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise UsageError(f"unknown variational family {unknown[0] if unknown else ''!r}; "
                         f"choose from {', '.join(FAMILIES)}")
    if args.seeds < 1:
        raise UsageError(f"seeds must be positive, got {args.seeds}")
    models = list(dict.fromkeys(m.strip() for m in args.model.split(",") if m.strip())) or ["vae"]
    specs = [s for model in models for s in model_specs(model, families, args)]
    for spec in specs:
        sizes = split_sizes(spec)
        if spec.batch_size > sizes["train"]:
            raise UsageError(f"batch-size {spec.batch_size} exceeds the {sizes['train']:,} training examples")
        for name, split in (("valid_examples", "valid"), ("test_examples", "test")):
            if getattr(spec, name) > sizes[split]:
                raise UsageError(f"{name.replace('_', '-')} {getattr(spec, name)} exceeds the "
                                 f"{sizes[split]:,} {split} examples" + (f" of {spec.model}" if spec.model != "vae"
                                                                          else ""))
    return [s.replace(seed=s.seed + i) for i in range(args.seeds) for s in specs]


def parse_backends(text: str, specs: list[Spec] | None = None) -> list[str]:
    try:
        names = [row for n in text.split(",") if n.strip() for row in backends.expand(n)]
    except ValueError as e:
        raise UsageError(str(e)) from e
    if not names:
        raise UsageError("--backends is empty; choose from " + ", ".join(backends.NAMES))
    if "numpy" in names and specs and specs[0].dtype != "float64":
        raise UsageError("the numpy backend is the float64 reference: add --dtype float64 (small runs only)")
    for name in names:  # a backend written for some model families only (keras: the VAE) says so up front
        problem = next((p for s in specs or [] if (p := backends.unsupported(name, s.model))), None)
        if problem:
            raise UsageError(problem)
    return list(dict.fromkeys(names))


def folder_name(backend: str, spec: Spec, seeds: int) -> str:
    return f"{backend}-{family_name(spec)}" + (f"-seed{spec.seed}" if seeds > 1 else "")


def write_config(backend: str, spec: Spec, out_dir: Path, data_dir: str | None, params: Path | None = None,
                 checkpoint_every: int | None = None, resume: bool = False, split: str = "test") -> Path:
    """The worker's whole input (runner/worker.py reads it): out_dir/config.json, with no machine paths
    except a --data-dir or parameters file that lies outside the project."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "config.json"

    def portable(path):
        if path is None:
            return None
        path = Path(path).resolve()
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)

    config.write_text(json.dumps(dict(backend=backend, spec=spec.to_dict(), data_dir=portable(data_dir),
                                      params=portable(params), split=split, checkpoint_every=checkpoint_every,
                                      resume=resume), indent=2) + "\n")
    return config


def worker_launch(backend: str, spec: Spec, config: Path) -> list[str]:
    return launch.command(backend, spec.devices, ["-m", "runner.worker", str(config)])


class CleanLog:
    """The worker's output for log.txt: what a terminal would finally show of each line, so progress bars
    (redrawn with carriage returns) leave one line each, not thousands."""

    def __init__(self, file) -> None:
        self.file, self.pending = file, b""

    def write(self, chunk: bytes) -> None:
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.file.write(line.rsplit(b"\r", 1)[-1] + b"\n")

    def close(self) -> None:
        if self.pending.strip(b"\r"):
            self.file.write(self.pending.rsplit(b"\r", 1)[-1] + b"\n")


def run_worker(backend: str, spec: Spec, out_dir: Path, run_dir: Path, data_dir: str | None,
               params: Path | None = None, checkpoint_every: int | None = None, resume: bool = False,
               split: str = "test") -> dict:
    """One backend and family in a child process (N processes for torch on N devices); its output is shown
    and kept in log.txt. With params: evaluate those parameters on split (test, valid or train) instead of
    training."""
    config = write_config(backend, spec, out_dir, data_dir, params, checkpoint_every, resume, split)
    log_path = out_dir / "log.txt"
    with log_path.open("ab" if resume else "wb") as log_file:
        log = CleanLog(log_file)
        child = subprocess.Popen(worker_launch(backend, spec, config), cwd=ROOT,
                                 env=child_environment(backend, spec, run_dir),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            while chunk := os.read(child.stdout.fileno(), 4096):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                log.write(chunk)
            child.wait()
        except BaseException:
            # Ctrl-C reaches the worker itself from the terminal; SIGTERM reaches only this process: pass it on,
            # and give the worker the time to leave its last checkpoint as it is
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
        finally:
            log.close()
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
    else:
        metrics = dict(backend=backend, family=family_name(spec), model=spec.model, status="failed",
                       error=f"process ended with status {child.returncode} before writing metrics")
    metrics.update(folder=out_dir.name, seed=spec.seed)
    if metrics["status"] != "ok":
        metrics["log"] = provenance.relative(log_path) if log_path.resolve().is_relative_to(ROOT) else str(log_path)
    return metrics


def finished_run(folder: Path, spec: Spec) -> dict | None:
    """The metrics of a backend that finished in folder, or None."""
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        metrics = {}
    return metrics | dict(folder=folder.name, seed=spec.seed) if metrics.get("status") == "ok" else None


def index_wanted(run_dir: Path, asked: bool) -> bool:
    """The results index is written beside a run only in the project's results/ (or when asked): a run
    elsewhere writes nothing outside its own folder."""
    return asked or run_dir.resolve().parent == RESULTS.resolve()


def write_results(run_dir: Path, plan: dict, runs: list[dict], test_x, write_index: bool) -> dict:
    """results.json, the tables and figures generated from it, and (in results/) the results index."""
    from runner import summary

    results = summary.assemble(run_dir, plan, runs)
    tables.write_all(run_dir, results, test_x)
    if write_index:
        index.write_index(run_dir.parent)
    return results


def check_resume_flags(argv: list[str]) -> None:
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    refused = [flag for flag in given if flag not in RESUME_MAY_CHANGE]
    if refused:
        raise UsageError(f"--resume continues a run with its own settings; {', '.join(refused)} cannot be given "
                         "with it (only --data-dir can); start a new run with --out to change them")


def write_plan(run_dir: Path, plan: dict) -> None:
    """run.json, replaced whole (a resume adds to it)."""
    partial = run_dir / "run.json.partial"
    partial.write_text(json.dumps(plan, indent=2) + "\n")
    partial.replace(run_dir / "run.json")


def load_plan(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.exists():
        raise UsageError(f"{path} not found; --resume takes a results/<run> folder that compare.py started")
    return json.loads(path.read_text())


def sigterm_as_interrupt() -> None:
    def handler(signum, frame):
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def command_run(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    if args.checkpoint_every is not None and args.checkpoint_every <= 0:
        raise UsageError(f"checkpoint-every must be positive, got {args.checkpoint_every}")
    if args.resume:
        check_resume_flags(argv)
        run_dir = args.resume
        plan = load_plan(run_dir)
        specs, names = [Spec.from_dict(s) for s in plan["specs"]], plan["backends"]
        data_dir = args.data_dir or plan.get("data_dir")
    else:
        specs = build_specs(args)
        names = parse_backends(args.backends, specs)
        started = datetime.datetime.now().astimezone()
        run_dir = Path(args.out) if args.out else RESULTS / f"{started:%Y-%m-%d}-{args.preset}"
        if run_dir.exists() and any(run_dir.iterdir()) and not args.overwrite:
            raise UsageError(f"{run_dir} already exists; pass --out NEW_FOLDER, --resume {run_dir} to continue "
                             "it, or --overwrite to replace it")
        data_dir = args.data_dir
        plan = dict(argv=argv, command="python compare.py " + shlex.join(argv), preset=args.preset, seeds=args.seeds,
                    specs=[s.to_dict() for s in specs], backends=names, checkpoint_every=args.checkpoint_every,
                    data_dir=provenance.relative(data_dir) if data_dir else None,
                    started=started.isoformat(timespec="seconds"), provenance=provenance.commit_state(),
                    environment=provenance.environment(), index=args.index)
    try:
        datasets = {s.model: load_data(s, data_dir) for s in specs}  # fail here, once, before any child starts
        # binarized MNIST, for the figures of the families that train on it (factor analysis makes its own data)
        dataset = next((d for d in datasets.values() if d.source != data.SYNTHETIC), None) or data.load(data_dir)
    except data.DataError as e:
        raise UsageError(str(e)) from e
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.resume:  # each continuation's commit and machine: a run resumed from other code or elsewhere says so
        plan.setdefault("resumes", []).append(dict(
            started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            provenance=provenance.commit_state(), environment=provenance.environment()))
    write_plan(run_dir, plan)
    plan["data_source"] = dataset.source
    if args.prepare_only:
        return prepare_only(run_dir, specs, names, plan, data_dir)
    return train_all(run_dir, specs, names, plan, data_dir, dataset, resume=bool(args.resume))


def train_all(run_dir: Path, specs: list[Spec], names: list[str], plan: dict, data_dir: str | None, dataset,
              resume: bool) -> int:
    from backends.numpy.engine import Backend as NumpyBackend

    sigterm_as_interrupt()
    contained(run_dir)
    write_index = index_wanted(run_dir, plan.get("index", False))
    runs: list[dict] = []
    current = None
    try:
        plan["peak"] = dict(square_flop_per_s=NumpyBackend.matmul_flop_per_s(*SQUARE, 0.5), library="numpy")
        for spec in specs:
            for name in names:
                if not backends.installed(name):
                    runs.append(dict(backend=name, family=family_name(spec), model=spec.model, seed=spec.seed,
                                     status="unavailable",
                                     error=f"not installed: pip install {backends.framework(name).install}"))
                    print(f"skipping {name}: {runs[-1]['error']}", file=sys.stderr)
                    continue
                folder = run_dir / folder_name(name, spec, plan["seeds"])
                current = (folder, spec)
                if resume and (kept := finished_run(folder, spec)):
                    runs.append(kept)
                    print(f"{name} {family_name(spec)}: finished before, kept", file=sys.stderr)
                    continue
                runs.append(run_worker(name, spec, folder, run_dir, data_dir, resume=resume,
                                       checkpoint_every=plan.get("checkpoint_every")))
    except KeyboardInterrupt as stop:
        why = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
        print(f"\n{why}: writing the results completed so far; continue with --resume {run_dir}", file=sys.stderr)
        if current and not any(r.get("folder") == current[0].name for r in runs):
            if kept := finished_run(*current):  # it finished just before the stop
                runs.append(kept)
        results = write_results(run_dir, plan, runs, dataset.test, write_index)
        print(tables.text_table(results) if runs else "no backend finished")
        return 143 if isinstance(stop, Terminated) else 130
    results = write_results(run_dir, plan, runs, dataset.test, write_index)
    if all(r["status"] == "ok" for r in runs):
        shutil.rmtree(run_dir / ".cache", ignore_errors=True)  # kept after a stop: a resume reuses compiled kernels
    print()
    print(tables.text_table(results))
    print(f"\nwrote {run_dir}/results.json, results.md, results.csv")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def prepare_only(run_dir: Path, specs: list[Spec], names: list[str], plan: dict, data_dir: str | None) -> int:
    """Write every worker's config.json and print the one-host command for each (--prepare-only)."""
    for spec in specs:
        for name in names:
            folder = run_dir / folder_name(name, spec, plan["seeds"])
            # resume=True: a worker started again after a stop continues from its checkpoint
            config = write_config(name, spec, folder, data_dir, checkpoint_every=plan.get("checkpoint_every"),
                                  resume=True)
            argv = worker_launch(name, spec, config)
            env = launch.environment(name, spec.devices)
            needs = [f"{k}={shlex.quote(v)}" for k, v in env.items() if os.environ.get(k) != v]
            print(" ".join([*needs, shlex.join([Path(argv[0]).name, *argv[1:]])]))
    print(f"\nprepared {run_dir}: run each command above (on several hosts: under the framework's launcher, "
          f"README.md \"Several devices and hosts\"), then: python compare.py --resume {run_dir}", file=sys.stderr)
    return 0


def command_report(argv: list[str]) -> int:
    parser = Parser(prog="compare.py report",
                                     description="Rebuild a run's results.md, results.csv and figures from its "
                                                 "results.json (and its saved parameters, where kept), without "
                                                 "training; and the results index when the run is in results/.")
    parser.add_argument("run_dir", type=Path, nargs="?", help="a results/<run> folder holding results.json")
    parser.add_argument("--data-dir", help="binarized MNIST folder, for the images of test digits "
                        f"[${data.DIR_ENV}, else the shipped copy]")
    parser.add_argument("--index", action="store_true",
                        help="also write the results index beside a run that is not in the project's results/")
    parser.add_argument("--readme", action="store_true",
                        help="rebuild the generated blocks of the project's README.md from the results they name")
    parser.add_argument("--prune", action="store_true",
                        help="before committing a run: remove its checkpoints and caches, and the parameter files "
                             "beyond its size budget (report/budget.py), after the figures are drawn")
    args = parser.parse_args(argv)
    if args.run_dir is None and not args.readme:
        raise UsageError("report needs a results/<run> folder, or --readme")
    if args.run_dir is not None:
        if not (args.run_dir / "results.json").exists():
            raise UsageError(f"{args.run_dir / 'results.json'} not found; give a results/<run> folder")
        contained(args.run_dir)
        try:
            test_x = data.load_split("test", args.data_dir)[0]
        except data.DataError as e:
            print(f"compare.py report: no test images ({e}); the image figures are skipped", file=sys.stderr)
            test_x = None
        tables.regenerate(args.run_dir, test_x)
        if index_wanted(args.run_dir, args.index):
            index.write_index(args.run_dir.parent)
        print(tables.text_table(json.loads((args.run_dir / "results.json").read_text())))
        shutil.rmtree(args.run_dir / ".cache", ignore_errors=True)
        if args.prune:
            from report import budget

            removed = budget.prune(args.run_dir)
            params, other = budget.sizes(args.run_dir)
            print(f"pruned {len(removed)} files or folders; {args.run_dir} now holds {other / 1e6:.1f} MB "
                  f"(+ {params / 1e6:.1f} MB of parameters)")
    if args.readme:
        from report import readme

        print("README.md: " + ("generated blocks rebuilt" if readme.update() else "already up to date"))
    return 0


def evaluate_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="compare.py evaluate",
        description="Test ELBO and log p(x) of saved parameters in each backend: a model trained in one "
                    "framework, checked in the others. The architecture is read from the metrics.json beside "
                    "the file when there is one; flags override it.")
    parser.add_argument("params", type=Path, help="a params.safetensors (canonical names, any backend's)")
    parser.add_argument("--backends", default=",".join(backends.DEFAULT), help="[%(default)s]")
    parser.add_argument("--variational", help="mean-field or iaf")
    for flag in ("--encoder", "--decoder", "--hidden", "--hidden-size", "--activation", "--latent-size",
                 "--flow-steps", "--flow-hidden", "--eval-k", "--test-examples", "--seed"):
        parser.add_argument(flag, type=SPEC_FLAGS[flag][1], help=SPEC_FLAGS[flag][2])
    parser.add_argument("--split", choices=data.SPLITS, default="test",
                        help="the images evaluated: a fixed, representative subset of --test-examples of this split "
                             "(train: how well the model fits the images it learned from, against test) [test]")
    parser.add_argument("--data-dir", help=f"binarized MNIST folder [${data.DIR_ENV}, else the shipped copy]")
    parser.add_argument("--out", type=Path, required=True, help="where to write the evaluation (a new folder)")
    return parser


def evaluation_spec(args: argparse.Namespace) -> Spec:
    beside = args.params.parent / "metrics.json"
    base = json.loads(beside.read_text()).get("spec", {}) if beside.exists() else {}
    overrides = {"variational": args.variational} if args.variational else {}
    for flag in ("--encoder", "--decoder", "--hidden", "--hidden-size", "--activation", "--latent-size",
                 "--flow-steps", "--flow-hidden", "--eval-k", "--test-examples", "--seed"):
        field, value = SPEC_FLAGS[flag][0], flag_value(args, flag)
        if value is None:
            continue
        if field == "hidden":
            overrides.update(encoder=value, decoder=value)
        elif field == "hidden_size":
            overrides.update(encoder=(value, value), decoder=(value, value), flow_hidden=value)
        else:
            overrides[field] = value
    base = Spec.from_dict(base).to_dict() if base else {}
    try:
        return Spec.from_dict({**base, "dtype": "float32", "devices": 1, **overrides})
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e


def command_evaluate(argv: list[str]) -> int:
    from common.params import check_params, load_params

    args = evaluate_parser().parse_args(argv)
    names = parse_backends(args.backends)
    if not args.params.is_file():
        raise UsageError(f"{args.params} not found; give a params.safetensors file")
    if args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"{args.out} already exists; give a new folder to --out")
    spec = evaluation_spec(args)
    if "numpy" in names:
        spec = spec.replace(dtype="float64")
    try:
        check_params(spec, load_params(args.params))
    except ValueError as e:
        raise UsageError(f"{args.params} does not fit the model: {e}; set --variational / --encoder / --decoder / "
                         "--latent-size / --flow-steps to the architecture it was trained with") from e
    except Exception as e:  # noqa: BLE001 -- safetensors' own error types: not a readable tensor file
        raise UsageError(f"{args.params} is not a readable safetensors file ({e})") from e
    from runner import summary

    sigterm_as_interrupt()
    code = provenance.commit_state()  # at the start, as a run records it: the code that evaluates
    runs = [run_worker(name, spec, args.out / name, args.out, args.data_dir, params=args.params, split=args.split)
            for name in names]
    results = dict(runs=runs, split=args.split, paired=summary.paired(runs, args.out),
                   command="python compare.py evaluate " + shlex.join(argv), provenance=code,
                   subsets=runs[0].get("subsets"))
    print(f"\n{runs[0].get('test', {}).get('examples', '?')} images of the {args.split} split")
    print(tables.text_table(results))
    (args.out / "evaluation.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"\nwrote {args.out / 'evaluation.json'}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


def command_bench(argv: list[str]) -> int:
    from runner import bench

    return bench.main(argv, UsageError)


COMMANDS = {"report": command_report, "evaluate": command_evaluate, "bench": command_bench}


def main(argv: list[str]) -> int:
    try:
        if argv and argv[0] in COMMANDS:
            return COMMANDS[argv[0]](argv[1:])
        return command_run(argv)
    except UsageError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `vae-compare` console script."""
    sys.exit(main(sys.argv[1:]))
