"""jaxcnn vs the seeds' PyTorch loops: test accuracy over seeds, and seconds per epoch.

python scripts/compare_torch.py --data-dir DIR [--models ...] [--seeds 0 1 2]
    [--seed-loop] [--bf16] [--out results/compare]

For each model and seed, trains jaxcnn (the CLI's trainer) and the seed's torch
model with the same recipe on device-resident data (parity.reference_train),
then prints a markdown table: mean test accuracy of each, the difference, and
median seconds per epoch after the first. ``--seed-loop`` also times one epoch of
the seeds' loop as written (torchvision dataset + DataLoader). ``--bf16`` also
trains jaxcnn with ``--dtype bfloat16`` on every seed and reports its accuracy in
its own column. Results are written after every run to OUT.json, so a cut-off run
keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
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
    import torch

    from jaxcnn import data, experiment, report, train
    from parity.reference_train import torchvision_root, train_resident, train_seed_loop

    for name in args.models:  # names, --epochs and --train-limit checked before any training
        train.get_config(name, "fashion_mnist", epochs=args.epochs, train_limit=args.train_limit)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    report.ensure_dir(out.parent, "--out folder")
    results = {"environment": {**report.environment(), "torch": torch.__version__}, "runs": []}
    tr = data.load("fashion_mnist", "train", args.data_dir)
    te = data.load("fashion_mnist", "test", args.data_dir)
    tr_images, tr_labels = tr.images[: args.train_limit], tr.labels[: args.train_limit]

    def save():
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))

    dtypes = {"jaxcnn": "float32", **({"jaxcnn bf16": "bfloat16"} if args.bf16 else {})}
    for name in args.models:
        for seed in args.seeds:
            for impl, dtype in dtypes.items():
                config = train.get_config(
                    name, "fashion_mnist", data_dir=args.data_dir, seed=seed,
                    epochs=args.epochs, train_limit=args.train_limit, dtype=dtype,
                )  # fmt: skip
                with tempfile.TemporaryDirectory() as workdir:
                    summary = experiment.train_and_evaluate(config, workdir, progress=False)
                results["runs"].append(
                    {
                        "model": name,
                        "seed": seed,
                        "impl": impl,
                        "test_accuracy": summary["test_accuracy"],
                        "epoch_seconds": summary["epoch_seconds"],
                        "compile_seconds": summary["compile_seconds"],
                    }
                )
                save()
            ref = train_resident(
                name, tr_images, tr_labels, te.images, te.labels,
                seed=seed, epochs=config.epochs, device=device,
            )  # fmt: skip
            results["runs"].append(
                {
                    "model": name,
                    "seed": seed,
                    "impl": "torch (resident)",
                    "test_accuracy": ref["test_accuracy"][-1],
                    "epoch_seconds": ref["epoch_seconds"],
                }
            )
            save()
        if args.seed_loop:
            loop = train_seed_loop(name, torchvision_root(Path(args.data_dir)), device=device)
            results["runs"].append(
                {"model": name, "impl": "torch (seed loop)", "epoch_seconds": loop["epoch_seconds"]}
            )
            save()

    lines = [
        f"Fashion-MNIST, {results['environment']['device']}, jax {results['environment']['jax']}"
        f", torch {results['environment']['torch']}; seeds {args.seeds}",
        "",
        "| model | jaxcnn acc (mean ± sd) | torch acc (mean ± sd) | Δ (points) "
        "| jaxcnn s/epoch | jaxcnn compile s | torch resident s/epoch | seed loop s/epoch |"
        + (" jaxcnn bf16 acc (mean ± sd) | bf16 s/epoch |" if args.bf16 else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if args.bf16 else ""),
    ]

    def runs(name, impl):
        return [r for r in results["runs"] if r["model"] == name and r["impl"] == impl]

    def steady(rs):
        times = [t for r in rs for t in (r["epoch_seconds"][1:] or r["epoch_seconds"])]
        return f"{statistics.median(times):.3f}" if times else "-"

    def acc(rs):
        a = [100 * r["test_accuracy"] for r in rs]
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        return statistics.mean(a), f"{statistics.mean(a):.2f} ± {sd:.2f}"

    for name in args.models:
        jx, th = runs(name, "jaxcnn"), runs(name, "torch (resident)")
        sl = runs(name, "torch (seed loop)")
        if not jx or not th:
            continue
        (jm, js), (tm, ts) = acc(jx), acc(th)
        compile_s = statistics.median(r["compile_seconds"] for r in jx)
        line = (
            f"| `{name}` | {js} | {ts} | {jm - tm:+.2f} | {steady(jx)} | {compile_s:.1f} "
            f"| {steady(th)} | {steady(sl)} |"
        )
        if args.bf16:
            bf = runs(name, "jaxcnn bf16")
            line += f" {acc(bf)[1] if bf else '-'} | {steady(bf)} |"
        lines.append(line)
    table = "\n".join(lines)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    run_main(main)
