"""The Pallas weight-gradient kernel (``conv="pallas_wgrad"``): exact, and lowerable for CUDA.

Off a GPU the kernel runs in Pallas's interpreter (``interpret=True``, as
``tests.helpers.variant`` asks for it), which executes the same kernel program;
what only a GPU can show is its speed and that Triton compiles it, and the
lowering test below goes as far as a CPU can: the whole training step lowered
for CUDA, with each kernel translated to Triton IR.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export, lax

from jaxcnn import UserError, models, train
from jaxcnn.kernels import pallas_wgrad
from jaxcnn.models import layers
from tests.helpers import full_float32, variant  # noqa: F401 (fixture)

ON_GPU = jax.default_backend() == "gpu"
INTERPRET = not ON_GPU  # off a GPU, the kernel in Pallas's interpreter
# The kernel's dot is full float32: so must be XLA's convolutions it is held against.
pytestmark = pytest.mark.usefixtures("full_float32")


def reference_grads(x, dy, kernel_hw, stride, padding):
    """dW and db of ``conv(x) + b`` by autodiff of XLA's convolution (full float32)."""
    kh, kw = kernel_hw

    def f(kernel, bias):
        y = lax.conv_general_dilated(
            x, kernel, (stride, stride), [(padding, padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest",
        )  # fmt: skip
        return jnp.vdot(y + bias, dy)

    cin, cout = x.shape[-1], dy.shape[-1]
    return jax.grad(f, argnums=(0, 1))(jnp.zeros((kh, kw, cin, cout)), jnp.zeros(cout))


# (image side, C_in, C_out, kernel, stride, padding): the seeds' shapes (inception's
# conv1 and conv2, a 1x1 branch, resnet's padded 3x3) and channel counts over one
# 64-wide block (several channel blocks, padded lanes).
SHAPES = [
    (28, 1, 10, 5, 1, 0),
    (12, 88, 20, 5, 1, 0),
    (12, 10, 16, 1, 1, 0),
    (10, 16, 16, 3, 1, 1),
    (9, 70, 130, 3, 2, 1),
    (11, 3, 7, 2, 2, 0),
]


@pytest.mark.parametrize(("side", "cin", "cout", "k", "stride", "padding"), SHAPES)
def test_kernel_matches_autodiff(side, cin, cout, k, stride, padding):
    n = 3
    out = (side + 2 * padding - k) // stride + 1
    x = jax.random.normal(jax.random.key(0), (n, side, side, cin))
    dy = jax.random.normal(jax.random.key(1), (n, out, out, cout))
    dw, db = jax.jit(
        pallas_wgrad.weight_and_bias_grad, static_argnums=(2, 3, 4, 5)
    )(x, dy, (k, k), stride, padding, INTERPRET)  # fmt: skip
    want_w, want_b = reference_grads(x, dy, (k, k), stride, padding)
    assert dw.shape == want_w.shape and db.shape == want_b.shape
    np.testing.assert_allclose(dw, want_w, rtol=0, atol=2e-6 * np.abs(want_w).max())
    np.testing.assert_allclose(db, want_b, rtol=0, atol=2e-6 * np.abs(want_b).max())


def test_launch_shape_fills_the_gpu_and_splits_no_further_than_the_pixels():
    # inception's conv2: 25 taps, one channel block -> about TARGET_PROGRAMS programs
    s = pallas_wgrad.launch_shape((64, 12, 12, 88), (64, 8, 8, 20), taps=25)
    assert s["grid"][0] == 25 and s["grid"][1] == 2  # 88 -> 128 lanes = 2 blocks of 64
    assert np.prod(s["grid"]) >= pallas_wgrad.LAUNCH.target_programs
    assert s["splits"] * s["iterations"] * s["pixel_block"] >= 64 * 8 * 8
    # a tiny problem: no split without pixels to give it
    t = pallas_wgrad.launch_shape((1, 3, 3, 1), (1, 1, 1, 1), taps=9)
    assert t["splits"] == 1 and t["iterations"] == 1
    for shape in (s, t):
        for key in ("cin_block", "cout_block", "pixel_block"):
            size = shape[key]
            assert size >= 16 and size & (size - 1) == 0, key  # Triton's power-of-2 tiles


def test_bfloat16_gradients_are_close_and_keep_their_dtypes():
    x = jax.random.normal(jax.random.key(0), (4, 12, 12, 16))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 16, 24)) * 0.1
    bias = jnp.zeros(24)

    def loss(impl, dtype):
        def f(x, kernel, bias):
            y = impl(x.astype(dtype), kernel, bias, 1, 1, interpret=INTERPRET)
            return jnp.sum(jnp.sin(y.astype(jnp.float32)))

        return jax.grad(f, argnums=(0, 1, 2))(x, kernel, bias)

    want = loss(pallas_wgrad.conv2d_pallas_wgrad, jnp.float32)
    got = loss(pallas_wgrad.conv2d_pallas_wgrad, jnp.bfloat16)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == jnp.float32  # the casts' transposes bring them back
        assert 0 < np.abs(g - w).max() <= 0.03 * np.abs(w).max()


def test_each_convolution_is_one_kernel_and_no_weight_gradient_convolution():
    """Per conv: XLA's forward and data-gradient convolutions, and one pallas_call."""
    model = models.create("resnet", compute=variant("pallas_wgrad"))
    graphdef, state = nnx.split(model)

    def loss(state):
        return nnx.merge(graphdef, state)(jnp.zeros((2, 28, 28, 1))).sum()

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(state))
    convs = 6  # resnet: conv1, conv2 and two residual blocks of two
    assert jaxpr.count("pallas_call[") == convs
    assert jaxpr.count("conv_general_dilated[") == 2 * convs


@pytest.mark.skipif(ON_GPU, reason="on a GPU the kernel is compiled; nothing is refused")
def test_off_a_gpu_the_kernel_is_refused_unless_interpreted():
    with pytest.raises(UserError, match="'pallas_wgrad' is a GPU kernel and this backend is cpu"):
        train.get_config("resnet", "fashion_mnist", conv="pallas_wgrad")
    config = train.get_config("resnet", "fashion_mnist", conv="pallas_wgrad", interpret=True)
    assert config.compute.conv == "pallas_wgrad" and config.compute.interpret


def test_an_epoch_trains_as_with_xla_convolutions():
    """The kernel inside the trainer's scanned epoch (donated state, optimizer):
    the same losses as XLA's weight gradients, step after step."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (3 * 16, 28, 28, 1), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, len(images)), dtype=jnp.int32)
    losses = {}
    for conv in ("xla", "pallas_wgrad"):
        config = train.get_config("resnet", "mnist", batch_size=16, conv=conv, interpret=INTERPRET)
        program, state = train.create_program(config)
        _, losses[conv] = train.make_epoch_fn(program)(state, images, labels, 1)
    assert losses["xla"].shape == (3,)
    np.testing.assert_allclose(losses["pallas_wgrad"], losses["xla"], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["mnist_cnn", "inception", "resnet", "convnet"])
def test_training_step_lowers_for_cuda_with_triton_kernels(name, dtype):
    """The real train step, lowered for CUDA from this machine (``jax.export``).

    Lowering runs Pallas's Triton translation of every kernel: a tile that is
    not a power of two, or an op Triton lacks, fails here. Triton's own
    compilation to PTX happens in XLA on a GPU and is not covered.
    """
    # resolved for a GPU: the compiled kernel, not the interpreter, on this CPU host
    config = train.get_config(
        name, "fashion_mnist", backend="gpu", conv="pallas_wgrad", dtype=dtype
    )
    assert not config.compute.interpret
    program, state = train.create_program(config)
    h, w, c = models.get_spec(name).input_shape
    batch = config.batch_size
    step = jax.jit(lambda s, x, y, k: train.train_step(program, s, (x, y), k))
    triton = "__gpu$xla.gpu.triton"
    exported = export.export(
        step, platforms=["cuda"], disabled_checks=[export.DisabledSafetyCheck.custom_call(triton)]
    )(
        state,
        jax.ShapeDtypeStruct((batch, h, w, c), jnp.uint8),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.random.key(0),
    )
    convs = sum(isinstance(m, layers.Conv2d) for _, m in nnx.iter_graph(models.create(name)))
    assert exported.platforms == ("cuda",)
    assert exported.mlir_module().count(f"@{triton}(") == convs
