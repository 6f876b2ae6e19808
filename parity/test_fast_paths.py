"""The speed options keep parity: logits and gradients still match the seeds' torch models.

Every variant of ``jaxcnn.compute.VARIANTS`` that changes what a model traces (``fuse``,
``conv``, ``pool``) is an algebraically identical rewrite, so it is held to the same
tolerances as the plain form.
"""

import numpy as np
import pytest
import torch

from jaxcnn import compute, models
from parity.harness import (
    as_jax,
    jax_grads,
    make_pair,
    random_batch,
    to_numpy,
    torch_grads,
    torch_input,
)
from parity.test_grads import GRAD_RTOL
from parity.tolerances import GRAD_ATOL, LOGITS_ATOL
from tests.helpers import variant

# fuse changes only the models that have a fused form (InceptionA); conv="pallas_wgrad"
# runs off a GPU in Pallas's interpreter (tests.helpers.variant)
CASES = [(name, impl) for impl in ("im2col", "reshape_pool") for name in models.MODELS] + [
    ("mnist_cnn", "im2col_full"),
    ("inception", "im2col_full"),
    ("resnet", "im2col_full"),
    ("cifar_cnn", "im2col_full"),
    *[(name, "winograd") for name in models.MODELS],
    *[(name, "direct") for name in models.MODELS],
    *[(name, "swapped_linear") for name in models.MODELS],
    ("inception", "fused"),
    ("inception", "fused+im2col"),
    ("inception", "gemm_wgrad"),
    ("resnet", "gemm_wgrad"),
    ("convnet", "gemm_wgrad"),
    ("inception", "pallas_wgrad"),
    ("resnet", "pallas_wgrad"),
    ("convnet", "pallas_wgrad"),
]


def test_every_model_variant_is_held_against_torch():
    assert {impl for _, impl in CASES} == set(compute.model_variants())


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_speed_option_keeps_parity(name, impl):
    torch_model, jax_model = make_pair(name, seed=5, compute=variant(impl))
    x, y = random_batch(name, 16, seed=5)
    with torch.no_grad():
        expected = to_numpy(torch_model(torch_input(x)))
    np.testing.assert_allclose(np.asarray(jax_model(as_jax(x))), expected, rtol=0, atol=LOGITS_ATOL)
    kind = models.get_spec(name).recipe.loss
    t_loss, t_grads = torch_grads(torch_model, x, y, kind)
    j_loss, j_grads = jax_grads(jax_model, x, y, kind)
    assert abs(j_loss - t_loss) <= 1e-5 * max(1.0, abs(t_loss))
    assert j_grads.keys() == t_grads.keys()
    for key, want in t_grads.items():
        err = np.abs(j_grads[key] - want).max()
        assert err <= GRAD_RTOL * np.abs(want).max() + GRAD_ATOL, f"{key}: max |dg| {err:.3g}"
