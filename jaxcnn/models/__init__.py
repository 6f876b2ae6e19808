"""The model registry: every CLI name maps to its constructor, input shape and recipe.

``MODELS[name]`` is the single source of truth the trainer, the parity package
and the scripts read from; ``create(name, rngs=...)`` builds one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator

import jax
from flax import nnx

from jaxcnn.errors import UserError
from jaxcnn.models import pallas_wgrad
from jaxcnn.models.base import SeedModel
from jaxcnn.models.convnet import ConvNet
from jaxcnn.models.inception import Inception
from jaxcnn.models.layers import CONV_IMPLS, POOL_IMPLS
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
        ModelSpec("inception", Inception, "003 InceptionA + Model", _SGD_003),
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


def create(
    name: str,
    *,
    rngs: nnx.Rngs | int = 0,
    fuse: bool = False,
    conv: str = "xla",
    pool: str = "xla",
) -> SeedModel:
    """Build model ``name`` with PyTorch-default initialisation.

    Args:
        name: a key of :data:`MODELS`.
        rngs: an ``nnx.Rngs`` or an integer seed (``params`` and ``dropout`` streams).
        fuse: compute with the algebraically identical fused forms where a model
            has them; ``conv``, ``pool``: the convolution and max-pool algorithms
            (see :func:`set_impl`).

    Returns:
        The model, in training mode (call ``.eval()`` for inference).
    """
    spec = get_spec(name)
    if isinstance(rngs, int):
        rngs = nnx.Rngs(params=rngs, dropout=rngs + 1)
    model = spec.constructor(rngs=rngs)
    model.model_name = name
    return set_impl(model, fuse=fuse, conv=conv, pool=pool)


# The backend a program is built for, where it is not the one this process runs on
# (jaxcnn.aot compiles for a GPU on a host without one).
_TARGET_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "target_backend", default=None
)


@contextlib.contextmanager
def building_for(backend: str) -> Iterator[None]:
    """Inside: ``resolve_conv`` and ``conv_unavailable`` answer for ``backend``."""
    token = _TARGET_BACKEND.set(backend)
    try:
        yield
    finally:
        _TARGET_BACKEND.reset(token)


def target_backend() -> str:
    """The backend programs are built for: this process's, unless ``building_for`` says."""
    return _TARGET_BACKEND.get() or jax.default_backend()


def resolve_conv(conv: str) -> str:
    """A checked convolution algorithm; ``"auto"`` -> the one measured fastest here.

    On CPU, ``im2col`` trained 4.6-10x faster than XLA's convolutions (jax 0.10,
    2-core x86-64; README, "Speed options"), whose weight gradients are slow
    there. On a GPU, ``xla`` (cuDNN) stays the default until ``scripts/bench.py``
    shows otherwise.

    Raises:
        UserError: for a name that is neither ``"auto"`` nor one of ``CONV_IMPLS``,
            and for ``pallas_wgrad`` off a GPU (unless ``pallas_wgrad.INTERPRET``).
    """
    if conv == "auto":
        return "im2col" if target_backend() == "cpu" else "xla"
    if conv not in CONV_IMPLS:
        raise UserError(f"unknown conv algorithm '{conv}'; choose one of: {', '.join(CONV_IMPLS)}")
    why = conv_unavailable(conv)
    if why:
        raise UserError(f"{why}; choose another --conv")
    return conv


def resolve_pool(pool: str) -> str:
    """A checked max-pool algorithm; ``"auto"`` -> the one measured fastest here.

    On CPU, ``reshape`` trained mnist_cnn 17% and resnet 19% faster per epoch than
    XLA's ``reduce_window``, inception within noise (interleaved epochs; jax 0.10,
    2-core x86-64; README, "Speed options"). On a GPU it saves launches
    (``scripts/gpu_census.py``) but has not been timed, so ``xla`` stays the
    default there.

    Raises:
        UserError: for a name that is neither ``"auto"`` nor one of ``POOL_IMPLS``.
    """
    if pool == "auto":
        return "reshape" if target_backend() == "cpu" else "xla"
    if pool not in POOL_IMPLS:
        raise UserError(f"unknown pool algorithm '{pool}'; choose one of: {', '.join(POOL_IMPLS)}")
    return pool


def conv_unavailable(conv: str, backend: str | None = None) -> str | None:
    """Why algorithm ``conv`` cannot run on ``backend`` (default: ``target_backend()``), or None.

    ``pallas_wgrad`` is a GPU kernel; elsewhere it runs only in Pallas's
    interpreter, which is for tests (``pallas_wgrad.INTERPRET``).
    """
    backend = backend or target_backend()
    if conv == "pallas_wgrad" and backend != "gpu" and not pallas_wgrad.INTERPRET:
        return f"conv algorithm 'pallas_wgrad' is a GPU kernel and this backend is {backend}"
    return None


# The named non-default forms of ``set_impl``: each computes what the plain form
# (``conv="xla"``, ``pool="xla"``, unfused) computes, another way. The one table the
# tests (against the plain form and against torch) and ``scripts/bench.py``'s
# variants iterate.
SPEED_OPTIONS = {
    "im2col": {"conv": "im2col"},
    "fused": {"fuse": True},
    "fused+im2col": {"fuse": True, "conv": "im2col"},
    "gemm_wgrad": {"conv": "gemm_wgrad"},
    "pallas_wgrad": {"conv": "pallas_wgrad"},
    "reshape_pool": {"pool": "reshape"},
}


def set_impl(
    model: nnx.Module, *, fuse: bool = False, conv: str = "xla", pool: str = "xla"
) -> nnx.Module:
    """Choose how ``model`` computes, in place; what it computes stays the same.

    Args:
        fuse: every submodule with a ``fuse`` attribute (``InceptionA``) uses its
            algebraically identical fused form.
        conv: every ``Conv2d`` uses this algorithm, one of ``CONV_IMPLS`` or ``"auto"``.
        pool: every max pool uses this algorithm, one of ``POOL_IMPLS`` or ``"auto"``.

    These are static attributes (part of the graph, not the state), so they
    pick which computation is traced; the parameter tree, and thus checkpoints
    and the torch converter, are the same either way.
    """
    model.set_attributes(
        fuse=fuse,
        conv_impl=resolve_conv(conv),
        pool_impl=resolve_pool(pool),
        raise_if_not_found=False,
    )
    return model


def param_count(model: nnx.Module) -> int:
    """Number of scalar parameters (what the README's model table lists)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = [
    "CONV_IMPLS",
    "MODELS",
    "POOL_IMPLS",
    "SPEED_OPTIONS",
    "ModelSpec",
    "Recipe",
    "building_for",
    "conv_unavailable",
    "create",
    "get_spec",
    "param_count",
    "resolve_conv",
    "resolve_pool",
    "set_impl",
    "target_backend",
]
