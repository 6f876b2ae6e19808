"""What every seed model shares: NHWC input checked against its (H, W, C)."""

from __future__ import annotations

import jax
from flax import nnx

from jaxcnn import kernels
from jaxcnn.compute import PLAIN, Compute
from jaxcnn.errors import UserError


class SeedModel(nnx.Module):
    """Base class: subclasses set ``input_shape`` and ``compute`` and implement ``forward``.

    The shape check runs in Python at trace time, so under ``jit`` it costs
    nothing, and a wrong shape fails with the expected (H, W, C) instead of a
    matmul dimension error deep inside XLA.
    """

    input_shape: tuple[int, int, int]  # (H, W, C)
    model_name: str | None = None  # set by jaxcnn.models.create for error messages
    compute: Compute = PLAIN  # how it computes: given to the constructor, passed down

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (or log-probabilities, where the seed returns them). [N,H,W,C] -> [N,10]."""
        expected = tuple(self.input_shape)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            name = self.model_name or type(self).__name__
            hint = ""
            if x.ndim == 4 and (x.shape[1], x.shape[2], x.shape[3]) == (
                expected[2],
                expected[0],
                expected[1],
            ):
                hint = " (this looks like NCHW: transpose with x.transpose(0, 2, 3, 1))"
            raise UserError(
                f"model '{name}' expects NHWC input of shape (N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}), i.e. (H, W, C) = {expected}, but got shape {tuple(x.shape)}{hint}"
            )
        return self.forward(x)

    def forward(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def max_pool(self, x: jax.Array, kernel_size: int = 2) -> jax.Array:
        """The seeds' ``F.max_pool2d(x, k)``, computed as ``compute.pool`` says."""
        return kernels.max_pool2d(x, kernel_size, self.compute)
