"""A seed's training as a plain PyTorch script, for the start-up comparison.

``python -m parity.torch_script --model NAME --recipe JSON --data-dir DIR
[--train-limit N] [--epochs E]``

What a tutorial's script does, on the same data and recipe as ``train.py``: read
Fashion-MNIST's IDX files, train the seed's torch model (``parity.torch_models``)
eagerly on the batches of a shuffled epoch, then test on the whole test split.
It imports torch and numpy only, no jax, so its whole process is what a user of
the PyTorch tutorial waits for; ``jaxcnn.lab.startup`` times it against
``scripts/train.py``. The recipe (optimizer, lr, momentum, batch size, loss,
normalisation, input size) comes from jaxcnn's registry as JSON, because reading
the registry here would import jax.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from parity.torch_models import create_torch


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``.gz`` or not) as a uint8 array, shaped by its header."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` in ``directory``; a missing file ends the script in one line."""
    for path in (directory / stem, directory / f"{stem}.gz"):
        if path.is_file():
            return path
    raise SystemExit(f"error: no {stem}[.gz] in '{directory}'")


def load(directory: Path, prefix: str, recipe: dict, limit: int | None):
    """Images as the seed's float NCHW input (x/255, padded, normalised) and int64 labels."""
    images = read_idx(find(directory, f"{prefix}-images-idx3-ubyte"))[:limit]
    labels = read_idx(find(directory, f"{prefix}-labels-idx1-ubyte"))[:limit]
    x = torch.from_numpy(images.copy()).float().div_(255.0)[:, None]
    pad = recipe["size"] - x.shape[-1]
    if pad:
        x = F.pad(x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    if recipe["normalize"] is not None:
        mean, std = recipe["normalize"]
        x = (x - mean) / std
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--recipe", required=True, help="JSON: jaxcnn.lab.startup.recipe_json")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    recipe = json.loads(args.recipe)

    torch.manual_seed(0)
    model = create_torch(args.model)
    if recipe["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"])
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    loss_fn = torch.nn.CrossEntropyLoss() if recipe["loss"] == "cross_entropy" else F.nll_loss
    x, y = load(args.data_dir, "train", recipe, args.train_limit)
    xt, yt = load(args.data_dir, "t10k", recipe, None)
    batch = recipe["batch_size"]
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum(
                int((model(xt[i : i + 1000]).argmax(1) == yt[i : i + 1000]).sum())
                for i in range(0, len(xt), 1000)
            )
        print(f"epoch {epoch}: test accuracy {100 * correct / len(xt):.2f}%")


if __name__ == "__main__":
    main()
