"""im2col over the kernel's columns only: the row shifts summed after the GEMM.

The full patch matrix of :mod:`jaxcnn.kernels.im2col` holds kh*kw*C values
per output pixel, and on a CPU building it (and its gradient) is most of a
step: XLA:CPU writes those narrow-minor-dimension arrays at a fraction of the
memory's speed. Here the patches cover the kw columns of a window only, on
every row of the input (padded in W; the padding rows would be zeros)::

    P[n, r, w, (j, c)]    = x_padw[n, r, w + j, c]           kw*C values
    Z[n, r, w, (i, o)]    = P @ W2,  W2[(j, c), (i, o)] = W[i, j, c, o]
    y[n, h, w, o]         = sum_i Z[n, h + i - pad, w, i, o]  kh row shifts

The FLOPs are the full form's (times H_in/H_out without padding); the GEMM
is [pixels, kw*C] x [kw*C, kh*O] instead of [pixels, kh*kw*C] x [kh*kw*C, O],
and the shifts run along H, an outer dimension, so each is a block of whole
rows. The backward mirrors it: dZ stacks the kh row shifts of dy,
dW2 = P^T dZ, dP = dZ W2^T, and dx is the col2im of the kw column shifts only.

On the 2-core AMD EPYC (Zen 5) of 2026-12-02, whole training steps against
the full form, paired in one process (``scripts/ab.py --variant
full:patch_form=full --variant auto:patch_form=auto --steps 10 --rounds 8``
over the nine seed models): mnist_cnn 1.51x, basic_cnn 1.41x, inception
1.37x, lenet5 1.19x, simple_cnn 1.21x, cifar_cnn 1.19x, convnet 1.16x,
blitz_net 1.15x, resnet 1.10x. Where it writes more than the full form it
can lose: with cifar_cnn's first convolution (3 -> 16 channels, 5x5: 95
values per pixel against 75) in the row form too, cifar_cnn gained nothing
(1.005x) (:func:`applies`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.kernels.bias import add_bias
from jaxcnn.kernels.im2col import (
    CHANNEL_MAJOR_MAX_OUT,
    CONTRACT_ROWS,
    column_shifts,
    forward_channel_major,
)
from jaxcnn.kernels.materialise import materialise_if_large

# The row form where it writes at most this many times the full form's elements
# per pixel (kw*C + kh*O against kh*kw*C). blitz_net's second convolution (6 -> 16,
# 3x3) is at 1.22 and gained 12%; cifar_cnn's first (3 -> 16, 5x5) is at 1.27 and lost.
ROWS_RATIO = 1.25


def applies(requested: str, kernel_shape, stride: int) -> bool:
    """Whether a convolution of ``kernel_shape`` (HWIO) runs in the row form.

    ``requested`` is ``Compute.patch_form``: ``"full"`` and ``"tiles"`` never, ``"rows"``
    wherever the form exists (stride 1, a kernel more than one row and one column
    wide; more than one input channel, or the kw-wide patches would be the input's
    own width), ``"auto"`` there and where it writes little enough (:data:`ROWS_RATIO`).
    """
    kh, kw, cin, cout = kernel_shape
    if requested not in ("auto", "rows") or stride != 1 or kh == 1 or kw == 1 or cin == 1:
        return False
    return requested == "rows" or kw * cin + kh * cout <= ROWS_RATIO * kh * kw * cin


def conv2d_rows(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int = 0
) -> jax.Array:
    """``F.conv2d`` at stride 1 with symmetric zero ``padding``: [N,H,W,C] x HWIO -> [N,H',W',O].

    The bias is added outside the custom VJP, by :func:`~jaxcnn.kernels.bias.add_bias`.
    """
    y = _conv(x, kernel.astype(x.dtype), padding)
    return y if bias is None else add_bias(y, bias)


def row_weights(kernel: jax.Array) -> jax.Array:
    """HWIO -> W2 [(kw, C), (kh, O)], the row form's GEMM operand."""
    kh, kw, cin, cout = kernel.shape
    return kernel.transpose(1, 2, 0, 3).reshape(kw * cin, kh * cout)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Where no gradient is taken (evaluation): the channel-major form for few output
    channels, as the full form's :func:`~jaxcnn.kernels.im2col._conv` does, unless
    the convolution narrows the channels.

    The forward of 100 images, paired (2-core Zen 5): with the channel-major form for
    the 6 -> 16 and 10 -> 20 convolutions, mnist_cnn, basic_cnn, lenet5, simple_cnn
    and blitz_net were 6-22% faster than with the row form; for inception's 88 -> 20
    (a GEMM of K = 2,200 and 20 outputs) the row form was 1.39x faster.
    """
    _, _, cin, cout = kernel.shape
    if cout <= CHANNEL_MAJOR_MAX_OUT and cin <= cout:
        return forward_channel_major(x, kernel, padding)
    return _forward(x, kernel, padding)[0]


def _forward(x, kernel, padding):
    """y[h] = sum_i Z[h + i - padding, i], Z on the input's own rows only.

    The padding rows of x are zeros, and so would be their P and Z rows: they
    are not computed. Each shift is a pad (or crop) of Z's rows, summed.
    """
    kh, kw, _, cout = kernel.shape
    p = column_shifts(_pad_w(x, padding), kw)
    n, h_in, w, features = p.shape
    z = (p.reshape(n * h_in * w, features) @ row_weights(kernel)).reshape(n, h_in, w, kh, cout)
    h_out = h_in + 2 * padding - kh + 1
    y = sum(_shift_rows(z[:, :, :, i], padding - i, h_out) for i in range(kh))
    return y, (p, kernel)


def _forward_materialised(x, kernel, padding):
    """:func:`_forward` under differentiation, a large output written out once
    (:func:`~jaxcnn.kernels.materialise.materialise_if_large`).

    Left to itself, XLA:CPU fused the kh-shift sum into every consumer of the
    output, the ReLU and the max pool's transpose and argmax, each recomputing it
    with the pads' index arithmetic. Whole training steps with every row-form
    output materialised, paired (2-core Zen 3 EPYC, 8 rounds of 10 steps):
    cifar_cnn 1.16x (conv2's output 1.6 M elements), mnist_cnn 1.08 (0.4 M),
    convnet 1.03 (3.7 M); resnet, simple_cnn, blitz_net, basic_cnn and inception
    (0.08-0.22 M) 0.98-1.02, lenet5 (0.16 M) 0.90: for a small output the
    recomputing costs less than the conditional. Hence its threshold.
    """
    y, residuals = _forward(x, kernel, padding)
    return materialise_if_large(y, kernel), residuals


def _backward(padding, residuals, dy):
    p, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    n, h_in, w, _ = p.shape
    rows = n * h_in * w
    # dZ[r, i] = dy[r + padding - i]: the forward's shifts, transposed
    dz = jnp.stack([_shift_rows(dy, i - padding, h_in) for i in range(kh)], axis=3)
    dz = dz.reshape(rows, kh * cout)
    # (dZ^T P)^T, contracting the pixels in place: the small dZ is the one transposed,
    # as in im2col._weight_grad
    dw2 = lax.dot_general(dz, p.reshape(rows, kw * cin), CONTRACT_ROWS).T
    dkernel = dw2.reshape(kw, cin, kh, cout).transpose(2, 0, 1, 3)
    dp = (dz @ row_weights(kernel).T).reshape(n, h_in, w, kw * cin)
    # col2im of the kw column shifts: the transpose of the (linear) pad-and-shift map,
    # derived as im2col._dx_col2im derives its own
    x_shape = jax.ShapeDtypeStruct((n, h_in, w + kw - 1 - 2 * padding, cin), dp.dtype)
    (dx,) = jax.linear_transpose(lambda x: column_shifts(_pad_w(x, padding), kw), x_shape)(dp)
    return dx, dkernel


def _pad_w(x: jax.Array, padding: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, 0), (padding, padding), (0, 0))) if padding else x


def _shift_rows(a: jax.Array, lo: int, length: int) -> jax.Array:
    """``a`` [N, H, ...] moved down ``lo`` rows (up, if negative) into ``length`` rows,
    zeros where no row of ``a`` lands: one ``lax.pad``, whose negative sides crop."""
    hi = length - a.shape[1] - lo
    config = [(0, 0, 0), (lo, hi, 0)] + [(0, 0, 0)] * (a.ndim - 2)
    return lax.pad(a, jnp.zeros((), a.dtype), config)


_conv.defvjp(_forward_materialised, _backward)
