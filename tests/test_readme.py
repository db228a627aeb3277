"""README.md: its install and test commands are the ones CI runs, and every number in it comes from results."""

from __future__ import annotations

import re

from conftest import ROOT

from report import readme

README = (ROOT / "README.md").read_text()


def test_ci_runs_the_install_and_test_commands_of_the_readme():
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('python -m pip install -e ".[all,test]"', "python -m pytest"):
        assert command in README and re.search(rf"^{re.escape(command)}$", ci, re.M), command


def test_generated_blocks_match_the_results_they_name():
    """Every table and sentence with a figure in README.md sits in a generated block; each block is exactly what
    `python compare.py report --readme` builds from the named results.json or bench.json."""
    found = readme.blocks(README)
    for kind, path, text in found:
        assert (ROOT / path.partition("#")[0]).is_dir(), path
        assert text == readme.KINDS[kind](path).rstrip("\n") + "\n", f"{kind} {path}: run compare.py report --readme"


def test_every_generated_block_names_the_command_that_made_its_run():
    for kind, path, _ in readme.blocks(README):
        start = README.index(f"<!-- generated: {kind} {path} -->")
        folder = path.partition("#")[0]
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
