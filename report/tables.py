"""results.json -> results.md, results.csv and the printed table. Re-runnable alone:
`python compare.py report results/<run>` rebuilds everything here from the run's folder."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from report.runs import run_peak

COLUMNS = ["family", "backend", "test ELBO", "test log p(x)", "Δ log p(x) (paired)", "active units",
           "train ex/s", "train % peak", "outside load", "warm-up s", "eval samples/s", "eval % peak", "wall s",
           "status"]
DEVICE_COLUMNS = ["devices", "train ex/s per device"]  # shown after "train ex/s" when a run used several


def models(results: dict) -> list[str]:
    """The model families of a run, in order (runs from before --model: the VAE)."""
    return list(dict.fromkeys(run.get("model", "vae") for run in results["runs"])) or ["vae"]


def model_runs(results: dict, model: str) -> list[dict]:
    return [run for run in results["runs"] if run.get("model", "vae") == model]


def metric(model: str) -> str:
    from common.models import FAMILIES

    return FAMILIES[model].METRIC if model in FAMILIES else "log p(x)"


def extra_columns(runs: list[dict]) -> list[str]:
    """The figures a family adds to its table (common/models/<family>.py: extra_metrics), in order."""
    return list(dict.fromkeys(key for run in runs for key in (run.get("extra") or {})))


def columns(results: dict, model: str | None = None) -> list[str]:
    runs = model_runs(results, model) if model else results["runs"]
    names = list(COLUMNS)
    if model and model != "vae":
        names.remove("active units")
    if any(run.get("spec", {}).get("devices", 1) > 1 for run in runs):
        at = names.index("train ex/s") + 1
        names = names[:at] + DEVICE_COLUMNS + names[at:]
    at = names.index("Δ log p(x) (paired)") + 1
    return names[:at] + extra_columns(runs) + names[at:]


def header(name: str, model: str | None, split: str = "test") -> str:
    """A column's name as printed: log p(x) is what the model's evaluation estimates (log p(y|x) for the CVAE),
    and "test" the split evaluated (`compare.py evaluate --split train` fills the columns with training images)."""
    if name.startswith("test "):
        name = f"{split} {name[len('test '):]}"
    return name.replace("log p(x)", metric(model)) if model else name


def pm(mean: float, se: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def number(x: float | None, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def family_label(run: dict) -> str:
    spec = run.get("spec", {})
    return run["family"] if spec.get("model", "vae") == "vae" else spec["model"]


def percent_of_peak(flop_per_s: float, results: dict) -> str:
    peak = run_peak(results)
    return f"{100 * flop_per_s / peak['flop_per_s']:.0f}%" if peak else "–"


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    return "–" if value is None else str(value)


def rows(results: dict, model: str | None = None) -> list[dict[str, str]]:
    paired = {(p["family"], p.get("seed"), p["backend"]): p for p in results.get("paired", [])}
    out = []
    for run in (model_runs(results, model) if model else results["runs"]):
        row = dict.fromkeys(COLUMNS + DEVICE_COLUMNS + extra_columns([run]), "–")
        backend = run["backend"] + (f" (seed {run['seed']})" if results.get("seeds", 1) > 1 else "")
        row.update(family=family_label(run), backend=backend, status=run["status"])
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
            if run.get("active_units"):
                row["active units"] = f"{run['active_units']['count']} / {run['active_units']['of']}"
            row.update({k: cell(v) for k, v in (run.get("extra") or {}).items()})
            if "timing" in run:  # a training run; `compare.py evaluate` results have test figures only
                timing, flops = run["timing"], run["flops"]
                outside = timing.get("outside_load_median")
                row.update({
                    "train ex/s": number(timing["examples_per_s"]),
                    "devices": str(timing.get("devices", 1)),
                    "train ex/s per device": number(timing.get("examples_per_s_per_device")),
                    "train % peak": percent_of_peak(flops["train_flop_per_s"], results),
                    "eval % peak": percent_of_peak(test["samples_per_s"] * flops["eval_per_sample"], results),
                    "warm-up s": number(timing["warmup_s"], 1),
                    "outside load": (f"{100 * outside:.0f}%" if outside is not None else "–")
                                    + (" (all windows)" if timing.get("all_windows_contaminated") else ""),
                    "wall s": number(timing["wall_seconds"], 0),
                })
        else:
            row["status"] = f"{run['status']}: {run.get('error', '')}" + (
                f" (log: {run['log']})" if run.get("log") else "")
        out.append(row)
    return out


def label(model: str) -> str:
    from common.models import FAMILIES

    return FAMILIES[model].LABEL if model in FAMILIES else model


def text_table(results: dict) -> str:
    """One table per model family, each headed by its name when there are several."""
    blocks = []
    for model in models(results):
        table, names = rows(results, model), columns(results, model)
        shown = {c: header(c, model, results.get("split", "test")) for c in names}
        widths = {c: max(len(shown[c]), *(len(r.get(c, "–")) for r in table)) for c in names}
        lines = [f"== {label(model)} =="] if len(models(results)) > 1 else []
        lines.append("  ".join(shown[c].ljust(widths[c]) for c in names))
        lines.append("  ".join("-" * widths[c] for c in names))
        lines += ["  ".join(r.get(c, "–").ljust(widths[c]) for c in names) for r in table]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def markdown_table(results: dict, model: str | None = None) -> str:
    """The table of one model family (default: the run's first)."""
    model = model or models(results)[0]
    names = columns(results, model)

    def escaped(text: str) -> str:  # a | inside a cell, as in log p(y|x), would end the cell
        return text.replace("|", "\\|")

    split = results.get("split", "test")
    lines = ["| " + " | ".join(escaped(header(c, model, split)) for c in names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(escaped(r.get(c, "–")) for c in names) + " |" for r in rows(results, model)]
    return "\n".join(lines)


def markdown_tables(results: dict) -> list[str]:
    if len(models(results)) == 1:
        return [markdown_table(results), ""]
    out = []
    for model in models(results):
        out += [f"### {label(model)}", "", markdown_table(results, model), ""]
    return out


def provenance_lines(results: dict) -> list[str]:
    """The first lines of every results.md: the commit the run started from and whether the tree was clean."""
    prov = results.get("provenance", {})
    commit = prov.get("commit", "unknown")
    if prov.get("clean"):
        lines = [f"Made from commit `{commit}`, a clean tree, on {results['created'][:10]}."]
    else:
        changed = ", ".join(prov.get("changed_files", [])[:5]) or "unknown files"
        lines = [f"**Made from commit `{commit}` with uncommitted changes** ({changed}): these figures are not "
                 f"reproducible from a commit."]
    return lines + resume_lines(results)


def machines(results: dict) -> list[str]:
    """The CPUs a run trained on, in order: where it started, where each resume ran, where it ended."""
    envs = [results.get("environment_at_start"), *results.get("provenance", {}).get("resumes", []),
            results.get("environment")]
    return list(dict.fromkeys(f"{e['cpu']}, {e['cpu_count']} cores" for e in envs if e))


def resume_lines(results: dict) -> list[str]:
    """What a resumed run says of its continuations: each one's date, commit and machine; in bold, any commit
    other than the one it started from, uncommitted changes, or a machine other than the first."""
    prov = results.get("provenance", {})
    resumes = prov.get("resumes", [])
    if not resumes:
        return []
    each = "; ".join(f"{r['started'][:16].replace('T', ' ')} from commit `{r['commit']}`"
                     f"{'' if r['clean'] else ' with uncommitted changes'} on {r['cpu']}, {r['cpu_count']} cores"
                     for r in resumes)
    lines = [f"Resumed {len(resumes)} time{'s' if len(resumes) > 1 else ''}: {each}."]
    if any(r["commit"] != prov.get("commit") or not r["clean"] for r in resumes):
        lines.append("**Part of this run ran from other code than the commit it started from** (the commits "
                     "above): `git diff` between them shows what differed.")
    if len(machines(results)) > 1:
        lines.append(f"**It trained on more than one machine** ({'; '.join(machines(results))}): its training "
                     "time and throughput mix them.")
    return lines


def seeds_markdown(results: dict) -> list[str]:
    summary = results.get("across_seeds")
    if not summary:
        return []
    lines = ["## Across seeds", "",
             f"Mean over {results['seeds']} seeds with its 95% t-interval (training spread: each seed has its own "
             "initial parameters, batch order and noise); Δ: the per-seed difference from the first backend, "
             "averaged over seeds, with its 95% t-interval.", "",
             "| family | backend | seeds | test log p(x) | 95% interval | Δ vs first backend | 95% interval | "
             "train ex/s |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        diff = s.get("diff")
        diff_text = (f"{diff['mean']:+.2f} vs {diff['versus']} | [{diff['low']:+.2f}, {diff['high']:+.2f}]"
                     if diff else "– | –")
        lines.append(f"| {s['family']} | {s['backend']} | {s['n']} | {s['log_px_mean']:.2f} | "
                     f"[{s['log_px_low']:.2f}, {s['log_px_high']:.2f}] | {diff_text} | "
                     f"{number(s['examples_per_s_mean'])} |")
    return lines + [""]


FIGURE_CAPTIONS = {
    "learning_curves.png": "Learning curves: validation ELBO and log p(x), and the training objective, "
                           "against step and against training wall-clock seconds",
    "throughput.png": "Training throughput (single pass), with the fraction of the run's measured peak",
    "samples.png": "Samples from the prior",
    "reconstructions.png": "Reconstructions of test digits",
    "interpolation.png": "Interpolation between two test digits in latent space",
    "inpainting.png": "Inpainting: bottom halves from top halves",
    "manifold.png": "The learned 2-D latent manifold",
}


def caption(name: str) -> str:
    """A figure's caption: the VAE's and the run's own here, a family's in its report module (CAPTIONS)."""
    import importlib

    from report.figures import FAMILY_FIGURES

    captions = dict(FIGURE_CAPTIONS)
    for module in FAMILY_FIGURES.values():
        captions |= getattr(importlib.import_module(module), "CAPTIONS", {})
    if name.startswith("learning_curves-"):
        return f"{FIGURE_CAPTIONS['learning_curves.png']}: {label(name[16:-4])}"
    return captions.get(name, name)


def figures_markdown(figures: list[str]) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", "",
             "Images are drawn from each backend's best-validation parameters with the NumPy reference model "
             "and one fixed seed, so the same z's and noise are used for every backend.", ""]
    for name in figures:
        lines += [f"**{caption(name)}**", "", f"![{name}]({name})", ""]
    return lines


def setting_text(results: dict) -> str:
    """One line per model family of the run: its architecture, objective, optimizer and protocol."""
    from common.spec import Spec

    lines = []
    for spec_dict in results.get("model_specs") or [results["spec"]]:
        spec = Spec.from_dict(spec_dict)
        subsets = f"{spec.valid_examples:,} validation examples every {spec.eval_every:,} steps; " \
                  f"best-validation parameters on {spec.test_examples:,} test examples with K = {spec.eval_k}"
        devices = (f" Data-parallel over {spec.devices} devices (the batch split evenly; the gradient is the whole "
                   "batch's)." if spec.devices > 1 else "")
        name = f"{label(spec.model)}: " if results.get("model_specs") and len(results["model_specs"]) > 1 else ""
        lines.append(f"{name}{spec.describe()}; {spec.steps:,} steps, {spec.dtype}, seed {spec.seed}; "
                     f"{subsets}.{devices}")
    return "\n\n".join(lines)


def markdown(results: dict, figures: list[str] | None = None) -> str:
    env = results["environment"]
    peak = run_peak(results)
    versions = sorted({f"{k} {v}" for run in results["runs"] for k, v in run.get("versions", {}).items()})
    window = next((r["timing"]["window_steps"] for r in results["runs"] if "timing" in r), "–")
    return "\n".join([
        f"# {results['run']}", "",
        *provenance_lines(results), "",
        "```", results["command"], "```", "",
        setting_text(results), "",
        *markdown_tables(results),
        "Test ELBO and log p(x) in nats, mean ± standard error over test examples; Δ is the per-example difference "
        "from the first backend of the same family and seed on the same test images, ± its standard error "
        "(evaluation noise only). Active units: latent units whose posterior mean varies over the test set "
        "(Burda et al.: Cov > 0.01). Throughput here is **single pass**: each backend ran once, in turn, so the "
        "column is not a ranking (`compare.py bench` measures that, interleaved and replicated). Train ex/s: "
        f"median over the run's {window}-step timing windows after the first, leaving out windows during which "
        "other processes used over 10% of the machine (outside load: the median share they used); warm-up: the "
        "first window's time beyond steady state. % peak: the model's matmul FLOPs at that rate over the best "
        f"float32 GEMM rate measured in this run ({peak_text(peak)}).", "",
        f"Machine: {env['cpu']}, {env['cpu_count']} cores, accelerators: {', '.join(env.get('gpus', ['none']))}; "
        f"{env['platform']}. Threads: {env.get('threads') or 'library defaults'}.", "",
        "Versions: " + ", ".join(versions) + ".", "",
        *seeds_markdown(results),
        *figures_markdown(figures or []),
    ])


def peak_text(peak: dict | None) -> str:
    if not peak:
        return "not measured"
    shape = "large square GEMM" if peak["shape"].startswith("square") else "GEMM at the model's shape"
    return f"{peak['flop_per_s'] / 1e9:.0f} GFLOP/s, {peak['by']}'s {shape}"


def write_csv(results: dict, path: Path) -> None:
    """Every model's rows in one file: the columns of all of them, a "model" column first."""
    names = ["model", *dict.fromkeys(c for m in models(results) for c in columns(results, m))]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names, extrasaction="ignore", restval="–")
        writer.writeheader()
        for model in models(results):
            writer.writerows({"model": model} | r for r in rows(results, model))


def write_all(run_dir: Path, results: dict, test_x=None) -> list[str]:
    """results.json, then everything generated from it (test_x: test images for the image figures)."""
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return regenerate(run_dir, test_x)


def regenerate(run_dir: Path, test_x=None) -> list[str]:
    """The tables and figures of run_dir from its results.json; returns the figures written."""
    from report import figures

    results = json.loads((run_dir / "results.json").read_text())
    written = figures.save_all(run_dir, results, test_x)
    (run_dir / "results.md").write_text(markdown(results, written) + "\n")
    write_csv(results, run_dir / "results.csv")
    return written
