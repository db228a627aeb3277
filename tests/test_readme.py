"""README.md: its install and test commands are the ones CI runs, and every number in it comes from results."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import ROOT

from report import readme

README = (ROOT / "README.md").read_text()


def only_run(name: str) -> dict:
    """The one run of the committed results/<name> (a run folder of one backend and one seed)."""
    (run,) = json.loads((ROOT / "results" / name / "results.json").read_text())["runs"]
    return run


def test_ci_runs_the_install_and_test_commands_of_the_readme():
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('python -m pip install -e ".[all,test]"', "python -m pytest"):
        assert command in README and re.search(rf"^{re.escape(command)}$", ci, re.M), command


def test_generated_blocks_match_the_results_they_name():
    """Every table and sentence with a figure in README.md sits in a generated block; each block is exactly what
    `python compare.py report --readme` builds from the named results.json or bench.json."""
    found = readme.blocks(README)
    for kind, path, text in found:
        for folder in path.partition("#")[0].split(","):  # a literature block names several runs
            assert (ROOT / folder).is_dir(), folder
        assert text == readme.KINDS[kind](path).rstrip("\n") + "\n", f"{kind} {path}: run compare.py report --readme"


def test_every_generated_block_names_the_command_that_made_its_run():
    for kind, path, _ in readme.blocks(README):
        start = README.index(f"<!-- generated: {kind} {path} -->")
        for folder in path.partition("#")[0].split(","):
            assert f"--out {folder}" in README[:start], f"the command of {folder} is shown above it"


def test_results_tables_outside_generated_blocks_carry_no_measured_figures():
    """Tables of results are only ever generated: outside the blocks, no table row holds a ± figure."""
    outside = readme.MARKER.sub("", README)
    rows = [line for line in outside.splitlines() if line.startswith("|") and "±" in line]
    assert rows == [], rows[:3]


def test_readme_quotes_the_benchmark_and_every_models_table():
    kinds = {(kind, path.partition("#")[2]) for kind, path, _ in readme.blocks(README)}
    assert any(kind == "bench" for kind, _ in kinds)
    for model in ("fa", "cvae", "gmvae", "vrnn"):
        assert ("model-table", model) in kinds, model


def test_paired_rows_state_each_engines_ratio_and_only_call_a_difference_that_the_interval_shows(tmp_path):
    def ratio(r, low, high, versus):
        return dict(versus=versus, ratio=r, low=low, high=high, rounds=5, differs=low > 1 or high < 1)

    rows = [dict(backend="jax", rounds_used=5),
            dict(backend="keras[jax]", rounds_used=5, train_ratio=ratio(0.80, 0.75, 0.86, "jax"),
                 eval_ratio=ratio(1.02, 0.97, 1.08, "jax"), warmup_ratio=[3.0, 2.5, 3.5]),
            dict(backend="torch", rounds_used=5, train_ratio=ratio(0.5, 0.4, 0.6, "jax"),
                 eval_ratio=ratio(0.5, 0.4, 0.6, "jax"), warmup_ratio=[1.0, 1.0, 1.0])]
    bench = dict(summary=dict(reference="jax", configs=[dict(config="iaf H512", backends=rows)]))
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    text = readme.paired_rows(str(tmp_path))
    assert "iaf H512, keras[jax] against jax: training ×0.80 [0.75, 0.86] (slower)" in text
    assert "evaluation ×1.02 [0.97, 1.08] (not distinguishable)" in text
    assert "warm-up ×3.00 [2.50, 3.50]" in text
    assert "torch against" not in text  # a row against the reference is the bench table's, not a pair


def test_the_reference_projects_number_is_placed_against_each_backends_interval_across_seeds():
    rows = [dict(family="mean-field", backend="torch", log_px_low=-98.4, log_px_high=-95.7),
            dict(family="mean-field", backend="jax", log_px_low=-101.0, log_px_high=-99.0),
            dict(family="mean-field", backend="tensorflow", log_px_low=-104.0, log_px_high=-101.0)]
    claims = " ".join(readme.reference_claims(rows))
    published = readme.REFERENCE_PROJECT["mean-field"][0]
    assert (f"{published} (one run, its seed spread not published) lies below the interval across seeds of torch"
            in claims)
    assert "lies inside the interval across seeds of jax" in claims
    assert "lies above the interval across seeds of tensorflow" in claims
    assert "iaf" not in claims  # no IAF rows: nothing said of the IAF's number


def test_the_gmvae_paragraphs_figures_are_the_runs():
    """The GMVAE section's prose quotes its run's accuracies and the collapsed one-hidden-layer rows it replaced."""
    def gmvae_rows(run):
        return [r for r in readme.load(f"results/{run}", "results.json")["runs"] if r["model"] == "gmvae"]

    now, before = gmvae_rows("quick-cpu-gmvae"), gmvae_rows("quick-cpu-models")
    accuracies = [r["extra"]["cluster accuracy"] for r in now]
    assert f"reach {min(accuracies):.2f}–{max(accuracies):.2f}" in README
    assert all(r["extra"]["components used"] == "10 / 10" for r in now)
    assert {f"{r['extra']['cluster accuracy']:.2f}" for r in before} == {"0.11"} and "accuracy 0.11" in README
    assert all(r["extra"]["components used"] == "1 / 10" for r in before)
    by_backend = {r["backend"]: r["test"]["log_px"] for r in before}
    gaps = [r["test"]["log_px"] - by_backend[r["backend"]] for r in now]
    assert f"log p(x) {min(gaps):.1f} to {max(gaps):.1f} nats lower" in README


def test_a_profile_block_keeps_its_provenance_top_operators_and_summary(tmp_path):
    rule = "-" * 20 + "  " + "-" * 10
    rows = [f"aten::op{i}  {50 - i}.00%" for i in range(12)]
    header = ["# python benchmarks/limits.py profile torch mean-field 512", "# commit abc (clean), CPU, 2 cores"]
    summary = ["unprofiled: 10.00 ms per step", "profiled: 12.00 ms per step; GEMMs 8.00 ms (67%)"]
    text = "\n".join([*header, "noise from a library", rule, "Name  Self CPU %", rule, *rows, rule,
                      "Self CPU time total: 1s", *summary])
    (tmp_path / "p.txt").write_text(text)
    block = readme.profile(f"{tmp_path}#p.txt", top=3).splitlines()
    assert block[0] == "```text" and block[-1] == "```"
    assert block[1:3] == header
    assert block[3:9] == [rule, "Name  Self CPU %", rule, *rows[:3]] and block[9] == "..."
    assert block[10:12] == summary
    assert "noise from a library" not in block and "aten::op3  47.00%" not in block


def test_the_torch_rows_claims_are_the_benchmarks():
    """README's sentence on torch[compiled]: its training interval against jax never lies above torch's, and lies
    below it at iaf H512 (within-round ratios over the same rounds)."""
    bench = readme.load("results/bench-torch-cpu", "bench.json")
    ratios = {(c["config"], r["backend"]): r["train_ratio"] for c in bench["summary"]["configs"]
              for r in c["backends"] if r.get("train_ratio")}
    assert len(ratios) == 12  # three torch rows in four configurations
    for config in {c for c, _ in ratios}:
        tuned, compiled = ratios[(config, "torch")], ratios[(config, "torch[compiled]")]
        assert compiled["low"] <= tuned["high"], config
        assert (compiled["high"] < tuned["low"]) == (config == "iaf H512"), config
    assert "at iaf H512 it lies below" in README


def test_the_reference_script_paragraphs_figures_are_the_benchmark_and_the_profile():
    """README's account of torch against the reference project's script: the ratios and their intervals, twice the
    script's rate as examples/s and ms per step, and the profile's GEMM and other times, all from the committed
    bench.json and profile; torch's interval lies below 2."""
    folder = "results/bench-reference-script-cpu"
    rows = {r["backend"]: r for r in readme.load(folder, "bench.json")["summary"]["configs"][0]["backends"]}
    script = rows["reference-script"]["train_examples_per_s"][0]
    torch_, jax = rows["torch"]["train_ratio_to_script"], rows["jax"]["train_ratio_to_script"]
    assert torch_["high"] < 2  # "does not reach twice"
    double = 2 * script
    step_ms = 128 / double * 1e3
    profile = (ROOT / folder / "profile-torch-mean-field-256.txt").read_text()
    gemm_ms, in_situ, best, rest_ms = map(float, re.search(
        r"GEMMs ([0-9.]+) ms \(\d+%\) at (\d+) GFLOP/s, against (\d+) GFLOP/s .*everything else ([0-9.]+) ms",
        profile).groups())
    best_ms = gemm_ms * in_situ / best
    text = " ".join(README.split())
    for figure in (f"the script trained at {script:,.0f} examples/s",
                   f"torch at ×{torch_['ratio']:.2f} [{torch_['low']:.2f}, {torch_['high']:.2f}] of it",
                   f"at ×{jax['ratio']:.2f} [{jax['low']:.2f}, {jax['high']:.2f}]",
                   f"Twice the script is {double:,.0f} examples/s, {step_ms:.2f} ms per step",
                   f"Its GEMMs alone take {gemm_ms:.2f} ms per step", f"and {best_ms:.2f} ms even at the best rate",
                   f"That would leave {step_ms - best_ms:.2f} ms for everything else a step does, which takes "
                   f"{rest_ms:.2f} ms now"):
        assert figure in text, figure


def test_the_burda_shape_paragraphs_figures_are_the_benchmark_and_the_optimizer_timing():
    """README on torch at Burda's batch of 20: the optimizer timings are the committed file's; the torch row's
    ratio to torch[eager] is the within-round ratio of the bench's rounds, its interval above 1; the per-step
    saving and the optimizer's share of it follow from the medians; the % of peak are the table's."""
    from common.metrics import bootstrap_interval
    from runner import bench

    folder = "results/bench-burda-shape-cpu"
    timing = dict(re.findall(r"optimizer step, (.+): ([0-9.]+) ms",
                             (ROOT / folder / "optimizer-burda.txt").read_text()))
    fused, default, compiled = (float(timing[k]) for k in ("fused", "default", "default, compiled"))
    rounds = json.loads((ROOT / folder / "rounds.json").read_text())
    config = "mean-field H200"
    ratios = [bench.round_values(r, "torch", config)["train"] / bench.round_values(r, "torch[eager]", config)["train"]
              for r in rounds]
    ratio, low, high = bootstrap_interval(ratios)
    assert low > 1
    rows = {r["backend"]: r for r in readme.load(folder, "bench.json")["summary"]["configs"][0]["backends"]}
    saved_ms = 20e3 / rows["torch[eager]"]["train_examples_per_s"][0] - 20e3 / rows["torch"]["train_examples_per_s"][0]
    assert default - fused > saved_ms / 2  # "most of what separates" them
    text = " ".join(README.split())
    for figure in (f"one fused Adam step took {fused:.3f} ms, the default {default:.3f} ms",
                   f"(what the torch row ran before) {compiled:.3f} ms",
                   f"trains at ×{ratio:.2f} [{low:.2f}, {high:.2f}] of `torch[eager]`'s examples/s",
                   f"{saved_ms:.2f} ms per step less, of which the optimizer is {default - fused:.2f} ms",
                   f"JAX reaches {100 * rows['jax']['train_fraction_of_peak'][0]:.0f}% of the round's best GEMM rate, "
                   f"the torch row {100 * rows['torch']['train_fraction_of_peak'][0]:.0f}%"):
        assert figure in text, figure


def test_the_literature_block_sets_each_finished_burda_run_beside_the_papers_number(tmp_path):
    from common.spec import PRESETS

    preset = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["burda"].items()}
    rng = np.random.default_rng(0)
    rows = np.arange(10_000)
    base = -89.0 + rng.standard_normal(10_000) * 25  # per-image log p(x): the spread of real ones

    def run(backend, objective, k, log_px, status="ok", schedule="burda"):
        return dict(status=status, backend=backend, family="mean-field", folder=f"{backend}-{objective}{k}",
                    spec=preset | dict(objective=objective, train_k=k, lr_schedule=schedule),
                    test=dict(log_px=log_px, log_px_se=0.27, k=5000), active_units=dict(count=21, of=50),
                    timing=dict(train_seconds=2 * 3600 + 5 * 60, wall_seconds=3 * 3600 + 59.6 * 60))
    runs = [run("jax", "elbo", 1, -89.034), run("torch", "elbo", 1, -80.0, status="failed"),
            run("jax", "iwae", 5, -87.5), run("jax", "elbo", 1, -99.0, schedule="constant"),
            run("tensorflow", "elbo", 1, -89.2)]
    # tensorflow: 0.2 nats below jax on every image but noisily; the paired interval is tight, the s.e. of
    # either mean is not
    noise = rng.standard_normal(10_000)
    arrays = {"jax-elbo1": base, "tensorflow-elbo1": base - 0.2 + noise, "jax-iwae5": base + 1.5}
    resumed = dict(started="2026-12-06T01:00:00+00:00", commit="2b0912f0123", clean=True, changed_files=[],
                   cpu="AMD EPYC", cpu_count=2, gpus=["none"])
    for name, rs, resumes, start in (("a", runs[:2], [], None), ("b", runs[2:], [resumed], "Intel Xeon")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(dict(
            runs=rs, environment=dict(cpu="AMD EPYC", cpu_count=2), provenance=dict(commit="2b0912f0123",
                                                                                  resumes=resumes),
            environment_at_start=start and dict(cpu=start, cpu_count=2))))
        for r in rs:
            if r["folder"] in arrays:
                (tmp_path / name / r["folder"]).mkdir(exist_ok=True)
                np.savez(tmp_path / name / r["folder"] / "test_per_example.npz", log_px=arrays[r["folder"]],
                         elbo=arrays[r["folder"]] - 5, rows=rows)
    text = readme.literature(f"{tmp_path / 'a'},{tmp_path / 'b'}")
    table = [line for line in text.splitlines() if line.startswith("| VAE") or line.startswith("| IWAE")]
    resumed_machines = "Intel Xeon, 2 cores + AMD EPYC, 2 cores"
    assert table == [
        f"| VAE | -88.71 | jax | -89.03 ± 0.27 (5000) | −0.32 | 21 of 50 | 8,200,000 | 2 h 05 min (4 h 00 min) | "
        f"AMD EPYC, 2 cores | `{tmp_path / 'a'}` (2b0912f) |",
        f"| IWAE, k = 5 | -87.63 | jax | -87.50 ± 0.27 (5000) | +0.13 | 21 of 50 | 8,200,000 | "
        f"2 h 05 min (4 h 00 min) | {resumed_machines} | `{tmp_path / 'b'}` (2b0912f) |",
        f"| VAE | -88.71 | tensorflow | -89.20 ± 0.27 (5000) | −0.49 | 21 of 50 | 8,200,000 | "
        f"2 h 05 min (4 h 00 min) | {resumed_machines} | `{tmp_path / 'b'}` (2b0912f) |"]
    diff = noise.mean() - 0.2
    half = 1.96 * noise.std(ddof=1) / np.sqrt(10_000)
    assert (f"VAE, between backends, paired over the same 10,000 test images (95% interval; evaluation noise only: "
            f"one seed each, so the spread of training across seeds is not in it): tensorflow − jax "
            f"{readme.signed(diff)} [{readme.signed(diff - half)}, {readme.signed(diff + half)}] "
            "(distinguishable).") in text
    assert text.endswith("Not yet run to the end of the schedule: VAE: torch; IWAE, k = 5: torch, "
                         "tensorflow; IWAE, k = 50: torch, jax, tensorflow.")
    np.savez(tmp_path / "b" / "tensorflow-elbo1" / "test_per_example.npz", log_px=base, elbo=base, rows=rows[::-1])
    with pytest.raises(ValueError, match="tested on different images"):
        readme.literature(f"{tmp_path / 'a'},{tmp_path / 'b'}")


def test_the_prose_under_the_literature_block_says_what_the_finished_runs_show():
    """Under Burda's table: JAX and TensorFlow agree within evaluation noise, all three end more than half a nat
    short of the paper's VAE (beyond their standard errors), the parameters tested were the last validation check
    (TensorFlow, torch) or the one before it (JAX); torch ends below JAX beyond evaluation noise, its checks trail
    JAX's by the stated range at every one, and one seed's torch - JAX difference at 100,000 steps spans the
    stated range; the whole schedule's torch - JAX and TensorFlow - JAX fall inside the 95% prediction interval
    that the five short seeds give for one more seed's difference."""
    from common.metrics import paired_difference, t_quantile

    text = " ".join(README.split())
    assert "within evaluation noise of each other" in text
    assert "the best of them was the last (TensorFlow and torch) or the one before it (JAX)" in text
    runs, arrays = {}, {}
    for backend in ("jax", "tensorflow", "torch"):
        runs[backend] = only_run(f"burda-cpu-{backend}")
        arrays[backend] = np.load(ROOT / "results" / f"burda-cpu-{backend}" / f"{backend}-mean-field" /
                                  "test_per_example.npz")
    diff, se = paired_difference(arrays["tensorflow"]["log_px"], arrays["jax"]["log_px"])
    assert abs(diff) < 1.96 * se
    diff, se = paired_difference(arrays["torch"]["log_px"], arrays["jax"]["log_px"])
    assert diff + 1.96 * se < 0
    for r in runs.values():
        short = readme.BURDA[("elbo", 1)][1] - r["test"]["log_px"]
        assert short - 1.96 * r["test"]["log_px_se"] > 0 and short > 0.5
    checks = {b: [v["step"] for v in r["validation"]] for b, r in runs.items()}
    assert runs["tensorflow"]["best_step"] == checks["tensorflow"][-1] == runs["torch"]["best_step"]
    assert runs["jax"]["best_step"] == checks["jax"][-2]
    assert checks["torch"] == checks["jax"]
    lags = [j["log_px"] - t["log_px"]
            for j, t in zip(runs["jax"]["validation"], runs["torch"]["validation"], strict=True)]
    assert f"trailed JAX's by {min(lags):.1f} to {max(lags):.1f} nats at every one" in text
    seeds = json.loads((ROOT / "results" / "burda-short-cpu-seeds" / "results.json").read_text())["runs"]
    score = {(r["backend"], r["seed"]): r["test"]["log_px"] for r in seeds if r["status"] == "ok"}
    per_seed = [score["torch", s] - score["jax", s] for s in sorted({s for _, s in score})]
    assert len(per_seed) == 5
    assert f"difference in test log p(x) ranges from {readme.signed(min(per_seed))} to " \
        f"{readme.signed(max(per_seed))} nats" in text
    # one more seed's difference, predicted from the five (t, n - 1 degrees of freedom), against this run's
    predicted = {}
    for backend in ("torch", "tensorflow"):
        d = np.array([score[backend, s] - score["jax", s] for s in sorted({s for _, s in score})])
        half = t_quantile(len(d) - 1) * d.std(ddof=1) * np.sqrt(1 + 1 / len(d))
        full = runs[backend]["test"]["log_px"] - runs["jax"]["test"]["log_px"]
        assert d.mean() - half < full < d.mean() + half
        predicted[backend] = (f"[{readme.signed(d.mean() - half)}, {readme.signed(d.mean() + half)}]",
                              readme.signed(full))
    assert f"one more seed's torch − JAX difference falls in {predicted['torch'][0]} with 95% probability" in text
    assert f"this run's {predicted['torch'][1]} is inside it, as TensorFlow − JAX's {predicted['tensorflow'][1]} " \
        f"is inside its {predicted['tensorflow'][0]}" in text


def test_the_iwae_sentence_under_the_literature_block_is_its_run():
    """The IWAE (k = 5) against the paper's number and its standard error, against the JAX VAE paired over the
    same test images (log p(x) and ELBO), its active units beside the VAE's, and its best check the last."""
    from common.metrics import paired_difference

    text = " ".join(README.split())
    folders = {name: ROOT / "results" / f"burda-cpu-{name}" for name in ("jax", "jax-iwae5")}
    vae, iwae = (only_run(f"burda-cpu-{name}") for name in folders)
    assert (iwae["spec"]["objective"], iwae["spec"]["train_k"]) == ("iwae", 5) and iwae["test"]["k"] == 5000
    paper_vae, paper = readme.BURDA[("elbo", 1)][1], readme.BURDA[("iwae", 5)][1]
    test = iwae["test"]
    assert abs(test["log_px"] - paper) < test["log_px_se"]
    assert f"{readme.signed(test['log_px'])} ± {test['log_px_se']:.2f} against its {readme.signed(paper)}, " \
        f"{readme.signed(test['log_px'] - paper)}, inside one standard error" in text
    vae_a, iwae_a = (np.load(f / "jax-mean-field" / "test_per_example.npz") for f in folders.values())
    np.testing.assert_array_equal(vae_a["rows"], iwae_a["rows"])
    diff, se = paired_difference(iwae_a["log_px"], vae_a["log_px"])
    assert diff - 1.96 * se > 0
    assert f"it ends {readme.interval(diff, se)} above the JAX VAE" in text
    assert f"where the paper's two numbers are {paper - paper_vae:.2f} apart" in text
    units = iwae["active_units"]["count"], vae["active_units"]["count"]
    assert f"with {units[0]} active units to the VAE's {units[1]}" in text
    diff, se = paired_difference(iwae_a["elbo"], vae_a["elbo"])
    assert abs(diff) < 1.96 * se
    assert f"Its test ELBO is the VAE's ({readme.interval(diff, se)}, paired)" in text
    assert iwae["best_step"] == iwae["validation"][-1]["step"]


def test_the_training_set_figures_under_the_literature_block_are_the_committed_evaluations():
    """Train log p(x) of the finished Burda runs (compare.py evaluate --split train) and its distance above the
    test figure, as the README states them; torch - JAX on those training images, paired; the paper code's setting
    against the preset there and in its train - test distance, paired; and the torch run's parameters evaluated
    by JAX on the test images, paired with torch's own evaluation of them."""
    from common.metrics import paired_difference

    names = {"jax": "JAX", "tensorflow": "TensorFlow", "torch": "torch"}
    fit = ROOT / "results" / "burda-cpu-fit"
    scores, gaps, ses, train_rows = [], [], [], {}
    for backend, name in names.items():
        (evaluated,) = json.loads((fit / f"{backend}-train" / "evaluation.json").read_text())["runs"]
        assert evaluated["split"] == "train" and evaluated["test"]["k"] == 5000
        assert evaluated["test"]["examples"] == 2000
        train_rows[backend] = np.load(fit / f"{backend}-train" / backend / "train_per_example.npz")
        train, test = evaluated["test"], only_run(f"burda-cpu-{backend}")["test"]
        scores.append(f"{readme.signed(train['log_px'])} ± {train['log_px_se']:.2f} ({name})")
        gaps.append(f"{train['log_px'] - test['log_px']:.2f}")
        ses.append(f"{np.hypot(train['log_px_se'], test['log_px_se']):.2f}")
    text = " ".join(README.split())
    assert f"the three score {scores[0]}, {scores[1]} and {scores[2]}, {gaps[0]}, {gaps[1]} and {gaps[2]} nats " \
        f"above their test figures (± {ses[0]}, {ses[1]} and {ses[2]}, the two standard errors combined)" in text
    for backend in ("tensorflow", "torch"):
        assert np.array_equal(train_rows[backend]["rows"], train_rows["jax"]["rows"])
    diff, se = paired_difference(train_rows["torch"]["log_px"], train_rows["jax"]["log_px"])
    assert abs(diff) < 1.96 * se
    assert f"not distinguishable (torch − JAX {readme.interval(diff, se)}, paired over the same images)" in text

    # the paper code's setting on the same training images: its fit and its train - test distance against the
    # preset's, both paired (the distance's difference pairs each split's images)
    (evaluated,) = json.loads((fit / "jax-paper-code-train" / "evaluation.json").read_text())["runs"]
    assert evaluated["split"] == "train" and evaluated["test"]["k"] == 5000 and evaluated["test"]["examples"] == 2000
    code_run = only_run("burda-cpu-jax-paper-code")
    code_train = np.load(fit / "jax-paper-code-train" / "jax" / "train_per_example.npz")
    code_test = np.load(ROOT / "results" / "burda-cpu-jax-paper-code" / "jax-mean-field" / "test_per_example.npz")
    preset_test = np.load(ROOT / "results" / "burda-cpu-jax" / "jax-mean-field" / "test_per_example.npz")
    assert np.array_equal(code_train["rows"], train_rows["jax"]["rows"])
    assert np.array_equal(code_test["rows"], preset_test["rows"])
    on_train = paired_difference(code_train["log_px"], train_rows["jax"]["log_px"])
    on_test = paired_difference(code_test["log_px"], preset_test["log_px"])
    closer, se = on_test[0] - on_train[0], np.hypot(on_train[1], on_test[1])
    assert on_train[0] - 1.96 * on_train[1] > 0 and closer - 1.96 * se > 0
    train = evaluated["test"]
    assert f"it scores {readme.signed(train['log_px'])} ± {train['log_px_se']:.2f}, " \
        f"{readme.interval(*on_train)} above the preset's JAX run, and its distance above its test figure is " \
        f"{train['log_px'] - code_run['test']['log_px']:.2f}, {closer:.2f} [{closer - 1.96 * se:.2f}, " \
        f"{closer + 1.96 * se:.2f}] less than the preset's" in text

    (in_jax,) = json.loads((fit / "torch-params-in-jax" / "evaluation.json").read_text())["runs"]
    assert in_jax["backend"] == "jax" and in_jax["split"] == "test" and in_jax["test"]["k"] == 5000
    jax_eval = np.load(fit / "torch-params-in-jax" / "jax" / "test_per_example.npz")
    torch_eval = np.load(ROOT / "results" / "burda-cpu-torch" / "torch-mean-field" / "test_per_example.npz")
    assert np.array_equal(jax_eval["rows"], torch_eval["rows"])
    diff, se = paired_difference(jax_eval["log_px"], torch_eval["log_px"])
    assert abs(diff) < 1.96 * se
    assert f"score {readme.interval(diff, se)} from torch's own evaluation of them (paired, 95%)" in text


def test_an_ablation_block_sets_each_change_beside_the_first_run_paired_and_the_literature_leaves_it_out(tmp_path):
    from common.spec import PRESETS

    rng = np.random.default_rng(1)
    rows = np.arange(10_000)
    base = -89.0 + rng.standard_normal(10_000) * 25
    noise = rng.standard_normal(10_000)
    preset = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["burda"].items()}
    settings = {"a": ("jax", preset, base, 7_175_000),
                "b": ("jax", preset | dict(optimizer="adam-burda", adam_beta1=0.99), base + 0.3 + noise, 8_200_000),
                "c": ("tensorflow", preset | dict(encoder_scale="exp"), base - 0.01 + noise, 6_150_000)}
    for name, (backend, spec, log_px, best) in settings.items():
        run = dict(status="ok", backend=backend, family="mean-field", folder=f"{backend}-mean-field",
                   spec=spec | dict(objective="elbo", train_k=1), best_step=best,
                   test=dict(log_px=float(log_px.mean()), log_px_se=0.25, k=5000), active_units=dict(count=15, of=50),
                   timing=dict(train_seconds=2 * 3600 + 30 * 60, wall_seconds=3 * 3600))
        (tmp_path / name / run["folder"]).mkdir(parents=True)
        (tmp_path / name / "results.json").write_text(json.dumps(dict(
            runs=[run], environment=dict(cpu="AMD EPYC", cpu_count=2), provenance=dict(commit="616ae0b8668"))))
        np.savez(tmp_path / name / run["folder"] / "test_per_example.npz", log_px=log_px, elbo=log_px - 5, rows=rows)
    a, b, c = (str(tmp_path / n) for n in "abc")
    lines = readme.ablation(f"{a},{b},{c}").splitlines()
    half = 1.96 * noise.std(ddof=1) / np.sqrt(10_000)
    for_b, for_c = noise.mean() + 0.3, noise.mean() - 0.01
    assert lines[2:] == [
        f"| `{a}` | — | {base.mean():.2f} ± 0.25 (5000) | — | 15 of 50 | 7,175,000 of 8,200,000 | 2 h 30 min | "
        "616ae0b |",
        f"| `{b}` | --optimizer adam-burda --adam-beta1 0.99 | {base.mean() + 0.3 + noise.mean():.2f} ± 0.25 (5000) | "
        f"{readme.signed(for_b)} [{readme.signed(for_b - half)}, {readme.signed(for_b + half)}] | 15 of 50 | "
        "8,200,000 of 8,200,000 | 2 h 30 min | 616ae0b |",
        f"| `{c}` | backend tensorflow; --encoder-scale exp | {base.mean() - 0.01 + noise.mean():.2f} ± 0.25 (5000) | "
        f"{readme.signed(for_c)} [{readme.signed(for_c - half)}, {readme.signed(for_c + half)}] | 15 of 50 | "
        "6,150,000 of 8,200,000 | 2 h 30 min | 616ae0b |"]
    table = [line for line in readme.literature(f"{a},{b},{c}").splitlines() if line.startswith("| VAE")]
    assert len(table) == 1 and f"`{a}`" in table[0]  # the runs that change the paper's setting are not its rows
    np.savez(tmp_path / "c" / "tensorflow-mean-field" / "test_per_example.npz", log_px=base, elbo=base,
             rows=rows[::-1])
    with pytest.raises(ValueError, match="tested on different images"):
        readme.ablation(f"{a},{b},{c}")


def test_the_prose_beside_the_ablation_and_the_seeds_says_what_their_runs_show():
    """The paper code's Adam ends below the preset's by more than evaluation noise (paired over the same test
    images), and the paper code's whole setting above it, within half a nat of the paper's VAE; across five seeds
    at the short schedule every backend difference's interval includes zero and spans about half a nat either
    way, and one run's spread across seeds is a few tenths of a nat."""
    from common.metrics import paired_difference

    text = " ".join(README.split())
    assert "The Adam of the paper's code does not close the gap: over the same 10,000 test images it ends below " \
        "the preset's Adam, by more than its interval of evaluation noise" in text
    arrays = {name: np.load(ROOT / "results" / name / "jax-mean-field" / "test_per_example.npz")
              for name in ("burda-cpu-jax", "burda-cpu-jax-adam-burda")}
    np.testing.assert_array_equal(arrays["burda-cpu-jax"]["rows"], arrays["burda-cpu-jax-adam-burda"]["rows"])
    assert len(arrays["burda-cpu-jax"]["rows"]) == 10_000
    diff, se = paired_difference(arrays["burda-cpu-jax-adam-burda"]["log_px"], arrays["burda-cpu-jax"]["log_px"])
    assert diff + 1.96 * se < 0
    assert f"which alone lost {-diff:.2f}" in text
    # the paper code's whole setting: above the preset beyond evaluation noise, within half a nat of the paper
    code = ROOT / "results" / "burda-cpu-jax-paper-code"
    run = only_run("burda-cpu-jax-paper-code")
    assert {k: run["spec"][k] for k in ("optimizer", "adam_beta1", "init", "encoder_scale", "batch_order",
                                        "lr_schedule")} == dict(optimizer="adam-burda", adam_beta1=0.99,
                                                                init="burda-code", encoder_scale="exp",
                                                                batch_order="fixed", lr_schedule="burda-code")
    per_image = np.load(code / "jax-mean-field" / "test_per_example.npz")
    np.testing.assert_array_equal(per_image["rows"], arrays["burda-cpu-jax"]["rows"])
    diff, se = paired_difference(per_image["log_px"], arrays["burda-cpu-jax"]["log_px"])
    assert diff - 1.96 * se > 0
    test, paper = run["test"], readme.BURDA[("elbo", 1)][1]
    assert abs(test["log_px"] - paper) < min(0.5, test["log_px_se"])
    preset = only_run("burda-cpu-jax")
    assert f"over the same test images it ends {readme.interval(diff, se)} above the preset, at " \
        f"{readme.signed(test['log_px'])} ± {test['log_px_se']:.2f}, {readme.signed(test['log_px'] - paper)} from " \
        f"the paper's {readme.signed(paper)} (inside this suite's half nat, and inside one standard error), with " \
        f"{run['active_units']['count']} active units to the preset's {preset['active_units']['count']}" in text
    assert "in its setting JAX ends within that half nat" in text
    assert "each difference's 95% interval (training spread) includes zero, and spans about half a nat either " \
        "way" in text and "which the short schedule below puts at a few tenths of a nat" in text
    results = json.loads((ROOT / "results" / "burda-short-cpu-seeds" / "results.json").read_text())
    rows = results["across_seeds"]
    assert {r["backend"] for r in rows} == {"torch", "jax", "tensorflow"} and all(r["n"] == 5 for r in rows)
    for r in rows[1:]:
        assert r["diff"]["low"] < 0 < r["diff"]["high"]
        assert 0.3 < r["diff"]["mean"] - r["diff"]["low"] < 0.7 and 0.3 < r["diff"]["high"] - r["diff"]["mean"] < 0.7
    for backend in ("torch", "jax", "tensorflow"):
        per_seed = [r["test"]["log_px"] for r in results["runs"] if r["backend"] == backend]
        assert len(per_seed) == 5 and 0.1 < np.std(per_seed, ddof=1) < 0.5
