"""README.md's numbers, generated from results: every table or sentence that carries a figure sits between
markers and is rebuilt from a results.json (or bench.json) by `python compare.py report --readme`;
tests/test_readme.py fails when README.md and the results disagree.

    <!-- generated: KIND results/<run> -->
    ...
    <!-- end generated -->

A claim that one backend is better or faster than another is written only when its interval excludes
zero (or 1, for a ratio), and says which interval it is: paired over test examples within a seed
(evaluation noise), across seeds (training spread), or across timing rounds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from report.runs import run_folder, run_peak
from report.tables import machines, markdown_table, number

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- generated: (\S+) (\S+) -->\n)(.*?)(<!-- end generated -->)", re.S)
# published numbers the README sets ours beside (source in the README's text next to each table)
REFERENCE_PROJECT = {"mean-field": ("−100.31", "PyTorch, 30,000 steps"), "iaf": ("−97.62", "JAX, 30,000 steps")}
REFERENCE_STEPS = 30_000


def load(path: str, name: str) -> dict:
    return json.loads((ROOT / path / name).read_text())


def signed(x: float, digits: int = 2) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


def interval(diff: float, se: float) -> str:
    """A difference with its 95% interval (± 1.96 standard errors), as README writes it: +0.12 [−0.03, +0.27]."""
    return f"{signed(diff)} [{signed(diff - 1.96 * se)}, {signed(diff + 1.96 * se)}]"


def run_table(path: str) -> str:
    """A run's whole table, as in its results.md (of a run of several models: its first model's)."""
    return markdown_table(load(path, "results.json"))


def model_table(path: str) -> str:
    """One model's table from a run of several: path is results/<run>#<model>, e.g. results/quick-cpu-models#fa."""
    folder, _, model = path.partition("#")
    return markdown_table(load(folder, "results.json"), model)


def headline(path: str) -> str:
    """A multi-seed run: per family and backend the mean over seeds with its 95% t-interval, the difference from
    the first backend with its interval, and what may be said of it. The reference project's numbers are set
    beside it only for a run of its length (30,000 steps): a shorter run is not comparable with them."""
    results = load(path, "results.json")
    with_reference = results["spec"]["steps"] == REFERENCE_STEPS
    lines = ["| family | backend | seeds | test log p(x), mean over seeds [95% interval] | Δ vs "
             "first backend [95% interval] | train ex/s (single pass) |" + (" reference project |" if with_reference
                                                                           else ""),
             "|---|---|---|---|---|---|" + ("---|" if with_reference else "")]
    claims = []
    for s in results["across_seeds"]:
        diff = s.get("diff")
        diff_text = f"{signed(diff['mean'])} [{signed(diff['low'])}, {signed(diff['high'])}]" if diff else "–"
        ref = REFERENCE_PROJECT.get(s["family"], ("–", ""))
        lines.append(f"| {s['family']} | {s['backend']} | {s['n']} | **{s['log_px_mean']:.2f}** "
                     f"[{s['log_px_low']:.2f}, {s['log_px_high']:.2f}] | {diff_text} | "
                     f"{number(s['examples_per_s_mean'])} |" + (f" {ref[0]} ({ref[1]}) |" if with_reference else ""))
        if diff:
            if diff["low"] > 0 or diff["high"] < 0:
                better = s["backend"] if diff["mean"] > 0 else diff["versus"]
                claims.append(f"{s['family']}: {better} is ahead of the other by {abs(diff['mean']):.2f} nats, an "
                              "interval across seeds that excludes zero (training spread)")
            else:
                claims.append(f"{s['family']}: {s['backend']} and {diff['versus']} are not distinguishable (their "
                              "difference's 95% interval across seeds includes zero)")
    if with_reference:
        claims += reference_claims(results["across_seeds"])
    return "\n".join(lines) + "\n\n" + "; ".join(claims) + "."


def reference_claims(across_seeds: list[dict]) -> list[str]:
    """Per family, where the reference project's one published number falls against each backend's interval across
    seeds (a single run of theirs: its own seed spread is unknown, so only an interval that excludes it counts)."""
    claims = []
    for family, (published, _) in REFERENCE_PROJECT.items():
        value = float(published.replace("−", "-"))
        rows = [s for s in across_seeds if s["family"] == family]
        # where the published number lies against each backend's interval
        place = {"below": [s["backend"] for s in rows if s["log_px_low"] > value],
                 "above": [s["backend"] for s in rows if s["log_px_high"] < value]}
        place["inside"] = [s["backend"] for s in rows if s["backend"] not in place["below"] + place["above"]]
        for where, names in place.items():
            if names:
                claims.append(f"{family}: the reference project's {published} (one run, its seed spread not "
                              f"published) lies {where} the interval across seeds of {', '.join(names)}")
    return claims


def bench(path: str) -> str:
    """The interleaved timing table: medians over rounds with intervals, within-round ratios (and, where the bench
    timed the reference project's script, every row's ratio to it)."""
    b = load(path, "bench.json")
    s = b["summary"]
    script = b.get("reference_script")
    lines = [f"| configuration | backend | train ex/s [95%] | ÷ {s['reference']} [95%] | % of peak | warm-up s | "
             f"eval samples/s [95%] | ÷ {s['reference']} [95%] |" + (" ÷ reference script [95%] |" if script else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if script else "")]
    claims = []
    for entry in s["configs"]:
        for row in entry["backends"]:
            if not row.get("rounds_used"):
                continue
            t, e = row["train_examples_per_s"], row["eval_samples_per_s"]
            ratio, to_script = row.get("train_ratio"), row.get("train_ratio_to_script")
            evals = f"{e[0]:,.0f} [{e[1]:,.0f}, {e[2]:,.0f}] | {ratio_text(row.get('eval_ratio'), s['reference'])}" \
                if e else "— | —"
            lines.append(f"| {entry['config']} | {row['backend']} | {t[0]:,.0f} [{t[1]:,.0f}, {t[2]:,.0f}] | "
                         f"{ratio_text(ratio, s['reference'])} | {100 * row['train_fraction_of_peak'][0]:.0f}% | "
                         f"{row['warmup_s']:.1f} | {evals} |"
                         + ((f" {ratio_text(to_script)} |" if to_script else " |") if script else ""))
            for r in (ratio, to_script):
                if r and r["differs"]:
                    word = "faster" if r["ratio"] > 1 else "slower"
                    claims.append(f"{entry['config']}: {row['backend']} trains {word} than {r['versus']} "
                                  f"(×{r['ratio']:.2f}, 95% interval over {r['rounds']} rounds "
                                  f"[{r['low']:.2f}, {r['high']:.2f}])")
    peaks = [p["flop_per_s"] for p in s["peaks"]]
    tail = (f"{b['rounds']} interleaved rounds; the best GEMM per round (the peak) ranged over "
            f"{min(peaks) / 1e9:.0f}–{max(peaks) / 1e9:.0f} GFLOP/s.")
    if script:
        tail += (f" reference-script: the reference project's `{script['script']}` at its commit "
                 f"`{(script['commit'] or 'unknown')[:12]}`, unmodified, timed by its own clock over "
                 f"{b['script_window_steps']}-step windows (each holding one pass of its validation evaluation "
                 "with 1 sample); no evaluation timed.")
    return "\n".join(lines) + "\n\n" + tail + (" Distinguishable differences: " + "; ".join(claims) + "."
                                                 if claims else " No difference in training speed is distinguishable.")


def ratio_text(r: dict | None, reference: str | None = None) -> str:
    """A ratio with its interval; against another row than the column's reference, it names that row."""
    if not r:
        return "1"
    text = f"{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"
    return text if reference is None or r["versus"] == reference else f"{text} ÷ {r['versus']}"


def paired_rows(path: str) -> str:
    """One sentence per row measured against its own engine's native row (keras[jax] against jax): training,
    evaluation and warm-up as ratios within rounds, each with its 95% interval over rounds and what may be said."""
    b = load(path, "bench.json")
    s = b["summary"]
    lines = []
    for entry in s["configs"]:
        for row in entry["backends"]:
            train = row.get("train_ratio")
            if not row.get("rounds_used") or not train or not row["backend"].endswith(f"[{train['versus']}]"):
                continue  # a row against the reference, not against its own engine
            parts = []
            for what, r in (("training", train), ("evaluation", row["eval_ratio"])):
                verdict = (("faster" if r["ratio"] > 1 else "slower") if r["differs"] else "not distinguishable")
                parts.append(f"{what} ×{r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}] ({verdict})")
            w = row["warmup_ratio"]
            parts.append(f"warm-up ×{w[0]:.2f} [{w[1]:.2f}, {w[2]:.2f}]")
            lines.append(f"- {entry['config']}, {row['backend']} against {train['versus']}: " + "; ".join(parts)
                         + f" ({train['rounds']} rounds).")
    if not lines:
        return "No row of this benchmark is measured against a native row of its own engine."
    return ("Ratios measured within each round, with 95% intervals over rounds (timing spread); a ratio above 1 "
            "is faster (for warm-up: longer):\n\n" + "\n".join(lines))


def peak(path: str) -> str:
    p = run_peak(load(path, "results.json"))
    return f"{p['flop_per_s'] / 1e9:.0f} GFLOP/s ({p['by']})" if p else "not measured"


def profile(path: str, top: int = 8) -> str:
    """A profile written by benchmarks/limits.py into a run folder (results/<run>#<file>): its provenance, the
    `top` operators by own time and its summary of where a step's time goes, as a text block."""
    folder, _, name = path.partition("#")
    lines = (ROOT / folder / name).read_text().splitlines()
    table = [i for i, line in enumerate(lines) if line.startswith("---")]
    kept = [line for line in lines if line.startswith("# ")]
    if len(table) >= 3:  # the profiler's table: a rule, the header, a rule, the rows, a rule
        kept += lines[table[0]:table[1] + 1 + top] + ["..."]
    kept += [line for line in lines if line.startswith(("unprofiled:", "profiled:"))]
    return "```text\n" + "\n".join(kept) + "\n```"


# Burda, Grosse & Salakhutdinov (2016), appendix: the statically binarized MNIST, one stochastic layer (784-200-200-50,
# tanh), test log p(x) with K = 5000; keyed by the objective and k a run trains with
BURDA = {("elbo", 1): ("VAE", -88.71), ("iwae", 5): ("IWAE, k = 5", -87.63), ("iwae", 50): ("IWAE, k = 50", -87.10)}
BURDA_VARIES = {"objective", "train_k", "seed"}  # what a run of Burda's table may set apart from the burda preset
LITERATURE_BACKENDS = ("torch", "jax", "tensorflow")


def duration(seconds: float) -> str:
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def setting_changes(spec: dict, against: dict) -> dict:
    """The settings of spec that differ from against, {name: value}; a setting a run's spec predates is its default."""
    from common.spec import Spec

    mine, theirs = Spec.from_dict(spec).to_dict(), Spec.from_dict(against).to_dict()
    return {k: v for k, v in mine.items() if v != theirs[k]}


def flags(changes: dict) -> str:
    """{"adam_beta1": 0.99} -> "--adam-beta1 0.99", as the command line sets them."""
    def value(v) -> str:
        return ",".join(map(str, v)) if isinstance(v, list | tuple) else f"{v:g}" if isinstance(v, float) else str(v)

    return " ".join(f"--{k.replace('_', '-')} {value(v)}" for k, v in changes.items())


def burda_preset() -> dict:
    from common.spec import PRESETS

    return dict(PRESETS["burda"])


def literature(paths: str) -> str:
    """Burda et al.'s numbers beside every finished run of their configuration in the comma-separated run folders:
    test log p(x) with its standard error over the test images, the difference, active latent units (Burda's
    measure: Cov_x(E_q[z_i]) > 0.01, of L), steps, training and wall time, machine and commit; then which model
    has no finished run yet in which framework."""
    header = ["Burda et al. (2016)", "paper", "backend", "ours ± s.e. (K)", "ours − paper", "active units",
              "steps", "training time (wall)", "machine", "run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    finished: dict[tuple, set[str]] = {key: set() for key in BURDA}
    per_example: dict[tuple, dict[str, np.lib.npyio.NpzFile]] = {key: {} for key in BURDA}
    for folder in paths.split(","):
        results = load(folder, "results.json")
        prov = results["provenance"]
        for r in results["runs"]:
            key = (r["spec"]["objective"], r["spec"]["train_k"])
            if (r["status"] != "ok" or key not in BURDA
                    or set(setting_changes(r["spec"], burda_preset())) - BURDA_VARIES):  # an ablation: not the paper's
                continue
            name, paper = BURDA[key]
            finished[key].add(r["backend"])
            per_example[key][r["backend"]] = np.load(run_folder(ROOT / folder, r) / "test_per_example.npz")
            t, units, timing = r["test"], r["active_units"], r["timing"]
            lines.append(
                f"| {name} | {paper:.2f} | {r['backend']} | {t['log_px']:.2f} ± {t['log_px_se']:.2f} ({t['k']}) | "
                f"{signed(t['log_px'] - paper)} | {units['count']} of {units['of']} | {r['spec']['steps']:,} | "
                f"{duration(timing['train_seconds'])} ({duration(timing['wall_seconds'])}) | "
                f"{' + '.join(machines(results))} | `{folder}` ({prov['commit'][:7]}) |")
    missing = [f"{BURDA[key][0]}: {', '.join(b for b in LITERATURE_BACKENDS if b not in done)}"
               for key, done in finished.items() if any(b not in done for b in LITERATURE_BACKENDS)]
    tail = [between_backends(BURDA[key][0], arrays) for key, arrays in per_example.items() if len(arrays) > 1]
    tail += ["Not yet run to the end of the schedule: " + "; ".join(missing) + "."] if missing else []
    return "\n\n".join(["\n".join(lines), *tail])


def between_backends(name: str, arrays: dict) -> str:
    """Each backend's test log p(x) against the first one's, paired over the same test images: the difference
    with its 95% interval (evaluation noise only: one seed each)."""
    from common.metrics import paired_difference

    (first, base), *others = arrays.items()
    parts = []
    for backend, other in others:
        if not np.array_equal(other["rows"], base["rows"]):
            raise ValueError(f"{name}: {backend} and {first} were tested on different images")
        diff, se = paired_difference(other["log_px"], base["log_px"])
        parts.append(f"{backend} − {first} {interval(diff, se)}"
                     + (" (distinguishable)" if abs(diff) > 1.96 * se else ""))
    return (f"{name}, between backends, paired over the same {len(base['rows']):,} test images (95% interval; "
            "evaluation noise only: one seed each, so the spread of training across seeds is not in it): "
            + "; ".join(parts) + ".")


def ablation(paths: str) -> str:
    """Finished runs that each change settings of the first one (comma-separated run folders, the first run of each):
    what each changes, its test log p(x), and its difference from the first paired over the same test images, with
    the 95% interval of evaluation noise (one training run each, so the spread of training across seeds is not in
    it), active units, the step of the best validation check and the training time."""
    from common.metrics import paired_difference

    header = ["run", "changes from the first", "test log p(x) ± s.e. (K)", "− first, paired (95%)", "active units",
              "best check", "training time", "commit"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first = None
    for folder in paths.split(","):
        results = load(folder, "results.json")
        r = next(r for r in results["runs"] if r["status"] == "ok")
        arrays = np.load(run_folder(ROOT / folder, r) / "test_per_example.npz")
        t, units = r["test"], r["active_units"]
        if first is None:
            first, changes, versus = (r, arrays), "—", "—"
        else:
            changes = flags(setting_changes(r["spec"], first[0]["spec"])) or "nothing"
            if r["backend"] != first[0]["backend"]:
                changes = f"backend {r['backend']}" + ("" if changes == "nothing" else f"; {changes}")
            if not np.array_equal(arrays["rows"], first[1]["rows"]):
                raise ValueError(f"{folder} and {paths.split(',')[0]} were tested on different images")
            diff, se = paired_difference(arrays["log_px"], first[1]["log_px"])
            versus = interval(diff, se)
        lines.append(f"| `{folder}` | {changes} | {t['log_px']:.2f} ± {t['log_px_se']:.2f} ({t['k']}) | {versus} | "
                     f"{units['count']} of {units['of']} | {r['best_step']:,} of {r['spec']['steps']:,} | "
                     f"{duration(r['timing']['train_seconds'])} | {results['provenance']['commit'][:7]} |")
    return "\n".join(lines)


KINDS: dict[str, Callable[[str], str]] = {"run-table": run_table, "model-table": model_table, "headline": headline,
                                          "bench": bench, "bench-pairs": paired_rows, "peak": peak,
                                          "profile": profile, "literature": literature, "ablation": ablation}


def render(text: str) -> str:
    """text with every generated block rebuilt from its results."""
    def block(m: re.Match) -> str:
        kind, path = m.group(2), m.group(3)
        return m.group(1) + KINDS[kind](path).rstrip("\n") + "\n" + m.group(5)

    return MARKER.sub(block, text)


def blocks(text: str) -> list[tuple[str, str, str]]:
    return [(m.group(2), m.group(3), m.group(4)) for m in MARKER.finditer(text)]


def update(readme: Path = ROOT / "README.md") -> bool:
    """Rewrite README.md's generated blocks; True if anything changed."""
    old = readme.read_text()
    new = render(old)
    if new != old:
        readme.write_text(new)
    return new != old
