"""What a committed run folder may hold: tables, figures, per-example arrays, logs, and parameters only where
they are small or belong to the headline run. tests/test_results.py enforces it on every committed run;
`python compare.py report results/<run> --prune` brings a finished run within it before it is committed.

  - everything but parameter files: at most RUN_BYTES per run folder, or ROW_BYTES per row of its table where a
    run has more rows than RUN_BYTES is made for (a multi-seed comparison);
  - parameter files (params.safetensors): at most PARAMS_BYTES per run folder (the literature's small networks
    fit: Burda et al.'s 784-200-200-50 network is 1.7 MB), except in HEADLINE_RUN, which keeps the first
    seed's parameters of every backend (6 MB each at 512-512), so that its figures can be redrawn and its
    models cross-evaluated;
  - never checkpoints, caches or absolute paths of the machine that made them.
"""

from __future__ import annotations

from pathlib import Path

RUN_BYTES = 5_000_000  # a twelve-row run (six backends x two families): 12 x 0.25 MB of per-example arrays + figures
# a row (one backend, family and seed): its per-example test figures (0.24 MB for 10,000 images), its metrics.json
# (0.15 MB) and its part of results.json (0.17 MB, mostly its training curve), measured on burda-short-cpu-seeds
ROW_BYTES = 650_000  # 0.61 MB a row there
PARAMS_BYTES = 2_000_000
HEADLINE_RUN = "paper-cpu-seeds"
PARAMS = "params.safetensors"
NEVER = ("checkpoint", "checkpoint.partial", "checkpoint.old", ".cache")


def kept_params(run_dir: Path) -> list[Path]:
    """The parameter files a committed run may keep."""
    files = sorted(run_dir.rglob(PARAMS))
    if run_dir.name == HEADLINE_RUN:
        return [f for f in files if f.parent.name.endswith("-seed0")]
    return files if sum(f.stat().st_size for f in files) <= PARAMS_BYTES else []


def prune(run_dir: Path) -> list[Path]:
    """Remove what a committed run may not hold; returns what was removed."""
    import shutil

    removed = []
    for name in NEVER:
        for path in sorted(run_dir.rglob(name), reverse=True):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
    keep = set(kept_params(run_dir))
    for path in sorted(run_dir.rglob(PARAMS)):
        if path not in keep:
            path.unlink()
            removed.append(path)
    return removed


def run_bytes(run_dir: Path) -> int:
    """The most a run folder may hold besides parameter files."""
    rows = sum(1 for metrics in run_dir.glob("*/metrics.json"))
    return max(RUN_BYTES, rows * ROW_BYTES)


def sizes(run_dir: Path) -> tuple[int, int]:
    """(bytes of parameter files, bytes of everything else) in a run folder."""
    params = other = 0
    for path in run_dir.rglob("*"):
        if path.is_file():
            if path.name == PARAMS:
                params += path.stat().st_size
            else:
                other += path.stat().st_size
    return params, other
