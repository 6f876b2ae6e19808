"""jaxcnn's models on their own (no torch): registry, shapes, init, layer semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn import UserError, models
from jaxcnn.models import layers

# Parameter counts from the seeds' layer sizes, e.g. mnist_cnn:
# conv1 1*10*25+10, conv2 10*20*25+20, out 980*10+10 = 260 + 5020 + 9810.
PARAM_COUNTS = {
    "mnist_cnn": 260 + 5020 + 9810,
    "cifar_cnn": (3 * 16 * 25 + 16) + (16 * 32 * 25 + 32) + (2048 * 10 + 10),
    "simple_cnn": 156 + 906 + 4850 + 510,
    "lenet5": 156 + 2416 + 48120 + 10164 + 850,
    "convnet": 320 + 18496 + 1179776 + 1290,
    "basic_cnn": 260 + 5020 + 3210,
    "inception": 97298,
    "resnet": 416 + 12832 + 2 * 2320 + 2 * 9248 + 5130,
    "blitz_net": 60 + 880 + 69240 + 10164 + 850,
    "mlp": 6280 + 72 + 90,
}
INPUT_SHAPES = {
    "mnist_cnn": (28, 28, 1),
    "cifar_cnn": (32, 32, 3),
    "lenet5": (32, 32, 1),
    "blitz_net": (32, 32, 1),
}


def test_registry_has_the_seed_models_and_mlp():
    assert list(models.MODELS) == list(PARAM_COUNTS)


def test_inception_count_by_hand():
    def incep(c):
        return (
            (c * 16 + 16) * 2
            + (16 * 24 * 25 + 24)
            + (c * 16 + 16)
            + (16 * 24 * 9 + 24)
            + (24 * 24 * 9 + 24)
            + (c * 24 + 24)
        )

    by_hand = 260 + (88 * 20 * 25 + 20) + incep(10) + incep(20) + 14090  # conv1, conv2, fc
    assert models.param_count(models.create("inception")) == by_hand
    assert PARAM_COUNTS["inception"] == by_hand  # the table the README's count is held to


@pytest.mark.parametrize("name", list(models.MODELS))
def test_shapes_and_parameter_counts(name):
    spec = models.get_spec(name)
    assert spec.input_shape == INPUT_SHAPES.get(name, (28, 28, 1))
    model = models.create(name, rngs=0)
    model.eval()
    out = model(jnp.zeros((3, *spec.input_shape)))
    assert out.shape == (3, 10) and out.dtype == jnp.float32
    assert models.param_count(model) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", ["simple_cnn", "convnet", "mlp"])
def test_log_softmax_outputs(name):
    model = models.create(name)
    model.eval()
    x = jax.random.normal(jax.random.key(0), (4, *models.get_spec(name).input_shape))
    np.testing.assert_allclose(jnp.exp(model(x)).sum(axis=1), 1.0, rtol=1e-5)


def test_torch_default_init_bounds():
    """U(+-1/sqrt(fan_in)) for weights and biases, spread over most of the range."""
    model = models.create("basic_cnn", rngs=0)
    for param, fan_in in [
        (model.conv2.kernel, 10 * 25),
        (model.conv2.bias, 10 * 25),
        (model.fc.kernel, 320),
    ]:
        values = np.asarray(param[...])
        bound = 1 / np.sqrt(fan_in)
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.9 * bound
        assert abs(values.std() - bound / np.sqrt(3)) < 0.15 * bound


def test_init_depends_on_seed():
    a = models.create("resnet", rngs=0).fc.kernel[...]
    b = models.create("resnet", rngs=1).fc.kernel[...]
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, models.create("resnet", rngs=0).fc.kernel[...])


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="unknown model 'alexnet'; choose one of: mnist_cnn, "):
        models.create("alexnet")


def test_wrong_input_shape_names_expected_hwc():
    model = models.create("lenet5")
    with pytest.raises(UserError, match=r"'lenet5' expects .*\(H, W, C\) = \(32, 32, 1\)"):
        model(jnp.zeros((2, 28, 28, 1)))


def test_nchw_input_gets_a_hint():
    model = models.create("cifar_cnn")
    with pytest.raises(UserError, match="looks like NCHW"):
        model(jnp.zeros((2, 3, 32, 32)))


def test_flatten_is_channel_major():
    x = jnp.arange(2 * 2 * 3).reshape(1, 2, 2, 3)  # [N, H, W, C]
    nchw = np.transpose(np.asarray(x), (0, 3, 1, 2)).reshape(1, -1)
    np.testing.assert_array_equal(layers.flatten_chw(x), nchw)


def test_avg_pool_counts_padding():
    """count_include_pad=True: a corner 3x3 window over ones averages 4/9, not 1."""
    out = layers.avg_pool2d(jnp.ones((1, 4, 4, 1)), kernel_size=3, stride=1, padding=1)
    assert out.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(out[0, 0, 0, 0], 4 / 9, rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 1, 0], 1.0, rtol=1e-6)


def test_inception_concatenates_88_channels():
    block = models.create("inception").incep1
    assert block(jnp.zeros((1, 12, 12, 10))).shape == (1, 12, 12, 88)


def test_models_jit():
    model = models.create("inception")
    model.eval()

    @nnx.jit
    def forward(m, x):
        return m(x)

    x = jnp.ones((2, 28, 28, 1))
    np.testing.assert_allclose(forward(model, x), model(x), rtol=1e-5, atol=1e-6)
