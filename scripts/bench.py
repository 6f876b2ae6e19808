"""Seeds' PyTorch loop vs the best PyTorch can do vs jaxcnn: seconds per epoch, side by side.

python scripts/bench.py [--data-dir DIR] [--models mnist_cnn basic_cnn inception resnet convnet]
    [--batch-sizes seed 1024] [--epochs 4] [--arms seed_loop torch_eager torch_graph
    torch_compile jaxcnn] [--variant NAME:fuse=1,conv=im2col ...] [--no-variants]
    [--train-limit N] [--out results/bench] [--keep] [--rounds N] [--busy N]

Same model, recipe, data (Fashion-MNIST) and epochs for every arm (see
jaxcnn/lab/bench.py). Per (model, batch size, arm): median s/epoch after a warm-up
epoch with min-max, start-up seconds, final test accuracy and the ratio to
jaxcnn. OUT.json is rewritten after every row, so a run cut off by a time limit
keeps what it finished, and ``--keep`` continues it (rows already there are not
run again). Writes OUT.md (table, and the issue's speed targets checked) and
OUT.png (bar chart). Arms this machine cannot run (CUDA graphs or the Pallas
kernel without a GPU, the seeds' loop without torchvision) are listed as
skipped. bfloat16 variants are reported as their own rows and never count
towards the float32 targets. ``--busy N`` runs N processes that each keep a core
busy beside every arm: a laptop that is running something else
(jaxcnn/lab/busy.py).
"""

import argparse
import os
from pathlib import Path

from jaxcnn.cli import add_variant_flags, enable_compilation_cache, run_main

DEFAULT_MODELS = [
    "mnist_cnn",
    "simple_cnn",
    "lenet5",
    "convnet",
    "basic_cnn",
    "inception",
    "resnet",
    "blitz_net",
    "cifar_cnn",  # on synthetic 32x32x3 data (jaxcnn/lab/bench.py, synthetic_cifar)
]
ARMS = ["seed_loop", "torch_eager", "torch_graph", "torch_compile", "jaxcnn"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument(
        "--batch-sizes", nargs="+", default=["seed", "1024"], help="'seed' = each recipe's"
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs per arm, first is warm-up")
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    add_variant_flags(parser)
    parser.add_argument("--train-limit", type=int, help="first N training images (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--keep", action="store_true", help="continue OUT.json: skip rows in it")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run each model's arms N times in rotating order; the speed ratio is paired",
    )  # fmt: skip
    parser.add_argument(
        "--busy", type=int, default=0,
        help="run N busy processes (one core each) beside the arms: a CPU shared with other work",
    )  # fmt: skip
    args = parser.parse_args()

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave torch its share
    enable_compilation_cache()
    from jaxcnn.lab import bench

    table = bench.run(
        args.models, args.batch_sizes, args.epochs, args.arms, args.variant,
        no_variants=args.no_variants, train_limit=args.train_limit, seed=args.seed,
        data_dir=args.data_dir, out=Path(args.out), keep=args.keep, rounds=args.rounds,
        busy=args.busy,
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    run_main(main)
