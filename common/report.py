"""results.json -> results.md, results.csv, the figures and the printed table. Re-runnable alone:
`python compare.py report results/<run>` rebuilds everything here from the run's folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

COLUMNS = ["family", "backend", "test ELBO", "test log p(x)", "Δ log p(x) (paired)",
           "train ex/s", "train % peak", "CPU steal", "warm-up s", "eval samples/s", "eval % peak", "wall s", "status"]
DEVICE_COLUMNS = ["devices", "train ex/s per device"]  # shown after "train ex/s" when a run used several


def columns(results: dict) -> list[str]:
    if not any(run.get("spec", {}).get("devices", 1) > 1 for run in results["runs"]):
        return COLUMNS
    at = COLUMNS.index("train ex/s") + 1
    return COLUMNS[:at] + DEVICE_COLUMNS + COLUMNS[at:]


def pm(mean: float, se: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def number(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def percent_of_peak(flop_per_s: float, results: dict) -> str:
    peak = results.get("peak", {}).get("square_4096_flop_per_s")
    return f"{100 * flop_per_s / peak:.0f}%" if peak else "–"


def rows(results: dict) -> list[dict[str, str]]:
    paired = {(p["family"], p.get("seed"), p["backend"]): p for p in results.get("paired", [])}
    out = []
    for run in results["runs"]:
        row = dict.fromkeys(COLUMNS + DEVICE_COLUMNS, "–")
        backend = run["backend"] + (f" (seed {run['seed']})" if results.get("seeds", 1) > 1 else "")
        row.update(family=run["family"], backend=backend, status=run["status"])
        if run["status"] == "ok":
            test = run["test"]
            p = paired.get((run["family"], run.get("seed"), run["backend"]))
            row.update({
                "test ELBO": pm(test["elbo"], test["elbo_se"]),
                "test log p(x)": pm(test["log_px"], test["log_px_se"]),
                "Δ log p(x) (paired)": (pm(p["log_px_diff"], p["log_px_diff_se"]) + f" vs {p['versus']}"
                                        if p else "reference"),
                "eval samples/s": number(test["samples_per_s"]),
            })
            if "timing" in run:  # a training run; `compare.py evaluate` results have test figures only
                timing, flops = run["timing"], run["flops"]
                row.update({
                    "train ex/s": number(timing["examples_per_s"]),
                    "devices": str(timing.get("devices", 1)),  # runs from before --devices: one device
                    "train ex/s per device": number(timing.get("examples_per_s_per_device",
                                                               timing["examples_per_s"])),
                    "train % peak": percent_of_peak(flops["train_flop_per_s"], results),
                    "eval % peak": percent_of_peak(test["samples_per_s"] * flops["eval_per_sample"], results),
                    "warm-up s": number(timing["warmup_s"], 1),
                    "CPU steal": (f"{100 * timing['cpu_steal_fraction']:.0f}%"
                                  if timing.get("cpu_steal_fraction") is not None else "–"),
                    "wall s": number(timing["wall_seconds"], 0),
                })
        else:
            row["status"] = f"{run['status']}: {run.get('error', '')}" + (
                f" (log: {run['log']})" if run.get("log") else "")
        out.append(row)
    return out


def run_folder(run_dir: Path, run: dict) -> Path:
    """Where a backend and family wrote its files (results from before --seeds lack "folder")."""
    return run_dir / run.get("folder", f"{run['backend']}-{run['family']}")


def text_table(results: dict) -> str:
    table, names = rows(results), columns(results)
    widths = {c: max(len(c), *(len(r[c]) for r in table)) for c in names}
    lines = ["  ".join(c.ljust(widths[c]) for c in names)]
    lines.append("  ".join("-" * widths[c] for c in names))
    lines += ["  ".join(r[c].ljust(widths[c]) for c in names) for r in table]
    return "\n".join(lines)


def markdown_table(results: dict) -> str:
    names = columns(results)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(r[c] for c in names) + " |" for r in rows(results)]
    return "\n".join(lines)


FIGURE_CAPTIONS = {
    "learning_curves.png": "Learning curves: validation ELBO and log p(x), and the training ELBO, "
                           "against step and against training wall-clock seconds",
    "throughput.png": "Training throughput, with the fraction of the machine's matmul peak",
    "samples.png": "Samples from the prior",
    "reconstructions.png": "Reconstructions of test digits",
    "interpolation.png": "Interpolation between two test digits in latent space",
    "inpainting.png": "Inpainting: bottom halves from top halves",
    "manifold.png": "The learned 2-D latent manifold",
}


def figures_markdown(figures: list[str]) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", "",
             "Images are drawn from each backend's best-validation parameters with the NumPy reference model "
             "and one fixed seed, so the same z's and noise are used for every backend.", ""]
    for name in figures:
        lines += [f"**{FIGURE_CAPTIONS.get(name, name)}**", "", f"![{name}]({name})", ""]
    return lines


def seeds_markdown(results: dict) -> list[str]:
    summary = results.get("across_seeds")
    if not summary:
        return []
    lines = ["## Across seeds", "", f"Mean ± standard deviation over {results['seeds']} seeds "
             "(each seed: its own initial parameters, batch order and noise).", "",
             "| family | backend | seeds | test ELBO | test log p(x) | train ex/s |", "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['family']} | {s['backend']} | {s['n']} | {pm(s['elbo_mean'], s['elbo_std'])} | "
                     f"{pm(s['log_px_mean'], s['log_px_std'])} | {number(s['examples_per_s_mean'])} |")
    return lines + [""]


def markdown(results: dict, figures: list[str] | None = None) -> str:
    spec, env = results["spec"], results["environment"]
    setting = (f"H = {spec['hidden_size']}, L = {spec['latent_size']}, batch {spec['batch_size']}, "
               f"{spec['steps']:,} steps, centered RMSprop lr {spec['learning_rate']}, "
               f"{spec['dtype']}, seed {spec['seed']}; validation every {spec['eval_every']:,} steps on "
               f"{spec['valid_examples']:,} examples; best-validation parameters on "
               f"{spec['test_examples']:,} test examples with K = {spec['eval_k']}."
               + (f" Data-parallel over {spec['devices']} devices (the batch of {spec['batch_size']} split "
                  "evenly; the gradient is the whole batch's)." if spec.get("devices", 1) > 1 else ""))
    versions = sorted({f"{k} {v}" for run in results["runs"] for k, v in run.get("versions", {}).items()})
    return "\n".join([
        f"# {results['run']}", "",
        "```", results["command"], "```", "",
        setting, "",
        markdown_table(results), "",
        "Test ELBO and log p(x) in nats, mean ± standard error over test examples; Δ is the "
        "per-example difference from the first backend of the same family on the same test "
        "images, ± its standard error. Train ex/s: median over timing windows of "
        f"{next((r['timing']['window_steps'] for r in results['runs'] if 'timing' in r), '–')} steps after the first; "
        "warm-up: the first window's time beyond steady state (compilation). % peak: the model's "
        "matmul FLOPs (common/metrics.py) at that rate over this machine's float32 peak, measured at "
        f"the start of the run: {peak_text(results)}. CPU steal: the median share of CPU time the "
        "hypervisor gave to other machines during the timing windows (/proc/stat); where it is high, "
        "the throughput figures understate the backend.", "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, {env['platform']}. "
        f"Date {results['created']}, commit {env['git_commit']}.", "",
        "Versions: " + ", ".join(versions) + ".", "",
        *seeds_markdown(results),
        *figures_markdown(figures or []),
    ])


def peak_text(results: dict) -> str:
    p = results.get("peak")
    if not p:
        return "not measured"
    return (f"{p['square_4096_flop_per_s'] / 1e9:.0f} GFLOP/s for a 4096² GEMM, "
            f"{p['model_shapes_flop_per_s'] / 1e9:.0f} GFLOP/s for the model's GEMMs at its batch size "
            f"({p['library']})")


def preset_of(results: dict) -> str:
    if results.get("preset"):
        return results["preset"]
    words = results["command"].split()
    return words[words.index("--preset") + 1] if "--preset" in words else "quick"


def headline(results: dict) -> str:
    parts = []
    for family in results.get("families", []):
        ok = [r for r in results["runs"] if r["family"] == family and r["status"] == "ok"]
        if ok:
            parts.append(f"{family}: " + ", ".join(f"{r['backend']} {r['test']['log_px']:.2f}" for r in ok))
    return "; ".join(parts)


def write_index(results_root: Path) -> None:
    """results/README.md: every run folder under results_root, newest first."""
    entries = []
    for path in sorted(results_root.glob("*/results.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        backends = ", ".join(dict.fromkeys(run["backend"] for run in r["runs"]))
        machine = f"{r['environment']['cpu']}, {r['environment']['cpu_count']} cores"
        spec = r["spec"]
        entries.append((r["created"], f"| {r['created'][:10]} | [{path.parent.name}]({path.parent.name}/results.md) | "
                        f"{preset_of(r)} ({spec['steps']:,} steps, K = {spec['eval_k']}, L = {spec['latent_size']}) | "
                        f"{backends} | {', '.join(r.get('families', []))} | {machine} | {headline(r)} |"))
    lines = ["# Results", "",
             "Every committed run, newest first; generated by compare.py (`python compare.py report results/<run>` "
             "rebuilds a run's tables and figures and this index). Headline: test log p(x) in nats per backend.",
             "", "| date | run | preset | backends | families | machine | test log p(x) |",
             "|---|---|---|---|---|---|---|"]
    lines += [row for _, row in sorted(entries, reverse=True)]
    benches = sorted(results_root.glob("benchmarks/*/summary.md"))
    if benches:
        lines += ["", "## Benchmarks (pytest-benchmark, `bash benchmarks/run.sh`)", ""]
        lines += [f"- [{b.parent.name}](benchmarks/{b.parent.name}/summary.md)" for b in benches]
    (results_root / "README.md").write_text("\n".join(lines) + "\n")


def write_csv(results: dict, path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(results), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows(results))


def write_all(run_dir: Path, results: dict, test_x=None) -> None:
    """results.json, then everything generated from it (test_x: test images for the image figures)."""
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
    regenerate(run_dir, test_x)


def regenerate(run_dir: Path, test_x=None) -> dict:
    from common import figures

    results = json.loads((run_dir / "results.json").read_text())
    written = figures.save_all(run_dir, results, test_x)
    (run_dir / "results.md").write_text(markdown(results, written))
    write_csv(results, run_dir / "results.csv")
    return results
