"""Data parallelism (spec.devices = N > 1): engine.py's one-device functions jitted over a 1-D device mesh.

Parameters, optimizer state and train_x are replicated; each step's batch rows and noise, and each evaluation
chunk's examples and noise, are split along their example axis, so each device computes its share and GSPMD
inserts the all-reduce that sums the gradient over the global batch. The noise of fast mode is drawn for the
global batch (or chunk) as one device draws it and then split, so N devices train and evaluate the very run one
device does, up to the order of the sums. Across hosts, jax.distributed joins the processes into one mesh.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# runner/launch.py puts it in XLA_FLAGS for a CPU run on N devices (backends never import runner/)
HOST_DEVICES_FLAG = "--xla_force_host_platform_device_count"
DATA_AXIS = "data"


def start() -> None:
    """jax.distributed.initialize(), once, when JAX_COORDINATOR_ADDRESS says this is one of several hosts.

    JAX reads the coordinator's host:port from that variable itself, and the process count and index from
    Slurm or Open MPI when they started the processes; for a launch by hand we pass JAX_NUM_PROCESSES
    and JAX_PROCESS_ID. It must run before JAX touches a device.
    """
    if "JAX_COORDINATOR_ADDRESS" not in os.environ or jax.distributed.is_initialized():
        return
    count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
    jax.distributed.initialize(num_processes=int(count) if count else None,
                               process_id=int(index) if index else None)


def digest(tree: Any) -> np.ndarray:
    """sha256 of the leaves' paths and values as 8 uint32: enough for hosts to tell whether they hold the same
    arrays."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        h.update(jax.tree_util.keystr(path).encode() + np.ascontiguousarray(leaf).tobytes())
    return np.frombuffer(h.digest(), np.uint32)


class DataParallel:
    """A 1-D mesh over the first N devices: arrays replicated on it, or split along one axis."""

    def __init__(self, devices: int) -> None:
        visible = jax.devices()  # every host's devices, when several hosts run together
        if len(visible) < devices:
            raise RuntimeError(
                f"{devices} devices asked for, but JAX sees {len(visible)} ({visible[0].platform}): on a CPU set "
                f"XLA_FLAGS={HOST_DEVICES_FLAG}={devices} before jax is imported (compare.py does); on GPUs "
                "make that many visible, or join several hosts with JAX_COORDINATOR_ADDRESS")
        if jax.process_count() > 1 and devices != len(visible):
            raise RuntimeError(f"on {jax.process_count()} hosts the mesh must span all {len(visible)} devices "
                               f"(every host computes a share), but devices = {devices}")
        self.mesh = Mesh(np.array(visible[:devices]), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    def along(self, axis: int | None) -> NamedSharding:
        """Split along axis (the batch or example axis), replicated along the others; None: replicated."""
        return self.replicated if axis is None else NamedSharding(self.mesh, PartitionSpec(*[None] * axis, DATA_AXIS))

    def put(self, a: np.ndarray, axis: int | None = None) -> jax.Array:
        # every process holds all of a and gives each of its devices its block (the jax docs' way to pass
        # the same NumPy array to jit on several hosts: there a plain NumPy input may only be replicated);
        # np.array copies, so donating these buffers later never touches the caller's arrays
        return jax.make_array_from_callback(a.shape, self.along(axis), lambda index: np.array(a[index]))

    def put_same_everywhere(self, tree: Any) -> Any:
        """Replicate host arrays that every host must hold equal (parameters, optimizer state)."""
        if jax.process_count() > 1:  # a host that resumed another checkpoint would silently train another run
            multihost_utils.assert_equal(digest(tree), "the hosts load different parameters or optimizer "
                                                       "states; their results folder must be one shared folder")
        return jax.tree.map(self.put, tree)

    def constraint(self, axis: int) -> Callable:
        """Inside jit: split an array along axis (negative: from the end); GSPMD then splits the ops that
        compute it too."""
        def split(a: jax.Array) -> jax.Array:
            return jax.lax.with_sharding_constraint(a, self.along(axis % a.ndim))

        return split

    def jit(self, fn: Callable, in_axes: Sequence[int | None], donate: tuple[int, ...] = (),
            static: tuple[int, ...] = ()) -> Callable:
        """fn jitted over the mesh: argument i split along in_axes[i] (None: replicated; static arguments
        have no entry), every output replicated so that any process can read it whole."""
        return jax.jit(fn, in_shardings=tuple(self.along(axis) for axis in in_axes), out_shardings=self.replicated,
                       donate_argnums=donate, static_argnums=static)
