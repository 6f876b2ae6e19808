"""The custom-VJP convolutions and pools, and the two calls that pick one.

Each kernel is a pure function of arrays and static settings; which one runs is
``Compute.conv`` / ``Compute.pool`` (:mod:`jaxcnn.compute`), handed to the layers
at construction. The plain forms (``"xla"``) are XLA's own ops.
"""

from __future__ import annotations

import jax
from flax import linen

from jaxcnn.compute import POOLS, Compute
from jaxcnn.kernels import direct, rowconv, tileconv, winograd
from jaxcnn.kernels.im2col import conv2d_gemm_wgrad, conv2d_im2col
from jaxcnn.kernels.pallas_wgrad import conv2d_pallas_wgrad
from jaxcnn.kernels.pool import avg_pool_shifted, max_pool_reshape


def conv2d(x, kernel, bias, stride: int, padding: int, compute: Compute) -> jax.Array:
    """``F.conv2d`` as ``compute.conv`` says: [N,H,W,C] x HWIO (+ bias) -> [N,H',W',O].

    ``"xla"`` is ``nnx.Conv``'s own call and is made by the layer itself. Under
    ``"im2col"``, ``compute.patch_form`` picks the direct kernel, Winograd's form, the
    full patch matrix, the tiles or the row form per convolution
    (:func:`~jaxcnn.kernels.direct.applies`, :func:`~jaxcnn.kernels.winograd.applies`,
    :func:`~jaxcnn.kernels.tileconv.applies`, :func:`~jaxcnn.kernels.rowconv.applies`).
    """
    form = compute.patch_form
    if compute.conv == "im2col" and direct.winograd_applies(
        form, kernel.shape, stride, x.dtype, padding
    ):
        return direct.conv2d_winograd(x, kernel, bias, padding)
    if compute.conv == "im2col" and direct.applies(form, kernel.shape, stride, x.dtype, padding):
        return direct.conv2d_direct(x, kernel, bias, padding)
    form = "auto" if form == "direct" else form  # where the direct kernel does not run
    if compute.conv == "im2col" and winograd.applies(
        form, kernel.shape, stride, x.dtype, x.shape, padding
    ):
        return winograd.conv2d_winograd(x, kernel, bias, padding)
    form = "auto" if form == "winograd" else form  # where Winograd's form does not exist
    if compute.conv == "im2col" and tileconv.applies(form, kernel.shape, stride):
        return tileconv.conv2d_tiles(x, kernel, bias, padding)
    if compute.conv == "im2col" and rowconv.applies(form, kernel.shape, stride):
        return rowconv.conv2d_rows(x, kernel, bias, padding)
    if compute.conv == "im2col":
        return conv2d_im2col(x, kernel, bias, stride, padding, compute.dx_form)
    if compute.conv == "gemm_wgrad":
        return conv2d_gemm_wgrad(x, kernel, bias, stride, padding)
    if compute.conv == "pallas_wgrad":
        return conv2d_pallas_wgrad(
            x, kernel, bias, stride, padding, interpret=compute.interpret, mesh=compute.mesh
        )
    raise ValueError(f"no conv kernel {compute.conv!r}")


def max_pool2d(x: jax.Array, kernel_size: int, compute: Compute) -> jax.Array:
    """``F.max_pool2d(x, k)`` (stride k, no padding) as ``compute.pool`` says. [N,H,W,C].

    ``"xla"``: XLA's ``reduce_window``; ``"reshape"``: :func:`max_pool_reshape`.
    """
    if compute.pool == "xla":
        window = (kernel_size, kernel_size)
        return linen.max_pool(x, window, strides=window)
    if compute.pool == "reshape":
        return max_pool_reshape(x, kernel_size)
    raise ValueError(f"no pool kernel {compute.pool!r}")


def avg_pool2d(x: jax.Array, kernel_size: int, stride: int, padding: int, compute: Compute):
    """``F.avg_pool2d`` (``count_include_pad=True``) as ``compute.pool`` says. [N,H,W,C].

    ``"xla"``: XLA's ``reduce_window`` (flax's ``avg_pool``); ``"reshape"``, at
    stride 1: :func:`avg_pool_shifted`, sums of shifted slices.
    """
    if compute.pool == "reshape" and stride == 1:
        return avg_pool_shifted(x, kernel_size, padding)
    if compute.pool not in POOLS:
        raise ValueError(f"no pool kernel {compute.pool!r}")
    pad = ((padding, padding), (padding, padding))
    window, strides = (kernel_size, kernel_size), (stride, stride)
    return linen.avg_pool(x, window, strides=strides, padding=pad, count_include_pad=True)


__all__ = ["avg_pool2d", "conv2d", "max_pool2d"]
