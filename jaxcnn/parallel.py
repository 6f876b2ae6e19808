"""Data parallelism with ``jax.sharding``: a 1-D mesh over the batch axis.

Parameters and optimizer state are replicated; each training batch is
constrained to be split along its first axis, and XLA's SPMD partitioner turns
the gradient's batch sum into an all-reduce. The dataset stays replicated on
every device (MNIST-sized splits are ~50 MB as uint8).
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.errors import UserError

BATCH_AXIS = "batch"


def parse_devices(value: str | int | None) -> int:
    """``'all'`` or a positive count, checked against the devices JAX sees."""
    available = jax.device_count()
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
