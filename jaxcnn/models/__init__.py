"""The model registry: every CLI name maps to its constructor, input shape and recipe.

``MODELS[name]`` is the single source of truth the trainer, the parity package
and the scripts read from; ``create(name, rngs=...)`` builds one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
from flax import nnx

from jaxcnn.compute import PLAIN, Compute
from jaxcnn.errors import UserError
from jaxcnn.models.base import SeedModel
from jaxcnn.models.convnet import ConvNet
from jaxcnn.models.inception import Inception
from jaxcnn.models.lenet import BasicCNN, BlitzNet, LeNet5, SimpleCNN
from jaxcnn.models.mlp import MLP
from jaxcnn.models.resnet import ResNet
from jaxcnn.models.seed000 import CifarCNN, MnistCNN

# Seed 000 feeds ToTensor() only (x / 255); seeds 001-004 also Normalize(0.1307, 0.3081).
MNIST_NORM = (0.1307, 0.3081)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A seed's training recipe: the defaults the trainer starts from.

    Attributes:
        optimizer: ``'sgd'`` (with ``momentum``) or ``'adam'``.
        lr: learning rate.
        momentum: SGD momentum (ignored by Adam).
        batch_size: training batch size.
        epochs: number of epochs.
        normalize: ``(mean, std)`` applied after x/255, or ``None`` for x/255 only.
        loss: ``'cross_entropy'`` on logits, or ``'nll'`` on log-probabilities.
        note: where the seed is silent and what was chosen instead.
    """

    optimizer: str
    lr: float
    momentum: float = 0.0
    batch_size: int = 64
    epochs: int = 1
    normalize: tuple[float, float] | None = MNIST_NORM
    loss: str = "cross_entropy"
    note: str = ""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registry entry."""

    name: str
    constructor: Callable[..., SeedModel]
    seed: str  # where in ../shared/seeds the model is defined
    recipe: Recipe
    fusable: bool = False  # Compute.fuse changes what it traces (InceptionA's 1x1s)

    @functools.cached_property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C), read off an abstract instance so it is stated in one place."""
        return tuple(nnx.eval_shape(lambda: self.constructor(rngs=nnx.Rngs(0))).input_shape)


_SGD_003 = Recipe("sgd", 0.01, momentum=0.5, batch_size=64, epochs=10)
_ADAM_002 = Recipe("adam", 0.001, batch_size=100, epochs=5)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            "mnist_cnn",
            MnistCNN,
            "000 MNIST Model",
            Recipe(
                "adam",
                0.001,
                batch_size=100,
                epochs=5,
                normalize=None,
                note="seed gives lr and batch only; Adam assumed",
            ),
        ),
        ModelSpec(
            "cifar_cnn",
            CifarCNN,
            "000 CIFAR10 Model",
            Recipe(
                "adam",
                0.001,
                batch_size=200,
                epochs=5,
                normalize=None,
                note="seed gives lr and batch only; Adam assumed",
            ),
        ),
        ModelSpec(
            "simple_cnn",
            SimpleCNN,
            "001 SimpleCNN",
            Recipe("sgd", 0.01, momentum=0.5, batch_size=64, epochs=1, loss="nll"),
        ),
        ModelSpec(
            "lenet5",
            LeNet5,
            "002 section 3.4 ConvNet",
            dataclasses.replace(_ADAM_002, note="seed 002 section 4 recipe"),
        ),
        ModelSpec("convnet", ConvNet, "002 section 4.3 ConvNet", _ADAM_002),
        ModelSpec("basic_cnn", BasicCNN, "003 Model (fc 320)", _SGD_003),
        ModelSpec("inception", Inception, "003 InceptionA + Model", _SGD_003, fusable=True),
        ModelSpec("resnet", ResNet, "003 ResidualBlock + Model", _SGD_003),
        ModelSpec(
            "blitz_net",
            BlitzNet,
            "004 Net",
            Recipe(
                "sgd",
                0.01,
                batch_size=64,
                epochs=10,
                note="seed gives SGD lr 0.01 only; batch 64 and 10 epochs chosen",
            ),
        ),
        ModelSpec(
            "mlp",
            MLP,
            "001 section 4 (FC2Layer, n_hidden=8)",
            Recipe("sgd", 0.01, momentum=0.5, batch_size=64, epochs=1, loss="nll"),
        ),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``, or a :class:`UserError` listing the valid names."""
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}") from None


def create(name: str, *, rngs: nnx.Rngs | int = 0, compute: Compute = PLAIN) -> SeedModel:
    """Build model ``name`` with PyTorch-default initialisation.

    Args:
        name: a key of :data:`MODELS`.
        rngs: an ``nnx.Rngs`` or an integer seed (``params`` and ``dropout`` streams).
        compute: how it computes (``jaxcnn.compute.resolve``); the default is the
            plain form. The parameters are the same under every ``compute``.

    Returns:
        The model, in training mode (call ``.eval()`` for inference).
    """
    spec = get_spec(name)
    if isinstance(rngs, int):
        rngs = nnx.Rngs(params=rngs, dropout=rngs + 1)
    model = spec.constructor(compute=compute, rngs=rngs)
    model.model_name = name
    return model


def param_count(model: nnx.Module) -> int:
    """Number of scalar parameters (what the README's model table lists)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["MODELS", "ModelSpec", "Recipe", "create", "get_spec", "param_count"]
