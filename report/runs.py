"""Where a run's pieces are and what it measured, read by the tables and the figures alike."""

from __future__ import annotations

from pathlib import Path


def run_folder(run_dir: Path, run: dict) -> Path:
    """Where a backend and family wrote its files."""
    return run_dir / run.get("folder", f"{run['backend']}-{run['family']}")


def run_peak(results: dict) -> dict | None:
    """The best float32 GEMM rate measured anywhere in the run (every framework's GEMMs, large square and at
    the model's shape, and NumPy's), so that a % of peak can never read above 100 %."""
    candidates = []
    sources = [("numpy", results.get("peak", {}))] + [(r["backend"], r.get("peak", {})) for r in results["runs"]]
    for by, source in sources:
        for key in ("square_flop_per_s", "square_4096_flop_per_s", "model_shape_flop_per_s"):
            if source.get(key):
                candidates.append((source[key], by, key))
    if not candidates:
        return None
    best = max(candidates, key=lambda c: c[0])
    return {"flop_per_s": best[0], "by": best[1], "shape": best[2]}
