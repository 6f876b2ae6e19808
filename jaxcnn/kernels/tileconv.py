"""im2col over tiles of output columns: the kernel as a block-Toeplitz matrix.

A first convolution (1 or 3 input channels) has a narrow full patch matrix,
kh*kw*C values a pixel (25 or 75), and a GEMM with a narrow N, its few output
channels: XLA:CPU runs both far below its speed. Here a row of the output is
cut into tiles of ``bw`` columns, and one patch row holds what a whole tile
reads, kh rows of bw+kw-1 input columns::

    P[n, h, t, (i, s, c)]  = x_pad[n, h + i, t*bw + s, c]        s < bw+kw-1
    T[(i, s, c), (b, o)]   = W[i, s - b, c, o]  (zero unless 0 <= s-b < kw)
    y[n, h, t*bw + b, o]   = (P @ T)[n, h, t, (b, o)]

P @ T is the output in its own NHWC order. P holds kh*(bw+kw-1)*C/bw values
a pixel instead of kh*kw*C, and the GEMM's N is bw*O; T's zeros cost
(bw+kw-1)/kw times the FLOPs (1.6x for a 5x5 kernel at bw = 4). The backward
is dT = P^T dy, dW the transpose of T's construction, and, where an input
gradient is asked for, the transposes of the GEMM and of the patches.

P^T dy contracts over the pixels, P's major axis. XLA:CPU gives that product to
Eigen, which packs P transposed (cifar_cnn's [51200, 120]: 6.9-7.2 ms); built
directly as P^T ([120, 51200], the pixels minor) it is a row-major GEMM that
YNNPACK runs in 5.0-5.2 ms (2-core AMD EPYC Zen 4, jax 0.10.2). For 3-channel
inputs (:data:`PT_MIN_IN`) the backward builds P^T from the input instead of
keeping P: cifar_cnn's step 1.04-1.11x faster (paired, in two runs). With one
channel (mnist_cnn, blitz_net, basic_cnn, simple_cnn) the product is
[40, M] x [M, 40] or narrower, and the step was 0.92-1.0x: those keep P.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.kernels.bias import add_bias
from jaxcnn.kernels.im2col import (
    CHANNEL_MAJOR_MAX_OUT,
    CONTRACT_ROWS,
    forward_channel_major,
    pad_hw,
)

MAX_IN = 3  # the tiles for inputs of at most this many channels: the seeds' first convolutions
MAX_OUT = 20  # ... to at most this many: convnet's 1 -> 32 (N already 32) lost (0.98x)
WIDTHS = (4, 2)  # tile widths tried in this order: the first that divides the output's width
PT_MIN_IN = 3  # input channels from which dT is computed from P^T built directly


def applies(requested: str, kernel_shape, stride: int) -> bool:
    """Whether a convolution of ``kernel_shape`` (HWIO) runs in tiles.

    ``requested`` is ``Compute.patch_form``: ``"tiles"`` at stride 1 for a kernel
    wider than one column (with one, neighbouring windows share no input column and a
    tile is the full form's patches), ``"auto"`` there for few input and output
    channels (:data:`MAX_IN`, :data:`MAX_OUT`), the others never.
    """
    _, kw, cin, cout = kernel_shape
    if requested not in ("auto", "tiles") or stride != 1 or kw == 1:
        return False
    return requested == "tiles" or (cin <= MAX_IN and cout <= MAX_OUT)


def tile_width(out_width: int) -> int:
    """The first of :data:`WIDTHS` that divides ``out_width`` (no cropped columns), else
    the first."""
    return next((bw for bw in WIDTHS if out_width % bw == 0), WIDTHS[0])


def conv2d_tiles(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int = 0
) -> jax.Array:
    """``F.conv2d`` at stride 1 with symmetric zero ``padding``: [N,H,W,C] x HWIO -> [N,H',W',O].

    The bias is added outside the custom VJP, by :func:`~jaxcnn.kernels.bias.add_bias`.
    """
    out_width = x.shape[2] + 2 * padding - kernel.shape[1] + 1
    y = _conv(x, kernel.astype(x.dtype), padding, tile_width(out_width))
    return y if bias is None else add_bias(y, bias)


def toeplitz(kernel: jax.Array, bw: int) -> jax.Array:
    """HWIO -> T [(kh, bw+kw-1, C), (bw, O)], the GEMM operand (zeros off the band)."""
    kh, kw, cin, cout = kernel.shape
    span = bw + kw - 1
    band = np.zeros((kw, span, bw), np.float32)  # band[j, s, b] = 1 where s = b + j
    for j in range(kw):
        band[j, np.arange(bw) + j, np.arange(bw)] = 1
    t = jnp.einsum("ijco,jsb->iscbo", kernel, jnp.asarray(band, kernel.dtype))
    return t.reshape(kh * span * cin, bw * cout)


def _tiled(xp: jax.Array, kh: int, kw: int, bw: int):
    """The padded input with zero columns on the right up to whole tiles, the output
    height, the tiles a row and the columns a tile reads (bw + kw - 1)."""
    hp, wp = xp.shape[1:3]
    tiles = -(-(wp - kw + 1) // bw)
    span = bw + kw - 1
    right = (tiles - 1) * bw + span - wp
    if right > 0:
        xp = jnp.pad(xp, ((0, 0), (0, 0), (0, right), (0, 0)))
    return xp, hp - kh + 1, tiles, span


def tile_patches(xp: jax.Array, kh: int, kw: int, bw: int) -> jax.Array:
    """[N,Hp,Wp,C] (padded) -> P [N*H'*tiles, kh*(bw+kw-1)*C], features (row, column,
    channel), with zero columns on the right where bw does not divide W'.

    Two stacks, as :func:`~jaxcnn.kernels.im2col.patches` builds its own: the
    bw+kw-1 column views at stride bw, then the kh row views of that.
    """
    xp, h, tiles, span = _tiled(xp, kh, kw, bw)
    n, c = xp.shape[0], xp.shape[3]
    cols = jnp.stack([xp[:, :, s : s + (tiles - 1) * bw + 1 : bw] for s in range(span)], axis=3)
    rows = jnp.stack([cols[:, i : i + h] for i in range(kh)], axis=3)  # [N,H',T,kh,span,C]
    return rows.reshape(n * h * tiles, kh * span * c)


def tile_patches_t(xp: jax.Array, kh: int, kw: int, bw: int) -> jax.Array:
    """:func:`tile_patches` transposed, built as such: [kh*(bw+kw-1)*C, N*H'*tiles].

    The same two stacks, on the channel-major input ([C, N, Hp, Wp], small), so
    the pixels are the minor axis of every view and of the result.
    """
    xp, h, tiles, span = _tiled(xp, kh, kw, bw)
    n, c = xp.shape[0], xp.shape[3]
    xt = jnp.transpose(xp, (3, 0, 1, 2))
    cols = jnp.stack([xt[..., s : s + (tiles - 1) * bw + 1 : bw] for s in range(span)])
    rows = jnp.stack([cols[:, :, :, i : i + h] for i in range(kh)])  # [kh,span,C,N,H',T]
    return rows.reshape(kh * span * c, n * h * tiles)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, kernel: jax.Array, padding: int, bw: int) -> jax.Array:
    """Where no gradient is taken (evaluation): the channel-major form for one input
    channel and few output channels, as :func:`~jaxcnn.kernels.im2col._conv` does.

    The forward of 100 images alone, on the 2-core AMD EPYC (Zen 3) of 2026-12-02:
    cifar_cnn's 3 -> 16 (5x5) took 6.1 ms in tiles and 14.7 channel-major; for one
    input channel, channel-major was as fast or faster (blitz_net's 1 -> 6, 3x3:
    0.41 against 1.04 ms).
    """
    _, _, cin, cout = kernel.shape
    if cin == 1 and cout <= CHANNEL_MAJOR_MAX_OUT:
        return forward_channel_major(x, kernel, padding)
    return _forward(x, kernel, padding, bw)[0]


def _forward(x, kernel, padding, bw):
    kh, kw, cin, cout = kernel.shape
    p = tile_patches(pad_hw(x, padding), kh, kw, bw)
    n, h, w = x.shape[0], x.shape[1] + 2 * padding - kh + 1, x.shape[2] + 2 * padding - kw + 1
    y = (p @ toeplitz(kernel, bw)).reshape(n, h, -1, cout)
    return y[:, :, :w], (x if cin >= PT_MIN_IN else p, kernel)


def _backward(padding, bw, residuals, dy):
    saved, kernel = residuals  # the input (P^T is built from it) or P itself
    kh, kw, cin, _ = kernel.shape
    n, h, w, _ = dy.shape
    tiles = -(-w // bw)
    dy_tiles = jnp.pad(dy, ((0, 0), (0, 0), (0, tiles * bw - w), (0, 0)))
    dy_tiles = dy_tiles.reshape(n * h * tiles, bw * dy.shape[3])
    if cin >= PT_MIN_IN:
        dt = tile_patches_t(pad_hw(saved, padding), kh, kw, bw) @ dy_tiles
    else:  # (dy^T P)^T, contracting the pixels in place, as im2col._weight_grad spells it
        dt = jax.lax.dot_general(dy_tiles, saved, CONTRACT_ROWS).T
    (dkernel,) = jax.linear_transpose(partial(toeplitz, bw=bw), kernel)(dt)
    # the input gradient, where one is asked for (XLA drops it where none is)
    dp = dy_tiles @ toeplitz(kernel, bw).T

    def pad_and_patch(x):
        return tile_patches(pad_hw(x, padding), kh, kw, bw)

    x_shape = (n, h + kh - 1 - 2 * padding, w + kw - 1 - 2 * padding, cin)
    (dx,) = jax.linear_transpose(pad_and_patch, jax.ShapeDtypeStruct(x_shape, dp.dtype))(dp)
    return dx, dkernel


_conv.defvjp(_forward, _backward)
