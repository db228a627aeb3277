"""Keras 3 (backends/keras): the VAE written once, held on each of its three engines to the checks every backend
meets, plus the registry and command-line rules of a backend whose variants are processes.

Keras picks its engine once per process (KERAS_BACKEND), so keras[jax], keras[torch] and keras[tensorflow] cannot
share the pytest process: each engine runs ONE child process (tests/keras_checks.py) that calls the parity and
conformance tests on keras[<engine>] and reports every check as JSON; each check is then a test here, so a failure
names its engine and check. The three children take about two minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, ROWS
from helpers import compare
from keras_checks import CHECKS

import backends
from common.models import FAMILIES as MODELS

ENGINES = backends.framework("keras").variants
CHILD_TIMEOUT = 600  # seconds; about 60 on the slowest engine here

_outcomes: dict[str, dict] = {}


def engine_param(engine: str):
    """An engine whose framework is absent is skipped, except in CI, where that is a failure."""
    skip = not backends.installed(f"keras[{engine}]") and os.environ.get("CI") != "true"
    return pytest.param(engine, marks=pytest.mark.skipif(skip, reason=f"keras[{engine}] not installed"))


def outcomes(engine: str, folder) -> dict:
    """Every check's outcome on the engine, from its one child process (run on first use)."""
    if engine not in _outcomes:
        out = folder / f"keras-{engine}.json"
        env = dict(os.environ) | backends.environment(f"keras[{engine}]")
        try:
            done = subprocess.run([sys.executable, str(ROOT / "tests" / "keras_checks.py"), engine, str(out)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
            ending = f"exit status {done.returncode}; its output ends:\n{(done.stdout + done.stderr)[-3000:]}"
        except subprocess.TimeoutExpired as e:
            ending = f"no end after {CHILD_TIMEOUT} s; its output ends:\n{str(e.output or '')[-3000:]}"
        results = json.loads(out.read_text()) if out.exists() else {}
        _outcomes[engine] = dict(results=results, ending=ending)
    return _outcomes[engine]


@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("engine", [engine_param(e) for e in ENGINES])
def test_keras_engine_meets_every_check(engine, check, tmp_path_factory):
    got = outcomes(engine, tmp_path_factory.getbasetemp())
    result = got["results"].get(check)
    assert result is not None, f"keras[{engine}]: the child never reported {check!r} ({got['ending']})"
    assert result["outcome"] == "ok", f"keras[{engine}], {check}:\n{result['outcome']}"


def test_keras_rows_are_the_three_engines_and_stay_out_of_this_process():
    assert backends.expand("keras") == ["keras[jax]", "keras[torch]", "keras[tensorflow]"]
    assert backends.expand("keras[torch]") == ["keras[torch]"]
    assert backends.environment("keras[tensorflow]") == {"KERAS_BACKEND": "tensorflow"}
    assert backends.environment("jax") == {}
    assert "keras" not in backends.DEFAULT
    assert not any(row.startswith("keras") for row in ROWS)  # the in-process parametrisations


def test_keras_runs_the_vae_only_and_says_so_up_front(tmp_path):
    for model in MODELS:
        assert backends.supports("keras[jax]", model) == (model == "vae")
        assert backends.supports("jax", model)
    assert backends.unsupported("keras", "fa") == "keras supports --model vae only (got fa)"
    result = compare("--backends", "jax,keras", "--model", "vae,fa", "--out", str(tmp_path / "run"), timeout=120)
    assert result.returncode == 2
    assert "keras supports --model vae only (got fa)" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
