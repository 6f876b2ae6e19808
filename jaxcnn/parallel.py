"""Data parallelism with ``jax.sharding``: a 1-D mesh over the batch axis.

Parameters and optimizer state are replicated; each training batch is
constrained to be split along its first axis, and XLA's SPMD partitioner turns
the gradient's batch sum into an all-reduce. The dataset stays replicated on
every device (MNIST-sized splits are ~50 MB as uint8).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.errors import UserError, first_line

BATCH_AXIS = "batch"


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run with ``jax.distributed.initialize`` (before any JAX work).

    Unset arguments come from the cluster (SLURM, Open MPI, Kubernetes, TPU pods)
    or, for the coordinator, from ``$JAX_COORDINATOR_ADDRESS``. CPU processes
    exchange gradients through gloo; GPUs use NCCL whatever this setting says.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except (ValueError, TypeError) as err:
        raise UserError(
            f"--distributed: {str(err).strip().rstrip('.')}; give --coordinator HOST:PORT, "
            "--num-processes and --process-id, or launch under SLURM/Open MPI"
        ) from None
    except RuntimeError as err:  # e.g. the coordinator never answered
        raise UserError(f"--distributed: could not join the run ({first_line(err)})") from None


def is_primary() -> bool:
    """Process 0 of a multi-process run (always true otherwise): the one that writes files."""
    return jax.process_index() == 0


@contextlib.contextmanager
def all_or_none() -> Iterator[None]:
    """A user error inside this block, on any process, stops every process cleanly.

    Without it, a process that fails to start (a missing --data-dir on one host)
    exits while the others wait in their first collective until JAX's heartbeat
    gives up and aborts them with a C++ stack trace. Every process must pass
    through the same blocks in the same order: each ends with one all-gather of a
    failed flag.
    """
    if jax.process_count() == 1:
        yield
        return
    error = None
    try:
        yield
    except UserError as err:
        error = err
    from jax.experimental import multihost_utils

    failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed.any():
        which = ", ".join(str(i) for i in np.flatnonzero(failed))
        raise UserError(f"process {which} of the run failed to start (see its output); stopped")


def parse_devices(value: str | int | None) -> int:
    """``'all'`` or a positive count, checked against the devices JAX sees.

    With several processes every device must take part (a process left out of
    the mesh would have nothing to run), so the default is then all of them.
    """
    available = jax.device_count()
    if jax.process_count() > 1:
        if value in (None, "", "all", available, str(available)):
            return available
        raise UserError(
            f"--devices {value}: a run over {jax.process_count()} processes trains on all "
            f"{available} of their devices; use --devices all"
        )
    if value in (None, "", 1, "1"):
        return 1
    if value == "all":
        return available
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--devices takes 'all' or a number, got '{value}'") from None
    if not 1 <= count <= available:
        raise UserError(f"--devices {count}: JAX sees {available} device(s) here")
    return count


def make_mesh(count: int) -> Mesh | None:
    """A mesh over the first ``count`` devices, or None for single-device training."""
    if count == 1:
        return None
    return Mesh(jax.devices()[:count], (BATCH_AXIS,))


def check_batch_size(batch_size: int, count: int) -> None:
    if batch_size % count:
        raise UserError(
            f"batch size {batch_size} is not divisible by {count} devices; choose a batch size "
            f"that is a multiple of {count} (e.g. {batch_size - batch_size % count or count})"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def split_batch(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Constrain ``x`` [B, ...] to be split over the mesh along B (a no-op without a mesh).

    A final partial batch whose size the devices do not divide is left to XLA.
    """
    if mesh is None or x.shape[0] % mesh.size:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))
