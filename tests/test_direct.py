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


@pytest.mark.parametrize(("n", "h", "w", "cin", "cout", "k", "padding"), SHAPES)
def test_values_and_gradients_match_xla(n, h, w, cin, cout, k, padding):
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (n, h, w, cin))
    kernel = jax.random.normal(keys[1], (k, k, cin, cout))
    bias = jax.random.normal(keys[2], (cout,))
    g = jax.random.normal(keys[3], xla_conv(x, kernel, padding).shape)

    def loss(conv):
        return lambda x, kernel, bias: jnp.vdot(jnp.tanh(conv(x, kernel, bias)), g)

    def want_conv(x, kernel, bias):
        return xla_conv(x, kernel, padding) + bias

    def got_conv(x, kernel, bias):
        return direct.conv2d_direct(x, kernel, bias, padding)

    args = (x, kernel, bias)
    np.testing.assert_allclose(
        jax.jit(got_conv)(*args), want_conv(*args), rtol=0, atol=2e-6 * k * k * cin
    )
    want = jax.grad(loss(want_conv), (0, 1, 2))(*args)
    got = jax.jit(jax.grad(loss(got_conv), (0, 1, 2)))(*args)
    for name, a, b in zip(("dx", "dW", "db"), got, want, strict=True):
        scale = float(jnp.abs(b).max())
        assert float(jnp.abs(a - b).max()) <= 1e-5 * scale, name


def custom_calls(name: str, patch_form: str) -> int:
    """How many direct-kernel calls the gradient of model ``name`` compiles to."""
    how = compute.Compute(conv="im2col", patch_form=patch_form)
    model = models.create(name, rngs=0, compute=how)
    model.eval()  # no dropout draws inside the traced function
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.zeros((4, *models.get_spec(name).input_shape))

    def loss(params):
        return nnx.merge(graphdef, params, rest)(x).sum()

    return jax.jit(jax.grad(loss)).lower(params).as_text().count("jaxcnn_direct_")


def test_auto_takes_the_direct_kernel_where_measured(monkeypatch):
    # resnet's first convolution (a forward and a dW: its dx is not needed) and its first
    # residual block's two (each a forward, a dx and a dW)
    assert custom_calls("resnet", "auto") == 8
    # convnet's first convolution: its forward and dW (its dx is not needed)
    assert custom_calls("convnet", "auto") == 2
    assert custom_calls("cifar_cnn", "auto") == 2  # conv1's forward and dW
    assert custom_calls("lenet5", "auto") == 0
    assert custom_calls("mnist_cnn", "auto") == 0  # its 1 -> 16 5x5 at padding 2
    assert custom_calls("resnet", "direct") > 8
    monkeypatch.setattr(direct, "AUTO", set())
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
