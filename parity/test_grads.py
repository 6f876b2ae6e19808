"""Gradients of each seed's loss w.r.t. every parameter agree with torch autograd.

Dropout is off on both sides (eval mode): the frameworks draw different random
masks, so train-mode gradients are compared through the dropout tests instead.
"""

import numpy as np
import pytest
import torch
from flax import nnx

from jaxcnn import models
from jaxcnn.objectives import seed_loss
from parity.convert import state_to_torch_layout
from parity.harness import (
    TORCH_DEVICE,
    as_jax,
    make_pair,
    random_batch,
    to_numpy,
    torch_input,
    torch_loss,
)
from parity.tolerances import GRAD_ATOL, GRAD_RTOL_CPU, GRAD_RTOL_GPU

GRAD_RTOL = GRAD_RTOL_GPU if TORCH_DEVICE.type == "cuda" else GRAD_RTOL_CPU


def jax_grads(model, x, y, kind):
    def loss_fn(m):
        return seed_loss(m(as_jax(x)), as_jax(y), kind)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    return float(loss), state_to_torch_layout(grads)


def torch_grads(model, x, y, kind):
    model.zero_grad()
    loss = torch_loss(model(torch_input(x)), torch.from_numpy(y).to(torch_input(x).device), kind)
    loss.backward()
    return loss.item(), {k: to_numpy(p.grad) for k, p in model.named_parameters()}


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
