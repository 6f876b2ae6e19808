"""The roofline view of each model's training step: FLOPs, bytes, time, top ops.

python scripts/profile_models.py [--models mnist_cnn resnet] [--steps 50] [--out results/profile]
    [--fuse] [--conv xla|im2col|gemm_wgrad|pallas_wgrad] [--pool xla|reshape] [--dtype bfloat16]
    [--xla-option xla_NAME=VALUE]

For each model at its seed batch size: XLA's cost_analysis() of one step (FLOPs
and bytes), the measured step time (median of 5 calls of a scanned run of
--steps steps, after a warm-up), achieved FLOP/s and bandwidth against the
device's peak, and from a profiler trace of 10 steps the top ops, the kernels per
step with their mean duration, and the share of the step the device is busy (the
rest is launch gaps). Writes OUT.json, OUT.md and OUT.png (achieved vs peak), and
the traces under OUT_traces/.
"""

import argparse
from pathlib import Path

from jaxcnn.cli import add_impl_flags, enable_compilation_cache, impl_overrides, run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        "--model",  # the spelling, `profile.py --model M`
        nargs="+",
        default=["mnist_cnn", "basic_cnn", "inception", "resnet"],
        help="models to profile (default: mnist_cnn basic_cnn inception resnet)",
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="results/profile")
    add_impl_flags(parser)  # profile a speed option: --fuse, --conv, --pool, --dtype, --unroll
    args = parser.parse_args()

    enable_compilation_cache()
    from jaxcnn.lab import profiling

    print(profiling.profile_models(args.models, args.steps, Path(args.out), impl_overrides(args)))


if __name__ == "__main__":
    run_main(main)
