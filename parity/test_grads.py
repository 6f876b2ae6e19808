"""Gradients of each seed's loss w.r.t. every parameter agree with torch autograd.

Dropout is off on both sides (eval mode): the frameworks draw different random
masks, so train-mode gradients are compared through the dropout tests instead.
"""

import numpy as np
import pytest

from jaxcnn import models
from parity.harness import TORCH_DEVICE, jax_grads, make_pair, random_batch, torch_grads
from parity.tolerances import GRAD_ATOL, GRAD_RTOL_CPU, GRAD_RTOL_GPU

GRAD_RTOL = GRAD_RTOL_GPU if TORCH_DEVICE.type == "cuda" else GRAD_RTOL_CPU


@pytest.mark.parametrize("name", list(models.MODELS))
def test_gradients_match(name):
    kind = models.get_spec(name).recipe.loss
    torch_model, jax_model = make_pair(name)
    x, y = random_batch(name, 16, seed=3)
    t_loss, t_grads = torch_grads(torch_model, x, y, kind)
    j_loss, j_grads = jax_grads(jax_model, x, y, kind)
    assert abs(j_loss - t_loss) <= 1e-5 * max(1.0, abs(t_loss))
    assert j_grads.keys() == t_grads.keys()
    for key, expected in t_grads.items():
        scale = np.abs(expected).max()
        assert scale > 0, f"{key}: torch gradient is all zero, the test would be vacuous"
        err = np.abs(j_grads[key] - expected).max()
        assert err <= GRAD_RTOL * scale + GRAD_ATOL, (
            f"{key}: max |dg| {err:.3g} vs scale {scale:.3g}"
        )
