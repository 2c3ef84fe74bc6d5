"""Data parallelism: one mesh axis over every device (all hosts), batch sharded, state replicated.

The step body runs per device under `jax.shard_map`, not as a globally sharded `jit`: XLA's SPMD
partitioner all-gathers the whole batch for a grouped convolution (openxla/xla#47945), so ResNeXt would
compute every device's work on every device. Under shard_map each device computes only its shard and
the only collectives are the all-reduces the step asks for (gradients, BN statistics, metrics).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"  # the one mesh axis; steps reduce over it by this name


def create_mesh(devices=None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices, (DATA_AXIS,))


def platform(mesh: Mesh) -> str:
    """Where the mesh's steps run: "cpu", "gpu", "tpu" (a mesh holds devices of one platform)."""
    return mesh.devices.flat[0].platform


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def data_parallel_train_step(step_fn, mesh: Mesh):
    """jit(shard_map(step)) with the state donated: (state, global batch) -> (state, metrics)."""
    sharded = jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)


def data_parallel_train_steps(steps_fn, mesh: Mesh):
    """jit(shard_map(steps)) with the state donated: (state, stacked global batches, n) -> (state, stacked metrics);
    the batches' second axis is sharded (`stacked_batch_sharded`), n is one number for every device."""
    sharded = jax.shard_map(steps_fn, mesh=mesh, in_specs=(P(), P(None, DATA_AXIS), P()), out_specs=(P(), P()))
    return jax.jit(sharded, donate_argnums=0)


def data_parallel_eval_step(step_fn, mesh: Mesh):
    return jax.jit(jax.shard_map(step_fn, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P()))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
    """Batches stacked for several steps [steps, batch, ...]: each step's batch sharded as `batch_sharded`."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def device_batch(local_batch: dict, mesh: Mesh, sharding: NamedSharding | None = None) -> dict:
    """Host-local numpy batch (this process's slice of the global batch) -> one global sharded array per entry."""
    sharding = batch_sharded(mesh) if sharding is None else sharding
    return jax.tree.map(functools.partial(jax.make_array_from_process_local_data, sharding), local_batch)


def prefetch_to_device(items, put, size: int = 2):
    """Yields `put(item)` (which starts an item's transfer to the devices) for each item, `size` items ahead, so
    that the transfers run while the current step does."""
    queue = []
    for item in items:
        queue.append(put(item))
        if len(queue) > size:
            yield queue.pop(0)
    yield from queue
