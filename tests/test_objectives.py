"""The seeds' losses and optimizers in jaxcnn.objectives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import UserError
from jaxcnn.objectives import make_optimizer, seed_loss


def test_cross_entropy_and_nll_agree_on_log_softmax():
    logits = jax.random.normal(jax.random.key(0), (8, 10))
    labels = jnp.arange(8) % 10
    ce = seed_loss(logits, labels, "cross_entropy")
    nll = seed_loss(jax.nn.log_softmax(logits), labels, "nll")
    np.testing.assert_allclose(ce, nll, rtol=1e-6)
    by_hand = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(8), np.arange(8)])
    np.testing.assert_allclose(ce, by_hand, rtol=1e-6)


def test_sgd_momentum_matches_torch_formula():
    """buf = m*buf + g; p -= lr*buf (torch.optim.SGD, dampening 0)."""
    tx = make_optimizer("sgd", 0.1, 0.5)
    params = jnp.zeros(2)
    state = tx.init(params)
    g = jnp.array([1.0, -2.0])
    u1, state = tx.update(g, state, params)
    u2, state = tx.update(g, state, params)
    np.testing.assert_allclose(u1, -0.1 * g)
    np.testing.assert_allclose(u2, -0.1 * (0.5 * g + g))


def test_unknown_names():
    with pytest.raises(UserError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", 0.1)
    with pytest.raises(UserError, match="unknown loss 'mse'"):
        seed_loss(jnp.zeros((1, 10)), jnp.zeros(1, int), "mse")
