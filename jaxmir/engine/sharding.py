"""Device mesh, batch placement and multi-host start-up.

One code path for 1 device, N local devices and N hosts: the model state is replicated and the
batch is split along the mesh's `data` axis. Multi-host runs go through `jax.distributed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def maybe_initialize_distributed() -> bool:
    """Start `jax.distributed` when the environment describes a multi-process job.

    Set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run under a cluster
    that jax auto-detects, e.g. SLURM, with JAXMIR_DISTRIBUTED=1). Must run before any other
    JAX call. Returns whether it initialised.
    """
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not explicit and os.environ.get("JAXMIR_DISTRIBUTED") != "1":
        return False
    if explicit:
        jax.distributed.initialize(
            coordinator_address=explicit,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{what}={batch_size} must be divisible by the {n} devices of the mesh")
    if batch_size % jax.process_count():
        raise ValueError(
            f"{what}={batch_size} must be divisible by {jax.process_count()} processes"
        )


def local_batch_size(global_batch: int) -> int:
    return global_batch // jax.process_count()


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's slice of a global batch -> global arrays split along `data`."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def put_replicated(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))
