"""A convolution whose weight and bias gradients are one Pallas (Triton) GPU kernel.

Why: on the H100 (``results/profile.json``) the most expensive kernel of
inception's and resnet's steps was cuDNN's legacy weight-gradient engine
``wgrad_alg0``, and it comes with a ``Memset`` of its output; the bias
gradient is a third launch, an XLA reduce. At the seeds' sizes a step is
launch-bound, so :func:`conv2d_pallas_wgrad` keeps XLA's forward and
data-gradient convolutions (cuDNN's are fine there) and computes dW and db
together in one kernel that writes every output element (no memset), plus one
small XLA sum over the kernel's split partials.

The kernel is an implicit GEMM: program (tap, channel block, split) gathers,
for its block of output pixels, the input pixels that tap reads (zero padding
and strides are index arithmetic and masks, so no patch matrix and no padded
copy of the input are written) and accumulates ``dy^T @ x_tap`` in float32.
The splits divide the output pixels so that there are enough programs to fill
the GPU; each writes its own partial, and the sum is deterministic (no atomics).
dW is written C_out-major ([C_out, tap, C_in]), the byte order XLA keeps HWIO
weights in for cuDNN, so no copy follows it (``scripts/gpu_census.py`` counts them).

Its float32 dot is full float32 (Pallas Triton's default for float32 inputs),
where XLA's convolutions default to TF32 on a GPU; in bfloat16 it takes
bfloat16 inputs and accumulates in float32.

XLA's partitioner cannot split a custom kernel over devices, so under
``--devices`` it runs per device in ``shard_map`` (:func:`batch_sum`), over the
``mesh`` it is given (``Compute.mesh``).

Off a GPU it runs only in Pallas's interpreter (``interpret=True``,
``Compute.interpret``), which is slow and meant for tests; ``compute.resolve``
refuses the algorithm off a GPU otherwise.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.sharding import Mesh, PartitionSpec

from jaxcnn.kernels.im2col import plain_conv, plain_input_grad


# Launch shape. Not tuned on a GPU yet (the session that wrote this had none):
# about two programs per H100 SM (132), channel blocks of at most 64 so that a
# program's accumulator and gathered tiles stay in registers, and 4 warps.
@dataclasses.dataclass(frozen=True)
class Launch:
    """The knobs of the launch shape (:func:`launch_shape`), an argument like any other."""

    target_programs: int = 264
    max_channel_block: int = 64
    tile_elements: int = 4096  # pixels x channels of one gathered tile
    num_warps: int = 4
    num_stages: int = 2


LAUNCH = Launch()


def conv2d_pallas_wgrad(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    stride: int = 1,
    padding: int = 0,
    *,
    interpret: bool = False,
    mesh: Mesh | None = None,
) -> jax.Array:
    """``F.conv2d`` (NHWC, HWIO) with XLA's forward and data gradient, and dW, db from Pallas.

    ``interpret``: run the kernel in Pallas's interpreter (any backend);
    ``mesh``: the data-parallel mesh the step's batch is split over, if any.
    """
    dtype = x.dtype
    bias = jnp.zeros((0,), dtype) if bias is None else bias.astype(dtype)
    return _conv(x, kernel.astype(dtype), bias, stride, padding, interpret, mesh)


@partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _conv(x, kernel, bias, stride, padding, interpret, mesh):
    y = plain_conv(x, kernel, stride, padding)
    return y + bias if bias.size else y


def _conv_fwd(x, kernel, bias, stride, padding, interpret, mesh):
    return _conv(x, kernel, bias, stride, padding, interpret, mesh), (x, kernel, bias)


def _conv_bwd(stride, padding, interpret, mesh, residuals, dy):
    x, kernel, bias = residuals
    dx = plain_input_grad(dy, x.shape, kernel, stride, padding)
    grads = partial(
        weight_and_bias_grad,
        kernel_hw=kernel.shape[:2],
        stride=stride,
        padding=padding,
        interpret=interpret,
    )
    dw, db = batch_sum(grads, mesh, x, dy)  # per device, all-reduced, under --devices
    db = db.astype(bias.dtype) if bias.size else jnp.zeros_like(bias)
    return dx, dw.astype(kernel.dtype), db


_conv.defvjp(_conv_fwd, _conv_bwd)


def batch_sum(fn, mesh: Mesh | None, *batched: jax.Array):
    """``fn(*batched)`` for an ``fn`` whose outputs are sums over the batch, run per device
    on its part of the batch and all-reduced, when the step's batch is split over ``mesh``
    (a 1-D mesh over the batch axis).

    XLA splits the rest of the step over the mesh by itself; a custom kernel must be
    wrapped in ``shard_map`` by hand. A batch the devices do not divide (an epoch's
    final partial batch) is computed whole on every device instead. Without a mesh,
    this is just ``fn(*batched)``.
    """
    if mesh is None:
        return fn(*batched)
    (axis,) = mesh.axis_names
    # check_vma=False: a pallas_call's outputs carry no record of how they vary over
    # the mesh; the psum (or whole inputs) makes them the same on every device.
    shard_map = partial(jax.shard_map, mesh=mesh, out_specs=PartitionSpec(), check_vma=False)
    if batched[0].shape[0] % mesh.size:
        return shard_map(fn, in_specs=(PartitionSpec(),) * len(batched))(*batched)

    def local(*parts):
        return jax.tree.map(lambda a: jax.lax.psum(a, axis), fn(*parts))

    return shard_map(local, in_specs=(PartitionSpec(axis),) * len(batched))(*batched)


def _pow2(n: int, least: int = 16) -> int:
    """The next power of two >= n, at least ``least``: Triton's tiles and dots need it."""
    return max(least, 1 << (n - 1).bit_length())


def launch_shape(x_shape, dy_shape, taps: int, launch: Launch = LAUNCH) -> dict:
    """Block sizes and grid for one convolution's gradient (all static Python ints)."""
    n, _, _, cin = x_shape
    _, oh, ow, cout = dy_shape
    cin_pad, cout_pad = _pow2(cin), _pow2(cout)
    cin_block, cout_block = (
        min(cin_pad, launch.max_channel_block),
        min(cout_pad, launch.max_channel_block),
    )
    channel_blocks = (cin_pad // cin_block) * (cout_pad // cout_block)
    pixel_block = max(16, min(128, launch.tile_elements // max(cin_block, cout_block)))
    pixel_blocks = -(-(n * oh * ow) // pixel_block)
    splits = max(1, min(pixel_blocks, -(-launch.target_programs // (taps * channel_blocks))))
    return dict(
        cin_pad=cin_pad,
        cout_pad=cout_pad,
        cin_block=cin_block,
        cout_block=cout_block,
        pixel_block=pixel_block,
        splits=splits,
        iterations=-(-pixel_blocks // splits),
        grid=(taps, channel_blocks, splits),
    )


def weight_and_bias_grad(
    x, dy, kernel_hw, stride: int, padding: int, interpret: bool = False, launch: Launch = LAUNCH
):
    """dW [kh,kw,C_in,C_out] and db [C_out] of ``conv(x) + b`` given dy, as float32.

    ``interpret``: in Pallas's interpreter (any backend) instead of Triton (a GPU);
    ``launch``: the launch shape's knobs.
    """
    # Imported here, not at the top: there it added ~65 ms (python -X importtime) to
    # every run's start-up, for a kernel that only a GPU or a test runs.
    from jax.experimental.pallas import triton as pltriton

    n, h, w, cin = x.shape
    _, oh, ow, cout = dy.shape
    kh, kw = kernel_hw
    taps = kh * kw
    s = launch_shape(x.shape, dy.shape, taps, launch)
    bc, bo, bp = s["cin_block"], s["cout_block"], s["pixel_block"]
    splits, pixels = s["splits"], n * oh * ow
    cout_blocks = s["cout_pad"] // bo

    def kernel(x_ref, dy_ref, dw_ref, db_ref):
        tap, block, split = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        i, j = tap // kw, tap % kw
        ci = (block // cout_blocks) * bc + jnp.arange(bc)
        co = (block % cout_blocks) * bo + jnp.arange(bo)
        ci_ok, co_ok = ci < cin, co < cout

        def accumulate(k, carry):
            acc, bacc = carry
            p = (split + k * splits) * bp + jnp.arange(bp)  # output pixels (n, h', w')
            p_ok = p < pixels
            img, rest = p // (oh * ow), p % (oh * ow)
            hi = (rest // ow) * stride + i - padding
            wi = (rest % ow) * stride + j - padding
            inside = p_ok & (hi >= 0) & (hi < h) & (wi >= 0) & (wi < w)  # else: padding
            row = jnp.where(inside, (img * h + hi) * w + wi, 0)
            xs = pltriton.load(
                x_ref.at[row[:, None] * cin + ci[None, :]],
                mask=inside[:, None] & ci_ok[None, :],
                other=0,
            )
            dys = pltriton.load(
                dy_ref.at[jnp.where(p_ok, p, 0)[:, None] * cout + co[None, :]],
                mask=p_ok[:, None] & co_ok[None, :],
                other=0,
            )
            contract_pixels = (((0,), (0,)), ((), ()))  # dy^T x: [C_out block, C_in block]
            acc += lax.dot_general(dys, xs, contract_pixels, preferred_element_type=jnp.float32)
            return acc, bacc + jnp.sum(dys.astype(jnp.float32), axis=0)

        init = (jnp.zeros((bo, bc), jnp.float32), jnp.zeros((bo,), jnp.float32))
        acc, bacc = lax.fori_loop(0, s["iterations"], accumulate, init)
        cb, ob = block // cout_blocks, block % cout_blocks
        dw_ref[split, pl.ds(ob * bo, bo), tap, pl.ds(cb * bc, bc)] = acc

        @pl.when((tap == 0) & (cb == 0))  # one program per (split, C_out block) writes db
        def _():
            db_ref[split, pl.ds(ob * bo, bo)] = bacc

    dw_parts, db_parts = pl.pallas_call(
        kernel,
        out_shape=(
            jax.ShapeDtypeStruct((splits, s["cout_pad"], taps, s["cin_pad"]), jnp.float32),
            jax.ShapeDtypeStruct((splits, s["cout_pad"]), jnp.float32),
        ),
        grid=s["grid"],
        interpret=interpret,
        compiler_params=pltriton.CompilerParams(
            num_warps=launch.num_warps, num_stages=launch.num_stages
        ),
        name="conv_wgrad",
    )(x.reshape(-1), dy.reshape(-1))
    # [C_out, kh*kw, C_in] is the byte order XLA gives HWIO weights for cuDNN (OHWI):
    # the transpose is free, where HWIO order cost a copy per convolution and step.
    dw = dw_parts[:, :cout, :, :cin].sum(0).reshape(cout, kh, kw, cin).transpose(1, 2, 3, 0)
    return dw, db_parts[:, :cout].sum(0)
