"""Joining several processes (hosts) into one JAX runtime with jax.distributed.

A multi-host run starts one process per host. Each calls `initialize` before touching
devices; afterwards jax.devices() lists the devices of every process and the mesh spans
them all. Single-process runs skip this entirely.
"""

from __future__ import annotations

import os

import jax

from jaxconnectome.settings import SettingsError

# Variables set by launchers that JAX's own cluster detection understands.
CLUSTER_SIZE_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def cluster_detected(environ=os.environ) -> bool:
    """Return True when a launcher or the user set up more than one process."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return any(int(environ.get(name, "1") or "1") > 1 for name in CLUSTER_SIZE_VARIABLES)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Call jax.distributed.initialize when flags or cluster variables ask for it.

    Explicit flags win; otherwise JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID, or a SLURM or Open MPI launch, is detected by JAX itself. Returns
    whether the process joined a multi-process run.
    """
    explicit = coordinator is not None or num_processes is not None or process_id is not None
    if not explicit and not cluster_detected():
        return False
    if explicit and (coordinator is None or num_processes is None or process_id is None):
        raise SettingsError("--coordinator, --num-processes and --process-id must be given together")
    # CPU devices of different processes exchange data through gloo; GPUs use NCCL.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True
