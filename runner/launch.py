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

HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def command(backend: str, devices: int, target: list[str]) -> list[str]:
    """argv that runs target (["-m", module, *args] or [script, *args]) for backend on devices."""
    if backend == "torch" and devices > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
                *target]
    return [sys.executable, *target]


def environment(backend: str, devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: base (default os.environ) plus what the backend's variant and N devices need."""
    import backends

    env = dict(os.environ if base is None else base) | backends.environment(backend)
    if devices > 1 and backend == "torch":
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
