"""The seeds' losses and optimizers, named as the recipes name them.

Kept apart from the trainer so the parity tests hold exactly these functions
against ``torch.nn.functional`` and ``torch.optim``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxcnn.errors import UserError

LOSSES = ("cross_entropy", "nll")
OPTIMIZERS = ("sgd", "adam")


def seed_loss(outputs: jax.Array, labels: jax.Array, kind: str) -> jax.Array:
    """Mean loss over the batch, as the seeds compute it.

    Args:
        outputs: [N, 10] logits (``cross_entropy``: ``nn.CrossEntropyLoss``) or
            log-probabilities (``nll``: ``F.nll_loss`` after ``log_softmax``).
        labels: [N] integer class labels.
        kind: ``'cross_entropy'`` or ``'nll'``.
    """
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(outputs, labels).mean()
    if kind == "nll":
        return -jnp.take_along_axis(outputs, labels[:, None], axis=1).mean()
    raise UserError(f"unknown loss '{kind}'; choose one of: {', '.join(LOSSES)}")


def make_optimizer(name: str, lr: float, momentum: float = 0.0) -> optax.GradientTransformation:
    """The optax twin of the seeds' ``torch.optim`` optimizer.

    ``optax.sgd(momentum=m)`` keeps ``t = m*t + g`` and steps ``-lr*t``, exactly
    ``torch.optim.SGD(lr, momentum=m)`` (dampening 0, no Nesterov);
    ``optax.adam`` has torch's defaults (0.9, 0.999, eps=1e-8 outside the sqrt).
    """
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    raise UserError(f"unknown optimizer '{name}'; choose one of: {', '.join(OPTIMIZERS)}")
