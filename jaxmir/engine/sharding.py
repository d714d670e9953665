"""Device mesh, batch placement and multi-host start-up.

One code path for 1 device, N local devices and N hosts: the model state is replicated and the
batch is split along the mesh's `data` axis. Multi-host runs go through `jax.distributed`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
T = TypeVar("T")


def multi_process_requested() -> bool:
    """Whether the environment asks for a multi-process job."""
    return bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or (
        os.environ.get("JAXMIR_DISTRIBUTED") == "1"
    )


def maybe_initialize_distributed() -> bool:
    """Start `jax.distributed` when the environment describes a multi-process job.

    Either JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set (any
    launcher), or JAXMIR_DISTRIBUTED=1 asks jax to detect the cluster itself (SLURM, TPU VMs,
    Open MPI). Must run before any other JAX computation; a second call is a no-op. On CPU the
    processes' collectives go through gloo. Returns whether this is a multi-process run.
    """
    if not multi_process_requested():
        return False
    explicit = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if jax.distributed.is_initialized():
        return True
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if explicit:
            missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in os.environ]
            if missing:
                raise ValueError(
                    f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} is not"
                )
            jax.distributed.initialize(
                coordinator_address=explicit,
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
            )
        else:
            jax.distributed.initialize()
    except RuntimeError as e:  # e.g. JAX already ran a computation in this process
        raise RuntimeError(f"cannot start the multi-process run: {e}") from e
    return True


def is_primary() -> bool:
    """Process 0: the one that writes reports, configs and plots and shows progress."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def processes_without(flag: bool) -> list[int]:
    """The indices of the processes where `flag` is false (a collective: all processes call
    it at the same point)."""
    if jax.process_count() == 1:
        return [] if flag else [0]
    from jax.experimental import multihost_utils

    flags = np.asarray(multihost_utils.process_allgather(np.int32(flag))).reshape(-1)
    return [i for i, f in enumerate(flags) if not f]


def primary_first(fn: Callable[[], T], name: str) -> T:
    """`fn()` on process 0, then on the others once it is done: for work that writes shared
    files (a corpus cache), which the others then find complete instead of racing to write."""
    if is_primary():
        out = fn()
        sync(name)
        return out
    sync(name)
    return fn()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh over `devices` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    """ConfigError naming `what` unless the global batch splits evenly over the mesh."""
    from jaxmir.config import ConfigError

    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"{what}={batch_size} must be divisible by the {n} devices of the mesh")
    if batch_size % jax.process_count():
        raise ConfigError(
            f"{what}={batch_size} must be divisible by {jax.process_count()} processes"
        )


def check_batch_sizes(cfg, mesh: Mesh) -> None:
    """The train and validation batches of `cfg` (a Config) split evenly over `mesh`."""
    check_batch_size(cfg.train.batch_size, mesh)
    check_batch_size(cfg.train.val_batch_size, mesh, "train.val_batch_size")


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's slice of a global batch -> global arrays split along `data`."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def put_replicated(tree, mesh: Mesh):
    return jax.device_put(tree, replicated(mesh))


def onto_mesh(tree, mesh: Mesh):
    """`tree` with every leaf replicated over `mesh`: leaves made outside a jitted step (pure
    callbacks' new states, a new learning rate) live on one local device, which a multi-process
    job can neither feed to the step nor save. Leaves already replicated are kept as they are."""
    rep = replicated(mesh)

    def place(x):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(rep, x.ndim):
            return x
        return jax.device_put(np.asarray(x), rep)

    return jax.tree.map(place, tree)
