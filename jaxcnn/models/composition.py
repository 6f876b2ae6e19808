"""Convolutions composed where the seed puts no nonlinearity between them.

Seed 003's ``InceptionA`` has no activation inside it, and ``Inception`` feeds incep1
straight into conv2: each 1x1 -> kxk pair, and incep1 followed by conv2 as a whole,
are affine maps, computed here as fewer, cheaper convolutions of the same input
(``Compute.fuse`` under ``conv="im2col"``). The parameters stay the seed's; autodiff
of the kernel algebra below gives their gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import kernels
from jaxcnn.compute import Compute
from jaxcnn.models.layers import Conv2d


def applies(compute: Compute) -> bool:
    """Whether the composed forms run: under ``fuse`` with ``conv="im2col"`` (a CPU's
    defaults), where they were measured; the GPU's ``fuse`` keeps the one matmul."""
    return compute.fuse and compute.conv == "im2col"


def pointwise(first: Conv2d, second: jax.Array) -> jax.Array:
    """The kernel of ``conv(first(x), second)`` for a 1x1 ``first``, biases aside:
    W[i,j,c,o] = sum_m W1[c,m] W2[i,j,m,o]."""
    return jnp.einsum("cm,ijmo->ijco", first.kernel[...][0, 0], second)


def chain_kernels(a: jax.Array, b: jax.Array) -> jax.Array:
    """The kernel of ``conv(conv(x, a), b)``, both unpadded stride-1 cross-correlations:
    K[r,s] = sum over i+j=r, k+l=s of a[i,k] b[j,l] (channels contracted), of size
    ka+kb-1. Exact where the second convolution reads only pixels the first computed
    from the image, which is why the padded inner convolutions stay separate."""
    ka, kb = a.shape[0], b.shape[0]
    taps = np.zeros((ka, kb, ka + kb - 1), np.float32)
    for i in range(ka):
        taps[i, np.arange(kb), i + np.arange(kb)] = 1.0
    return jnp.einsum("ijr,kls,ikcm,jlmo->rsco", taps, taps, a, b)


def embed_kernel(kernel: jax.Array, size: int) -> jax.Array:
    """A kxk kernel centred in a size x size one of zeros (size - k even): the same
    convolution at (size - k) / 2 more padding."""
    off = (size - kernel.shape[0]) // 2
    return jnp.pad(kernel, ((off, off), (off, off), (0, 0), (0, 0)))


def compose_pair(first: Conv2d, second: Conv2d, x: jax.Array, compute: Compute) -> jax.Array:
    """``second(first(x))`` for a 1x1 ``first`` and a stride-1 kxk ``second``, as one
    convolution of ``x`` (:func:`pointwise`).

    The first's bias does not simply pass through: ``second`` zero-pads ``first(x)``,
    so the border pixels see fewer taps of b1. Its contribution is the map
    B[h,w,o] = sum of b1.W2[i,j,:,o] over the taps (i,j) that land inside the image,
    built from two 0/1 masks, one per axis.
    """
    w2, padding = second.kernel[...], second.torch_padding
    y = kernels.conv2d(x, pointwise(first, w2), None, 1, padding, compute)
    h, w, k = x.shape[1], x.shape[2], w2.shape[0]
    inside_h, inside_w = (_taps_inside(size, k, padding) for size in (h, w))
    bias_taps = jnp.einsum("m,ijmo->ijo", first.bias[...], w2)
    bias_map = jnp.einsum("hi,wj,ijo->hwo", inside_h, inside_w, bias_taps)
    return y + (bias_map + second.bias[...]).astype(y.dtype)


def _taps_inside(size: int, k: int, padding: int) -> np.ndarray:
    """[size', k] 0/1: whether tap i of output position p reads a pixel of the image
    (0 <= p + i - padding < size), not the zero padding."""
    out = size + 2 * padding - k + 1
    read = np.arange(out)[:, None] + np.arange(k)[None, :] - padding
    return ((read >= 0) & (read < size)).astype(np.float32)
