"""README.md's install and test commands are the ones CI runs, and its figures name their command."""

from __future__ import annotations

import re

from conftest import ROOT


def test_ci_runs_the_install_and_test_commands_of_the_readme():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('python -m pip install -e ".[all,test]"', "python -m pytest"):
        assert command in readme and re.search(rf"^{re.escape(command)}$", ci, re.M), command


def test_every_results_table_in_the_readme_names_the_command_that_made_it():
    readme = (ROOT / "README.md").read_text()
    tables = [m.start() for m in re.finditer(r"^\| family \| backend \|", readme, re.M)]
    assert tables, "README.md shows a results table"
    for start in tables:
        assert "python compare.py" in readme[max(0, start - 1500):start], "command shown above the table"
