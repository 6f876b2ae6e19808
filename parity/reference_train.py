"""The seeds' PyTorch training loops, for accuracy and speed comparisons.

Two forms of the same recipe (optimizer, lr, momentum, batch size, epochs, loss,
``ToTensor``/``Normalize``, 28->32 padding, last partial batch kept):

* :func:`train_resident`: the dataset preprocessed once onto the device and
  indexed per batch. Same math as the seeds' loop, without the per-sample
  Python transforms; optionally in jaxcnn's exact data order.
* :func:`train_seed_loop`: the seeds' loop as written: a torchvision dataset,
  ``DataLoader(shuffle=True)`` and per-sample transforms. Needs torchvision
  (the ``bench`` extra); used only for timing on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from jaxcnn import models
from parity.harness import torch_loss, torch_optimizer
from parity.torch_models import create_torch


def preprocess_torch(images: np.ndarray, name: str, device) -> torch.Tensor:
    """uint8 [N,H,W,C] -> the seed's float NCHW input (Pad, ToTensor, Normalize)."""
    spec = models.get_spec(name)
    nchw = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2)  # IDX: read-only
    # a fresh tensor with default NCHW strides (see harness.torch_input for why)
    x = torch.empty(nchw.shape, dtype=torch.float32, device=device).copy_(nchw) / 255.0
    pad_h = spec.input_shape[0] - x.shape[2]
    pad_w = spec.input_shape[1] - x.shape[3]
    if pad_h or pad_w:
        x = torch.nn.functional.pad(
            x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        )
    if spec.recipe.normalize is not None:
        mean, std = spec.recipe.normalize
        x = (x - mean) / std
    return x.contiguous()


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
        for i in range(0, len(x), batch)
    )
    return correct / len(x)


def train_resident(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    seed: int = 0,
    epochs: int | None = None,
    device: str = "cuda",
    order: Callable[[int, int], np.ndarray] | None = None,
) -> dict:
    """Train the seed's torch model with its recipe on device-resident data.

    Args:
        order: ``order(epoch, n) -> permutation``; default ``torch.randperm``
            seeded by ``seed`` (what ``DataLoader(shuffle=True)`` does).

    Returns:
        ``{"test_accuracy": [per epoch], "epoch_seconds": [per epoch]}``.
    """
    recipe = models.get_spec(name).recipe
    epochs = epochs or recipe.epochs
    torch.manual_seed(seed)
    model = create_torch(name).to(device)
    opt = torch_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.momentum)
    x = preprocess_torch(train_images, name, device)
    y = torch.from_numpy(train_labels.astype(np.int64)).to(device)
    xt = preprocess_torch(test_images, name, device)
    yt = torch.from_numpy(test_labels.astype(np.int64)).to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    accuracies, seconds = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        perm = (
            torch.from_numpy(np.asarray(order(epoch, len(x)))).to(device)
            if order is not None
            else torch.randperm(len(x), generator=generator).to(device)
        )
        for i in range(0, len(x), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            opt.zero_grad()
            torch_loss(model(x[idx]), y[idx], recipe.loss).backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        accuracies.append(evaluate(model, xt, yt))
    return {"test_accuracy": accuracies, "epoch_seconds": seconds}


def train_seed_loop(name: str, raw_root: str, *, epochs: int = 1, device: str = "cuda") -> dict:
    """The seeds' own loop on torchvision's FashionMNIST in ``raw_root``: seconds per epoch."""
    import torchvision
    from torchvision import transforms

    recipe = models.get_spec(name).recipe
    steps = []
    pad = models.get_spec(name).input_shape[0] - 28
    if pad:
        steps.append(transforms.Pad(pad // 2))
    steps.append(transforms.ToTensor())
    if recipe.normalize is not None:
        steps.append(transforms.Normalize((recipe.normalize[0],), (recipe.normalize[1],)))
    transform = transforms.Compose(steps)
    dataset = torchvision.datasets.FashionMNIST(raw_root, train=True, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True)
    torch.manual_seed(0)
    model = create_torch(name).to(device)
    opt = torch_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.momentum)
    seconds = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for inputs, target in loader:
            inputs, target = inputs.to(device), target.to(device)
            opt.zero_grad()
            torch_loss(model(inputs), target, recipe.loss).backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return {"epoch_seconds": seconds}
