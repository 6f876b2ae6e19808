"""``torch.nn.Linear`` whose kernel gradient is computed the wide way round.

Autodiff of ``x @ W`` ([N, in] x [in, out]) writes the kernel gradient as
``x^T dy``, an [in, out] product that contracts over the batch. For a
classifier's last layer (10 outputs) that is a GEMM whose left operand is read
transposed and whose output is 10 columns wide, and XLA:CPU hands it to Eigen,
which spends its time packing ``x``: cifar_cnn's [2048, 10] from 200 images took
0.72-0.82 ms. Its transpose, ``dy^T x`` ([out, in], 2048 columns wide), took
0.11-0.18 ms (2-core AMD EPYC Zen 4, jax 0.10.2). So under ``"swapped"`` the
gradient is that product, transposed afterwards; an optimization barrier keeps
XLA's algebraic simplifier from folding the transpose back into the dot, which
it otherwise does (measured: the same 0.7 ms).

Only layers of at most :data:`MAX_OUT` outputs are worth it: for convnet's
9216 -> 128 the swapped form took 7.4 ms against 2.9 (the transpose of a
[128, 9216] gradient is a copy of its own). The values are the same sums in
the same order; the parity tests hold every model to torch under it.
"""

from __future__ import annotations

import jax
from jax import lax

from jaxcnn.kernels.im2col import CONTRACT_ROWS

MAX_OUT = 16  # the widest output the swapped gradient is used for: the seeds' classifiers


def applies(requested: str, kernel_shape) -> bool:
    """Whether a Linear layer of ``kernel_shape`` ([in, out]) takes the swapped gradient:
    ``requested`` is ``Compute.linear`` (``"swapped"``) and it has at most
    :data:`MAX_OUT` outputs."""
    return requested == "swapped" and kernel_shape[1] <= MAX_OUT


def linear(x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
    """``x @ kernel (+ bias)``, [N, in] x [in, out], operands of one dtype, with the
    swapped kernel gradient (the layer calls it where :func:`applies`; elsewhere
    ``nnx.Linear`` computes). The bias is added outside the custom VJP; autodiff
    sums its gradient."""
    y = _swapped(x, kernel)
    return y if bias is None else y + bias


@jax.custom_vjp
def _swapped(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return x @ kernel


def _swapped_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _swapped_bwd(residuals, dy):
    x, kernel = residuals
    dkernel_t = lax.dot_general(dy, x, CONTRACT_ROWS)  # [out, in]: dy^T x
    return dy @ kernel.T, lax.optimization_barrier(dkernel_t).T


_swapped.defvjp(_swapped_fwd, _swapped_bwd)
