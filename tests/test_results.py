"""What is committed under results/: light, traceable, and regenerated from results.json alone."""

from __future__ import annotations

import json
import re

import pytest
from conftest import ROOT

from report import budget, tables

RUNS = sorted(p.parent for p in (ROOT / "results").glob("*/results.json"))
BENCHES = sorted(p.parent for p in (ROOT / "results").glob("*/bench.json"))
FOLDERS = sorted(set(RUNS) | set(BENCHES))
IN_PROGRESS = sorted(p.parent for p in (ROOT / "results" / "in-progress").glob("*/run.json"))
MACHINE_PATH = re.compile(r'"(/(?:root|home|tmp|work|Users|private|var)/[^"]*)"')


@pytest.mark.parametrize("run_dir", FOLDERS, ids=lambda p: p.name)
def test_committed_run_is_within_its_size_budget(run_dir):
    params, other = budget.sizes(run_dir)
    assert other <= budget.run_bytes(run_dir), f"{run_dir.name}: {other / 1e6:.1f} MB besides parameters"
    kept = set(budget.kept_params(run_dir))
    extra = [p for p in run_dir.rglob(budget.PARAMS) if p not in kept]
    assert not extra, f"parameter files beyond the budget (compare.py report --prune): {extra[:3]}"
    assert not [p for name in budget.NEVER for p in run_dir.rglob(name)], "checkpoints or caches committed"


@pytest.mark.parametrize("run_dir", FOLDERS, ids=lambda p: p.name)
def test_committed_files_hold_no_path_of_the_machine_that_made_them(run_dir):
    for path in [*run_dir.rglob("*.json"), *run_dir.rglob("*.md"), *run_dir.rglob("*.txt")]:
        found = MACHINE_PATH.findall(path.read_text(errors="replace"))
        assert not found, f"{path.relative_to(ROOT)}: {found[:2]}"


@pytest.mark.parametrize("run_dir", FOLDERS, ids=lambda p: p.name)
def test_committed_run_states_its_commit_and_whether_the_tree_was_clean(run_dir):
    results = json.loads(next(p for p in (run_dir / "results.json", run_dir / "bench.json") if p.exists()).read_text())
    assert re.fullmatch(r"[0-9a-f]{12}", results["provenance"]["commit"])
    first = next(p for p in (run_dir / "results.md", run_dir / "bench.md") if p.exists()).read_text().splitlines()[2]
    state = "a clean tree" if results["provenance"]["clean"] else "with uncommitted changes"
    assert results["provenance"]["commit"] in first and state in first


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_committed_tables_regenerate_from_results_json(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    markdown = (run_dir / "results.md").read_text()
    figures = re.findall(r"^!\[([^\]]+)\]", markdown, re.M)
    assert markdown == tables.markdown(results, figures) + "\n", "run `python compare.py report` on it"
    assert all((run_dir / f).exists() for f in figures)


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_committed_logs_hold_no_progress_bar_noise(run_dir):
    for log in run_dir.rglob("log.txt"):
        assert "\r" not in log.read_text(errors="replace"), log


def test_results_hold_runs_and_a_benchmark():
    """What README.md quotes is committed: at least one run and one interleaved benchmark."""
    assert RUNS and BENCHES


@pytest.mark.parametrize("run_dir", IN_PROGRESS, ids=lambda p: p.name)
def test_a_run_in_progress_holds_what_its_resume_needs_and_no_result(run_dir):
    """results/in-progress/README.md: a long run committed between sittings, to be continued with --resume."""
    from runner.worker import load_checkpoint

    plan = json.loads((run_dir / "run.json").read_text())
    assert plan["provenance"]["clean"] and all(r["provenance"]["clean"] for r in plan.get("resumes", []))
    assert not (run_dir / "results.json").exists() and not (run_dir / ".cache").exists()

    def finished(folder):
        metrics = folder / "metrics.json"
        return metrics.exists() and json.loads(metrics.read_text())["status"] == "ok"

    unfinished = [c.parent for c in run_dir.glob("*/config.json") if not finished(c.parent)]
    assert unfinished, "a finished run belongs in results/<run>, pruned"
    for folder in unfinished:
        restored = load_checkpoint(folder)
        assert restored is not None, f"{folder.name}: no complete checkpoint"
        spec = json.loads((folder / "config.json").read_text())["spec"]
        assert 0 < restored["loop"]["step"] < spec["steps"] and restored["loop"]["step"] % plan["checkpoint_every"] == 0
    found = [MACHINE_PATH.findall(p.read_text()) for p in run_dir.rglob("*.json")]
    assert not any(found), found
