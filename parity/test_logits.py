"""Logits agree between the seeds' PyTorch models and jaxcnn, for every model."""

import numpy as np
import pytest
import torch

from jaxcnn import models
from parity.harness import as_jax, make_pair, random_batch, to_numpy, torch_input
from parity.tolerances import LOGITS_ATOL

ALL_MODELS = list(models.MODELS)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_match(name, batch_size):
    torch_model, jax_model = make_pair(name, seed=batch_size)
    x, _ = random_batch(name, batch_size, seed=batch_size)
    with torch.no_grad():
        expected = to_numpy(torch_model(torch_input(x)))
    got = np.asarray(jax_model(as_jax(x)))
    assert got.shape == expected.shape == (batch_size, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_logits_are_not_trivially_equal(name):
    """Guard against a vacuous pass: different weights must give different logits."""
    torch_model, _ = make_pair(name, seed=0)
    _, other = make_pair(name, seed=1)
    x, _ = random_batch(name, 4)
    with torch.no_grad():
        expected = to_numpy(torch_model(torch_input(x)))
    assert np.abs(np.asarray(other(as_jax(x))) - expected).max() > 100 * LOGITS_ATOL


def test_flatten_order_matters():
    """The C,H,W flatten is load-bearing: an H,W,C flatten would break parity."""
    from jaxcnn.models import layers

    torch_model, jax_model = make_pair("basic_cnn")
    x, _ = random_batch("basic_cnn", 8)
    with torch.no_grad():
        expected = to_numpy(torch_model(torch_input(x)))
    original = layers.flatten_chw
    try:
        import jaxcnn.models.lenet as lenet

        lenet.flatten_chw = lambda a: a.reshape(a.shape[0], -1)  # the classic porting bug
        wrong = np.asarray(jax_model(as_jax(x)))
    finally:
        lenet.flatten_chw = original
    assert np.abs(wrong - expected).max() > 100 * LOGITS_ATOL
