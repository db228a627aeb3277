"""Where a run's numbers come from: the commit and whether the tree was clean, captured when the run starts,
and the machine (CPU, accelerator, cores, thread settings). No absolute path of this machine is recorded."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                    "XLA_FLAGS", "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "CUDA_VISIBLE_DEVICES")


def git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.rstrip() if done.returncode == 0 else ""  # porcelain lines start with a space


def commit_state() -> dict:
    """The commit and whether the tree differs from it (tracked changes, or untracked files outside results/)."""
    commit = git("rev-parse", "--short=12", "HEAD").strip() or "unknown"
    changes = [line[3:] for line in git("status", "--porcelain").splitlines()]
    changed = [path for path in changes if not path.startswith("results/")]
    return {"commit": commit, "clean": commit != "unknown" and not changed, "changed_files": changed[:20]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """Model and driver of each NVIDIA GPU (nvidia-smi), else none."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [f"{name.strip()} (driver {driver.strip()})" for name, driver in
            (line.split(",", 1) for line in out.splitlines() if "," in line)]


def environment() -> dict:
    return dict(python=platform.python_version(), platform=platform.platform(), cpu=cpu_model(),
                cpu_count=os.cpu_count(), gpus=gpus() or ["none"],
                threads={k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ})


def relative(path: Path | str | None) -> str | None:
    """A path as recorded in results: relative to the project when inside it, else only its name."""
    if path is None:
        return None
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
