"""Multi-host start-up on JAX's own runtime: `jax.distributed.initialize`, nothing home-made.

    python train.py --config ... --workdir ...            # a TPU pod, SLURM, Open MPI, Kubernetes: detected
    python train.py ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I   # anywhere else

After it, `jax.devices()` holds every device of every process and the trainer's one mesh spans them all.
On CPU the processes talk through gloo collectives. A process that dies is noticed by the others through
JAX's coordination service: its heartbeats stop and, after HEARTBEAT_TIMEOUT_SECONDS, every other process
is terminated with an error naming the lost task (JAX's default waits 100 s).
"""

from __future__ import annotations

import logging

import jax

from jaxnets.errors import LaunchError

log = logging.getLogger("jaxnets")

HEARTBEAT_TIMEOUT_SECONDS = 20
INITIALIZATION_TIMEOUT_SECONDS = 300  # how long the processes wait for each other at start-up


def cluster_detected() -> bool:
    """Whether JAX recognises the environment as one of its clusters (TPU pod, SLURM, Open MPI, Kubernetes)."""
    try:
        from jax._src import clusters  # JAX's own detection; private, so a change of it means "not detected"
    except ImportError:
        return False
    return any(cluster.is_env_present() for cluster in getattr(clusters.ClusterEnv, "_cluster_types", ()))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins the job's processes; returns False (and does nothing) for a single-process run.

    Call before anything touches a JAX backend. All three arguments, or none (then JAX detects the cluster).
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    if any(value is not None for value in given.values()):
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise LaunchError(f"--{' and --'.join(missing)} missing: give all of --coordinator_address, "
                              "--num_processes and --process_id, or none of them on a detected cluster")
        if not 0 <= process_id < num_processes:
            raise LaunchError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
    elif not cluster_detected():
        return False
    # Only the CPU client reads this; on GPU/TPU the device collectives (NCCL, ICI) are used regardless.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
        initialization_timeout=INITIALIZATION_TIMEOUT_SECONDS, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS,
    )
    log.info("process %d of %d; %d local devices of %d", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return True
