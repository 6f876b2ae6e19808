"""The seeds' PyTorch training loops, for accuracy and speed comparisons.

Three forms of the same recipe (optimizer, lr, momentum, batch size, epochs, loss,
``ToTensor``/``Normalize``, 28->32 padding, last partial batch kept):

* :func:`train_resident`: the dataset preprocessed once onto the device and
  indexed per batch. Same math as the seeds' loop, without the per-sample
  Python transforms; optionally in jaxcnn's exact data order.
* :func:`train_graphed`: the best PyTorch can do for these models: resident
  data, and the whole step (gather, forward, backward, optimizer) captured in
  one CUDA graph and replayed, optionally with ``torch.compile``. CUDA only.
* :func:`train_seed_loop`: the seeds' loop as written: a torchvision dataset,
  ``DataLoader(shuffle=True)`` and per-sample transforms. Needs torchvision
  (the ``bench`` extra); used only for timing on a GPU.

Each returns ``{"test_accuracy": [per epoch], "epoch_seconds": [per epoch],
"startup_seconds": s}``; the start-up is what runs before the first epoch
(data to the device, and for the graphed form warm-up, compile and capture).
"""

from __future__ import annotations

import contextlib
import gzip
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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


def resident_data(name, train_images, train_labels, test_images, test_labels, device):
    """(x, y, x_test, y_test) on ``device``: the seed's preprocessing, int64 labels."""
    return (
        preprocess_torch(train_images, name, device),
        torch.from_numpy(np.asarray(train_labels).astype(np.int64)).to(device),
        preprocess_torch(test_images, name, device),
        torch.from_numpy(np.asarray(test_labels).astype(np.int64)).to(device),
    )


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
    batch_size: int | None = None,
) -> dict:
    """Train the seed's torch model with its recipe on device-resident data.

    Args:
        order: ``order(epoch, n) -> permutation``; default ``torch.randperm``
            seeded by ``seed`` (what ``DataLoader(shuffle=True)`` does).
        batch_size: overrides the recipe's.
    """
    recipe = models.get_spec(name).recipe
    epochs = epochs or recipe.epochs
    batch_size = batch_size or recipe.batch_size
    startup = time.perf_counter()
    torch.manual_seed(seed)
    model = create_torch(name).to(device)
    opt = torch_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.momentum)
    x, y, xt, yt = resident_data(name, train_images, train_labels, test_images, test_labels, device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    _sync(device)
    startup = time.perf_counter() - startup

    def run_epoch(epoch):
        perm = (
            torch.from_numpy(np.asarray(order(epoch, len(x)))).to(device)
            if order is not None
            else torch.randperm(len(x), generator=generator).to(device)
        )
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            torch_loss(model(x[idx]), y[idx], recipe.loss).backward()
            opt.step()

    return timed_epochs(model, epochs, device, startup, run_epoch, lambda: evaluate(model, xt, yt))


def timed_epochs(model, epochs: int, device, startup: float, run_epoch, test) -> dict:
    """``run_epoch(epoch)`` for epochs 1..N, each timed to completion, ``test()`` after each.

    Returns the dict every form returns (see the module docstring), plus the model.
    """
    accuracies, seconds = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        _sync(device)
        start = time.perf_counter()
        run_epoch(epoch)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        accuracies.append(test())
    return {
        "test_accuracy": accuracies,
        "epoch_seconds": seconds,
        "startup_seconds": startup,
        "model": model,
    }


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def _tuned_for_speed():
    """cuDNN autotuning and TF32 matmuls, then the caller's settings back: they are
    process-wide, and the arms run after the graphed one must not inherit them."""
    benchmark, precision = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark
        torch.set_float32_matmul_precision(precision)


@_tuned_for_speed()
def train_graphed(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int | None = None,
    compile_model: bool = False,
    warmup_steps: int = 3,
    capture: bool = True,
    device: str = "cuda",
) -> dict:
    """The recipe with the whole training step in one CUDA graph, replayed per batch.

    Following PyTorch's whole-network capture recipe: ``warmup_steps`` eager
    steps on a side stream (cuDNN autotuning, lazy state, and with
    ``compile_model`` the ``torch.compile`` of forward and backward), then one
    capture of gather + forward + backward + ``optimizer.step()``; each batch
    then costs one index copy and one ``replay()``. Adam runs with
    ``capturable=True`` so its step counter lives on the GPU. The warm-up steps
    are undone afterwards (parameters restored, optimizer state zeroed, which
    is what a fresh SGD-momentum or Adam state computes the same as), so
    training starts from the seed's initialisation like the other forms. A
    last partial batch runs eagerly on the same tensors.

    Precision is each library's GPU default made equal to JAX's: TF32 for
    convolutions (PyTorch's default too) and for matmuls (``high``), and
    ``cudnn.benchmark`` on, as a user tuning for speed would set.

    ``capture=False`` runs the same code with an eager step in place of the
    replay (any device): what the tests use to check the warm-up is undone and
    the static-index plumbing feeds the right batches.
    """
    if capture and not torch.cuda.is_available():
        raise RuntimeError("the CUDA-graphed PyTorch step needs a CUDA GPU")
    recipe = models.get_spec(name).recipe
    epochs = epochs or recipe.epochs
    batch = batch_size or recipe.batch_size
    startup = time.perf_counter()
    torch.manual_seed(seed)
    model = create_torch(name).to(device)
    opt = torch_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.momentum, capture)
    forward = torch.compile(model) if compile_model else model
    x, y, xt, yt = resident_data(name, train_images, train_labels, test_images, test_labels, device)
    initial = [p.detach().clone() for p in model.parameters()]
    n = len(x)
    full, rest = divmod(n, batch)
    static_idx = torch.arange(batch, device=device)

    def step(idx):
        loss = torch_loss(forward(x[idx]), y[idx], recipe.loss)
        loss.backward()
        opt.step()
        return loss

    def warm_up():
        for _ in range(warmup_steps):
            opt.zero_grad(set_to_none=True)
            step(static_idx)
            if rest:  # the tail's shape too, so its compile/autotune is start-up
                opt.zero_grad(set_to_none=True)
                step(static_idx[:rest])

    model.train()
    if capture:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            warm_up()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)  # backward allocates .grad from the graph's pool
        with torch.cuda.graph(graph):
            step(static_idx)
        replay = graph.replay
    else:
        warm_up()

        def replay():
            opt.zero_grad(set_to_none=False)
            step(static_idx)

    with torch.no_grad():  # undo the warm-up: the seed's init and a fresh optimizer
        for p, p0 in zip(model.parameters(), initial, strict=True):
            p.copy_(p0)
        for state in opt.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()
    _sync(device)
    startup = time.perf_counter() - startup

    generator = torch.Generator(device="cpu").manual_seed(seed)

    def run_epoch(_):
        perm = torch.randperm(n, generator=generator).to(device)
        for i in range(full):
            static_idx.copy_(perm[i * batch : (i + 1) * batch])
            replay()
        if rest:
            opt.zero_grad(set_to_none=False)  # in place: the graph keeps its .grad tensors
            step(perm[full * batch :])

    return timed_epochs(model, epochs, device, startup, run_epoch, lambda: evaluate(model, xt, yt))


def train_seed_loop(
    name: str,
    raw_root: str,
    *,
    epochs: int = 1,
    device: str = "cuda",
    batch_size: int | None = None,
    seed: int = 0,
) -> dict:
    """The seeds' own loop on torchvision's FashionMNIST in ``raw_root``."""
    import torchvision
    from torchvision import transforms

    recipe = models.get_spec(name).recipe
    startup = time.perf_counter()
    steps = []
    pad = models.get_spec(name).input_shape[0] - 28
    if pad:
        steps.append(transforms.Pad(pad // 2))
    steps.append(transforms.ToTensor())
    if recipe.normalize is not None:
        steps.append(transforms.Normalize((recipe.normalize[0],), (recipe.normalize[1],)))
    transform = transforms.Compose(steps)
    dataset = torchvision.datasets.FashionMNIST(raw_root, train=True, transform=transform)
    test_set = torchvision.datasets.FashionMNIST(raw_root, train=False, transform=transform)
    batch = batch_size or recipe.batch_size
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    torch.manual_seed(seed)
    model = create_torch(name).to(device)
    opt = torch_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.momentum)
    startup = time.perf_counter() - startup

    def run_epoch(_):
        for inputs, target in loader:
            inputs, target = inputs.to(device), target.to(device)
            opt.zero_grad()
            torch_loss(model(inputs), target, recipe.loss).backward()
            opt.step()

    @torch.no_grad()
    def test():
        model.eval()
        correct = sum(
            int((model(inputs.to(device)).argmax(1) == target.to(device)).sum())
            for inputs, target in test_loader
        )
        return correct / len(test_set)

    return timed_epochs(model, epochs, device, startup, run_epoch, test)


def torchvision_root(data_dir: str | Path) -> str:
    """A temporary root in torchvision's FashionMNIST layout (raw, uncompressed) from IDX files."""
    root = Path(tempfile.mkdtemp())
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in Path(data_dir).iterdir():
        if path.suffix == ".gz":
            with gzip.open(path) as src, open(raw / path.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        elif path.name.endswith("-ubyte"):
            shutil.copy(path, raw / path.name)
    return str(root)
