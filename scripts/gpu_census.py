"""Compile each model's training epoch for an H100 on this host (no GPU needed); count kernels.

python scripts/gpu_census.py [--models mnist_cnn basic_cnn inception resnet convnet]
    [--variant NAME:fuse=1,conv=pallas_wgrad ...] [--no-variants] [--plugin-dir DIR]
    [--out results/gpu_census]

For every model and jaxcnn variant (the benchmark's: defaults, fused, im2col,
gemm_wgrad, pallas_wgrad, unroll4, bf16, cmdbuf_while), XLA's GPU compiler builds
the same epoch program ``train.py`` runs, for an H100 (jaxcnn/lab/aot.py), and the
optimized HLO is read for the kernels launched per training step: XLA's fusions,
cuDNN convolutions by kind, GEMMs, Pallas (Triton) kernels, copies. No time is
measured (there is no GPU); what a cuDNN call becomes inside is not seen.

Needs jax's CUDA plugin, which need not be installed into the environment:
``pip install --no-deps --target DIR jax-cuda12-plugin==V jax-cuda12-pjrt==V``
with V = jaxlib's version, then ``--plugin-dir DIR`` (or ``JAXCNN_CUDA_PLUGIN=DIR``).
Writes OUT.json and OUT.md; exits 1 if any configuration failed to compile.
"""

import argparse
import os
import sys
from pathlib import Path

from jaxcnn.cli import add_variant_flags, run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["mnist_cnn", "basic_cnn", "inception", "resnet", "convnet"]
    )
    add_variant_flags(parser)
    parser.add_argument("--plugin-dir", default=os.environ.get("JAXCNN_CUDA_PLUGIN"))
    parser.add_argument("--target", default="h100")
    parser.add_argument("--out", default="results/gpu_census")
    args = parser.parse_args()

    from jaxcnn.errors import UserError

    if args.plugin_dir:
        if not Path(args.plugin_dir, "jax_plugins").is_dir():
            raise UserError(f"--plugin-dir '{args.plugin_dir}' holds no jax_plugins package")
        sys.path.insert(0, str(Path(args.plugin_dir).resolve()))
    # Before jax starts: its CPU backend stays the default, and the CUDA plugin skips
    # its check for a driver (there is none to check).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # XLA's "no CUDA driver" notices

    from jaxcnn.lab import aot

    rows = aot.run_census(args.models, args.target, args.variant, args.no_variants, Path(args.out))
    failed = [f"{r['model']} {r['variant']}" for r in rows if r["status"] != "ok"]
    if failed:
        print(f"error: {len(failed)} of {len(rows)} did not compile: {', '.join(failed)}",
              file=sys.stderr)  # fmt: skip
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
