"""What the scripts share: one-line errors, the compilation cache, common flags."""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from jaxcnn.errors import UserError
from jaxcnn.report import cache_home

DEFAULT_CACHE = cache_home() / "xla"


def enable_compilation_cache() -> Path | None:
    """JAX's persistent compilation cache, so a repeated run skips most compiling.

    Location: ``$JAXCNN_CACHE_DIR``, else ``~/.cache/jaxcnn/xla``; set
    ``JAXCNN_CACHE_DIR=off`` to disable it. Returns the directory (None: off).
    """
    import jax

    where = os.environ.get("JAXCNN_CACHE_DIR", str(DEFAULT_CACHE))
    if where.lower() == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", where)
    # Every program, however quick to compile: building a model runs dozens of
    # small eager init ops, each its own ~40 ms compile, and a threshold like
    # JAX's default (1 s), or the 0.5 s set here before, kept them out of the
    # cache. With them in, a warm inception run starts about 4 s sooner on a
    # 2-core CPU (create: 5 s -> 0.9 s); a cold run is no slower. The whole
    # cache for all models is a few MB.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return Path(where)


def import_flax() -> None:
    """Import flax with IPython hidden, unless IPython is already running.

    flax.nnx asks IPython at import whether it runs in a notebook, to colour its
    reprs; where IPython is installed, importing it for that question took 0.4-0.7 s
    of a 3-7 s short run (2-core EPYC, 2026-12-06, ``python -X importtime``). A
    script is no notebook, and the answer is the same without it; later imports of
    IPython work as usual.
    """
    hidden = "IPython" not in sys.modules
    if hidden:
        sys.modules["IPython"] = None  # `from IPython import ...` raises ImportError
    try:
        importlib.import_module("flax.nnx")
    finally:
        if hidden and "IPython" in sys.modules and sys.modules["IPython"] is None:
            del sys.modules["IPython"]


def executables(cache: Path | None):
    """The trainer's compiled programs, kept in ``executables/`` of the compilation
    cache (:mod:`jaxcnn.executables`): a warm run skips tracing them too."""
    from jaxcnn.executables import Executables

    return None if cache is None else Executables(cache / "executables")


# glibc's mallopt parameters, and the values tune_malloc sets
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
MALLOC_SETTINGS = (
    (M_MMAP_MAX, 0),  # large blocks come from the heap, not from fresh mappings...
    (M_TRIM_THRESHOLD, 2**31 - 1),  # ...and freed memory is kept for the next call
    (M_TOP_PAD, 64 << 20),
)


def tune_malloc() -> bool:
    """Keep the memory XLA:CPU frees for its next call (glibc only; returns whether set).

    Every call of a compiled program allocates its temporary buffers afresh, and glibc
    serves blocks that large from new mappings and unmaps them when freed, so each
    call page-faults and zeroes them again: 94 MB a call for cifar_cnn's step, whether
    the call runs 1 step or 10 (``ru_minflt``). With these settings the freed blocks
    stay in the heap: a one-step call took 42 ms instead of 70-85, the epoch's last
    partial batch 25 ms instead of 42-45, and whole epochs paired in one process were
    1.078x (cifar_cnn) and 1.033x (mnist_cnn) faster (2-core AMD EPYC Zen 4, jax
    0.10.2). The price: the process keeps its peak heap until it exits.

    Each thread keeps its own arena. ``M_ARENA_MAX=1`` (one arena for all) also kept
    the blocks, but XLA's threads then queued on its one lock (Eigen takes its packing
    buffers from malloc on every step): 1.1-1.2 million futex calls in a 5-epoch
    cifar_cnn run instead of 22,000, and epochs slower by 1.30x (resnet), 1.07x
    (cifar_cnn) and 1.1x (mnist_cnn), medians of 6 rounds of processes alternating.
    Blocks over 64 MB taken on another thread than the main one are still mapped afresh
    (glibc's per-thread heaps end there): cifar_cnn's 94 MB, once an epoch.

    Called before anything starts XLA's threads (:func:`run_main`);
    ``JAXCNN_MALLOC=system`` leaves glibc's defaults.
    """
    system = os.environ.get("JAXCNN_MALLOC", "").lower() == "system"
    if system or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): its defaults stay
        return False
    return all([mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS])


def run_main(main: Callable[[], None]) -> None:
    """Run ``main`` (after :func:`tune_malloc`); a user's mistake is one line on stderr
    and exit status 2."""
    tune_malloc()
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:  # the trainer's says what it kept
        print(str(err) or "interrupted", file=sys.stderr)
        sys.exit(130)


def exit_now() -> None:
    """End the process at once, status 0, once a run's files are all written and closed.

    The interpreter's own exit then tears down XLA's CPU client, thread pools
    and every module: about 1 s after the last file of a short run was
    written (2-core EPYC; the start-up comparison, ``scripts/startup.py``).
    Only for a single-process run: a ``jax.distributed`` process must shut its
    client down with the others.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def add_data_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from jaxcnn.data import DATASETS

    parser.add_argument("--dataset", required=required, help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument(
        "--data-dir",
        help="folder with raw files (MNIST IDX *-ubyte[.gz] or CIFAR-10 python batches) "
        "instead of tensorflow-datasets",
    )


def add_impl_flags(parser: argparse.ArgumentParser) -> None:
    """How the trainer computes (same math, other kernels): one flag per
    ``jaxcnn.compute.Compute`` option; see docs/speed.md."""
    from jaxcnn import compute

    compute.add_flags(parser)


def add_variant_flags(parser: argparse.ArgumentParser) -> None:
    """The jaxcnn variants ``scripts/bench.py`` and ``scripts/gpu_census.py`` run
    (``jaxcnn.compute.VARIANTS``, and ``compute.parse_variant``'s syntax)."""
    from jaxcnn import compute

    keys = [name for name, field in compute.FIELDS.items() if field.metadata["flag"]]
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help=f"extra jaxcnn variant NAME:key=value,... ({', '.join(keys)}, xla_*); repeatable",
    )
    parser.add_argument("--no-variants", action="store_true", help="skip the default variants")


def impl_overrides(args: argparse.Namespace) -> dict:
    """The ``get_config`` overrides that :func:`add_impl_flags` parsed (None: auto/default)."""
    from jaxcnn import compute

    return compute.from_flags(args)
