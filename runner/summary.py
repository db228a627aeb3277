"""A run's results.json: what was asked, where it came from, every backend's figures, and the comparisons
between them with the kind of interval each carries (paired within a seed: evaluation noise; across seeds:
training spread)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.metrics import paired_difference, t_interval
from report.runs import run_folder
from runner import provenance


def per_example(run_dir: Path, run: dict):
    return np.load(run_folder(run_dir, run) / f"{run.get('split', 'test')}_per_example.npz")


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
                            log_px_diff=d_log_px, log_px_diff_se=se_log_px, elbo_diff=d_elbo, elbo_diff_se=se_elbo,
                            interval="paired over the same test examples, one seed: evaluation noise only"))
    return out


def across_seeds(runs: list[dict]) -> list[dict]:
    """Per backend and family: the mean over seeds with its 95% t-interval, and the per-seed difference from
    the first backend averaged over the seeds both finished, with its 95% t-interval (training spread)."""
    out = []
    for family in dict.fromkeys(r["family"] for r in runs):
        ok = [r for r in runs if r["family"] == family and r["status"] == "ok"]
        order = list(dict.fromkeys(r["backend"] for r in ok))
        by = {(r["backend"], r["seed"]): r["test"]["log_px"] for r in ok}
        for backend in order:
            seeds = sorted(s for b, s in by if b == backend)
            mean, low, high = t_interval([by[(backend, s)] for s in seeds])
            entry = dict(family=family, backend=backend, n=len(seeds), seeds=seeds, log_px_mean=mean,
                         log_px_low=low, log_px_high=high,
                         examples_per_s_mean=float(np.mean([r["timing"]["examples_per_s"] for r in ok
                                                            if r["backend"] == backend])))
            shared = [s for s in seeds if (order[0], s) in by]
            if backend != order[0] and len(shared) > 1:
                d_mean, d_low, d_high = t_interval([by[(backend, s)] - by[(order[0], s)] for s in shared])
                entry["diff"] = dict(versus=order[0], seeds=shared, mean=d_mean, low=d_low, high=d_high,
                                     interval="95% t-interval over seeds: training spread")
            out.append(entry)
    return out


def resumes(plan: dict) -> list[dict]:
    """Each --resume of the run: when, from which commit (clean or not), on which machine."""
    return [dict(started=r["started"], **r["provenance"], cpu=r["environment"]["cpu"],
                 cpu_count=r["environment"]["cpu_count"], gpus=r["environment"]["gpus"])
            for r in plan.get("resumes", [])]


def assemble(run_dir: Path, plan: dict, runs: list[dict]) -> dict:
    from common.spec import Spec

    specs = [Spec.from_dict(s) for s in plan["specs"]]
    first_of_each = {s.model: s for s in reversed(specs)}  # the first spec of each model family
    return dict(run=run_dir.name, command=plan["command"], created=plan["started"], preset=plan["preset"],
                seeds=plan["seeds"], spec=specs[0].to_dict(),
                model_specs=[first_of_each[m].to_dict() for m in dict.fromkeys(s.model for s in specs)],
                families=list(dict.fromkeys(s.variational if s.model == "vae" else s.model for s in specs)),
                provenance=plan["provenance"] | {"resumes": resumes(plan)}, environment=provenance.environment(),
                environment_at_start=plan.get("environment"),
                data=plan.get("data_source"), peak=plan.get("peak", {}), runs=runs, paired=paired(runs, run_dir),
                across_seeds=across_seeds(runs) if plan["seeds"] > 1 else [])
