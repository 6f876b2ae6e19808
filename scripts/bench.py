"""Seeds' PyTorch loop vs the best PyTorch can do vs jaxcnn: seconds per epoch, side by side.

python scripts/bench.py [--data-dir DIR] [--models mnist_cnn basic_cnn inception resnet convnet]
    [--batch-sizes seed 1024] [--epochs 4] [--arms seed_loop torch_eager torch_graph
    torch_compile jaxcnn] [--variant NAME:fuse=1,conv=im2col ...] [--no-variants]
    [--train-limit N] [--out results/bench] [--keep]

Same model, recipe, data (Fashion-MNIST) and epochs for every arm (see
parity/bench.py). Per (model, batch size, arm): median s/epoch after a warm-up
epoch with min-max, start-up seconds, final test accuracy and the ratio to
jaxcnn. OUT.json is rewritten after every row, so a run cut off by a time limit
keeps what it finished, and ``--keep`` continues it (rows already there are not
run again). Writes OUT.md (table, and the issue's speed targets checked) and
OUT.png (bar chart). Arms this machine cannot run (CUDA graphs or the Pallas
kernel without a GPU, the seeds' loop without torchvision) are listed as
skipped. bfloat16 variants are reported as their own rows and never count
towards the float32 targets.
"""

import argparse
import json
import os
from functools import cache
from pathlib import Path

from jaxcnn.cli import add_variant_flags, enable_compilation_cache, run_main

DEFAULT_MODELS = ["mnist_cnn", "basic_cnn", "inception", "resnet", "convnet"]
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
    args = parser.parse_args()

    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave torch its share
    enable_compilation_cache()
    from jaxcnn import data, models, report, train
    from jaxcnn.errors import UserError
    from parity import bench

    for name in args.models:  # names, --epochs and --train-limit, as the trainer checks them
        train.get_config(name, "fashion_mnist", epochs=args.epochs, train_limit=args.train_limit)
    variants = {} if args.no_variants else dict(bench.DEFAULT_VARIANTS)
    variants.update(bench.parse_variant(v) for v in args.variant)
    batch_sizes = []
    for value in args.batch_sizes:
        if value != "seed" and not (value.isdigit() and int(value) > 0):
            raise UserError(f"--batch-sizes: expected 'seed' or a positive integer, got '{value}'")
        batch_sizes.append(value)

    out = Path(args.out)
    json_path = out.with_suffix(".json")
    if json_path.exists() and not args.keep:
        raise UserError(f"'{json_path}' exists; pass --keep to continue it or choose another --out")
    report.ensure_dir(out.parent, "--out folder")
    tr = data.load("fashion_mnist", "train", args.data_dir)
    te = data.load("fashion_mnist", "test", args.data_dir)
    arrays = bench.arrays(tr, te, args.train_limit)

    env = report.environment()
    try:
        import torch

        env["torch"] = torch.__version__
    except ImportError:
        pass
    results: dict[tuple, bench.Row] = {}  # (model, batch size, arm) -> row
    if json_path.exists():  # --keep: finished rows stay; skipped and failed ones run again
        fields = set(bench.Row.__dataclass_fields__)
        for item in json.loads(json_path.read_text())["rows"]:
            row = bench.Row(**{k: v for k, v in item.items() if k in fields})
            if row.status == "ok":
                results[(row.model, row.batch_size, row.arm)] = row
    done = set(results)
    note = f"{args.epochs} epochs per arm (first = warm-up)"
    if args.train_limit:
        note += f", first {args.train_limit} training images only"

    @cache
    def raw_root() -> str:
        from parity.reference_train import torchvision_root

        return torchvision_root(Path(args.data_dir))

    def save() -> None:
        order = {key: i for i, key in enumerate(job[:3] for job in jobs)}
        rows[:] = sorted(
            results.values(), key=lambda r: order.get((r.model, r.batch_size, r.arm), -1)
        )
        report.write_json(json_path, {"environment": env, "rows": bench.with_ratios(rows)})
        report.write_atomic(out.with_suffix(".md"), bench.markdown(rows, env, note))

    rows: list[bench.Row] = []
    jobs = []
    for name in args.models:
        seed_batch = models.get_spec(name).recipe.batch_size
        for value in dict.fromkeys(seed_batch if v == "seed" else int(v) for v in batch_sizes):
            for arm in args.arms:
                jobs.append((name, value, arm, {}))
                if arm == "jaxcnn":
                    kept: list[dict] = []
                    for v, options in variants.items():
                        if bench.skip_reason(arm, options):  # a row that says why
                            jobs.append((name, value, f"jaxcnn:{v}", options))
                        elif not bench.is_redundant(name, options, kept):
                            kept.append(options)
                            jobs.append((name, value, f"jaxcnn:{v}", options))
    for name, batch, arm, options in jobs:
        if (name, batch, arm) in done:
            continue
        reason = bench.skip_reason(arm, options)
        if reason:
            row = bench.Row(name, batch, arm, status=reason)
        else:
            report.log(f"bench: {name}, batch {batch}, {arm}")
            try:
                if arm.startswith("jaxcnn"):
                    row = bench.run_jaxcnn(
                        name, batch, args.epochs, args.data_dir, options,
                        seed=args.seed, train_limit=args.train_limit,
                    )  # fmt: skip
                    row.arm = arm
                else:
                    row = bench.run_torch(
                        arm, name, batch, args.epochs, arrays, raw_root, args.seed
                    )
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as err:  # one arm failing must not lose the others' numbers
                row = bench.failed(name, batch, arm, err)
        results[(name, batch, arm)] = row
        save()
    save()
    bench.plot(rows, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    run_main(main)
