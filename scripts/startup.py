"""A whole 1-epoch run against the same training as a PyTorch script, process start to exit.

python scripts/startup.py [--models mnist_cnn lenet5] [--train-limit 2000] [--rounds 3]
    [--data-dir /usr/share/datasets/fashion-mnist]

Per model: ``scripts/train.py --epochs 1 --train-limit N`` and
``python -m parity.torch_script`` (the seed's model and recipe in plain PyTorch),
each run once to warm jaxcnn's compilation cache and the file cache, then in
turns for --rounds rounds. Prints median seconds and the speed ratio (PyTorch's
time over jaxcnn's, median over rounds; above 1, jaxcnn's whole run is shorter).
See jaxcnn/lab/startup.py.
"""

import argparse

from jaxcnn.cli import run_main

DEFAULT_MODELS = ["mnist_cnn", "simple_cnn", "lenet5", "convnet", "basic_cnn", "inception"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from jaxcnn.lab import startup

    print(startup.run(args.models, args.data_dir, args.train_limit, args.rounds))


if __name__ == "__main__":
    run_main(main)
