"""jaxcnn against the seed's torch model, same recipe, over seeds (``scripts/compare_torch.py``).

Accuracy (mean ± sd over seeds) and seconds per epoch of each, and optionally of the
seeds' loop as written and of jaxcnn in bfloat16. Results are written after every
run to OUT.json, so a cut-off run keeps what it finished.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path


def run(
    model_names: list[str],
    seeds: list[int],
    *,
    epochs: int | None,
    train_limit: int | None,
    seed_loop: bool,
    bf16: bool,
    data_dir: str,
    out: Path,
) -> str:
    """Every run, saved to OUT.json as it ends; returns (and writes to OUT.md) the table."""
    import torch

    from jaxcnn import data, report, train
    from parity.reference_train import torchvision_root, train_resident, train_seed_loop

    for name in model_names:  # names, --epochs and --train-limit checked before any training
        train.get_config(name, "fashion_mnist", epochs=epochs, train_limit=train_limit)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report.ensure_dir(out.parent, "--out folder")
    results = {"environment": {**report.environment(), "torch": torch.__version__}, "runs": []}
    tr = data.load("fashion_mnist", "train", data_dir)
    te = data.load("fashion_mnist", "test", data_dir)
    tr_images, tr_labels = tr.images[:train_limit], tr.labels[:train_limit]

    def save(run: dict) -> None:
        results["runs"].append(run)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))

    dtypes = {"jaxcnn": "float32", **({"jaxcnn bf16": "bfloat16"} if bf16 else {})}
    for name in model_names:
        for seed in seeds:
            for impl, dtype in dtypes.items():
                config = train.get_config(
                    name, "fashion_mnist", data_dir=data_dir, seed=seed,
                    epochs=epochs, train_limit=train_limit, dtype=dtype,
                )  # fmt: skip
                save({"model": name, "seed": seed, "impl": impl, **run_jaxcnn(config)})
            ref = train_resident(
                name, tr_images, tr_labels, te.images, te.labels,
                seed=seed, epochs=config.epochs, device=device,
            )  # fmt: skip
            save(
                {
                    "model": name,
                    "seed": seed,
                    "impl": "torch (resident)",
                    "test_accuracy": ref["test_accuracy"][-1],
                    "epoch_seconds": ref["epoch_seconds"],
                }
            )
        if seed_loop:
            loop = train_seed_loop(name, torchvision_root(Path(data_dir)), device=device)
            times = loop["epoch_seconds"]
            save({"model": name, "impl": "torch (seed loop)", "epoch_seconds": times})
    table = markdown(results, model_names, seeds, bf16)
    out.with_suffix(".md").write_text(table + "\n")
    return table


def run_jaxcnn(config) -> dict:
    """``train.py``'s trainer on ``config`` in a throw-away workdir."""
    from jaxcnn import experiment

    with tempfile.TemporaryDirectory() as workdir:
        summary = experiment.train_and_evaluate(config, workdir, progress=False)
    return {
        "test_accuracy": summary["test_accuracy"],
        "epoch_seconds": summary["epoch_seconds"],
        "compile_seconds": summary["compile_seconds"],
    }


def markdown(results: dict, model_names: list[str], seeds: list[int], bf16: bool) -> str:
    """One row per model: accuracies over seeds, their difference, seconds per epoch."""
    env = results["environment"]
    lines = [
        f"Fashion-MNIST, {env['device']}, jax {env['jax']}, torch {env['torch']}; seeds {seeds}",
        "",
        "| model | jaxcnn acc (mean ± sd) | torch acc (mean ± sd) | Δ (points) "
        "| jaxcnn s/epoch | jaxcnn compile s | torch resident s/epoch | seed loop s/epoch |"
        + (" jaxcnn bf16 acc (mean ± sd) | bf16 s/epoch |" if bf16 else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if bf16 else ""),
    ]

    def runs(name, impl):
        return [r for r in results["runs"] if r["model"] == name and r["impl"] == impl]

    for name in model_names:
        jx, th = runs(name, "jaxcnn"), runs(name, "torch (resident)")
        if not jx or not th:
            continue
        (jm, js), (tm, ts) = _accuracy(jx), _accuracy(th)
        compile_s = statistics.median(r["compile_seconds"] for r in jx)
        line = (
            f"| `{name}` | {js} | {ts} | {jm - tm:+.2f} | {_steady(jx)} | {compile_s:.1f} "
            f"| {_steady(th)} | {_steady(runs(name, 'torch (seed loop)'))} |"
        )
        if bf16:
            bf = runs(name, "jaxcnn bf16")
            line += f" {_accuracy(bf)[1] if bf else '-'} | {_steady(bf)} |"
        lines.append(line)
    return "\n".join(lines)


def _steady(runs: list[dict]) -> str:
    """Median seconds per epoch over the epochs after each run's first."""
    times = [t for r in runs for t in (r["epoch_seconds"][1:] or r["epoch_seconds"])]
    return f"{statistics.median(times):.3f}" if times else "-"


def _accuracy(runs: list[dict]) -> tuple[float, str]:
    """(mean, "mean ± sd") of the runs' test accuracy, in percent."""
    a = [100 * r["test_accuracy"] for r in runs]
    sd = statistics.stdev(a) if len(a) > 1 else 0.0
    return statistics.mean(a), f"{statistics.mean(a):.2f} ± {sd:.2f}"
