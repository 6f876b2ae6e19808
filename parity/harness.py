"""Shared machinery of the parity tests: paired models, batches, device choice.

A "pair" is the seed's PyTorch module with torch-default init and the jaxcnn
model holding the very same weights (through ``parity.convert``), so any
difference in outputs comes from the computation, not from the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from jaxcnn import models
from jaxcnn.compute import PLAIN, Compute
from parity.convert import load_torch_state_dict
from parity.torch_models import create_torch

TORCH_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def full_float32_precision() -> None:
    """Disable TF32 on both sides so GPU parity compares float32 with float32."""
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def make_pair(
    name: str, seed: int = 0, compute: Compute = PLAIN
) -> tuple[torch.nn.Module, models.SeedModel]:
    """(torch model on TORCH_DEVICE, jaxcnn model computing as ``compute`` says), same
    weights, both in eval mode."""
    torch.manual_seed(seed)
    torch_model = create_torch(name).to(TORCH_DEVICE).eval()
    jax_model = models.create(name, compute=compute)
    load_torch_state_dict(jax_model, torch_model.state_dict())
    jax_model.eval()
    return torch_model, jax_model


def random_batch(name: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal images [N,H,W,C] (NHWC) and integer labels [N]."""
    h, w, c = models.get_spec(name).input_shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c), dtype=np.float32)
    y = rng.integers(0, 10, size=n)
    return x, y


def torch_input(x_nhwc: np.ndarray) -> torch.Tensor:
    """[N,H,W,C] numpy -> [N,C,H,W] torch tensor on TORCH_DEVICE.

    Copied into a fresh tensor so its strides are the default NCHW ones, as a
    DataLoader batch has: numpy may give a size-1 channel dim an odd stride,
    which makes torch pick channels-last kernels and breaks the seeds' ``view``.
    """
    nchw = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    return torch.empty(nchw.shape, dtype=nchw.dtype, device=TORCH_DEVICE).copy_(nchw)


def torch_loss(outputs: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """The seeds' own loss calls: ``nn.CrossEntropyLoss()`` or ``F.nll_loss``."""
    if kind == "cross_entropy":
        return torch.nn.CrossEntropyLoss()(outputs, labels)
    return F.nll_loss(outputs, labels)


def torch_optimizer(
    name: str, params, lr: float, momentum: float, capturable: bool = False
) -> torch.optim.Optimizer:
    """The seeds' ``torch.optim`` calls; ``capturable`` keeps Adam's step count on the
    GPU so a CUDA graph can capture its update (SGD needs nothing for that)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr, capturable=capturable)


def jax_grads(model, x: np.ndarray, y: np.ndarray, kind: str) -> tuple[float, dict]:
    """(loss, gradients in torch names and layout) of the seed's loss, by jaxcnn."""
    from flax import nnx

    from jaxcnn.objectives import seed_loss
    from parity.convert import state_to_torch_layout

    def loss_fn(m):
        return seed_loss(m(as_jax(x)), as_jax(y), kind)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    return float(loss), state_to_torch_layout(grads)


def torch_grads(model, x: np.ndarray, y: np.ndarray, kind: str) -> tuple[float, dict]:
    """(loss, gradients by torch key) of the seed's loss, by torch autograd."""
    model.zero_grad()
    loss = torch_loss(model(torch_input(x)), torch.from_numpy(y).to(TORCH_DEVICE), kind)
    loss.backward()
    return loss.item(), {k: to_numpy(p.grad) for k, p in model.named_parameters()}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def as_jax(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x)
