"""The speed options compute what the plain models compute (no torch here).

``fuse`` (InceptionA's four 1x1 convolutions as one matmul) and ``conv="im2col"``
(every convolution as one matmul over patches) are algebraically identical
rewrites: logits and gradients must match the plain form to float32 rounding,
and the traced program must really be different (fewer or no convolutions),
or the option would be a no-op passing its own equality test.
``dtype="bfloat16"`` is not identical: it must stay close, keep float32
parameters and gradients, and compute in bfloat16.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import UserError, compute, kernels, models, train
from jaxcnn.kernels import im2col, rowconv, tileconv, winograd
from jaxcnn.kernels.bias import add_bias, channel_sum
from jaxcnn.kernels.materialise import (
    MATERIALISE_MIN,
    MATERIALISE_MIN_PER_IMAGE,
    materialise,
)
from jaxcnn.kernels.pool import max_and_first
from jaxcnn.models import layers
from jaxcnn.objectives import seed_loss
from tests.helpers import full_float32, variant  # noqa: F401 (fixture)

# conv="pallas_wgrad" off a GPU: its kernel in Pallas's interpreter (helpers.variant).
# On a GPU, the forms are compared at full float32, or TF32 rounding would swamp the
# 1e-5 bounds.
pytestmark = pytest.mark.usefixtures("full_float32")


def logits_and_grads(model, x, y, kind):
    def loss_fn(m):
        out = m(x)
        return seed_loss(out, y, kind), out

    (_, out), grads = nnx.jit(nnx.value_and_grad(loss_fn, has_aux=True))(model)
    return np.asarray(out), {
        "/".join(map(str, path)): np.asarray(g)
        for path, g in jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    }


def count_primitive(model, x, name: str) -> int:
    """How many times primitive ``name`` appears in the jaxpr of the model's gradient."""
    graphdef, state = nnx.split(model)

    def loss(state):
        return nnx.merge(graphdef, state)(x).sum()

    return str(jax.make_jaxpr(jax.grad(loss))(state)).count(name)


# Every model against torch under each option: parity/test_fast_paths.py. Here, without
# torch, the model where the options change the most, against its plain form.
CASES = [("inception", impl) for impl in compute.model_variants()]


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_speed_option_matches_plain_form(name, impl):
    plain = models.create(name, rngs=3)
    fast = models.create(name, rngs=3, compute=variant(impl))
    plain.eval()
    fast.eval()
    h, w, c = models.get_spec(name).input_shape
    x = jax.random.normal(jax.random.key(0), (16, h, w, c))
    y = jnp.arange(16) % 10
    kind = models.get_spec(name).recipe.loss
    want_out, want = logits_and_grads(plain, x, y, kind)
    got_out, got = logits_and_grads(fast, x, y, kind)
    np.testing.assert_allclose(got_out, want_out, rtol=0, atol=1e-5)
    assert got.keys() == want.keys()
    for key, g in want.items():
        scale = np.abs(g).max()
        assert np.abs(got[key] - g).max() <= 1e-5 * scale + 1e-7, key


FUSED = compute.Compute(fuse=True)


def test_fused_inception_traces_fewer_convolutions():
    x = jnp.zeros((2, 28, 28, 1))
    plain = count_primitive(models.create("inception"), x, "conv_general_dilated")
    fused = count_primitive(models.create("inception", compute=FUSED), x, "conv_general_dilated")
    # per InceptionA, branch1x1, branch5x5_1, branch3x3_1 and branch_pool leave the
    # convolutions (forward, input and weight gradients) for one matmul
    assert fused < plain
    assert count_primitive(
        models.create("inception", compute=FUSED), x, "dot_general"
    ) > count_primitive(models.create("inception"), x, "dot_general")


@pytest.mark.parametrize(("kernel", "padding"), [(5, 2), (3, 1), (3, 0)])
def test_composed_pair_is_the_two_convolutions(kernel, padding):
    """InceptionA's 1x1 -> kxk pair as one convolution (fuse under im2col): values and
    all four gradients, with biases large enough that the border map matters."""
    from jaxcnn.models.composition import compose_pair

    rngs, im2 = nnx.Rngs(0), compute.Compute(conv="im2col", fuse=True)
    first = layers.Conv2d(6, 16, 1, compute=im2, rngs=rngs)
    second = layers.Conv2d(16, 24, kernel, padding=padding, compute=im2, rngs=rngs)
    first.bias[...] = 3.0 + first.bias[...]
    x = jax.random.normal(jax.random.key(4), (2, 9, 7, 6))

    def loss(fn, first, second):
        return jnp.sum(jnp.sin(fn(first, second)))

    def composed(first, second):
        return compose_pair(first, second, x, im2)

    def plain(first, second):
        return second(first(x))

    want, want_grads = nnx.value_and_grad(loss, argnums=(1, 2))(plain, first, second)
    got, got_grads = nnx.value_and_grad(loss, argnums=(1, 2))(composed, first, second)
    np.testing.assert_allclose(composed(first, second), plain(first, second), atol=2e-5)
    assert abs(float(got - want)) <= 1e-4 * abs(float(want)) + 1e-5
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max() + 1e-6


@pytest.fixture
def conv_calls(monkeypatch) -> list[tuple[int, tuple]]:
    """(batch, kernel shape) of every ``kernels.conv2d`` call, the layers' and the
    composed forms' alike, in the order made."""
    calls = []
    conv2d = kernels.conv2d

    def recording(x, kernel, *args):
        calls.append((x.shape[0], kernel.shape))
        return conv2d(x, kernel, *args)

    monkeypatch.setattr(kernels, "conv2d", recording)
    return calls


def test_fused_im2col_inception_composes_the_pairs(conv_calls):
    """Under fuse and im2col an InceptionA runs 4 convolutions, not 7 (5 with the four
    1x1s as one): the 1x1 -> 5x5 and 1x1 -> 3x3 pairs are one convolution each."""
    block = models.create("inception", compute=compute.Compute(conv="im2col", fuse=True)).incep1
    block(jnp.zeros((2, 12, 12, 10)))
    kernel_shapes = [shape for _, shape in conv_calls]
    # the two other 1x1s as one [1,1,10,40]; the composed 5x5 and 3x3 read the block's
    # 10 input channels; branch3x3_3 as it was
    want = [(1, 1, 10, 40), (5, 5, 10, 24), (3, 3, 10, 24), (3, 3, 24, 24)]
    assert sorted(kernel_shapes) == sorted(want)


@pytest.mark.parametrize(("ka", "kb"), [(5, 5), (3, 5), (1, 3)])
def test_chained_kernels_are_the_two_convolutions(ka, kb):
    from jaxcnn.models.composition import chain_kernels

    x = jax.random.normal(jax.random.key(5), (2, 13, 11, 3))
    a = jax.random.normal(jax.random.key(6), (ka, ka, 3, 4))
    b = jax.random.normal(jax.random.key(7), (kb, kb, 4, 5))
    want = im2col.plain_conv(im2col.plain_conv(x, a, 1, 0), b, 1, 0)
    got = im2col.plain_conv(x, chain_kernels(a, b), 1, 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_incep1_then_conv2_as_convolutions_of_the_input():
    """Inception's conv2(incep1(x)) under fuse and im2col: the same values and gradients
    for every parameter of both, biases large enough that f(0) and the borders matter."""
    fused = compute.Compute(conv="im2col", fuse=True)
    model = models.create("inception", rngs=5, compute=fused)
    for conv in (model.incep1.branch3x3_1, model.incep1.branch5x5_1, model.incep1.branch_pool):
        conv.bias[...] = 2.0 + conv.bias[...]
    x = jax.random.normal(jax.random.key(8), (3, 12, 12, 10))

    def loss(model, composed):
        y = model.incep1_conv2(x) if composed else model.conv2(model.incep1(x))
        return jnp.sum(jnp.sin(y)), y

    (_, want), want_grads = nnx.value_and_grad(loss, has_aux=True)(model, False)
    (_, got), got_grads = nnx.value_and_grad(loss, has_aux=True)(model, True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    want_leaves = jax.tree_util.tree_leaves_with_path(want_grads)
    for (path, w), g in zip(want_leaves, jax.tree.leaves(got_grads), strict=True):
        assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max() + 1e-7, jax.tree_util.keystr(path)


def test_fused_im2col_inception_never_convolves_88_channels_of_a_batch(conv_calls):
    """conv2's 88-channel kernel meets only the one zero image of f(0); the batch
    goes through the 9x9 kernel of incep1 and conv2 composed."""
    model = models.create("inception", compute=compute.Compute(conv="im2col", fuse=True))
    model(jnp.zeros((4, 28, 28, 1)))
    assert (4, (9, 9, 10, 20)) in conv_calls
    assert {batch for batch, shape in conv_calls if shape[2] == 88} == {1}


@pytest.mark.parametrize("name", ["mnist_cnn", "inception", "resnet"])
def test_im2col_traces_no_convolution(name):
    h, w, c = models.get_spec(name).input_shape
    x = jnp.zeros((2, h, w, c))
    assert count_primitive(models.create(name), x, "conv_general_dilated") > 0
    im2col_model = models.create(name, compute=compute.Compute(conv="im2col"))
    assert count_primitive(im2col_model, x, "conv_general_dilated") == 0


CONV_CASES = [(5, 1, 0), (3, 1, 1), (1, 1, 0), (3, 2, 1), (2, 2, 0), (1, 1, 1), (5, 1, 2)]


@pytest.mark.parametrize("cout", [7, 24])
@pytest.mark.parametrize(("kernel", "stride", "padding"), CONV_CASES)
def test_conv_without_gradient_matches_xla(kernel, stride, padding, cout):
    """im2col's primal (evaluation: no gradient taken), channel-major for few output
    channels at stride 1, row-major otherwise, against XLA's convolution."""
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, 3))
    k = jax.random.normal(jax.random.key(2), (kernel, kernel, 3, cout))

    def conv(x):
        return im2col.conv2d_im2col(x, k, None, stride, padding)

    want = im2col.plain_conv(x, k, stride, padding)
    np.testing.assert_allclose(conv(x), want, rtol=0, atol=1e-4)
    rows = want.shape[0] * want.shape[1] * want.shape[2]
    channel_major = stride == 1 and cout <= im2col.CHANNEL_MAJOR_MAX_OUT
    # the transposed GEMM's output, [O, rows], is in the traced primal iff it is used
    assert (f"f32[{cout},{rows}]" in str(jax.make_jaxpr(conv)(x))) == channel_major


# im2col's full patch matrix under each input-gradient form of its custom VJP, its row
# form and its tiles (where a case has neither, the full form), gemm_wgrad and pallas_wgrad.
CONV_FORMS = [("im2col", {"patch_form": "full", "dx_form": form}) for form in compute.DX_FORMS]
CONV_FORMS += [("im2col", {"patch_form": "rows"}), ("im2col", {"patch_form": "tiles"})]
CONV_FORMS += [("gemm_wgrad", {}), ("pallas_wgrad", {})]


@pytest.mark.parametrize(("impl", "options"), CONV_FORMS)
@pytest.mark.parametrize(("kernel", "stride", "padding"), CONV_CASES)
def test_conv_layer_matches_xla(kernel, stride, padding, impl, options):
    """Output and all three gradients of the custom-VJP convolutions against XLA's.

    A 2x2 kernel at stride 2 on 13x11 leaves a row and a column no window reads
    (their gradient must be zero), and padding 1 on a 1x1 kernel makes the
    correlation form crop rather than pad.
    """
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, 3))

    def run(impl):
        how = variant("", conv=impl, **(options if impl != "xla" else {}))
        conv = layers.Conv2d(
            3, 7, kernel, stride=stride, padding=padding, compute=how, rngs=nnx.Rngs(0)
        )
        graphdef, params = nnx.split(conv)

        def f(params, x):
            out = nnx.merge(graphdef, params)(x)
            return jnp.sum(jnp.sin(out)), out

        (_, out), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(params, x)
        return out, grads

    want_out, (want_params, want_x) = run("xla")
    got_out, (got_params, got_x) = run(impl)
    assert got_out.shape == want_out.shape
    np.testing.assert_allclose(got_out, want_out, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=1e-5)
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params), strict=True):
        # sums of ~400 float32 terms in another order (pallas_wgrad's bias gradient,
        # which reaches ~300 here, is off by ~3e-4 = 1e-6 relative)
        np.testing.assert_allclose(got, want, rtol=0, atol=max(1e-4, 2e-6 * np.abs(want).max()))


@pytest.mark.parametrize(
    ("shape", "wide"),
    [
        ((4, 28, 28, 6), 48),  # lenet5's conv1: a [9408, 48] view
        ((5, 14, 14, 20), 80),
        ((3, 5, 7, 10), None),  # 1,050 elements: no view of 80 columns, the plain sum
        ((2, 8, 8, 16), None),  # already a whole vector of channels
    ],
)
def test_channel_sum_is_the_sum_over_all_but_the_channels(shape, wide):
    a = jax.random.normal(jax.random.key(0), shape) + 3.0
    got = channel_sum(a)
    np.testing.assert_allclose(got, np.asarray(a, np.float64).sum((0, 1, 2)), rtol=2e-6)
    widths = [e.params["new_sizes"][-1] for e in jax.make_jaxpr(channel_sum)(a).eqns
              if e.primitive.name == "reshape"]  # fmt: skip
    assert (wide in widths) if wide else widths == [shape[-1]]
    half = a.astype(jnp.bfloat16)  # other dtypes: the plain sum
    assert channel_sum(half).dtype == jnp.bfloat16
    np.testing.assert_array_equal(channel_sum(half), half.reshape(-1, shape[-1]).sum(0))


def test_add_bias_has_autodiffs_gradients():
    y = jax.random.normal(jax.random.key(1), (4, 28, 28, 6))
    b = jax.random.normal(jax.random.key(2), (6,))

    def loss(add, y, b):
        return jnp.sum(jnp.sin(add(y, b)) * jnp.arange(6.0))

    got = jax.grad(lambda y, b: loss(add_bias, y, b), argnums=(0, 1))(y, b)
    want = jax.grad(lambda y, b: loss(jnp.add, y, b), argnums=(0, 1))(y, b)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    assert add_bias(y.astype(jnp.bfloat16), b).dtype == jnp.bfloat16


def assert_stride1_conv_matches_xla(conv, x, k, padding):
    """``conv(x, k)``'s output with and without a gradient taken, and both gradients,
    against XLA's stride-1 convolution; returns XLA's output."""

    def plain(x, k):
        return im2col.plain_conv(x, k, 1, padding)

    want, want_vjp = jax.vjp(plain, x, k)
    np.testing.assert_allclose(conv(x, k), want, rtol=0, atol=1e-4)
    got, got_vjp = jax.vjp(conv, x, k)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    dy = jax.random.normal(jax.random.key(3), want.shape)
    for g, w in zip(got_vjp(dy), want_vjp(dy), strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-6 * np.abs(w).max() + 1e-5)
    return want


@pytest.mark.parametrize(("cin", "cout"), [(3, 7), (24, 7), (3, 24)])
@pytest.mark.parametrize(("kernel", "padding"), [(5, 2), (3, 0), (2, 1)])
def test_row_form_matches_xla(kernel, padding, cin, cout):
    """The row form's output, with and without a gradient taken (evaluation is
    channel-major for few output channels unless the channels narrow), and its
    gradients against XLA's, and the GEMM it traces is the row form's."""
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, cin))
    k = jax.random.normal(jax.random.key(2), (kernel, kernel, cin, cout))

    def conv(x, k):
        return rowconv.conv2d_rows(x, k, None, padding)

    want = assert_stride1_conv_matches_xla(conv, x, k, padding)
    input_rows = 2 * 13 * want.shape[2]  # not the padding rows, whose P and Z are zero
    z = f"f32[{input_rows},{kernel * cout}]"  # P @ W2: kh*O columns per input row
    assert z in str(jax.make_jaxpr(lambda x: jax.vjp(conv, x, k)[0])(x))
    channel_major = cout <= im2col.CHANNEL_MAJOR_MAX_OUT and cin <= cout
    rows = want.shape[0] * want.shape[1] * want.shape[2]
    assert (f"f32[{cout},{rows}]" in str(jax.make_jaxpr(lambda x: conv(x, k))(x))) == channel_major


@pytest.mark.parametrize("batch", [2, 1024])
def test_row_form_output_is_materialised_once_if_large(batch):
    """Under differentiation a large row-form output passes through a conditional (XLA
    fuses nothing across it), whose branches both give the values unchanged; a small
    one does not."""
    x = jax.random.normal(jax.random.key(1), (batch, 8, 8, 4))
    k = jax.random.normal(jax.random.key(2), (3, 3, 4, 6))

    def conv(x):
        return rowconv.conv2d_rows(x, k, None, 1)

    traced = str(jax.make_jaxpr(lambda x: jax.vjp(conv, x)[0])(x))
    assert ("cond[" in traced) == (batch * 8 * 8 * 6 >= MATERIALISE_MIN)
    a = jnp.array([[np.nan, 1.0], [2.0, -0.0]])
    for token in (jnp.ones(3), jnp.full((2, 2), np.nan)):  # either branch
        np.testing.assert_array_equal(materialise(a, token), a)


@pytest.mark.parametrize(("batch", "side"), [(2, 8), (1024, 8), (2, 32)])
def test_winograd_input_gradient_is_materialised_once_if_large_per_image(batch, side):
    """An input gradient large per image passes through the conditional, whatever the
    batch (a batch in parts keeps its choice); a small one does not. The gradient is the
    same either way (the branches change nothing)."""
    x = jax.random.normal(jax.random.key(1), (batch, side, side, 4))
    k = jax.random.normal(jax.random.key(2), (3, 3, 4, 6))
    _, vjp = jax.vjp(lambda x: winograd.conv2d_winograd(x, k, None, 1), x)
    dy = jnp.ones((batch, side, side, 6))
    traced = str(jax.make_jaxpr(vjp)(dy))
    assert ("cond[" in traced) == (side * side * 4 >= MATERIALISE_MIN_PER_IMAGE)
    want = im2col.plain_input_grad(dy, x.shape, k, 1, 1)
    np.testing.assert_allclose(vjp(dy)[0], want, rtol=1e-4, atol=1e-4)


def test_winograd_output_is_materialised_under_differentiation():
    """Under differentiation a Winograd output of any size passes through the
    conditional (a max pool's reduce otherwise recomputed the output transform for
    each window position); undifferentiated, it does not. Same values either way."""
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    k = jax.random.normal(jax.random.key(2), (3, 3, 4, 6))

    def conv(x):
        return winograd.conv2d_winograd(x, k, None, 1)

    assert x.size < MATERIALISE_MIN
    differentiated = jax.make_jaxpr(lambda x: jax.vjp(conv, x)[0])(x)
    assert "cond[" in str(differentiated)
    assert "cond[" not in str(jax.make_jaxpr(conv)(x))
    want = im2col.plain_conv(x, k, 1, 1)
    np.testing.assert_allclose(jax.vjp(conv, x)[0], want, rtol=1e-4, atol=1e-4)


def test_row_form_applies_where_it_writes_little():
    """``auto``: not at a stride, for a 1x1 or one-channel input, nor for cifar_cnn's
    conv1 (3 -> 16, 5x5: 95 values a pixel against 75); the seeds' other convolutions."""
    assert rowconv.applies("auto", (5, 5, 16, 32), 1)  # cifar_cnn's conv2
    assert rowconv.applies("auto", (3, 3, 6, 16), 1)  # blitz_net's conv2, ratio 1.22
    assert not rowconv.applies("auto", (5, 5, 3, 16), 1)  # cifar_cnn's conv1, ratio 1.27
    assert rowconv.applies("rows", (5, 5, 3, 16), 1)
    assert not rowconv.applies("rows", (5, 5, 1, 10), 1)  # one input channel
    assert not rowconv.applies("rows", (3, 3, 16, 16), 2)
    assert not rowconv.applies("rows", (1, 1, 16, 16), 1)
    assert not rowconv.applies("full", (5, 5, 16, 32), 1)
    assert not rowconv.applies("tiles", (5, 5, 16, 32), 1)


@pytest.mark.parametrize(("cin", "cout"), [(1, 6), (3, 16), (3, 24)])
@pytest.mark.parametrize(("kernel", "padding"), [(5, 2), (3, 0), (2, 1)])
def test_tile_form_matches_xla(kernel, padding, cin, cout):
    """The tiles' output, with and without a gradient taken (evaluation is channel-major
    for one input channel and few output channels), and both gradients, against XLA's;
    and the GEMM traced is the tiles' one. 13x11 inputs leave output widths that the
    tile width does not divide (cropped columns) as well as ones it does."""
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, cin))
    k = jax.random.normal(jax.random.key(2), (kernel, kernel, cin, cout))

    def conv(x, k):
        return tileconv.conv2d_tiles(x, k, None, padding)

    want = assert_stride1_conv_matches_xla(conv, x, k, padding)
    _, h, w, _ = want.shape
    bw = tileconv.tile_width(w)
    tiles = -(-w // bw)
    gemm = f"f32[{2 * h * tiles},{bw * cout}]"  # P @ T: a tile of bw pixels a row
    assert gemm in str(jax.make_jaxpr(lambda x: jax.vjp(conv, x, k)[0])(x))
    # dT: from P^T built directly ([K, M] x [M, bw*O]) for 3 channels, else (dy^T P)^T
    span = bw + kernel - 1
    dt, dt_t = f"f32[{kernel * span * cin},{bw * cout}]", f"f32[{bw * cout},{kernel * span * cin}]"
    grad = str(jax.make_jaxpr(jax.grad(lambda k: conv(x, k).sum()))(k))
    from_pt = cin >= tileconv.PT_MIN_IN
    assert (f"{dt} = dot_general" in grad) == from_pt
    assert (f"{dt_t} = dot_general" in grad) == (not from_pt)
    channel_major = cin == 1 and cout <= im2col.CHANNEL_MAJOR_MAX_OUT
    rows = 2 * h * w
    assert (f"f32[{cout},{rows}]" in str(jax.make_jaxpr(lambda x: conv(x, k))(x))) == channel_major


def test_tile_form_applies_to_first_convolutions():
    """``auto``: the seeds' first convolutions (1 or 3 input channels, at most 20
    output channels), not convnet's 1 -> 32 nor the later ones; ``tiles`` wherever
    it is worth having (stride 1, a kernel wider than one column); the tile width is the
    first of 4 and 2 that divides the output's width."""
    assert tileconv.applies("auto", (5, 5, 3, 16), 1)  # cifar_cnn's conv1
    assert tileconv.applies("auto", (5, 5, 1, 10), 1)  # mnist_cnn's
    assert tileconv.applies("auto", (3, 3, 1, 6), 1)  # blitz_net's
    assert not tileconv.applies("auto", (3, 3, 1, 32), 1)  # convnet's
    assert not tileconv.applies("auto", (5, 5, 16, 32), 1)
    assert tileconv.applies("tiles", (5, 5, 16, 32), 1)
    assert not tileconv.applies("tiles", (5, 1, 16, 32), 1)  # one column: no overlap to share
    assert not tileconv.applies("tiles", (1, 1, 16, 32), 1)
    assert not tileconv.applies("tiles", (3, 3, 1, 6), 2)
    assert not tileconv.applies("rows", (5, 5, 1, 10), 1)
    assert not tileconv.applies("full", (5, 5, 1, 10), 1)
    assert [tileconv.tile_width(w) for w in (28, 30, 24, 13)] == [4, 2, 4, 4]


@pytest.mark.parametrize(
    ("kh", "kw", "stride"), [(5, 5, 1), (3, 3, 1), (1, 1, 1), (3, 3, 2), (2, 5, 1), (9, 9, 1)]
)
def test_stacked_patches_equal_the_flat_concatenate(kh, kw, stride):
    """The two-stack patch matrix is the same data as the flat concatenate, bit for bit,
    and really is the stacked form where it applies (stride 1, kernels up to 8)."""
    x = jax.random.normal(jax.random.key(0), (2, 13, 12, 3))
    np.testing.assert_array_equal(
        jax.jit(im2col.patches, static_argnums=(1, 2, 3))(x, kh, kw, stride),
        im2col.patches_concat(x, kh, kw, stride),
    )
    jaxpr = str(jax.make_jaxpr(im2col.patches, static_argnums=(1, 2, 3))(x, kh, kw, stride))
    stacked = stride == 1 and kh * kw > 1 and max(kh, kw) <= im2col.MAX_STACK
    assert jaxpr.count(" stack[") == (2 if stacked else 0)
    assert jaxpr.count(" concatenate[") == (0 if stacked else int(kh * kw > 1))


def test_gemm_wgrad_traces_no_weight_gradient_convolution():
    """gemm_wgrad keeps XLA's forward and data-gradient convolutions, not the third."""
    x = jnp.zeros((2, 28, 28, 1))
    xla = count_primitive(models.create("resnet"), x, "conv_general_dilated")
    gemm = models.create("resnet", compute=compute.Compute(conv="gemm_wgrad"))
    # per conv, xla traces forward, data- and weight-gradient convolutions
    # (17 for resnet's 6); gemm_wgrad turns the weight-gradient ones into GEMMs
    assert 0 < count_primitive(gemm, x, "conv_general_dilated") < xla
    assert count_primitive(gemm, x, "dot_general") > count_primitive(
        models.create("resnet"), x, "dot_general"
    )


def count_pads(x_shape, kernel_shape, padding, form) -> int:
    """``pad`` ops in the jaxpr of an im2col convolution's input gradient."""
    kernel = jnp.zeros(kernel_shape)
    grad = jax.grad(lambda x: im2col.conv2d_im2col(x, kernel, None, 1, padding, form).sum())
    return str(jax.make_jaxpr(grad)(jnp.zeros(x_shape))).count(" pad[")


NARROWING = ((2, 12, 12, 88), (5, 5, 88, 20), 0)  # inception's conv2
WIDENING = ((2, 14, 14, 10), (5, 5, 10, 20), 2)  # mnist_cnn's conv2


def test_im2col_input_gradient_form_is_the_one_chosen():
    """The custom VJP really replaces autodiff's col2im (kh*kw pads) where it says so.

    ``auto`` takes the correlation (one pad of dy) for a conv that narrows the
    channels a lot, and col2im (a pad per tap) for one that widens them.
    """
    assert count_pads(*WIDENING, "correlation") <= 2
    assert count_pads(*NARROWING, "col2im") >= 25
    assert count_pads(*NARROWING, "auto") <= 2
    assert count_pads(*WIDENING, "auto") >= 25


def test_unknown_conv_algorithm_is_a_user_error():
    with pytest.raises(UserError, match="im2col"):
        train.get_config("resnet", "fashion_mnist", conv="winograd")
    with pytest.raises(UserError, match="bfloat16"):
        train.get_config("resnet", "fashion_mnist", dtype="float16")


def test_bfloat16_computes_in_bf16_and_keeps_float32_state():
    config = train.get_config("inception", "fashion_mnist", dtype="bfloat16")
    program, state = train.create_program(config)
    ref_program, _ = train.create_program(train.get_config("inception", "fashion_mnist"))
    images = jax.random.randint(jax.random.key(0), (8, 28, 28, 1), 0, 256).astype(jnp.uint8)
    labels = jnp.arange(8) % 10
    jaxpr = str(jax.make_jaxpr(program.apply)(state.params, images, None))
    assert "bf16[8,24,24,10]" in jaxpr  # conv1's output: the convolutions run in bf16
    out = jax.jit(program.apply)(state.params, images, None)
    ref = jax.jit(ref_program.apply)(state.params, images, None)
    assert out.dtype == jnp.float32
    assert 0 < np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()  # close, not identical
    step = jax.jit(lambda s, b, k: train.train_step(program, s, b, k))
    new_state, loss = step(state, (images, labels), jax.random.key(1))
    leaves = jax.tree.leaves(new_state)
    assert all(
        leaf.dtype == jnp.float32 for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)
    )
    assert np.isfinite(float(loss))


def test_unrolled_epoch_matches_rolled():
    """unroll=3 over 7 full batches (not a multiple) plus a partial one: same losses."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (7 * 8 + 5, 28, 28, 1), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, len(images)), dtype=jnp.int32)
    losses = {}
    for unroll in (1, 3):
        config = train.get_config("basic_cnn", "mnist", batch_size=8, unroll=unroll)
        program, state = train.create_program(config)
        _, losses[unroll] = train.make_epoch_fn(program)(state, images, labels, 1)
    assert losses[1].shape == (8,)
    np.testing.assert_allclose(losses[3], losses[1], rtol=1e-6)


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("shape", [(2, 24, 24, 10), (3, 13, 11, 4)])
def test_reshape_max_pool_matches_xla_exactly_with_ties(shape, kernel):
    """Values and gradients equal bit for bit, ties included.

    Rounded inputs and a ReLU make most windows hold tied maxima (all zeros, or
    equal integers); the gradient must go to the first in row-major order, as
    torch and select_and_scatter give it, not be split among them. 13x11 leaves
    rows and columns that no window reads (floor mode): their gradient is zero.
    """
    x = jax.nn.relu(jnp.round(2 * jax.random.normal(jax.random.key(0), shape)))
    plain, reshape = compute.PLAIN, compute.Compute(pool="reshape")
    dy = jax.random.normal(jax.random.key(1), kernels.max_pool2d(x, kernel, plain).shape)
    want, want_vjp = jax.vjp(lambda x: kernels.max_pool2d(x, kernel, plain), x)
    got, got_vjp = jax.vjp(lambda x: kernels.max_pool2d(x, kernel, reshape), x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_vjp(dy)[0], want_vjp(dy)[0])
    windows = (shape[1] // kernel) * (shape[2] // kernel) * shape[0] * shape[3]
    assert np.count_nonzero(np.asarray(want_vjp(dy)[0])) == windows  # one winner per window


def test_max_and_first_is_max_and_argmax_in_one_reduce():
    """The pool's one variadic reduce gives ``max`` and ``argmax`` exactly, ties going
    to the first position and NaN ranked above every number (first NaN wins), and the
    reshape pool's forward under a gradient traces that one reduce, not two."""
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=(6, 5, 7))).astype(np.float32)  # many ties
    a[0, 0, [2, 4]] = np.nan
    a[1, 2, 6] = np.nan
    a[2, 1, :] = -np.inf
    value, first = max_and_first(jnp.asarray(a), axis=2)
    np.testing.assert_array_equal(value, jnp.max(a, axis=2))
    np.testing.assert_array_equal(first, jnp.argmax(a, axis=2))
    assert first[0, 0] == 2 and first[1, 2] == 6 and first[2, 1] == 0

    x = jnp.zeros((2, 8, 8, 3))
    how = compute.Compute(pool="reshape")
    grad = jax.grad(lambda x: kernels.max_pool2d(x, 2, how).sum())
    names = [e.primitive.name for e in jax.make_jaxpr(grad)(x).eqns]
    assert names.count("reduce") == 1
    assert "reduce_max" not in names and "argmax" not in names


@pytest.mark.parametrize("name", ["mnist_cnn", "cifar_cnn"])  # a method, and seed 000's module
def test_reshape_pool_traces_no_select_and_scatter(name):
    h, w, c = models.get_spec(name).input_shape
    x = jnp.zeros((2, h, w, c))
    assert count_primitive(models.create(name), x, "select_and_scatter") > 0
    reshape = models.create(name, compute=compute.Compute(pool="reshape"))
    assert count_primitive(reshape, x, "select_and_scatter") == 0


@pytest.mark.parametrize(("kernel", "padding"), [(3, 1), (3, 0), (2, 0), (5, 2)])
def test_shifted_avg_pool_matches_xla(kernel, padding):
    """The shifted-sum average pool (zeros counted) and its gradient against
    ``reduce_window``'s, to float32 rounding, and it really traces no reduce_window."""
    x = jax.random.normal(jax.random.key(0), (2, 12, 11, 5))
    dy = jax.random.normal(
        jax.random.key(1), (2, 12 + 2 * padding - kernel + 1, 11 + 2 * padding - kernel + 1, 5)
    )
    runs = {}
    for pool in compute.POOLS:
        how = compute.Compute(pool=pool)
        f = lambda x, how=how: layers.avg_pool2d(x, kernel, 1, padding, how)  # noqa: E731
        out, vjp = jax.vjp(f, x)
        runs[pool] = (out, vjp(dy)[0], str(jax.make_jaxpr(jax.grad(lambda x, f=f: f(x).sum()))(x)))
    (want, want_dx, plain), (got, got_dx, shifted) = runs["xla"], runs["reshape"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_dx, want_dx, rtol=0, atol=1e-6)
    assert "reduce_window" in plain and "reduce_window" not in shifted


@pytest.mark.parametrize(("cin", "cout"), [(3, 7), (16, 24)])
@pytest.mark.parametrize(("kernel", "padding"), [(3, 0), (3, 1), (5, 2)])
def test_winograd_matches_xla(kernel, padding, cin, cout):
    """Winograd's F(4x4, r x r): output and both gradients against XLA's convolution,
    on 13x11 (no multiple of the tile: the last tiles are cropped), and the batched
    GEMM over the (4+r-1)^2 positions is what it traces."""
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, cin))
    k = jax.random.normal(jax.random.key(2), (kernel, kernel, cin, cout))
    assert winograd.applies("winograd", k.shape, 1, x.dtype, x.shape, padding)

    def conv(x, k):
        return winograd.conv2d_winograd(x, k, None, padding)

    def plain(x, k):
        return im2col.plain_conv(x, k, 1, padding)

    want, want_vjp = jax.vjp(plain, x, k)
    got, got_vjp = jax.vjp(conv, x, k)
    dy = jax.random.normal(jax.random.key(3), want.shape)
    pairs = [(conv(x, k), want), (got, want), *zip(got_vjp(dy), want_vjp(dy), strict=True)]
    for g, w in pairs:
        # the transforms' rounding: a few 1e-6 of the largest value (module docstring)
        assert g.shape == w.shape and np.abs(g - w).max() <= 1e-5 * np.abs(w).max()
    positions = (winograd.TILE[kernel] + kernel - 1) ** 2
    assert f"f32[{positions},{cin},{cout}]" in str(jax.make_jaxpr(conv)(x, k))


@pytest.mark.parametrize("r", sorted(winograd.TILE))
def test_winograd_transforms_give_the_correlation(r):
    """A^T ((G g) * (B^T d)) is the correlation of d with g, in float64, for random g, d."""
    m = winograd.TILE[r]
    at, g, bt = winograd.transforms(m, r)
    rng = np.random.default_rng(0)
    kernel, data = rng.normal(size=r), rng.normal(size=m + r - 1)
    want = np.correlate(data, kernel, mode="valid")
    np.testing.assert_allclose(at @ ((g @ kernel) * (bt @ data)), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("r", sorted(winograd.TILE))
def test_winograd_mix_is_the_plain_sum(r):
    """``_mix`` in ``lax`` ops traces to the jaxpr of the ``jnp`` operators' sum (the
    same program, cheaper to trace) and computes ``matrix @ parts``."""
    _, _, bt = winograd.transforms(winograd.TILE[r], r)
    parts = [jnp.full((2, 3), float(j + 1), jnp.float32) for j in range(len(bt))]

    def plain(*parts):
        out = []
        for row in bt:
            terms = [
                p * float(c) if c not in (1, -1) else (p if c == 1 else -p)
                for c, p in zip(row, parts, strict=True)
                if abs(c) > 1e-12
            ]
            out.append(sum(terms[1:], terms[0]))
        return out

    def mixed(*parts):
        return winograd._mix(bt, parts)

    assert str(jax.make_jaxpr(mixed)(*parts)) == str(jax.make_jaxpr(plain)(*parts))
    want = np.einsum("ij,jkl->ikl", bt, np.stack(parts))
    np.testing.assert_allclose(np.stack(mixed(*parts)), want, rtol=1e-6)


@pytest.mark.parametrize(
    ("form", "kernel", "stride", "dtype", "x", "padding", "runs"),
    [
        ("winograd", (5, 5, 8, 8), 1, jnp.float32, (2, 12, 12, 8), 0, True),
        ("winograd", (3, 3, 8, 8), 2, jnp.float32, (2, 12, 12, 8), 0, False),  # stride 2
        ("winograd", (3, 3, 8, 8), 1, jnp.bfloat16, (2, 12, 12, 8), 0, False),
        ("winograd", (3, 3, 1, 8), 1, jnp.float32, (2, 12, 12, 1), 0, False),  # one channel
        ("winograd", (1, 1, 8, 8), 1, jnp.float32, (2, 12, 12, 8), 0, False),  # no such F(m, 1)
        ("rows", (3, 3, 32, 64), 1, jnp.float32, (100, 26, 26, 32), 0, False),
        # auto: convnet's conv2 and resnet's 5x5 (enough work), not resnet's 3x3 16 -> 16
        # (too little) nor mnist_cnn's conv2 (a 14x14 output in 4x4 tiles: 1.31x covered)
        ("auto", (3, 3, 32, 64), 1, jnp.float32, (100, 26, 26, 32), 0, True),
        ("auto", (5, 5, 16, 32), 1, jnp.float32, (64, 12, 12, 16), 0, True),
        ("auto", (3, 3, 16, 16), 1, jnp.float32, (64, 12, 12, 16), 1, False),
        ("auto", (5, 5, 10, 20), 1, jnp.float32, (100, 14, 14, 10), 2, False),
        ("auto", (5, 5, 10, 20), 1, jnp.float32, (64, 12, 12, 10), 0, True),
    ],
)
def test_where_winograd_runs(form, kernel, stride, dtype, x, padding, runs):
    assert winograd.applies(form, kernel, stride, dtype, x, padding) == runs


@pytest.mark.parametrize(("n", "fan_in", "fan_out"), [(7, 2048, 10), (5, 84, 16), (4, 300, 17)])
def test_swapped_linear_matches_autodiff(n, fan_in, fan_out):
    """The Linear layer under ``linear="swapped"``: output and both gradients equal to
    ``nnx.Linear``'s (the same sums, so to float32 rounding); layers of at most
    dense.MAX_OUT outputs compute the kernel gradient as [out, in], wider ones as autodiff."""
    from jaxcnn.kernels import dense

    swapped = layers.Linear(fan_in, fan_out, compute=variant("swapped_linear"), rngs=nnx.Rngs(0))
    plain = layers.Linear(fan_in, fan_out, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (n, fan_in))
    dy = jax.random.normal(jax.random.key(2), (n, fan_out))

    def vjp(layer):
        graphdef, state = nnx.split(layer)
        y, pull = jax.vjp(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
        return y, pull(dy), state

    (y, (ds, dx), state), (y0, (ds0, dx0), _) = vjp(swapped), vjp(plain)
    np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, dx0, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree.leaves(ds), jax.tree.leaves(ds0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    graphdef = nnx.graphdef(swapped)
    pullback = jax.vjp(lambda s: nnx.merge(graphdef, s)(x), state)[1]
    jaxpr = str(jax.make_jaxpr(pullback)(dy))
    applies = fan_out <= dense.MAX_OUT
    assert dense.applies("swapped", (fan_in, fan_out)) == applies
    assert not dense.applies("xla", (fan_in, 10))
    # dy^T x ([out, in]) behind a barrier, so XLA cannot fold the transpose back into the dot
    # (autodiff's own jaxpr has the same product, without the barrier)
    assert ("optimization_barrier" in jaxpr) == applies
    if applies:
        assert f"f32[{fan_out},{fan_in}] = optimization_barrier" in jaxpr
