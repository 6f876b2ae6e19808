"""Seed 003 ``InceptionA`` and the GoogLeNet-style ``Model`` built from two of them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn import kernels
from jaxcnn.compute import PLAIN, Compute
from jaxcnn.models import composition
from jaxcnn.models.base import SeedModel
from jaxcnn.models.composition import chain_kernels, compose_pair, embed_kernel, pointwise
from jaxcnn.models.layers import Conv2d, Linear, avg_pool2d, flatten_chw


class InceptionA(nnx.Module):
    """Four branches concatenated on channels: 16 + 24 + 24 + 24 = 88.

    The branch order of the concatenation (1x1, 5x5, 3x3, pool) fixes the
    channel order the next conv was trained on, so it is the seed's order.

    ``compute.fuse`` computes the four 1x1 convolutions that read the block's
    input as one wider matmul and splits after (see :meth:`fused_1x1`), or under
    ``conv="im2col"`` composes two of them with the convolutions they feed
    (:meth:`composed`); the parameters stay the seed's.
    """

    def __init__(self, in_channels: int, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.compute = compute
        self.branch1x1 = Conv2d(in_channels, 16, 1, compute=compute, rngs=rngs)
        self.branch5x5_1 = Conv2d(in_channels, 16, 1, compute=compute, rngs=rngs)
        self.branch5x5_2 = Conv2d(16, 24, 5, padding=2, compute=compute, rngs=rngs)
        self.branch3x3_1 = Conv2d(in_channels, 16, 1, compute=compute, rngs=rngs)
        self.branch3x3_2 = Conv2d(16, 24, 3, padding=1, compute=compute, rngs=rngs)
        self.branch3x3_3 = Conv2d(24, 24, 3, padding=1, compute=compute, rngs=rngs)
        self.branch_pool = Conv2d(in_channels, 24, 1, compute=compute, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if composition.applies(self.compute):
            return self.composed(x)
        if self.compute.fuse:
            branch1x1, branch5x5, branch3x3, branch_pool = self.fused_1x1(x)
        else:
            branch1x1 = self.branch1x1(x)
            branch5x5 = self.branch5x5_1(x)
            branch3x3 = self.branch3x3_1(x)
            pooled = avg_pool2d(x, 3, stride=1, padding=1, compute=self.compute)
            branch_pool = self.branch_pool(pooled)
        branch5x5 = self.branch5x5_2(branch5x5)
        branch3x3 = self.branch3x3_3(self.branch3x3_2(branch3x3))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3, branch_pool], axis=-1)

    def composed(self, x: jax.Array) -> jax.Array:
        """The block under ``fuse`` and ``conv="im2col"``: each 1x1 convolution that feeds
        a kxk one (the seed puts no nonlinearity between them) is composed with it into
        one kxk convolution of the block's input (:func:`compose_pair`); the other two
        1x1s are one matmul (:meth:`fused_1x1`).

        For incep1 (10 input channels) the 5x5 branch costs 10*25*24 multiply-adds a
        pixel instead of 10*16 + 16*25*24, and two convolutions, their patches and
        gradients fewer are traced per block. Inception's training step, paired against
        :meth:`fused_1x1` for all four 1x1s (2-core AMD EPYC, Zen 4, 2026-12-02, 10 and
        12 rounds of 10 steps): 1.05x and 1.04x.
        """
        branch1x1, branch_pool = self.fused_1x1(x, (self.branch1x1, self.branch_pool))
        branch5x5 = compose_pair(self.branch5x5_1, self.branch5x5_2, x, self.compute)
        branch3x3 = compose_pair(self.branch3x3_1, self.branch3x3_2, x, self.compute)
        branch3x3 = self.branch3x3_3(branch3x3)
        return jnp.concatenate([branch1x1, branch5x5, branch3x3, branch_pool], axis=-1)

    def fused_1x1(self, x: jax.Array, convs: tuple | None = None) -> tuple[jax.Array, ...]:
        """The 1x1 convolutions ``convs`` (default: all four of the block, the pool
        branch last) as one matmul ([C_in, 72] for all four), split after.

        Three of them read ``x`` directly. The pool branch reads
        ``avg_pool(x)``; a 1x1 convolution is a per-pixel linear map and the
        average pool (zeros counted at the border) is linear in each channel, so
        ``W(avg_pool(x)) == avg_pool(W x)`` and that branch joins the matmul
        too. Its bias is added after the pool, because pooling a constant bias
        would shrink it at the border. One small matmul replaces four
        convolutions (and their gradient kernels) for the same math up to
        float rounding.

        Under ``conv="im2col"`` the matmul is im2col's 1x1 convolution, whose
        weight gradient is a batched GEMM over two halves of the rows
        (:func:`~jaxcnn.kernels.im2col._weight_grad_halves`): autodiff of the
        plain matmul made XLA:CPU copy the output gradient out transposed,
        with the col2im sums of the 5x5 and 3x3 branches fused into that
        copy. Inception's step was 5% faster on the 2-core EPYC (paired).
        """
        if convs is None:
            convs = (self.branch1x1, self.branch5x5_1, self.branch3x3_1, self.branch_pool)
        kernel = jnp.concatenate([conv.kernel[...] for conv in convs], axis=-1)  # [1,1,C,sum]
        if self.compute.conv == "im2col":
            y = kernels.conv2d(x, kernel, None, 1, 0, self.compute)
        else:
            y = jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
        outs, start = [], 0
        for conv in convs:
            width = conv.out_features
            outs.append(y[..., start : start + width])
            start += width
        outs[-1] = avg_pool2d(outs[-1], 3, stride=1, padding=1, compute=self.compute)
        return tuple(out + conv.bias[...] for out, conv in zip(outs, convs, strict=True))


class Inception(SeedModel):
    """Seed 003 ``Model`` with ``incep1``/``incep2``; pool before ReLU as in the seed."""

    def __init__(self, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.compute = compute
        self.conv1 = Conv2d(1, 10, 5, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(88, 20, 5, compute=compute, rngs=rngs)
        self.incep1 = InceptionA(10, compute=compute, rngs=rngs)
        self.incep2 = InceptionA(20, compute=compute, rngs=rngs)
        self.fc = Linear(1408, 10, compute=compute, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.max_pool(self.conv1(x)))  # 28 -> 24 -> 12, 10 channels
        if composition.applies(self.compute):
            x = self.incep1_conv2(x)
        else:
            x = self.conv2(self.incep1(x))  # 88 channels, then 12 -> 8
        x = jax.nn.relu(self.max_pool(x))  # 8 -> 4, 20 channels
        x = self.incep2(x)  # 88 x 4 x 4 = 1408
        return self.fc(flatten_chw(x))

    def incep1_conv2(self, x: jax.Array) -> jax.Array:
        """``conv2(incep1(x))`` under ``fuse`` and ``conv="im2col"``: the two are affine,
        so their composition is f(x) = L(x) + f(0), and L is three convolutions of x.

        conv2 reads the 88 channels in four slices, one per branch; for the 1x1, the
        5x5 and the pool branch (an average pool is a 3x3 convolution with W/9 at every
        tap) conv2's slice composes with the branch into one kernel
        (:func:`~jaxcnn.models.composition.chain_kernels`), and the three sum into one
        9x9 convolution of x, 10 -> 20 channels. The 3x3 branch's second 3x3 zero-pads
        its input, so that branch runs as its two convolutions before conv2's slice.
        f(0), biases and border effects included, is the seed's own layers on one
        zero image. Per image, 3.8 M multiply-adds instead of 6.2 M (as the row form
        computes them), and neither the 88-channel concatenate nor conv2's patches of it exist.

        Inception's training step, paired against :meth:`InceptionA.composed` followed
        by conv2 (2-core AMD EPYC, Zen 4, 2026-12-02, 10 rounds of 10 steps): 1.43x.
        """
        block, compute = self.incep1, self.compute
        w2 = self.conv2.kernel[...]  # [5, 5, 88, 20], in the concatenate's channel order
        w2_1x1, w2_5x5, w2_3x3, w2_pool = jnp.split(w2, _branch_ends(block), axis=2)
        k9 = _nine_by_nine(block, w2_1x1, w2_5x5, w2_pool)
        w3x3 = pointwise(block.branch3x3_1, block.branch3x3_2.kernel[...])
        v = kernels.conv2d(x, w3x3, None, 1, 1, compute)
        v = kernels.conv2d(v, block.branch3x3_3.kernel[...], None, 1, 1, compute)
        y = kernels.conv2d(x, k9, None, 1, 2, compute)
        y += kernels.conv2d(v, w2_3x3, None, 1, 0, compute)
        return y + self.conv2(block(jnp.zeros((1, *x.shape[1:]), x.dtype)))


def _nine_by_nine(block: InceptionA, w2_1x1, w2_5x5, w2_pool) -> jax.Array:
    """conv2's slices for the 1x1, 5x5 and pool branches composed with them: one 9x9
    kernel over the block's input at padding 2 (the 1x1's 5x5 at padding 0 and the
    pool's 7x7 at padding 1, centred)."""
    k9 = chain_kernels(pointwise(block.branch5x5_1, block.branch5x5_2.kernel[...]), w2_5x5)
    k9 += embed_kernel(pointwise(block.branch1x1, w2_1x1), 9)
    pool = block.branch_pool.kernel[...][0, 0] / 9.0  # [C, 24] at each of the 3x3 taps
    pool = jnp.broadcast_to(pool, (3, 3, *pool.shape))
    return k9 + embed_kernel(chain_kernels(pool, w2_pool), 9)


def _branch_ends(block: InceptionA) -> list[int]:
    """Where each branch's channels end in the block's output, but the last: the
    concatenate's order (1x1, 5x5, 3x3, pool), [16, 40, 64] for the seed's widths."""
    last = (block.branch1x1, block.branch5x5_2, block.branch3x3_3)
    return np.cumsum([conv.out_features for conv in last]).tolist()
