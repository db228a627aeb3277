"""How a backend's process is started: one process, or one per device under the framework's launcher.

compare.py and the distributed tests start every backend through `command`, so a run on N
devices is launched the way each framework's own documentation does it:

  torch       torchrun --standalone --nproc-per-node N ...   (DistributedDataParallel: gloo on
              CPU, NCCL on GPU; one process per device)
  jax         one process that sees N devices (jax.jit over a NamedSharding mesh); on a CPU the
              N devices are made with XLA_FLAGS=--xla_force_host_platform_device_count=N
  tensorflow  one process, tf.distribute.MirroredStrategy over N devices; on a CPU the backend
              splits the CPU into N logical devices itself
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from common.spec import Spec

HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
ROOT = Path(__file__).resolve().parents[1]
SHARED_CACHES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")


def command(backend: str, devices: int, target: list[str]) -> list[str]:
    """argv that runs target (["-m", module, *args] or [script, *args]) for backend on devices."""
    if backend.startswith("torch") and devices > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
                *target]
    return [sys.executable, *target]


def environment(backend: str, devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: base (default os.environ) plus what the backend's variant and N devices need."""
    import backends

    env = dict(os.environ if base is None else base) | backends.environment(backend)
    if devices > 1 and backend.startswith("torch"):
        # torchrun would set 1 thread per process and warn; share the cores out instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // devices)))
    if devices > 1 and backend == "jax" and HOST_DEVICES_FLAG not in env.get("XLA_FLAGS", ""):
        # only the CPU platform reads it: with GPUs present, JAX uses the GPUs
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {HOST_DEVICES_FLAG}={devices}".strip()
    return env


def is_main_process(env: dict[str, str] | None = None) -> bool:
    """Whether this process writes a run's files, read from the launchers' own environment: torchrun's
    RANK, our JAX_PROCESS_ID, TF_CONFIG's chief (or worker 0 when there is no chief). Used where no
    backend object exists to ask (a failure while starting)."""
    import json

    env = os.environ if env is None else env
    if env.get("RANK", "0") != "0" or env.get("JAX_PROCESS_ID", "0") != "0":
        return False
    if "TF_CONFIG" in env:
        try:
            config = json.loads(env["TF_CONFIG"])
            task, cluster = config.get("task", {}), config.get("cluster", {})
            chief = "chief" if "chief" in cluster else "worker"
            return task.get("type") == chief and int(task.get("index", 0)) == 0
        except (ValueError, AttributeError, TypeError):
            return True
    return True


def contained(run_dir: Path) -> dict[str, str]:
    """Every cache and temporary file inside the run folder (Inductor's compiled kernels, matplotlib's font
    cache, XDG caches, temporary files), so that a run writes nowhere else; set in this process too."""
    cache = run_dir.resolve() / ".cache"
    (cache / "tmp").mkdir(parents=True, exist_ok=True)
    env = {"TMPDIR": str(cache / "tmp"), "XDG_CACHE_HOME": str(cache), "XDG_CONFIG_HOME": str(cache / "config"),
           "MPLCONFIGDIR": str(cache / "matplotlib"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
           "TRITON_CACHE_DIR": str(cache / "triton"), "KERAS_HOME": str(cache / "keras")}
    # a compile cache the user named explicitly is theirs to share between runs (the tests do)
    env |= {k: os.environ[k] for k in SHARED_CACHES if os.environ.get(k) and not os.environ[k].startswith(str(cache))}
    os.environ.update(env)
    import tempfile

    tempfile.tempdir = env["TMPDIR"]
    return env


def child_environment(backend: str, spec: Spec, run_dir: Path) -> dict[str, str]:
    """The worker's environment: what N devices need, and its caches inside the run folder."""
    return environment(backend, spec.devices) | contained(run_dir) | {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
