"""Will a compiled program fit? Checked before the first step, so a batch too big for
the machine is one sentence with the numbers, not an allocator traceback minutes in."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax

from jaxcnn.errors import UserError, first_line


def needed_bytes(compiled) -> int | None:
    """What running ``compiled`` allocates beyond its (already placed) arguments."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError, AttributeError):
        return None
    if stats is None:
        return None
    return stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes


def free_bytes(device) -> int | None:
    """Free memory of ``device``: the allocator's limit less its use on an accelerator,
    ``MemAvailable`` of the host on a CPU; None where neither can be read."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def gigabytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(programs: dict[str, object], batch_size: int, free: int | None = None) -> None:
    """Refuse a run whose largest program needs more memory than is free.

    Args:
        programs: name -> compiled program (they run one at a time).
        batch_size: for the message.
        free: free bytes (default: :func:`free_bytes` of the first device).
    """
    free = free_bytes(jax.devices()[0]) if free is None else free
    needs = {name: needed_bytes(c) for name, c in programs.items()}
    needs = {name: n for name, n in needs.items() if n is not None}
    if free is None or not needs:
        return
    name, need = max(needs.items(), key=lambda kv: kv[1])
    if need > free:
        raise UserError(
            f"this run does not fit in memory: its {name} program needs {gigabytes(need)} "
            f"at batch size {batch_size}, and {gigabytes(free)} is free; lower --batch-size"
        )


@contextlib.contextmanager
def out_of_memory_is_an_error(batch_size: int) -> Iterator[None]:
    """An allocator failure (``RESOURCE_EXHAUSTED``) inside as one sentence."""
    try:
        yield
    except jax.errors.JaxRuntimeError as err:
        if "RESOURCE_EXHAUSTED" not in str(err):
            raise
        raise UserError(
            f"out of memory at batch size {batch_size} ({first_line(err, 200)}); lower --batch-size"
        ) from None
