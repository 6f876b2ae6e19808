"""Max pooling whose gradient is elementwise ops XLA fuses with their neighbours.

XLA's ``reduce_window`` max pool differentiates to ``select_and_scatter`` into a
zeroed buffer: two kernels per pool on a GPU (the H100 census), and slower than
elementwise work on a CPU (README, "Speed options"). :func:`max_pool_reshape`
takes the same maximum over a ``[N, H/k, k, W/k, k, C]`` view instead.
:func:`avg_pool_shifted` is the stride-1 average pool as sums of shifted
slices, where XLA:CPU's ``reduce_window`` ran slowly.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.kernels.im2col import pad_hw


def _windows(x: jax.Array, k: int) -> jax.Array:
    """The k x k windows of ``x``, whose H and W are multiples of k:
    [N,H,W,C] -> [N, H/k, W/k, k*k, C], window positions in row-major order."""
    n, h, w, c = x.shape
    windows = x.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
    return windows.reshape(n, h // k, w // k, k * k, c)


def max_pool_reshape(x: jax.Array, k: int) -> jax.Array:
    """``F.max_pool2d(x, k)`` (stride k, no padding) over a reshaped view. [N,H,W,C].

    Rows and columns past the last whole window are dropped first (PyTorch's
    floor mode), outside the custom VJP: their gradient is autodiff's zero pad.
    """
    h, w = x.shape[1:3]
    return _max_pool(x[:, : h // k * k, : w // k * k], k)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, k: int) -> jax.Array:
    return _windows(x, k).max(axis=3)


def _max_pool_fwd(x, k):
    """The maximum, and which window position holds it: the first in row-major order.

    That is what PyTorch's max-pool backward and XLA's ``select_and_scatter``
    (``ge``) give the gradient to when several positions tie, and ties are
    common here (a window of ReLU zeros); autodiff of ``max`` would split the
    gradient among them instead. The position, a small integer per output, is
    the residual: with it, seven seed models' steps were 3-9% faster than with a
    backward that recomputed it from the input (2-core EPYC, paired).
    """
    value, first = max_and_first(_windows(x, k), axis=3)
    return value, first.astype(_index_dtype(k))


def max_and_first(a: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """``(a.max(axis), jnp.argmax(a, axis))`` as one variadic reduce, NaN included.

    Written as the two, XLA:CPU ran two reduces over the window view and
    materialised that (transposed) view for them: cifar_cnn's first pool
    copied 13 MB for ~1 ms, then reduced it twice. One reduce reads the
    convolution's output in place. Whole steps, paired in one process (2-core
    AMD EPYC Zen 4, jax 0.10.2): cifar_cnn 1.065x, mnist_cnn 1.04-1.10x,
    blitz_net 1.14x, simple_cnn 1.12x, resnet 1.06x, lenet5 1.03x, convnet
    1.01x; inception 0.99x and basic_cnn 0.95-0.97x (its second pool's reduce
    took in the Winograd output transform), both far above PyTorch's speed.
    """
    index = lax.broadcasted_iota(jnp.int32, a.shape, axis)
    init = (jnp.array(-jnp.inf, a.dtype), jnp.array(np.iinfo(np.int32).max, jnp.int32))
    return lax.reduce((a, index), init, _larger_first, (axis,))


def _larger_first(left, right):
    """The larger of two (value, position) pairs, NaN above every number (as ``max``
    and ``argmax`` rank it), the lower position on a tie."""
    (a, i), (b, j) = left, right
    a_nan, b_nan = a != a, b != b
    earlier = i < j
    take_a = jnp.where(a_nan | b_nan, a_nan & (~b_nan | earlier), (a > b) | ((a == b) & earlier))
    return jnp.where(take_a, a, b), jnp.where(take_a, i, j)


def _max_pool_bwd(k, first, dy):
    """The output gradient to the window position ``first`` names, zero elsewhere."""
    n, hk, wk, c = dy.shape
    positions = jnp.arange(k * k, dtype=first.dtype).reshape(k, k)
    hit = first[:, :, None, :, None, :] == positions[None, None, :, None, :, None]
    dx = jnp.where(hit, dy[:, :, None, :, None, :], 0)  # [N, H/k, k, W/k, k, C]
    return (dx.reshape(n, hk * k, wk * k, c),)


def _index_dtype(k: int):
    return jnp.int8 if k * k <= 127 else jnp.int32


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool_shifted(x: jax.Array, k: int, padding: int) -> jax.Array:
    """``F.avg_pool2d(x, k, stride=1, padding)`` (zeros counted) as separable sums. [N,H,W,C].

    The k row shifts of the zero-padded input are summed, then the k column
    shifts of that: two loop fusions, and their gradient (pads and adds) fuses
    too. XLA:CPU's ``reduce_window`` and its transpose took ~1.5 ms each on
    inception's [64,12,12,24] pool branch; with this form its step was 7%
    faster on the 2-core EPYC (paired in one process). Equal to the
    ``reduce_window`` up to float32 rounding (the sum runs in another order).
    """
    h, w = x.shape[1] + 2 * padding - k + 1, x.shape[2] + 2 * padding - k + 1
    padded = pad_hw(x, padding)
    rows = sum(padded[:, i : i + h] for i in range(k))
    return sum(rows[:, :, j : j + w] for j in range(k)) / (k * k)
