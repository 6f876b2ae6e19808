"""2-D convolutions whose gradients are GEMMs over patches (custom VJPs).

For the seeds' tiny images and channel counts, a convolution library's
small-problem kernels can lose to one GEMM over the kh*kw shifted views of the
input (``conv2d_im2col``). Autodiff of that forward gives a GEMM for the weight
gradient, but the input gradient comes out as "col2im": kh*kw padded copies of
the input summed, which XLA:CPU runs as kh*kw separate fusions, the biggest
cost of inception's step. So the VJP here may instead compute the input
gradient as what it is mathematically, a full correlation of the output
gradient with the flipped kernel, the same way as the forward: patches and one
GEMM. ``conv2d_gemm_wgrad`` keeps XLA's convolution and data gradient and
takes only the weight-gradient GEMM.

All arrays are NHWC with HWIO kernels, as in :class:`~jaxcnn.models.layers.Conv2d`.
The input-gradient form is the ``dx_form`` argument (``Compute.dx_form``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn.kernels.bias import add_bias

# [M, a] x [M, b] -> [a, b]: a product contracting the rows (the pixels or the batch),
# the form of every weight gradient here
CONTRACT_ROWS = (((0,), (0,)), ((), ()))


def pad_hw(x: jax.Array, padding: int) -> jax.Array:
    """Symmetric zero padding of H and W, as ``F.conv2d(padding=p)`` applies it."""
    if not padding:
        return x
    return jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def patches(x: jax.Array, kh: int, kw: int, stride: int = 1) -> jax.Array:
    """[N,H,W,C] -> [N,H',W',kh*kw*C]: the valid windows, features (row, col, channel).

    That feature order is the order of ``kernel.reshape(kh * kw * C, O)`` for
    an HWIO kernel, so a patch matrix times the reshaped kernel is the conv.

    Built in two stacks of at most 8 views each, on an axis that is not the
    minor one: first the kw column shifts of every row, then the kh row shifts
    of that. XLA:CPU fuses a concatenate of at most 8 operands that does not
    run along the minor dimension, so that is two loop fusions. The flat
    concatenate of kh*kw views on the channels (:func:`patches_concat`) is one
    it never fuses: every view is copied out first, then concatenated, which
    cost up to twice the writes and one kernel per tap. Measured on the 2-core
    EPYC (training steps, paired in one process): inception 1.14x, blitz_net
    1.11x, lenet5 1.09x, mnist_cnn 1.07x faster, the others within 4%.
    """
    if stride != 1 or kh * kw == 1 or max(kh, kw) > MAX_STACK:
        return patches_concat(x, kh, kw, stride)
    n, hp, wp, c = x.shape
    h, w = hp - kh + 1, wp - kw + 1
    rows = column_shifts(x, kw)  # [N,Hp,W',kw*C]
    views = jnp.stack([rows[:, i : i + h] for i in range(kh)], axis=3)  # [N,H',W',kh,kw*C]
    return views.reshape(n, h, w, kh * kw * c)


def column_shifts(x: jax.Array, kw: int) -> jax.Array:
    """[N,H,Wp,C] -> [N,H,W',kw*C]: the kw column shifts of every row, features
    (col, channel): the first stack of :func:`patches`, and the row form's whole
    patch matrix (:mod:`jaxcnn.kernels.rowconv`)."""
    n, hp, wp, c = x.shape
    w = wp - kw + 1
    return jnp.stack([x[:, :, j : j + w] for j in range(kw)], axis=3).reshape(n, hp, w, kw * c)


MAX_STACK = 8  # XLA:CPU's kMaxConcatenateArguments: no fusion of a wider concatenate


def patches_concat(x: jax.Array, kh: int, kw: int, stride: int = 1) -> jax.Array:
    """:func:`patches` as one concatenate of the kh*kw shifted views, on the channels.

    Kept for col2im (:func:`_dx_col2im` transposes it): the transpose of this
    form is a sum of kh*kw padded copies, which XLA:CPU fuses into the next
    elementwise op; the transpose of the stacked form made mnist_cnn's and
    convnet's steps 12-14% slower (basic_cnn's 19% faster) in the same
    measurement as :func:`patches`.
    """
    h = (x.shape[1] - kh) // stride + 1
    w = (x.shape[2] - kw) // stride + 1
    views = [
        x[:, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)


def conv2d_im2col(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    stride: int = 1,
    padding: int = 0,
    dx_form: str = "auto",
) -> jax.Array:
    """``F.conv2d`` with symmetric zero ``padding``: [N,H,W,C] x HWIO -> [N,H',W',O].

    ``dx_form``: the input gradient as ``"correlation"``, ``"col2im"`` or, with
    ``"auto"``, whichever writes fewer elements (:func:`_dx_form`).
    The bias is added outside the custom VJP, by :func:`~jaxcnn.kernels.bias.add_bias`
    (its gradient a sum over N,H',W').
    """
    y = _conv(x, kernel.astype(x.dtype), stride, padding, x.shape[1:3], dx_form)
    return y if bias is None else add_bias(y, bias)


# in_hw (x's spatial size) is static too: with a stride, the input rows no
# window reads cannot be recovered from the output's size.
@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, in_hw, dx_form) -> jax.Array:
    """The convolution where no gradient is taken (evaluation, prediction); under
    differentiation :func:`_conv_fwd` runs instead, and keeps the patch matrix."""
    if stride == 1 and kernel.shape[3] <= CHANNEL_MAJOR_MAX_OUT:
        return forward_channel_major(x, kernel, padding)
    return _forward(x, kernel, stride, padding)[0]


def forward_channel_major(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """The stride-1 convolution as y^T = W^T cols^T, with the patches built taps-major.

    For a few output channels, XLA:CPU's GEMM [rows, taps*C] x [taps*C, O] ran
    far below its peak (on the 2-core EPYC: [78400, 25] x [25, 10], mnist_cnn's
    conv1, 2.2 ms), and its transpose [O, taps*C] x [taps*C, rows] did not
    (0.5 ms). Each row of cols^T is one shifted view of one input channel, a
    plain strided copy. Evaluating the 10,000 Fashion-MNIST test images took
    25-45% less time for mnist_cnn, lenet5, basic_cnn, simple_cnn and
    blitz_net; inception, resnet and convnet were within noise. Training keeps
    :func:`_forward`: the backward needs the row-major patch matrix.
    """
    kh, kw, cin, cout = kernel.shape
    xp = pad_hw(x, padding).transpose(3, 0, 1, 2)  # [C, N, Hp, Wp]
    _, n, hp, wp = xp.shape
    h, w = hp - kh + 1, wp - kw + 1
    rows = jnp.stack([xp[..., j : j + w] for j in range(kw)])  # [kw, C, N, Hp, W']
    cols_t = jnp.stack([rows[..., i : i + h, :] for i in range(kh)])  # [kh, kw, C, N, H', W']
    y_t = kernel.reshape(kh * kw * cin, cout).T @ cols_t.reshape(kh * kw * cin, n * h * w)
    return y_t.reshape(cout, n, h, w).transpose(1, 2, 3, 0)


CHANNEL_MAJOR_MAX_OUT = 20  # the widest conv whose no-gradient form is channel-major


def _forward(x, kernel, stride, padding):
    """The output and the patch matrix, the latter as [parts, rows/parts, taps*C_in].

    Both GEMMs over it, this one and dW's (:func:`_weight_grad_halves`), are
    batched dots over the same parts: when the forward read the matrix
    unsplit, XLA:CPU built it twice (once per shape), which undid dW's gain.
    """
    kh, kw, _, cout = kernel.shape
    cols = patches(pad_hw(x, padding), kh, kw, stride)
    n, h, w, features = cols.shape
    parts = _parts(n * h * w)
    cols = cols.reshape(parts, n * h * w // parts, features)
    weights = jnp.broadcast_to(kernel.reshape(features, cout), (parts, features, cout))
    y = lax.dot_general(cols, weights, (((2,), (1,)), ((0,), (0,))))  # batched, as dW's
    return y.reshape(n, h, w, cout), cols


def _conv_fwd(x, kernel, stride, padding, in_hw, dx_form):
    y, cols = _forward(x, kernel, stride, padding)
    return y, (cols, kernel)


def _conv_bwd(stride, padding, in_hw, dx_form, residuals, dy):
    cols, kernel = residuals
    kh, kw, cin, _ = kernel.shape
    dkernel = _weight_grad_halves(cols, dy, kernel.shape)
    x_shape = (dy.shape[0], *in_hw, cin)
    if _dx_form(dx_form, x_shape, dy.shape, kh * kw, padding) == "correlation":
        dx = _dx_correlation(dy, kernel, stride, padding, in_hw)
    else:
        dx = _dx_col2im(dy, kernel, stride, padding, x_shape)
    return dx, dkernel


def _weight_grad(cols: jax.Array, dy: jax.Array, shape) -> jax.Array:
    """dW as one GEMM: (dy^T cols)^T, contracting N,H',W' in place, reshaped to HWIO.

    Spelled as autodiff's transpose of the forward matmul spells it, so XLA
    transposes the small dy, not the taps-times-larger patch matrix (written
    as cols^T dy, that transpose cost mnist_cnn 40% of its CPU step).
    ``conv2d_gemm_wgrad`` (cuDNN's forward and data gradient) uses this form.
    """
    batch = ((0, 1, 2), (0, 1, 2))
    return lax.dot_general(dy, cols, (batch, ((), ()))).T.reshape(shape)


def _weight_grad_halves(cols: jax.Array, dy: jax.Array, shape) -> jax.Array:
    """dW as a batched GEMM over the two halves of the N*H'*W' rows, then their sum.

    ``cols`` comes from :func:`_forward` already split, [parts, rows/parts,
    taps*C_in]. XLA:CPU ran the one long contraction of :func:`_weight_grad`
    as a plain GEMM after copying dy (and the col2im sum feeding it) out
    transposed; a batched dot over two halves needs no such copy. On the
    2-core EPYC, inside a loop with a col2im-like sum feeding dy, dW alone was
    1.5-4.5x faster for the seeds' shapes (inception's 16->24 5x5: 5.3 -> 1.2
    ms; convnet's conv2: 46 -> 17 ms); four or eight parts were no faster,
    one (a batch of one) in between. Whole training steps, paired in one
    process against the one long contraction: 1.10x (blitz_net) to 1.50x
    (basic_cnn), inception 1.34x, mnist_cnn 1.44x.
    """
    parts, rows, _ = cols.shape
    dims = (((1,), (1,)), ((0,), (0,)))
    halves = lax.dot_general(dy.reshape(parts, rows, -1), cols, dims)  # [parts, O, K]
    return halves.sum(0).T.reshape(shape)


def _parts(rows: int) -> int:
    """How many parts :func:`_weight_grad_halves` splits the rows into: two, if they split."""
    return 2 if rows % 2 == 0 else 1


def _dx_form(requested: str, x_shape, y_shape, taps: int, padding: int) -> str:
    """The input-gradient form: ``requested``, unless it is ``"auto"``; then the form
    picked by the elements each one writes.

    The correlation writes a [N,H,W,taps*C_out] patch matrix. col2im writes the
    [N,H',W',taps*C_in] patch gradient and ``taps`` padded input-sized copies,
    which XLA:CPU runs as that many separate fusions but partly overlaps, so
    the element count overstates col2im's cost. Measured on a 2-core CPU:
    inception's conv2 (88 -> 20 channels, ratio 0.16) made a fused-inception
    epoch 1.7x faster with the correlation; at ratios 0.3-0.8 (mnist_cnn's
    conv2, resnet's blocks) the correlation was no faster or up to 15% slower.
    Hence the correlation only where it writes under a quarter as much.
    """
    if requested != "auto":
        return requested
    _, h, w, cin = x_shape
    _, oh, ow, cout = y_shape
    correlation = h * w * taps * cout
    col2im = oh * ow * taps * cin + taps * (h + 2 * padding) * (w + 2 * padding) * cin
    return "correlation" if correlation <= CORRELATION_RATIO * col2im else "col2im"


CORRELATION_RATIO = 0.25


def _dx_correlation(dy, kernel, stride, padding, in_hw):
    """dx as the full correlation of dy with the flipped kernel: patches and a GEMM.

    dy is stride-dilated, given the kh-1 halo less the forward padding, and
    the rows a stride never read, all by one ``lax.pad`` (interior, lo/hi;
    negative values crop); the kernel is flipped in space and transposed in
    channels.
    """
    kh, kw, cin, cout = kernel.shape

    def halo(axis, k):
        unread = in_hw[axis - 1] + 2 * padding - (stride * (dy.shape[axis] - 1) + k)
        return (k - 1 - padding, k - 1 - padding + unread, stride - 1)

    zero = jnp.zeros((), dy.dtype)
    dy_full = lax.pad(dy, zero, ((0, 0, 0), halo(1, kh), halo(2, kw), (0, 0, 0)))
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)).reshape(kh * kw * cout, cin)
    return patches(dy_full, kh, kw) @ flipped


def _dx_col2im(dy, kernel, stride, padding, x_shape):
    """dx as autodiff would give it: the patch gradient, then col2im.

    col2im is the transpose of the (linear) pad-and-patches map, so
    ``jax.linear_transpose`` derives it instead of a hand-written scatter.
    """
    kh, kw, cin, cout = kernel.shape
    dcols = dy @ kernel.reshape(kh * kw * cin, cout).T

    def pad_and_patch(x):
        return patches_concat(pad_hw(x, padding), kh, kw, stride)

    (dx,) = jax.linear_transpose(pad_and_patch, jax.ShapeDtypeStruct(x_shape, dy.dtype))(dcols)
    return dx


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d_gemm_wgrad(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, stride: int = 1, padding: int = 0
) -> jax.Array:
    """XLA's convolution and input gradient, with the weight gradient as one GEMM.

    For a GPU: on the H100, cuDNN's slowest kernels in inception's and resnet's
    steps were its legacy weight-gradient engine (``wgrad_alg0``), while its
    forward and data-gradient kernels were fine. This keeps those and computes
    dW from the patch matrix (one fusion) and one GEMM, as ``im2col`` does.
    """
    y = _xla_conv(x, kernel.astype(x.dtype), stride, padding)
    return y if bias is None else y + bias.astype(y.dtype)


def plain_conv(x, kernel, stride, padding):
    """XLA's convolution as ``nnx.Conv`` calls it (a plain function, for custom VJPs)."""
    pad = [(padding, padding), (padding, padding)]
    dims = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=dims)


def plain_input_grad(dy, x_shape, kernel, stride, padding):
    """XLA's own data gradient: the conv is linear in x, and this is its transpose."""
    conv_x = partial(plain_conv, kernel=kernel, stride=stride, padding=padding)
    (dx,) = jax.linear_transpose(conv_x, jax.ShapeDtypeStruct(x_shape, dy.dtype))(dy)
    return dx


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return plain_conv(x, kernel, stride, padding)


def _xla_conv_fwd(x, kernel, stride, padding):
    return plain_conv(x, kernel, stride, padding), (x, kernel)


def _xla_conv_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    dx = plain_input_grad(dy, x.shape, kernel, stride, padding)
    kh, kw = kernel.shape[:2]
    return dx, _weight_grad(patches(pad_hw(x, padding), kh, kw, stride), dy, kernel.shape)


_xla_conv.defvjp(_xla_conv_fwd, _xla_conv_bwd)
