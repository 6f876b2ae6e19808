"""Ways to compute a training step, timed in turns in one process: which is faster, paired.

python scripts/ab.py --variant A:key=value,... --variant B:key=value,...
    [--models mnist_cnn inception] [--steps 20] [--rounds 10]

Each --variant is NAME:options in the benchmark's syntax (e.g. ``plain:conv=xla,pool=xla``,
``nofuse:fuse=0``, ``cb:xla_NAME=VALUE``; ``default:conv=auto`` is the defaults). Per model, at
its seed batch size on random images: every variant is compiled, then each round
runs --steps steps of every variant once, in rotating order. Printed: median ms
per step, and each variant's speed against the first as the median over rounds
of the ratio within a round, which load drifting over minutes does not move
(see jaxcnn/lab/paired.py).
"""

import argparse

from jaxcnn.cli import enable_compilation_cache, run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mnist_cnn", "inception"])
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,...")
    parser.add_argument("--steps", type=int, default=20, help="training steps per call")
    parser.add_argument("--rounds", type=int, default=10, help="calls of each variant")
    args = parser.parse_args()

    enable_compilation_cache()
    from jaxcnn import compute
    from jaxcnn.lab import paired

    variants = dict(compute.parse_variant(text) for text in args.variant)
    if len(variants) < len(args.variant):
        parser.error("two --variant share a NAME")
    print(paired.run(args.models, variants, args.steps, args.rounds))


if __name__ == "__main__":
    run_main(main)
