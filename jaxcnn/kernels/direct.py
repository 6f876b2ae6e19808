"""Direct and Winograd convolutions on a CPU: C++ kernels XLA calls (FFI custom calls).

Why: for few channels, every form XLA:CPU's ops can express writes a patch
matrix, rows or tiles and then runs a narrow GEMM (K and N of 16-64), which
XLA's GEMMs run at 110-150 GFLOP/s on the 2-core Zen 4 EPYC. This kernel reads
the padded image where it lies and keeps a row's block of outputs in vector
registers (``direct_conv.cc``): resnet's 16 -> 16 3x3 convolution, forward and
both gradients, 0.63 ms against the row form's 0.80 alone. ``auto`` takes it for
the convolutions where whole training steps measured faster (:data:`AUTO`).

The same library holds Winograd's F(4x4, r x r) (:mod:`jaxcnn.kernels.winograd` has
the algebra): per image, tiles go through B^T d B, the a * a GEMMs with U = G g G^T and
A^T M A while they are in the caches, where XLA's form writes each stage out. Its
forward alone ran 1.9-2.8x faster than XLA's form on cifar_cnn's conv2 and its dx.
dx is the same form over dy; dW is G^T dU G, dU summed over tiles in C++
(:data:`WINOGRAD_AUTO`).

The library is built on first use by the host's C++ compiler (``$CXX``, else
``c++``) for the host's CPU (``-march=native``), into
``~/.cache/jaxcnn/kernels`` (``$XDG_CACHE_HOME`` respected), named by a digest of
the source, the compiler, jaxlib and the CPU, and written by a rename, so
processes that build it at once do not see a half-written file. Without a
compiler, or where the build fails, :func:`available` is False: ``auto`` keeps
XLA's forms, and an explicit ``--patch-form direct`` is refused with the reason.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.kernels.bias import add_bias
from jaxcnn.report import cache_home

SOURCE = Path(__file__).with_name("direct_conv.cc")
CHANNELS = 16  # output channels must be a multiple of this (the widest vector's lanes)
# ``"auto"`` takes the direct form for these (kernel size, input channels, output
# channels, padding), each measured faster in whole training steps, paired: resnet's
# first residual block (1.10x, 1.06x) and its first convolution (1.08x, 1.10x more),
# convnet's first convolution (1.06x, 1.07x), cifar_cnn's first (1.21x, 1.09x).
# Measured and left out (0.88-1.02x): resnet's 32 -> 32 block, mnist_cnn's 5x5s,
# cifar_cnn's second, lenet5's, blitz_net's and simple_cnn's 6 -> 16 (docs/speed.md,
# thirteenth session).
AUTO = {(3, 16, 16, 1), (5, 1, 16, 0), (3, 1, 32, 0), (5, 3, 16, 2)}
# ``"auto"`` takes the kernel's Winograd form F(4x4, r x r) for these (kernel size, input
# channels, output channels, padding), each measured faster in whole training steps,
# paired, against the same program without it: cifar_cnn's conv2 (1.37x; it replaces
# Winograd's XLA form), convnet's conv2 (1.14x, the same), resnet's first residual block
# (1.14x, replacing the direct kernel) and with its conv2 1.20x. Left out: resnet's second
# block (4x4 images, one tile: 0.88x) (docs/speed.md, fourteenth session).
WINOGRAD_AUTO = {(5, 16, 32, 2), (3, 32, 64, 0), (3, 16, 16, 1), (5, 16, 32, 0)}


def applies(requested: str, kernel_shape, stride: int, dtype, padding: int) -> bool:
    """Whether a convolution of ``kernel_shape`` (HWIO) runs in the direct kernel.

    ``requested`` is ``Compute.patch_form``: ``"direct"`` wherever the kernel exists
    (a CPU where it built, stride 1, float32, a square kernel, output channels a
    multiple of :data:`CHANNELS`, padding under the kernel's size, so that dx is the
    forward kernel at padding ``k - 1 - padding``), ``"auto"`` there for the shapes in
    :data:`AUTO`.
    """
    kh, kw, cin, cout = kernel_shape
    if requested not in ("auto", "direct") or stride != 1 or dtype != jnp.float32:
        return False
    if kh != kw or not 0 <= padding < kh or cout % CHANNELS:
        return False
    if jax.default_backend() != "cpu" or not available():
        return False
    return requested == "direct" or (kh, cin, cout, padding) in AUTO


def winograd_applies(requested: str, kernel_shape, stride: int, dtype, padding: int) -> bool:
    """Whether a convolution of ``kernel_shape`` (HWIO) runs in the kernel's Winograd form.

    Where :func:`applies` would take the direct kernel and the kernel is 3x3 or 5x5 with
    input channels a multiple of :data:`CHANNELS` too (dx is the same form over dy, whose
    outputs are the input channels): ``"direct"`` there, ``"auto"`` for the shapes in
    :data:`WINOGRAD_AUTO`.
    """
    kh, _, cin, cout = kernel_shape
    if (
        kh not in (3, 5)
        or cin % CHANNELS
        or not applies("direct", kernel_shape, stride, dtype, padding)
    ):
        return False
    return requested == "direct" or (
        requested == "auto" and (kh, cin, cout, padding) in WINOGRAD_AUTO
    )


def conv2d_winograd(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int = 0
) -> jax.Array:
    """``F.conv2d`` at stride 1 as the kernel's F(4x4, r x r) (y, dx and dW's dU in C++)."""
    y = _winograd(x, kernel.astype(x.dtype), padding)
    return y if bias is None else add_bias(y, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _winograd(x, kernel, padding):
    return _winograd_forward(x, kernel, padding)


def _winograd_fwd(x, kernel, padding):
    return _winograd_forward(x, kernel, padding), (x, kernel)


def _winograd_bwd(padding, residuals, dy):
    """dx is the same form over dy with the kernel flipped and its channels swapped; dW
    is G^T dU G from the kernel's dU = sum over tiles of V^T (A dY A^T)."""
    x, kernel = residuals
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    dx = _winograd_forward(dy, flipped, kernel.shape[0] - 1 - padding)
    g = _g(kernel.shape[0], x.dtype)
    a = g.shape[0]
    call = jax.ffi.ffi_call(_targets()[3], jax.ShapeDtypeStruct((a, a, *kernel.shape[2:]), x.dtype))
    du = call(x, dy, pad=np.int64(padding))
    return dx, jnp.einsum("ik,ijco,jl->klco", g, du, g, precision="highest")


_winograd.defvjp(_winograd_fwd, _winograd_bwd)


def _g(r: int, dtype) -> jax.Array:
    """G of F(4x4, r x r), [a, r]: the kernel's transform (U = G g G^T)."""
    from jaxcnn.kernels import winograd

    return jnp.asarray(winograd.transforms(4, r)[1], dtype)


def _winograd_forward(x, kernel, padding: int):
    """The kernel transformed here (U = G g G^T, [a, a, C, O]), the rest in C++."""
    g = _g(kernel.shape[0], x.dtype)
    u = jnp.einsum("ik,klco,jl->ijco", g, kernel, g, precision="highest")
    n, h, w, _ = x.shape
    k, cout = kernel.shape[0], kernel.shape[3]
    shape = (n, h + 2 * padding - k + 1, w + 2 * padding - k + 1, cout)
    call = jax.ffi.ffi_call(_targets()[2], jax.ShapeDtypeStruct(shape, x.dtype))
    return call(x, u, pad=np.int64(padding))


def conv2d_direct(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: int = 0
) -> jax.Array:
    """``F.conv2d`` at stride 1 with symmetric zero ``padding``: [N,H,W,C] x HWIO -> [N,H',W',O]."""
    y = _conv(x, kernel.astype(x.dtype), padding)
    return y if bias is None else add_bias(y, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, padding):
    return _forward(x, kernel, padding)


def _conv_fwd(x, kernel, padding):
    return _forward(x, kernel, padding), (x, kernel)


def _conv_bwd(padding, residuals, dy):
    """dx is the forward kernel over dy with the kernel flipped and its channels swapped
    (dx's channels padded to whole vectors and cut back: a first layer's, whose dx no
    one uses and XLA drops); dW is the weight-gradient kernel."""
    x, kernel = residuals
    k, cin = kernel.shape[0], x.shape[-1]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    flipped = jnp.pad(flipped, ((0, 0), (0, 0), (0, 0), (0, -cin % CHANNELS)))
    dx = _forward(dy, flipped, k - 1 - padding)[..., :cin]
    return dx, _weight_grad(x, dy, kernel.shape, padding)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _forward(x, kernel, padding: int):
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    shape = (n, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1, cout)
    call = jax.ffi.ffi_call(_targets()[0], jax.ShapeDtypeStruct(shape, x.dtype))
    return call(x, kernel, pad=np.int64(padding))


def _weight_grad(x, dy, kernel_shape, padding: int):
    call = jax.ffi.ffi_call(_targets()[1], jax.ShapeDtypeStruct(kernel_shape, x.dtype))
    return call(x, dy, pad=np.int64(padding))


def available() -> bool:
    """Whether the kernel library is built (building it now if need be) and registered."""
    return unavailable() is None


def unavailable() -> str | None:
    """Why the direct kernel cannot run here, in one sentence, or None."""
    return _loaded()[1]


def _targets() -> tuple[str, ...]:
    """The custom-call names (direct forward and weight gradient, Winograd forward and
    dU), registered with XLA for the CPU.

    The names carry the library's digest: a stored executable that calls one was built
    against this very library (:mod:`jaxcnn.executables` keys on the digest too).
    """
    names, why = _loaded()
    if why:
        raise OSError(why)
    return names


@functools.cache
def _loaded() -> tuple[tuple[str, ...], str | None]:
    """Build (once a process: a failed build is not retried for every convolution),
    load and register the library: its target names, and why not where it failed."""
    try:
        library = ctypes.cdll.LoadLibrary(str(build()))
    except OSError as error:
        return (), str(error)
    kinds = ("forward", "wgrad", "winograd", "winograd_ugrad")
    names = tuple(f"jaxcnn_direct_{kind}_{digest()[:12]}" for kind in kinds)
    symbols = (
        library.jaxcnn_direct_forward,
        library.jaxcnn_direct_weight_grad,
        library.jaxcnn_winograd_forward,
        library.jaxcnn_winograd_ugrad,
    )
    for name, symbol in zip(names, symbols, strict=True):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
    return names, None


def build() -> Path:
    """The library for this source, compiler, jaxlib and CPU, compiled if not yet there.

    Raises:
        OSError: with one sentence, where there is no compiler or it fails.
    """
    path = cache_dir() / f"direct-{digest()[:16]}.so"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if sys.stderr.isatty():  # a few seconds, once a machine; not in a log or a test's pipe
        print("jaxcnn: building the direct convolution kernel for this CPU", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        out = Path(scratch) / path.name
        command = [*compiler(), *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(out)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise OSError(f"the direct convolution kernel could not be built: {error}") from None
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise OSError(f"the direct convolution kernel did not compile: {last}")
        os.replace(out, path)
    return path


FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def compiler() -> list[str]:
    """``$CXX`` (split on spaces), else ``c++``; OSError where neither is on the path."""
    command = os.environ.get("CXX", "c++").split()
    if not command or shutil.which(command[0]) is None:
        raise OSError(
            f"no C++ compiler ({command[0] if command else '$CXX is empty'}) to build "
            "the direct convolution kernel"
        )
    return command


@functools.cache
def digest() -> str:
    """sha256 of what decides the built library: source, flags, compiler, jaxlib and CPU."""
    import jaxlib

    from jaxcnn.executables import cpu_features

    try:
        version = subprocess.run(
            [*compiler(), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = "none"
    parts = (
        SOURCE.read_bytes(),
        " ".join(FLAGS).encode(),
        version.encode(),
        jaxlib.__version__.encode(),
        cpu_features().encode(),
    )
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxcnn/kernels``, else ``~/.cache/jaxcnn/kernels``."""
    return cache_home() / "kernels"
