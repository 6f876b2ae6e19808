"""What the scripts share: one-line errors, the compilation cache, common flags."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from jaxcnn.errors import UserError

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jaxcnn" / "xla"


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, so a repeated run skips most compiling.

    Location: ``$JAXCNN_CACHE_DIR``, else ``~/.cache/jaxcnn/xla``; set
    ``JAXCNN_CACHE_DIR=off`` to disable it.
    """
    import jax

    where = os.environ.get("JAXCNN_CACHE_DIR", str(DEFAULT_CACHE))
    if where.lower() == "off":
        return
    jax.config.update("jax_compilation_cache_dir", where)
    # Every program, however quick to compile: building a model runs dozens of
    # small eager init ops, each its own ~40 ms compile, and a threshold like
    # JAX's default (1 s), or the 0.5 s set here before, kept them out of the
    # cache. With them in, a warm inception run starts about 4 s sooner on a
    # 2-core CPU (create: 5 s -> 0.9 s); a cold run is no slower. The whole
    # cache for all models is a few MB.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def run_main(main: Callable[[], None]) -> None:
    """Run ``main``; a user's mistake is one line on stderr and exit status 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(
            "interrupted; completed epochs are checkpointed (continue with --resume)",
            file=sys.stderr,
        )
        sys.exit(130)


def add_data_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from jaxcnn.data import DATASETS

    parser.add_argument("--dataset", required=required, help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument(
        "--data-dir",
        help="folder with raw files (MNIST IDX *-ubyte[.gz] or CIFAR-10 python batches) "
        "instead of tensorflow-datasets",
    )


def add_impl_flags(parser: argparse.ArgumentParser) -> None:
    """How the trainer computes (same math, different kernels): see README, "Speed options"."""
    from jaxcnn.models import CONV_IMPLS, POOL_IMPLS
    from jaxcnn.train import DTYPES

    parser.add_argument(
        "--fuse",
        action="store_true",
        help="algebraically identical fused forms (InceptionA: its four 1x1 convs as one matmul)",
    )
    parser.add_argument(
        "--conv",
        choices=["auto", *CONV_IMPLS],
        help="convolution algorithm (default auto: im2col on CPU, xla on GPU)",
    )
    parser.add_argument(
        "--pool",
        choices=["auto", *POOL_IMPLS],
        help="max-pool algorithm (default auto: reshape on CPU, xla on GPU)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="compute dtype; parameters stay float32 (default: float32)",
    )
    parser.add_argument("--unroll", type=int, help="training steps per scan-loop iteration")
    parser.add_argument(
        "--xla-option",
        action="append",
        default=[],
        metavar="xla_NAME=VALUE",
        help="an XLA compiler option for the training and evaluation programs, e.g. "
        "xla_gpu_enable_command_buffer=FUSION,CUDNN,WHILE; repeatable",
    )


def add_variant_flags(parser: argparse.ArgumentParser) -> None:
    """The jaxcnn variants ``scripts/bench.py`` and ``scripts/gpu_census.py`` run
    (``parity.bench.DEFAULT_VARIANTS``, and ``parity.bench.parse_variant``'s syntax)."""
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="extra jaxcnn variant NAME:key=value,... (fuse, conv, pool, dtype, unroll, "
        "xla_*); repeatable",
    )
    parser.add_argument("--no-variants", action="store_true", help="skip the default variants")


def impl_overrides(args: argparse.Namespace) -> dict:
    """The ``get_config`` overrides that :func:`add_impl_flags` parsed (None: recipe default)."""
    from jaxcnn.train import parse_xla_options

    return {
        "fuse": args.fuse or None,
        "conv": args.conv,
        "pool": args.pool,
        "dtype": args.dtype,
        "unroll": args.unroll,
        "xla_options": parse_xla_options(args.xla_option) or None,
    }
