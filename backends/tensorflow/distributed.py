"""Data parallelism over N devices (spec.devices > 1), tf.distribute's way.

A MirroredStrategy over N GPUs, or over N logical devices split from the CPU (MultiWorkerMirroredStrategy
across hosts when TF_CONFIG is set). Variables and optimizer slots are mirrored; each replica computes the
gradient of the summed objective over its rows of the global batch (XLA-compiled), an all-reduce sums them,
and every replica applies the same update to its copy; evaluation splits each chunk's examples the same way.
The noise is drawn whole, for the global batch or chunk, by the engine and then split here, so N devices
train and evaluate the very run one device does, up to the order of the sums.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import tensorflow as tf

from backends.tensorflow.optim import Optimizer

SUM = tf.distribute.ReduceOp.SUM
HOST = "/cpu:0"  # train_x stays here, once; each replica gathers its rows of a batch from it


def split_cpu(devices: int) -> list[str]:
    """The CPU as `devices` logical devices; TF can split it only before its runtime starts."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
    except RuntimeError as e:  # started already: fine if it was split as far (an earlier load did it)
        present = len(tf.config.list_logical_devices("CPU"))
        if present < devices:
            raise RuntimeError(
                f"{devices} devices need the CPU split into {devices} logical devices before TensorFlow's "
                f"runtime starts, but it has started in this process with {present}: load this backend "
                "with devices > 1 first, in a fresh process (as compare.py and the tests do)") from e
    return [f"/cpu:{i}" for i in range(devices)]


def is_chief(resolver: tf.distribute.cluster_resolver.ClusterResolver | None) -> bool:
    """TF's convention: one host (no resolver), the "chief" task, else worker 0 when there is no chief."""
    if resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and "chief" not in resolver.cluster_spec().jobs)


@functools.cache  # one per process: MultiWorkerMirroredStrategy sets up collectives, which TF allows once
def strategy(devices: int) -> tf.distribute.Strategy:
    """`devices` replicas: every host's GPUs (else its CPU) when TF_CONFIG is set, else N GPUs or N CPU devices."""
    gpus = tf.config.list_physical_devices("GPU")
    if "TF_CONFIG" in os.environ:
        implementation = tf.distribute.experimental.CommunicationImplementation
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=implementation.NCCL if gpus else implementation.AUTO)
        found = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        if found.num_replicas_in_sync != devices:
            raise ValueError(f"devices = {devices}, but TF_CONFIG's hosts with {len(gpus) or 'no'} GPUs each make "
                             f"{found.num_replicas_in_sync} replicas: devices must be hosts x GPUs per host")
        return found
    if len(gpus) >= devices:
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(devices)])  # NCCL all-reduce
    # NCCL is GPU-only; between logical CPU devices, sum on one device and copy the sum back
    return tf.distribute.MirroredStrategy(split_cpu(devices), cross_device_ops=tf.distribute.ReductionToOneDevice())


def replica_rows(t: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """This replica's share of t along axis: contiguous blocks in replica order, sizes differing by <= 1."""
    ctx = tf.distribute.get_replica_context()
    n, r, replicas = tf.shape(t)[axis], ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync
    return tf.gather(t, tf.range(r * n // replicas, (r + 1) * n // replicas), axis=axis)


class Replicas:
    """engine.Backend's entry points on N replicas; each takes and returns the global arrays. Examples are
    axis 0 of x and of the batch indices, axis 1 of the noise (k, n, L)."""

    def __init__(self, devices: int):
        self.strategy = strategy(devices)
        self.is_main = is_chief(self.strategy.cluster_resolver)

    def build(self, model: tf.Module, optimizer: Optimizer, train_x: tf.Tensor, objective_and_grads: Callable,
              signature: list[tf.TensorSpec]) -> None:
        """model and optimizer made in self.strategy.scope() (mirrored), train_x on HOST; objective_and_grads(x,
        eps) the one-device function, signature its [x, eps] input signature."""
        self.model, self.optimizer, self.train_x = model, optimizer, train_x
        # XLA compiles each replica's math for its device; the loop around strategy.run stays a graph, as
        # MirroredStrategy's all-reduce between CPU devices does not run inside XLA
        self.local_objective_and_grads = tf.function(objective_and_grads, input_signature=signature, jit_compile=True)
        self.local_update = tf.function(lambda grads, lr: optimizer.apply(model.v, grads, lr), jit_compile=True)

    def replica_objective_and_grads(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """In a replica, given its rows: their objective, and d(sum objective)/d param summed over all replicas."""
        objective, grads = self.local_objective_and_grads(x, eps)
        return objective, tf.distribute.get_replica_context().all_reduce(SUM, grads)

    def step(self, indices: tf.Tensor, eps: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        """engine.Backend._step: each replica's rows of the global batch, then the same update on every copy."""
        def replica_step(indices: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            with tf.device(HOST):
                x = tf.cast(tf.gather(self.train_x, replica_rows(indices)), self.model.dtype)
            objective, grads = self.replica_objective_and_grads(x, replica_rows(eps, axis=1))
            return tf.reduce_sum(objective), {k: -g for k, g in grads.items()}

        objective_sum, grads = self.strategy.run(replica_step, args=(indices, eps))
        # update() calls fn once per device of its first argument, with that device's grads; inside, every
        # mirrored variable (parameters, slots and step count alike) reads and writes that device's copy
        any_variable = next(iter(self.model.v.values()))
        self.strategy.extended.update(any_variable, lambda _, grads: self.local_update(grads, lr), args=(grads,))
        return self.strategy.reduce(SUM, objective_sum, axis=None) / tf.cast(tf.shape(indices)[0], self.model.dtype)

    def objective_and_grads(self, x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        def replica(x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            return self.replica_objective_and_grads(replica_rows(x), replica_rows(eps, axis=1))

        objective, grads = self.strategy.run(replica, args=(x, eps))
        # all-reduced, so every replica holds the same gradient: take this host's first
        return self.strategy.gather(objective, axis=0), self.strategy.experimental_local_results(grads)[0]

    def log_weights(self, x: tf.Tensor, eps: tf.Tensor, pair: Callable) -> tuple[tf.Tensor, tf.Tensor]:
        """(log w, elbo), each (k, n), the examples split across the replicas (unevenly if they must be)."""
        def replica(x: tf.Tensor, eps: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return pair(self.model.log_weights(replica_rows(x), replica_rows(eps, axis=1)))

        log_w, elbo = self.strategy.run(replica, args=(x, eps))
        return self.strategy.gather(log_w, axis=1), self.strategy.gather(elbo, axis=1)
