"""`compare.py bench`: throughput measured so that a ranking can be quoted.

The protocol: R rounds; in each round every backend runs once, in a fresh process, in an order rotated
from round to round (so no backend always runs first, or right after another). Each process measures,
for every configuration: its framework's best float32 GEMM (a 4096² square and the model's shape), the
warm-up (the first training window, compilation included), W training windows of S steps, and the
evaluation rate (samples/s of K-sample log-weights). A load probe beside every window reads what other
processes took from the machine; windows where they took more than 10% are flagged and left out.

The summary per backend: the median over rounds of each round's median, with a 95% bootstrap interval
over rounds; between backends, the ratio measured within each round (both in the same round, minutes
apart), its median over rounds and 95% interval. % of peak is against the best GEMM any framework (or
NumPy) reached in that same round, so it can never read above 100%.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import backends
from common import data, evaluation, streams
from common.metrics import LoadProbe, bootstrap_interval, excludes_zero, is_clean
from common.models import family
from common.params import init_params
from common.spec import Spec
from runner import reference_script

ROOT = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    from runner.usage import Parser

    p = Parser(prog="compare.py bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=",".join(backends.DEFAULT), help="[%(default)s]")
    p.add_argument("--variational", default="mean-field,iaf", help="[%(default)s]")
    p.add_argument("--hidden-sizes", default="512,256",
                   help="one configuration per width H: two hidden layers of H in encoder and decoder [%(default)s]")
    p.add_argument("--latent-size", type=int, default=128, help="[%(default)s]")
    p.add_argument("--batch-size", type=int, default=128, help="[%(default)s]")
    p.add_argument("--activation", default="relu", help="the hidden layers' activation: relu, tanh, softplus "
                   "[%(default)s]")
    p.add_argument("--optimizer", default="rmsprop", help="rmsprop (centered), adam or adagrad [%(default)s]")
    p.add_argument("--rounds", type=int, default=5, help="rounds R [%(default)s]")
    p.add_argument("--windows", type=int, default=8, help="timed training windows per configuration [%(default)s]")
    p.add_argument("--window-steps", type=int, default=100, help="steps per window (one host sync) [%(default)s]")
    p.add_argument("--eval-k", type=int, default=1000, help="importance samples per example [%(default)s]")
    p.add_argument("--eval-examples", type=int, default=64, help="examples per evaluation pass [%(default)s]")
    p.add_argument("--reference", help="the backend every ratio is against [the first of --backends]")
    p.add_argument("--reference-script", type=Path, metavar="PATH",
                   help="also time the reference project's PyTorch script, unmodified, from your checkout of it "
                        "(jaanli/variational-autoencoder, train_variational_autoencoder_pytorch.py; needs h5py): "
                        "one more row in every round, in the configurations of its architecture (mean-field, "
                        "H = 2L), and every row's ratio to it")
    p.add_argument("--script-window-steps", type=int, default=500,
                   help="the script's steps per timed window (its --log_interval; each of its windows also holds "
                        "one pass of its own validation evaluation, with 1 sample) [%(default)s]")
    p.add_argument("--out", type=Path, required=True, help="a new folder for bench.json and bench.md")
    return p


def configurations(args: argparse.Namespace) -> list[Spec]:
    widths = [int(w) for w in args.hidden_sizes.split(",")]
    families = [f.strip() for f in args.variational.split(",") if f.strip()]
    return [Spec(variational=f, encoder=(h, h), decoder=(h, h), latent_size=args.latent_size,
                 batch_size=args.batch_size, activation=args.activation, optimizer=args.optimizer)
            for f in families for h in widths]


def config_name(spec: Spec) -> str:
    return f"{spec.variational} H{spec.encoder[0]}"


# ------------------------------------------------------------------------------- one process


def time_configuration(name: str, spec: Spec, train_x: np.ndarray, test_x: np.ndarray, job: dict) -> dict:
    backend = backends.create(name)
    backend.load(spec, init_params(spec, train=train_x), train_x)
    widest = max((*spec.encoder, *spec.decoder, spec.latent_size))
    gemm = {"square_4096": backend.matmul_flop_per_s(4096, 4096, 4096, 2.0),
            "model_shape": backend.matmul_flop_per_s(spec.batch_size, widest, widest, 1.0)}
    steps = job["window_steps"]
    windows = []
    for w in range(job["windows"] + 1):  # window 0: warm-up (compilation)
        indices = data.batch_indices(len(train_x), spec.batch_size, spec.seed, w * steps, (w + 1) * steps,
                                     spec.batch_order)
        probe = LoadProbe()
        start = time.perf_counter()
        value = backend.train(indices)
        seconds = time.perf_counter() - start
        windows.append(dict(seconds=seconds, examples_per_s=steps * spec.batch_size / seconds, **probe.stop(),
                            finite=bool(np.isfinite(value))))
    x = test_x[: job["eval_examples"]]
    stream = streams.seed_of(spec.seed, "bench")
    evaluation.evaluate(backend, x, job["eval_k"], stream=stream)  # compile, warm caches
    evals = []
    for _ in range(3):
        probe = LoadProbe()
        start = time.perf_counter()
        evaluation.evaluate(backend, x, job["eval_k"], stream=stream)
        seconds = time.perf_counter() - start
        evals.append(dict(seconds=seconds, samples_per_s=len(x) * job["eval_k"] / seconds, **probe.stop()))
    model = family(spec)
    return dict(config=config_name(spec), gemm=gemm, warmup_seconds=windows[0]["seconds"], windows=windows[1:],
                evals=evals, train_flops_per_example=model.flops_per_example(spec, spec.train_k, training=True),
                eval_flops_per_sample=model.flops_per_example(spec, job["eval_k"], training=False) / job["eval_k"])


def worker_main(config_path: str) -> int:
    job = json.loads(Path(config_path).read_text())
    out = {"backend": job["backend"], "configs": []}
    if job["backend"] == reference_script.ROW:
        script_job = dict(job, window_steps=job["script_window_steps"])
        for spec in (Spec.from_dict(d) for d in job["specs"]):
            if reference_script.matches(spec):
                out["configs"].append(reference_script.time_configuration(
                    spec, script_job, Path(job["output"]).parent, config_name(spec)))
        Path(job["output"]).write_text(json.dumps(out, indent=2) + "\n")
        return 0
    dataset = data.load()
    test_x = dataset.test[data.subset_rows("test", job["eval_examples"])]
    for spec_dict in job["specs"]:
        out["configs"].append(time_configuration(job["backend"], Spec.from_dict(spec_dict), dataset.train, test_x, job))
    Path(job["output"]).write_text(json.dumps(out, indent=2) + "\n")
    return 0


# ------------------------------------------------------------------------------- the rounds


def rotated(names: list[str], round_index: int) -> list[str]:
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def worker_environment(env: dict, name: str) -> dict:
    """A row's process: the bench's environment plus what its variant needs before its framework is imported
    (keras[jax]: KERAS_BACKEND=jax)."""
    return env if name == reference_script.ROW else env | backends.environment(name)


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def run_round(round_index: int, names: list[str], specs: list[Spec], args: argparse.Namespace, env: dict) -> dict:
    from backends.numpy.engine import Backend as NumpyBackend

    folder = args.out / f"round{round_index}"
    folder.mkdir(parents=True, exist_ok=True)
    result = {"round": round_index, "order": rotated(names, round_index), "backends": {},
              "numpy_gemm": NumpyBackend.matmul_flop_per_s(4096, 4096, 4096, 1.0)}
    for name in result["order"]:
        job = dict(backend=name, specs=[s.to_dict() for s in specs], windows=args.windows,
                   window_steps=args.window_steps, eval_k=args.eval_k, eval_examples=args.eval_examples,
                   output=str(folder / f"{name}.json"), script_window_steps=args.script_window_steps,
                   # relative to the root the worker runs in: the record names no path of this machine
                   reference_script=os.path.relpath(args.reference_script.resolve(), ROOT)
                   if args.reference_script else None)
        (folder / f"{name}.job.json").write_text(json.dumps(job, indent=2))
        print(f"round {round_index + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
        with (folder / f"{name}.log.txt").open("wb") as log:
            done = subprocess.run([sys.executable, "-m", "runner.bench", str(folder / f"{name}.job.json")],
                                  cwd=ROOT, env=worker_environment(env, name), stdout=log, stderr=subprocess.STDOUT)
        if done.returncode:
            result["backends"][name] = {"error": f"exit status {done.returncode}; see {folder.name}/{name}.log.txt"}
            print(f"  {name} failed: {last_line(folder / f'{name}.log.txt')}", file=sys.stderr, flush=True)
            continue
        result["backends"][name] = json.loads((folder / f"{name}.json").read_text())
    return result


def round_values(result: dict, name: str, config: str) -> dict | None:
    """One backend's figures in one round: medians of its clean windows; None if it failed or none was clean. A row
    that times no evaluation (the reference script) has eval None."""
    entry = result["backends"].get(name, {})
    cfg = next((c for c in entry.get("configs", []) if c["config"] == config), None)
    if cfg is None:
        return None
    clean = [w["examples_per_s"] for w in cfg["windows"] if is_clean(w) and w["finite"]]
    clean_eval = [e["samples_per_s"] for e in cfg["evals"] if is_clean(e)]
    if not clean or (cfg["evals"] and not clean_eval):
        return None
    return dict(train=float(np.median(clean)), eval=float(np.median(clean_eval)) if clean_eval else None,
                warmup=cfg["warmup_seconds"],
                train_flops=cfg["train_flops_per_example"], eval_flops=cfg["eval_flops_per_sample"],
                flagged=sum(not is_clean(w) for w in cfg["windows"]))


def round_peak(result: dict) -> tuple[float, str]:
    """The best GEMM rate any framework (or NumPy) reached in this round, and which."""
    best = (result["numpy_gemm"], "numpy 4096²")
    for name, entry in result["backends"].items():
        for cfg in entry.get("configs", []):
            for shape, rate in cfg["gemm"].items():
                best = max(best, (rate, f"{name} {shape.replace('square_4096', '4096²').replace('_', ' ')}"))
    return best


def versus(name: str, names: list[str], reference: str) -> str:
    """What a row's ratios are against: a variant that names another row's framework against that row (keras[jax]
    against jax: the same engine, written once in Keras or natively); every other row against the reference."""
    variant = None if name == reference_script.ROW else backends.variant_of(name)
    return variant if variant in names else reference


def summarize(rounds: list[dict], names: list[str], specs: list[Spec], reference: str) -> dict:
    summary = {"reference": reference, "configs": []}
    peaks = [round_peak(r) for r in rounds]
    for spec in specs:
        config = config_name(spec)
        entry = {"config": config, "backends": []}
        for name in names:
            per_round = [round_values(r, name, config) for r in rounds]
            ok = [(v, p) for v, p in zip(per_round, peaks, strict=True) if v]
            if not ok:
                entry["backends"].append(dict(backend=name, rounds_used=0, rounds_excluded=len(rounds)))
                continue
            train = bootstrap_interval([v["train"] for v, _ in ok])
            timed_eval = all(v["eval"] is not None for v, _ in ok)
            evals = bootstrap_interval([v["eval"] for v, _ in ok]) if timed_eval else None
            peak_share = bootstrap_interval([v["train"] * v["train_flops"] / p[0] for v, p in ok])
            eval_share = bootstrap_interval([v["eval"] * v["eval_flops"] / p[0] for v, p in ok]) if timed_eval else None
            row = dict(backend=name, rounds_used=len(ok), rounds_excluded=len(rounds) - len(ok),
                       train_examples_per_s=train, train_fraction_of_peak=peak_share, eval_samples_per_s=evals,
                       eval_fraction_of_peak=eval_share, warmup_s=float(np.median([v["warmup"] for v, _ in ok])),
                       windows_flagged=sum(v["flagged"] for v, _ in ok))
            other = versus(name, names, reference)
            if name != other:
                pairs = [(v, ref) for v, ref in zip(per_round, [round_values(r, other, config) for r in rounds],
                                                     strict=True) if v and ref]
                for what in ("train", "eval") if timed_eval else ("train",):
                    row[f"{what}_ratio"] = paired_ratio(pairs, what, other)
                row["warmup_ratio"] = bootstrap_interval([v["warmup"] / ref["warmup"] for v, ref in pairs])
            if name != reference_script.ROW and reference_script.ROW in names:
                script = [round_values(r, reference_script.ROW, config) for r in rounds]
                pairs = [(v, ref) for v, ref in zip(per_round, script, strict=True) if v and ref]
                if pairs:
                    row["train_ratio_to_script"] = paired_ratio(pairs, "train", reference_script.ROW)
            entry["backends"].append(row)
        summary["configs"].append(entry)
    summary["peaks"] = [dict(flop_per_s=p, by=by) for p, by in peaks]
    return summary


def paired_ratio(pairs: list[tuple[dict, dict]], what: str, versus_name: str) -> dict:
    """A row's figure over another's, measured within each round; median and 95% bootstrap interval over rounds."""
    ratios = [v[what] / ref[what] for v, ref in pairs]
    ratio, low, high = bootstrap_interval(ratios)
    return dict(versus=versus_name, ratio=ratio, low=low, high=high, rounds=len(ratios),
                differs=excludes_zero(low - 1, high - 1))


def interval(v: tuple[float, float, float], scale: float = 1.0, digits: int = 0, unit: str = "") -> str:
    mid, low, high = (x * scale for x in v)
    if not np.isfinite(low):
        return f"{mid:,.{digits}f}{unit}"
    return f"{mid:,.{digits}f}{unit} [{low:,.{digits}f}, {high:,.{digits}f}]"


def ratio_text(r: dict | None) -> str:
    if not r:
        return "reference"
    text = f"{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}] vs {r['versus']}"
    return text + ("" if r["differs"] else " (not distinguishable)")


def markdown(bench: dict) -> str:
    s = bench["summary"]
    peaks = [p["flop_per_s"] for p in s["peaks"]]
    best_by = max(s["peaks"], key=lambda p: p["flop_per_s"])["by"]
    prov = bench["provenance"]
    state = "a clean tree" if prov["clean"] else "**uncommitted changes**"
    lines = [f"# {bench['run']}", "", f"Made from commit `{prov['commit']}`, {state}, on {bench['created'][:10]}.", "",
             "```", bench["command"], "```", "",
             f"{bench['rounds']} rounds; in each, every backend in a fresh process, the order rotated between rounds; "
             f"{bench['windows']} training windows of {bench['window_steps']} steps (batch {bench['batch_size']}, "
             f"{bench['specs'][0]['activation']}, {bench['specs'][0]['optimizer']}) "
             f"and 3 evaluation passes ({bench['eval_examples']} test examples x K = {bench['eval_k']}) per "
             "configuration. Each figure: the median over rounds of the round's median over clean windows, with "
             "its 95% bootstrap interval over rounds. Ratio: measured within each round against "
             f"{s['reference']} (a Keras row against the native backend of its engine), median and 95% interval over "
             "rounds; where the interval includes 1 the two are not distinguishable here. % of peak: against the "
             "best float32 GEMM any framework or NumPy reached in the same round (these ranged over "
             f"{min(peaks) / 1e9:.0f}–{max(peaks) / 1e9:.0f} GFLOP/s; best by {best_by}). Windows during which "
             "other processes used more than 10% of the machine are left out (flagged).", "",
             "| configuration | backend | train ex/s [95%] | vs reference [95%] | % of peak | warm-up s | "
             "eval samples/s [95%] | eval vs reference [95%] | eval % of peak | rounds used | windows flagged |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in s["configs"]:
        for row in entry["backends"]:
            if not row.get("rounds_used"):
                lines.append(f"| {entry['config']} | {row['backend']} | failed or no clean round | | | | | | | 0 | |")
                continue
            timed_eval = row["eval_samples_per_s"] is not None
            lines.append(
                f"| {entry['config']} | {row['backend']} | {interval(row['train_examples_per_s'])} | "
                f"{ratio_text(row.get('train_ratio'))} | {interval(row['train_fraction_of_peak'], 100, 0, '%')} | "
                f"{row['warmup_s']:.1f} | {interval(row['eval_samples_per_s']) if timed_eval else '—'} | "
                f"{ratio_text(row.get('eval_ratio')) if timed_eval else '—'} | "
                f"{interval(row['eval_fraction_of_peak'], 100, 0, '%') if timed_eval else '—'} | "
                f"{row['rounds_used']} | {row['windows_flagged']} |")
    lines += script_section(bench)
    env = bench["environment"]
    lines += ["", f"Machine: {env['cpu']}, {env['cpu_count']} cores, accelerators: {', '.join(env['gpus'])}; "
              f"threads: {env.get('threads') or 'library defaults'}."]
    return "\n".join(lines) + "\n"


def script_section(bench: dict) -> list[str]:
    """The rows against the reference project's script, where the bench timed it."""
    if not bench.get("reference_script"):
        return []
    lines = ["", f"Against the reference project's script (`{reference_script.ROW}`: "
             f"`{bench['reference_script']['command']}`, unmodified, from its commit "
             f"`{(bench['reference_script']['commit'] or 'unknown')[:12]}`), in the same rounds: every row's training "
             f"examples/s over the script's, median and 95% interval over rounds. The script times "
             f"{bench['script_window_steps']}-step windows with its own clock; each also holds one pass of its "
             "validation evaluation with 1 sample.", "",
             "| configuration | backend | train ex/s ÷ reference script [95%] |", "|---|---|---|"]
    for entry in bench["summary"]["configs"]:
        for row in entry["backends"]:
            if row.get("train_ratio_to_script"):
                r = row["train_ratio_to_script"]
                lines.append(f"| {entry['config']} | {row['backend']} | x{r['ratio']:.2f} [{r['low']:.2f}, "
                             f"{r['high']:.2f}]{'' if r['differs'] else ' (not distinguishable)'} |")
    return lines


def main(argv: list[str], usage_error: type[Exception]) -> int:
    from runner import provenance
    from runner.launch import child_environment

    args = parser().parse_args(argv)
    try:
        names = [row for n in args.backends.split(",") if n.strip() for row in backends.expand(n)]
        specs = configurations(args)
    except ValueError as e:
        raise usage_error(str(e)) from e
    if "numpy" in names:
        raise usage_error("bench times the framework backends; the numpy reference is float64 only")
    if args.rounds < 2 or args.windows < 2:
        raise usage_error("bench needs at least 2 rounds and 2 windows for an interval")
    if args.reference_script:
        problem = reference_script.check_script(args.reference_script)
        if problem:
            raise usage_error(problem)
        if not any(reference_script.matches(s) for s in specs):
            raise usage_error("--reference-script: no configuration has the script's architecture (mean-field, two "
                              f"hidden layers of 2L = {2 * args.latent_size}); add it to --hidden-sizes")
        if args.script_window_steps < 1:
            raise usage_error("--script-window-steps must be at least 1")
    if args.out.exists() and any(args.out.iterdir()):
        raise usage_error(f"{args.out} already exists; give a new folder to --out")
    reference = backends.canonical_name(args.reference) if args.reference else names[0]
    if reference not in names:
        raise usage_error(f"--reference {reference} is not among --backends")
    missing = [n for n in names if not backends.installed(n)]
    if missing:
        raise usage_error(f"not installed: {', '.join(missing)} (pip install {backends.framework(missing[0]).install})")
    started = datetime.datetime.now().astimezone()
    state = provenance.commit_state()
    script = None
    if args.reference_script:
        names.append(reference_script.ROW)
        script = reference_script.provenance(args.reference_script,
                                             next(s for s in specs if reference_script.matches(s)),
                                             args.windows, args.script_window_steps)
    args.out.mkdir(parents=True)
    env = child_environment("numpy", specs[0], args.out)
    rounds = []
    for r in range(args.rounds):
        rounds.append(run_round(r, names, specs, args, env))
        (args.out / "rounds.json").write_text(json.dumps(rounds, indent=2) + "\n")  # a stop keeps finished rounds
    bench = dict(run=args.out.name, command="python compare.py bench " + shlex.join(argv),
                 created=started.isoformat(timespec="seconds"), provenance=state,
                 environment=provenance.environment(), rounds=args.rounds, windows=args.windows,
                 window_steps=args.window_steps, batch_size=args.batch_size, eval_k=args.eval_k,
                 eval_examples=args.eval_examples, specs=[s.to_dict() for s in specs], reference_script=script,
                 script_window_steps=args.script_window_steps if script else None,
                 summary=summarize(rounds, names, specs, reference), raw="rounds.json")
    (args.out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown(bench))
    shutil.rmtree(args.out / ".cache", ignore_errors=True)  # the frameworks' compile caches: done with
    print(markdown(bench))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
