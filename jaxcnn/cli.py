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
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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
