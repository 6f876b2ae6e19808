"""Layers that behave exactly like their PyTorch counterparts in the seeds.

Flax's defaults differ from PyTorch's in three places that change a model's
behaviour: parameter initialisation, the order of the flatten before the first
``Linear`` (NHWC vs NCHW), and ``Dropout2d``. Everything here exists to close one
of those gaps; the models use only these helpers and plain ``jax.nn`` ops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn import kernels
from jaxcnn.compute import PLAIN, Compute
from jaxcnn.kernels import dense


def torch_default_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default init for Conv and Linear weights *and* biases.

    ``kaiming_uniform_(a=sqrt(5))`` on the weight reduces to U(-b, b) with
    b = 1/sqrt(fan_in), and the bias uses the same bound. Training from scratch
    only behaves like the seeds if we start from the same distribution.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv2d(nnx.Conv):
    """``torch.nn.Conv2d`` as an ``nnx.Conv`` (NHWC, HWIO kernel, torch init).

    PyTorch's integer ``padding`` is symmetric zero padding; Flax's default is
    ``'SAME'``, so the padding is always spelled out here.

    ``compute.conv`` picks the algorithm (``models.create(..., compute=...)``
    passes it down; the parameters are the same either way):

    * ``"xla"``: ``lax.conv_general_dilated``, which XLA hands to cuDNN on a GPU.
    * ``"im2col"``: the kh*kw shifted views of the input concatenated on channels
      and one matmul with the kernel reshaped to [kh*kw*C_in, C_out]
      (:func:`~jaxcnn.kernels.im2col.conv2d_im2col`), with both gradients as
      GEMMs too. The same sums in another order. For the seeds' tiny images
      and channel counts, GEMMs can beat a convolution library's
      small-problem kernels.
    * ``"gemm_wgrad"``: XLA's convolution and input gradient, the weight
      gradient as im2col's GEMM
      (:func:`~jaxcnn.kernels.im2col.conv2d_gemm_wgrad`): for cuDNN, whose
      weight-gradient kernels were the slow ones on the H100.
    * ``"pallas_wgrad"``: XLA's convolution and input gradient, the weight and
      bias gradients in one Pallas kernel
      (:func:`~jaxcnn.kernels.pallas_wgrad.conv2d_pallas_wgrad`): one launch
      where cuDNN's path takes a memset, ``wgrad_alg0`` and a reduce. GPU only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        compute: Compute = PLAIN,
        rngs: nnx.Rngs,
    ):
        init = torch_default_init(in_channels * kernel_size * kernel_size)
        super().__init__(
            in_channels,
            out_channels,
            (kernel_size, kernel_size),
            strides=stride,
            padding=[(padding, padding), (padding, padding)],
            use_bias=bias,
            kernel_init=init,
            bias_init=init,
            rngs=rngs,
        )
        self.torch_stride = stride
        self.torch_padding = padding
        self.compute = compute

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.compute.conv == "xla":
            return super().__call__(x)
        bias = None if self.bias is None else self.bias[...]
        return kernels.conv2d(
            x, self.kernel[...], bias, self.torch_stride, self.torch_padding, self.compute
        )


class Linear(nnx.Linear):
    """``torch.nn.Linear`` as an ``nnx.Linear`` ([in, out] kernel, torch init).

    ``compute.linear`` picks how the kernel gradient of a 2-D input is computed
    (:mod:`jaxcnn.kernels.dense`); the parameters and the values are the same.
    """

    def __init__(
        self, in_features: int, out_features: int, *, compute: Compute = PLAIN, rngs: nnx.Rngs
    ):
        init = torch_default_init(in_features)
        super().__init__(in_features, out_features, kernel_init=init, bias_init=init, rngs=rngs)
        self.compute = compute

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 2 or not dense.applies(self.compute.linear, self.kernel.shape):
            return super().__call__(x)
        bias = None if self.bias is None else self.bias[...]
        x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
        return dense.linear(x, kernel, bias)


class MaxPool2d(nnx.Module):
    """``torch.nn.MaxPool2d(k)`` (seed 000's ``Sequential``), computed as
    ``compute.pool`` says (:func:`jaxcnn.kernels.max_pool2d`)."""

    def __init__(self, kernel_size: int = 2, *, compute: Compute = PLAIN):
        self.kernel_size = kernel_size
        self.compute = compute

    def __call__(self, x: jax.Array) -> jax.Array:
        return kernels.max_pool2d(x, self.kernel_size, self.compute)


def avg_pool2d(
    x: jax.Array, kernel_size: int, stride: int, padding: int, compute: Compute = PLAIN
) -> jax.Array:
    """``F.avg_pool2d`` with PyTorch's default ``count_include_pad=True``. [N,H,W,C].

    With padding, the border windows divide by the full window size (the zeros
    count); dividing by the number of real pixels instead would change every
    border value of the Inception pool branch. ``compute.pool`` picks the
    kernel (:func:`jaxcnn.kernels.avg_pool2d`).
    """
    return kernels.avg_pool2d(x, kernel_size, stride, padding, compute)


def flatten_chw(x: jax.Array) -> jax.Array:
    """PyTorch's ``x.view(n, -1)`` on an NCHW tensor, from an NHWC one.

    The first ``Linear`` after the flatten was trained on channel-major
    features; flattening NHWC directly would feed it the same numbers in
    another order (the classic porting bug). [N,H,W,C] -> [N, C*H*W].
    """
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class Dropout2d(nnx.Module):
    """``torch.nn.Dropout2d`` with PyTorch's behaviour for both ranks it meets.

    On a 4-D map it zeroes whole channels (one draw per sample and channel,
    shared over H and W). On a 2-D ``[N, F]`` tensor PyTorch's
    ``feature_dropout`` has no spatial dims to share a draw over, so it is
    plain element-wise dropout, and so it is here.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = rate
        self.channel_dropout = nnx.Dropout(rate, broadcast_dims=(1, 2), rngs=rngs)
        self.element_dropout = nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim == 4:  # [N, H, W, C]
            return self.channel_dropout(x)
        return self.element_dropout(x)
