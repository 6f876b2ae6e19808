"""The direct convolution kernel (jaxcnn/kernels/direct.py): its values and gradients
against XLA's convolution, where ``auto`` takes it, and what a user sees when it cannot
be built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import UserError, compute, models
from jaxcnn.kernels import direct

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not direct.available(), reason="a CPU kernel, built here"
)


def xla_conv(x, kernel, padding):
    pads = [(padding, padding)] * 2
    numbers = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=numbers)


# (batch, height, width, in, out, kernel size, padding): resnet's and convnet's shapes,
# rows in one block (11, 7, 5 wide), rows whose last block is narrower (26 wide: 12 + 12
# + 2 at 32 outputs; 19: 16 + 3), one image, 3 and 1 input channels (dx by XLA), 32 and
# 64 outputs (two and four vector blocks), and weight gradients that take 9, 5 and 1 taps
# at a time.
SHAPES = [
    (3, 12, 12, 16, 16, 3, 1),
    (2, 13, 11, 16, 16, 3, 1),
    (1, 9, 7, 1, 32, 3, 0),
    (2, 10, 10, 3, 64, 5, 2),
    (2, 6, 5, 32, 32, 3, 1),
    (2, 8, 8, 16, 48, 1, 0),
    (2, 12, 12, 1, 16, 5, 0),
    (2, 9, 9, 2, 16, 3, 1),
    (2, 6, 6, 16, 16, 3, 2),
    (1, 4, 28, 1, 32, 3, 0),
    (1, 3, 19, 16, 16, 3, 1),
]


# Winograd's form F(4x4, r x r): cifar_cnn's conv2, whole and partial tiles (13 x 11 and
# 7 wide at 3x3, 10 -> 6 at 5x5), padding 0-2, 32 and 64 outputs (and dx's 32 and 16).
WINOGRAD_SHAPES = [
    (2, 16, 16, 16, 32, 5, 2),
    (2, 13, 11, 16, 16, 3, 1),
    (1, 9, 7, 32, 16, 3, 0),
    (2, 10, 10, 16, 64, 5, 0),
    (2, 6, 6, 16, 16, 3, 2),
]


@pytest.mark.parametrize(("n", "h", "w", "cin", "cout", "k", "padding"), SHAPES)
def test_values_and_gradients_match_xla(n, h, w, cin, cout, k, padding):
    check_against_xla(direct.conv2d_direct, (n, h, w, cin), (k, k, cin, cout), padding)


@pytest.mark.parametrize(("n", "h", "w", "cin", "cout", "k", "padding"), WINOGRAD_SHAPES)
def test_winograd_values_and_gradients_match_xla(n, h, w, cin, cout, k, padding):
    # a linear loss, as tests/test_fast_paths.py holds Winograd's XLA form: under tanh a
    # large output's transform rounding (a few 1e-6 of it) is a larger share of its gradient
    check_against_xla(
        direct.conv2d_winograd, (n, h, w, cin), (k, k, cin, cout), padding, squash=lambda y: y
    )


def check_against_xla(conv, x_shape, kernel_shape, padding, squash=jnp.tanh):
    """y, dx, dW and db of ``conv(x, kernel, bias, padding)`` against XLA's convolution,
    under the loss <squash(y), g>."""
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], x_shape)
    kernel = jax.random.normal(keys[1], kernel_shape)
    bias = jax.random.normal(keys[2], kernel_shape[-1:])
    g = jax.random.normal(keys[3], xla_conv(x, kernel, padding).shape)

    def loss(conv):
        return lambda x, kernel, bias: jnp.vdot(squash(conv(x, kernel, bias)), g)

    def want_conv(x, kernel, bias):
        return xla_conv(x, kernel, padding) + bias

    def got_conv(x, kernel, bias):
        return conv(x, kernel, bias, padding)

    args = (x, kernel, bias)
    k, cin = kernel_shape[0], kernel_shape[2]
    np.testing.assert_allclose(
        jax.jit(got_conv)(*args), want_conv(*args), rtol=0, atol=2e-6 * k * k * cin
    )
    want = jax.grad(loss(want_conv), (0, 1, 2))(*args)
    got = jax.jit(jax.grad(loss(got_conv), (0, 1, 2)))(*args)
    for name, a, b in zip(("dx", "dW", "db"), got, want, strict=True):
        scale = float(jnp.abs(b).max())
        assert float(jnp.abs(a - b).max()) <= 1e-5 * scale, name


def custom_calls(name: str, patch_form: str, kind: str = "") -> int:
    """How many of the kernel library's calls (``kind``: ``"forward"``, ``"wgrad"``,
    ``"winograd"``; all by default) the gradient of model ``name`` compiles to."""
    how = compute.Compute(conv="im2col", patch_form=patch_form)
    model = models.create(name, rngs=0, compute=how)
    model.eval()  # no dropout draws inside the traced function
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.zeros((4, *models.get_spec(name).input_shape))

    def loss(params):
        return nnx.merge(graphdef, params, rest)(x).sum()

    return jax.jit(jax.grad(loss)).lower(params).as_text().count(f"jaxcnn_direct_{kind}")


def test_auto_takes_the_kernels_where_measured(monkeypatch):
    # The direct kernel: resnet's, convnet's and cifar_cnn's first convolutions, each a
    # forward and a dW (a first layer's dx is not needed).
    for name in ("resnet", "convnet", "cifar_cnn"):
        assert custom_calls(name, "auto", "forward") == custom_calls(name, "auto", "wgrad") == 1
    # Winograd's form (a forward, a dx and a dU each): resnet's first residual block's
    # two convolutions and its conv2, convnet's conv2, cifar_cnn's conv2.
    assert custom_calls("resnet", "auto", "winograd") == 9
    assert custom_calls("convnet", "auto", "winograd") == 3
    assert custom_calls("cifar_cnn", "auto", "winograd") == 3
    assert custom_calls("lenet5", "auto") == 0
    assert custom_calls("mnist_cnn", "auto") == 0
    assert custom_calls("resnet", "direct") > 11  # its second residual block's too
    monkeypatch.setattr(direct, "AUTO", set())
    monkeypatch.setattr(direct, "WINOGRAD_AUTO", set())
    assert custom_calls("resnet", "auto") == 0


def test_the_library_is_built_once(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = direct.build()
    assert path.parent == tmp_path / "jaxcnn" / "kernels"
    stamp = path.stat().st_mtime_ns
    assert direct.build() == path and path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no scratch left behind


@pytest.mark.parametrize(
    ("cxx", "message"),
    [("/nonexistent/c++", "no C++ compiler (/nonexistent/c++)"), ("false", "did not compile")],
)
def test_a_failed_build_is_one_sentence(monkeypatch, tmp_path, cxx, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", cxx)
    with pytest.raises(OSError, match="direct convolution kernel") as caught:
        direct.build()
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not list((tmp_path / "jaxcnn" / "kernels").glob("*.so"))


def test_auto_keeps_xla_forms_where_the_kernel_did_not_build(monkeypatch):
    monkeypatch.setattr(direct, "_loaded", lambda: (("", ""), "no C++ compiler (c++)"))
    assert custom_calls("resnet", "auto") == 0
    assert custom_calls("resnet", "direct") == 0  # a Compute made without resolve()


def test_direct_is_refused_where_it_cannot_run(monkeypatch):
    asked = {"conv": "im2col", "patch_form": "direct"}
    with pytest.raises(UserError, match="CPU kernel and this backend is gpu"):
        compute.resolve(asked, backend="gpu")
    monkeypatch.setattr(direct, "unavailable", lambda: "no C++ compiler (c++)")
    with pytest.raises(UserError, match="cannot run here: no C.. compiler"):
        compute.resolve(asked, backend="cpu")
    assert not direct.applies("direct", (3, 3, 16, 16), 1, jnp.float32, 1)


def test_the_kernel_takes_only_what_it_computes():
    f32 = jnp.float32
    assert direct.applies("direct", (3, 3, 16, 16), 1, f32, 2)
    assert not direct.applies("direct", (3, 3, 16, 16), 1, f32, 3)  # dx would crop
    assert not direct.applies("direct", (1, 1, 16, 16), 1, f32, 1)
    assert not direct.applies("direct", (3, 5, 16, 16), 1, f32, 1)  # not square
    assert not direct.applies("direct", (3, 3, 16, 24), 1, f32, 1)  # 24 outputs
    assert not direct.applies("direct", (3, 3, 16, 16), 2, f32, 1)  # stride 2
    assert not direct.applies("direct", (3, 3, 16, 16), 1, jnp.bfloat16, 1)
    assert not direct.applies("auto", (3, 3, 16, 16), 1, f32, 0)  # not measured
