"""A whole short run, as a user waits for it: ``scripts/train.py`` against the PyTorch script.

``scripts/startup.py`` runs, per model, ``python scripts/train.py --epochs 1
--train-limit N`` (Fashion-MNIST, the seed's recipe) and the same training as a
plain PyTorch script (``python -m parity.torch_script``), each as its own
process, timed from start to exit. Both are run once first: jaxcnn's persistent
compilation cache is then warm, as it is for a user's second run, and the OS
has the data files cached for both. Then the two alternate for ``rounds``
rounds, and the speed ratio is the median over rounds of torch's time over
jaxcnn's within a round (as in :mod:`jaxcnn.lab.paired`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def recipe_json(name: str) -> str:
    """The seed's recipe and input size as ``parity.torch_script --recipe`` reads it."""
    from jaxcnn import models

    spec = models.get_spec(name)
    r = spec.recipe
    fields = {"optimizer": r.optimizer, "lr": r.lr, "momentum": r.momentum, "loss": r.loss}
    fields.update(batch_size=r.batch_size, normalize=r.normalize, size=spec.input_shape[0])
    return json.dumps(fields)


def check_grayscale(name: str) -> None:
    """Both processes train on Fashion-MNIST: a model of colour images (``cifar_cnn``)
    is refused before the first process starts, not minutes later when its turn comes."""
    from jaxcnn import models
    from jaxcnn.errors import UserError

    channels = models.get_spec(name).input_shape[2]
    if channels != 1:
        raise UserError(
            f"startup.py times Fashion-MNIST runs (1 channel); model '{name}' takes "
            f"{channels}-channel images"
        )


def commands(name: str, data_dir: str, train_limit: int, workdir: Path) -> dict[str, list[str]]:
    """The two processes: jaxcnn's trainer and the PyTorch script, same data and recipe."""
    limit = ["--train-limit", str(train_limit)]
    jaxcnn = [sys.executable, str(ROOT / "scripts" / "train.py"), "--model", name]
    jaxcnn += ["--dataset", "fashion_mnist", "--data-dir", data_dir, "--epochs", "1", *limit]
    jaxcnn += ["--workdir", str(workdir), "--no-progress"]
    torch = [sys.executable, "-m", "parity.torch_script", "--model", name, "--epochs", "1"]
    torch += ["--recipe", recipe_json(name), "--data-dir", data_dir, *limit]
    return {"jaxcnn": jaxcnn, "torch": torch}


def timed(command: list[str], workdir: Path | None) -> float:
    """Seconds from start to exit of ``command`` (a fresh ``workdir`` for train.py)."""
    if workdir is not None and workdir.exists():
        import shutil

        shutil.rmtree(workdir)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        from jaxcnn.errors import UserError

        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        what = "scripts/train.py" if workdir is not None else "the PyTorch script"
        raise UserError(f"{what} failed: {tail[0]}")
    return seconds


def run(model_names: list[str], data_dir: str, train_limit: int, rounds: int) -> str:
    """Every model's two processes, warmed once, then timed in turns; a markdown table."""
    from jaxcnn import train
    from jaxcnn.errors import UserError
    from jaxcnn.lab.paired import rotation

    if rounds < 1 or train_limit < 1:
        raise UserError("--rounds and --train-limit must be at least 1")
    for name in model_names:  # every name checked before the first process starts
        train.get_config(name, "fashion_mnist", train_limit=train_limit)
        check_grayscale(name)
    lines = [
        "| model | jaxcnn s (median) | PyTorch s (median) | speed ratio PyTorch / jaxcnn, paired |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="jaxcnn-startup-") as scratch:
        for name in model_names:
            workdir = Path(scratch) / name
            cmds = commands(name, data_dir, train_limit, workdir)
            timed(cmds["jaxcnn"], workdir)  # warms the compilation cache
            timed(cmds["torch"], None)
            times: dict[str, list[float]] = {"jaxcnn": [], "torch": []}
            for r in range(rounds):
                for arm in rotation(["jaxcnn", "torch"], r):
                    times[arm].append(timed(cmds[arm], workdir if arm == "jaxcnn" else None))
            ratio = statistics.median(
                t / j for t, j in zip(times["torch"], times["jaxcnn"], strict=True)
            )
            mine, theirs = statistics.median(times["jaxcnn"]), statistics.median(times["torch"])
            lines.append(f"| {name} | {mine:.2f} | {theirs:.2f} | {ratio:.2f} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)
