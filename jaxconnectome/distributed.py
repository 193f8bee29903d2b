"""Joining several processes (hosts) into one JAX runtime, and decisions they share.

A multi-host run starts one process per host. Each calls `initialize` before touching
devices; afterwards jax.devices() lists the devices of every process and the mesh spans
them all. Single-process runs skip this entirely. Decisions that depend on one process's
clock or signals (the wallclock cap, SIGTERM) take process 0's view, so that every process
stops at the same step.
"""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
from jax.experimental import multihost_utils

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


class StopSignal:
    """Turns SIGTERM and SIGINT into a request to checkpoint and stop after the current step."""

    def __init__(self):
        self.name: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        del frame
        self.name = signal.Signals(signum).name

    def received(self) -> bool:
        """Return whether a signal arrived, as process 0 saw it, so every process stops together."""
        return bool(process_zero_value(1.0 if self.name else 0.0))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def process_zero_value(value: float) -> float:
    """Return process 0's value on every process, so that time-based decisions agree."""
    if jax.process_count() == 1:
        return value
    return float(multihost_utils.broadcast_one_to_all(np.float64(value)))


def process_zero_run_id(run_id: str) -> str:
    """Return process 0's run id on every process; each drew its own random UUID."""
    if jax.process_count() == 1:
        return run_id
    encoded = np.zeros(256, np.uint8)
    raw = run_id.encode()[:256]
    encoded[: len(raw)] = np.frombuffer(raw, np.uint8)
    shared = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
    return bytes(shared[shared != 0]).decode()
