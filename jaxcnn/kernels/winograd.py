"""Winograd's minimal filtering F(m x m, r x r) for stride-1 convolutions.

A convolution of r x r taps computes an m x m tile of outputs from an
(m+r-1)^2 tile of inputs. Winograd's form (Lavin & Gray, 2016) moves the
input tile and the kernel into a basis where that is an elementwise product,
and back::

    V = B^T d B    U = G g G^T    Y = A^T (U * V) A

and over C input channels the elementwise product is a sum over C, so for
each of the (m+r-1)^2 positions it is a GEMM [tiles, C] x [C, O]. F(4x4, 3x3)
does 36 multiply-adds per channel pair where the direct form does 144 (4x
fewer); F(4x4, 5x5) 64 for 400 (6.25x). The transforms are sums of strided
slices, written out once each (a stage per axis). The backward transposes
every step, all linear: dM = A dY A^T, dU = V^T dM, dV = dM U^T, and dx is
B dV B^T added back where the tiles overlap (pads of the tile axis, summed).

The matrices are Toom-Cook's for the points of :data:`POINTS` and infinity
(:func:`transforms`). In float32 the results are within a few 1e-6 of the
direct form, relative to the largest value (``tests/test_fast_paths.py``), and
the seeds' gradients are as near torch's as the GEMM forms' are (parity tests).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn.kernels.bias import add_bias
from jaxcnn.kernels.materialise import materialise, materialise_if_large

# Toom-Cook's finite points, in order; F(m, r) takes the first m + r - 2. F(4x4, 3x3) on
# 0, +-1, +-2 (Lavin's) left convnet's conv2 weight gradient 5.7e-3 from the float64
# answer, relative to its largest entry; on 0, +-1, 1/2, -2 it is 1.6e-6, as near as
# torch's own float32 (1.0e-6; parity/test_fast_paths.py holds it to the CPU bound).
POINTS = (0.0, 1.0, -1.0, 0.5, -2.0, 2.0, -0.5)
TILE = {3: 4, 5: 4}  # kernel size r -> output tile m
BATCHED = (((2,), (1,)), ((0,), (0,)))  # [e, P, K] x [e, K, N] -> [e, P, N]


# ``"auto"`` takes Winograd's form for a convolution with at least WORK_MIN
# multiply-adds per output pixel (r * r * C * O) whose tiles cover at most WASTE_MAX
# times its output. Measured per convolution, forward and both gradients against the
# automatic GEMM forms, at the seeds' shapes and batch sizes (2-core Zen 3 EPYC,
# docs/speed.md): 1.05-1.82x faster at 4,320 and above (convnet's conv2 1.69x, resnet's
# 5x5 1.82x, cifar_cnn's conv2 1.40x), 0.60-0.88x below 2,400 (the transforms cost
# more than the GEMM saves), and 0.78x for mnist_cnn's 14x14 output that 4x4 tiles
# cover 1.31 times.
WORK_MIN = 4000
WASTE_MAX = 1.2


def applies(requested: str, kernel_shape, stride: int, dtype, x_shape, padding: int) -> bool:
    """Whether a convolution of ``kernel_shape`` (HWIO) on ``x_shape`` (NHWC) runs as F(m, r).

    ``requested`` is ``Compute.patch_form``: ``"winograd"`` wherever the form exists
    (stride 1, a square kernel of a size in :data:`TILE`, more than one input channel,
    float32: in bfloat16 the transforms' rounding would be ~1e-2), ``"auto"`` there
    for the convolutions it is measured to speed up (:data:`WORK_MIN`, :data:`WASTE_MAX`).
    """
    kh, kw, cin, cout = kernel_shape
    exists = stride == 1 and kh == kw and kh in TILE and cin > 1 and dtype == jnp.float32
    if requested not in ("auto", "winograd") or not exists:
        return False
    m, (th, tw), (h_out, w_out), _ = _geometry(x_shape, kernel_shape, padding)
    covered = (m * th * m * tw) / (h_out * w_out)
    return requested == "winograd" or (kh * kw * cin * cout >= WORK_MIN and covered <= WASTE_MAX)


def conv2d_winograd(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int = 0
) -> jax.Array:
    """``F.conv2d`` at stride 1 with symmetric zero ``padding``: [N,H,W,C] x HWIO -> [N,H',W',O].

    The bias is added outside the custom VJP, by :func:`~jaxcnn.kernels.bias.add_bias`.
    """
    y = _conv(x, kernel.astype(x.dtype), padding)
    return y if bias is None else add_bias(y, bias)


@functools.cache
def transforms(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A^T [m, a], G [a, r], B^T [a, a] of F(m, r), a = m + r - 1, in float64.

    A^T and G are Toom-Cook's (evaluation at the points, G scaled by the
    Lagrange denominators); B^T is then the one solution of
    ``sum_j A^T[i, j] G[j, k] B^T[j, l] = [l == i + k]``, the identity that makes
    ``A^T ((G g) * (B^T d))`` the correlation of d with g.
    """
    a = m + r - 1
    points = np.array(POINTS[: a - 1])
    at = np.zeros((m, a))
    at[:, :-1] = points[None, :] ** np.arange(m)[:, None]
    at[-1, -1] = 1.0
    g = np.zeros((a, r))
    for j, p in enumerate(points):
        g[j] = p ** np.arange(r) / np.prod([p - q for q in np.delete(points, j)])
    g[-1, -1] = 1.0
    coefficients = np.einsum("ij,jk->ikj", at, g).reshape(m * r, a)
    target = np.zeros((m * r, a))
    for i in range(m):
        target[i * r + np.arange(r), i + np.arange(r)] = 1.0
    bt = np.linalg.lstsq(coefficients, target, rcond=None)[0]
    return at, g, bt


def _mix(matrix: np.ndarray, parts: Sequence[jax.Array]) -> list[jax.Array]:
    """``out[i] = sum_j matrix[i, j] * parts[j]``, the zero terms left out.

    Written in ``lax`` ops: each ``jnp`` operator is a small jitted function, slow
    to dispatch while tracing, and inception's step makes thousands of these terms.
    The jaxpr is the same either way; tracing inception's chunk took 0.71 s instead
    of 0.95 (docs/speed.md).
    """
    out = []
    for row in matrix:
        terms = [_scaled(part, c) for c, part in zip(row, parts, strict=True) if abs(c) > 1e-12]
        total = functools.reduce(lax.add, terms) if terms else jnp.zeros_like(parts[0])
        out.append(total)
    return out


def _scaled(part: jax.Array, c: float) -> jax.Array:
    """``c * part`` with ``c`` rounded to ``part``'s dtype (a negation for -1)."""
    if c == 1:
        return part
    return lax.neg(part) if c == -1 else lax.mul(part, np.asarray(c, part.dtype))


def _slices(a: jax.Array, axis: int, step: int, count: int, n: int) -> list[jax.Array]:
    """The n strided slices ``a[j::step][:count]`` along ``axis``, j < n."""
    return [lax.slice_in_dim(a, j, j + step * (count - 1) + 1, step, axis) for j in range(n)]


def _pad(a: jax.Array, axis: int, lo: int, hi: int) -> jax.Array:
    config = [(0, 0, 0)] * a.ndim
    config[axis] = (lo, hi, 0)
    return lax.pad(a, jnp.zeros((), a.dtype), config)


def _overlap_add(bt: np.ndarray, m: int, dv: Sequence[jax.Array], axis: int) -> jax.Array:
    """The transpose of ``_mix(bt, _slices(a, axis, m, t, len(bt)))``: tile values
    back to the m*t + a - 1 positions they were read from (padded up to a multiple of
    m), each position the sum over the tiles that read it."""
    a = len(bt)
    dd = _mix(bt.T, dv)
    reach = -(-a // m)  # tiles that read one position
    phases = []
    for s in range(m):
        terms = [_pad(dd[m * q + s], axis, q, reach - 1 - q) for q in range(reach) if m * q + s < a]
        phases.append(functools.reduce(lax.add, terms))
    stacked = jnp.stack(phases, axis=axis + 1)
    shape = list(phases[0].shape)
    shape[axis] *= m
    return stacked.reshape(shape)


def _geometry(shape, kernel_shape, padding):
    """Tiles per axis, the output size and the padded input size."""
    _, h, w, _ = shape
    r = kernel_shape[0]
    m = TILE[r]
    h_out, w_out = h + 2 * padding - r + 1, w + 2 * padding - r + 1
    th, tw = -(-h_out // m), -(-w_out // m)
    return m, (th, tw), (h_out, w_out), (m * th + r - 1, m * tw + r - 1)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    return _forward(x, kernel, padding)[0]


def _forward(x, kernel, padding):
    n, h, w, cin = x.shape
    r, cout = kernel.shape[0], kernel.shape[3]
    m, (th, tw), (h_out, w_out), (hp, wp) = _geometry(x.shape, kernel.shape, padding)
    at, g, bt = transforms(m, r)
    a = m + r - 1
    xp = jnp.pad(x, ((0, 0), (padding, hp - h - padding), (padding, wp - w - padding), (0, 0)))
    rows = jnp.stack(_mix(bt, _slices(xp, 1, m, th, a)))  # [a, N, th, wp, C]
    v = jnp.stack(_mix(bt, _slices(rows, 3, m, tw, a)), axis=1)  # [a, a, N, th, tw, C]
    v = v.reshape(a * a, n * th * tw, cin)
    u = _kernel_transform(g, kernel).reshape(a * a, cin, cout)
    prod = lax.dot_general(v, u, BATCHED).reshape(a, a, n, th, tw, cout)
    out_rows = _mix(at, [prod[i] for i in range(a)])  # m x [a, N, th, tw, O]
    tiles = [jnp.stack(_mix(at, [row[j] for j in range(a)]), axis=3) for row in out_rows]
    y = jnp.stack(tiles, axis=2).reshape(n, m * th, m * tw, cout)  # [N, th, m, tw, m, O]
    return y[:, :h_out, :w_out], (v, u, x.shape, r)


def _forward_materialised(x, kernel, padding):
    """:func:`_forward` under differentiation, its output written out once, whatever
    its size (:func:`~jaxcnn.kernels.materialise.materialise`).

    Left to itself, XLA:CPU fused the output transform (the A^T . A sums over the
    tile's positions) into its consumers; the max pool's one reduce (its maximum and
    the first position, ``pool.max_and_first``) then computed it again for each
    window position, and for basic_cnn's conv2 that reduce took 0.45 ms of a 3.7 ms
    step. Whole training steps paired (2-core Zen 4 EPYC, 10-16 rounds of 5 steps):
    basic_cnn 1.11-1.17x in four runs, inception 1.08-1.10x and cifar_cnn 1.04-1.08x in
    two; resnet and convnet (whose outputs XLA wrote out already) 1.00-1.01x. Unlike
    the row form's, no size threshold: basic_cnn's output is 82 K elements.
    """
    y, residuals = _forward(x, kernel, padding)
    return materialise(y, kernel), residuals


def _kernel_transform(g: np.ndarray, kernel: jax.Array) -> jax.Array:
    """U = G k G^T over the two spatial axes: [r, r, C, O] -> [a, a, C, O]."""
    rows = jnp.stack(_mix(g, list(kernel)))
    return jnp.stack(_mix(g, [rows[:, j] for j in range(kernel.shape[1])]), axis=1)


def _backward(padding, residuals, dy):
    """The transposes of the forward's steps (module docstring).

    The overlap-add's last stage is otherwise fused into the consumer of dx, and
    a max pool's backward (cifar_cnn's conv2 sits behind one) reads each element
    for all four window positions: the overlap-add ran four times over, 3.8 ms of
    a 37 ms step. Written out once (:func:`materialise_if_large`), whole steps
    paired on the 2-core Zen 4 EPYC, 14-16 rounds: cifar_cnn 1.03-1.09x in four
    runs; convnet, whose dx meets no pool, 0.97-0.99x (one more pass over 8.6
    MB); the other seeds' dx are smaller and unchanged. The size is counted per
    image, so cifar_cnn's batch in 8 parts keeps it: 1.06-1.15x over three runs
    against its parts' size (102,400 elements) deciding. Written out for every
    seed, inception's steps were 0.95-1.02x and the others' 0.98-1.04x.
    """
    v, u, x_shape, r = residuals  # the shapes are static: Python ints
    n, h, w, cin = x_shape
    cout = u.shape[2]
    m, (th, tw), (h_out, w_out), _ = _geometry(x_shape, (r,), padding)
    at, g, bt = transforms(m, r)
    a = m + r - 1
    dy = jnp.pad(dy, ((0, 0), (0, m * th - h_out), (0, m * tw - w_out), (0, 0)))
    rows = jnp.stack(_mix(at.T, _slices(dy, 1, m, th, m)))  # [a, N, th, m*tw, O]
    dprod = jnp.stack(_mix(at.T, _slices(rows, 3, m, tw, m)), axis=1)
    dprod = dprod.reshape(a * a, n * th * tw, cout)
    du = lax.dot_general(v, dprod, (((1,), (1,)), ((0,), (0,)))).reshape(a, a, cin, cout)
    dv = lax.dot_general(dprod, u, (((2,), (2,)), ((0,), (0,)))).reshape(a, a, n, th, tw, cin)
    dx_rows = [_overlap_add(bt, m, [dv[i, j] for j in range(a)], 2) for i in range(a)]
    dx = _overlap_add(bt, m, dx_rows, 1)[:, padding : padding + h, padding : padding + w]
    dx = materialise_if_large(dx, u, per_image=True)  # see the docstring
    dkernel_rows = jnp.stack(_mix(g.T, [du[i] for i in range(a)]))
    dkernel = jnp.stack(_mix(g.T, [dkernel_rows[:, j] for j in range(a)]), axis=1)
    return dx, dkernel


_conv.defvjp(_forward_materialised, _backward)
