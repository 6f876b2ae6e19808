"""Max pooling whose gradient is elementwise ops XLA fuses with their neighbours.

XLA's ``reduce_window`` max pool differentiates to ``select_and_scatter`` into a
zeroed buffer: two kernels per pool on a GPU (the H100 census), and slower than
elementwise work on a CPU (README, "Speed options"). :func:`max_pool_reshape`
takes the same maximum over a ``[N, H/k, k, W/k, k, C]`` view instead.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def _windows(x: jax.Array, k: int) -> jax.Array:
    """The k x k windows of ``x`` (rows and columns past the last whole window dropped,
    PyTorch's floor mode): [N,H,W,C] -> [N, H//k, k, W//k, k, C]."""
    n, h, w, c = x.shape
    return x[:, : h // k * k, : w // k * k].reshape(n, h // k, k, w // k, k, c)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_reshape(x: jax.Array, k: int) -> jax.Array:
    """``F.max_pool2d(x, k)`` (stride k, no padding) over a reshaped view. [N,H,W,C]."""
    return _windows(x, k).max(axis=(2, 4))


def _max_pool_reshape_fwd(x, k):
    return max_pool_reshape(x, k), x


def _max_pool_reshape_bwd(k, x, dy):
    """All of a window's gradient to its first maximum in row-major order.

    That is what PyTorch's max-pool backward and XLA's ``select_and_scatter``
    (``ge``) do with ties, and ties are common here (a window of ReLU zeros).
    Autodiff of ``max`` would split the gradient among them instead.
    """
    n, h, w, c = x.shape
    windows = _windows(x, k)
    hit = windows == windows.max(axis=(2, 4), keepdims=True)
    flat = hit.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // k, w // k, k * k, c)
    first = flat & (jnp.cumsum(flat, axis=3) == 1)  # window positions in row-major order
    first = first.reshape(n, h // k, w // k, k, k, c).transpose(0, 1, 3, 2, 4, 5)
    dx = jnp.where(first, dy[:, :, None, :, None, :], 0).reshape(n, h // k * k, w // k * k, c)
    return (jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0))),)


max_pool_reshape.defvjp(_max_pool_reshape_fwd, _max_pool_reshape_bwd)
