"""The tree reads as floors (README.md, "Architecture"): common/ imports nothing above it, backends/ only common/,
report/ common/ and the NumPy reference, runner/ all of them. Checked on the source, every import statement
(lazy ones inside functions included), so no import circle between the floors can appear."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

# package -> the packages of the project it may import
ALLOWED = {
    "common": {"common"},
    "backends": {"backends", "common"},
    "report": {"report", "common", "backends.numpy"},
    "runner": {"runner", "report", "backends", "common"},
}
PROJECT = ("common", "backends", "report", "runner")


def imports(path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
    return [(line, name) for line, name in found if name.split(".")[0] in PROJECT]


def allowed(package: str, module: str) -> bool:
    return any(module == ok or module.startswith(ok + ".") for ok in ALLOWED[package])


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_floor_imports_only_the_floors_below_it(package):
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in sorted((ROOT / package).rglob("*.py"))
             for line, name in imports(path) if not allowed(package, name)]
    assert wrong == []


def test_the_check_sees_a_lazy_import_inside_a_function(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from backends.numpy import vae\n    return vae\n")
    assert imports(source) == [(2, "backends.numpy")]
    assert not allowed("common", "backends.numpy") and allowed("report", "backends.numpy.vae")
