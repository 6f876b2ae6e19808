"""The speed options keep parity: logits and gradients still match the seeds' torch models.

``fuse``, ``conv="im2col"`` and ``pool="reshape"`` (see jaxcnn.models.set_impl)
are algebraically identical rewrites, so they are held to the same tolerances as the plain form.
"""

import numpy as np
import pytest
import torch

from jaxcnn import models
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
from tests.helpers import pallas_interpreted  # noqa: F401 (fixture)

# conv="pallas_wgrad" off a GPU: its kernel in Pallas's interpreter
pytestmark = pytest.mark.usefixtures("pallas_interpreted")

# fuse changes only the models that have a fused form (InceptionA)
CASES = [(name, impl) for impl in ("im2col", "reshape_pool") for name in models.MODELS] + [
    ("inception", "fused"),
    ("inception", "fused+im2col"),
    ("inception", "gemm_wgrad"),
    ("resnet", "gemm_wgrad"),
    ("convnet", "gemm_wgrad"),
    ("inception", "pallas_wgrad"),
    ("resnet", "pallas_wgrad"),
    ("convnet", "pallas_wgrad"),
]


def test_every_speed_option_is_held_against_torch():
    assert {impl for _, impl in CASES} == set(models.SPEED_OPTIONS)


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_speed_option_keeps_parity(name, impl):
    torch_model, jax_model = make_pair(name, seed=5)
    models.set_impl(jax_model, **models.SPEED_OPTIONS[impl])
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
