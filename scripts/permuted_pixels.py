"""Seed 001 section 4: shuffle every image's pixels with one fixed permutation.

A CNN's accuracy falls, a fully connected net's does not: the CNN's advantage
comes from spatial locality, which the permutation destroys.

python scripts/permuted_pixels.py [--dataset fashion_mnist] [--epochs N] [--models simple_cnn mlp]
"""

import argparse
import tempfile

from jaxcnn.cli import add_data_flags, enable_compilation_cache, run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_flags(parser, required=False)
    parser.set_defaults(dataset="fashion_mnist")
    parser.add_argument("--models", nargs="+", default=["simple_cnn", "mlp"])
    parser.add_argument("--epochs", type=int, help="default: each model's seed recipe (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, help="use only the first N training images")
    args = parser.parse_args()

    enable_compilation_cache()
    from jaxcnn import experiment, models, train

    rows = []
    for name in args.models:
        for permuted in (False, True):
            config = train.get_config(
                name,
                args.dataset,
                epochs=args.epochs,
                seed=args.seed,
                data_dir=args.data_dir,
                train_limit=args.train_limit,
                permute_pixels=permuted,
            )
            with tempfile.TemporaryDirectory() as workdir:
                summary = experiment.train_and_evaluate(config, workdir, progress=False)
            rows.append((name, permuted, summary["test_accuracy"], config.epochs))
    print(f"\n{args.dataset}, seed {args.seed}")
    print("| model | params | epochs | original pixels | permuted pixels | change (points) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        plain = next(r for r in rows if r[0] == name and not r[1])
        shuffled = next(r for r in rows if r[0] == name and r[1])
        params = models.param_count(models.create(name))
        print(
            f"| `{name}` | {params:,} | {plain[3]} | {100 * plain[2]:.2f}% | "
            f"{100 * shuffled[2]:.2f}% | {100 * (shuffled[2] - plain[2]):+.2f} |"
        )


if __name__ == "__main__":
    run_main(main)
