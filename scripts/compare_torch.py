"""jaxcnn vs the seeds' PyTorch loops: test accuracy over seeds, and seconds per epoch.

python scripts/compare_torch.py --data-dir DIR [--models ...] [--seeds 0 1 2]
    [--seed-loop] [--bf16] [--out results/compare]

For each model and seed, trains jaxcnn (the CLI's trainer) and the seed's torch
model with the same recipe on device-resident data (parity.reference_train; jaxcnn/lab/compare.py),
then prints a markdown table: mean test accuracy of each, the difference, and
median seconds per epoch after the first. ``--seed-loop`` also times one epoch of
the seeds' loop as written (torchvision dataset + DataLoader). ``--bf16`` also
trains jaxcnn with ``--dtype bfloat16`` on every seed and reports its accuracy in
its own column. Results are written after every run to OUT.json, so a cut-off run
keeps what it finished.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxcnn.cli import enable_compilation_cache, run_main

DEFAULT_MODELS = ["mnist_cnn", "basic_cnn", "inception", "resnet"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="override the recipes' epoch counts")
    parser.add_argument("--train-limit", type=int, help="first N training images (smoke runs)")
    parser.add_argument("--seed-loop", action="store_true", help="also time the seeds' loop")
    parser.add_argument(
        "--bf16", action="store_true", help="also train jaxcnn in bfloat16 (own column)"
    )
    parser.add_argument("--out", default="results/compare")
    args = parser.parse_args()

    enable_compilation_cache()
    from jaxcnn.lab import compare

    table = compare.run(
        args.models, args.seeds, epochs=args.epochs, train_limit=args.train_limit,
        seed_loop=args.seed_loop, bf16=args.bf16, data_dir=args.data_dir, out=Path(args.out),
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    run_main(main)
