"""Optimizer steps with the seeds' hyperparameters agree: optax vs torch.optim.

Three steps are taken so SGD's momentum buffer and Adam's moments and bias
correction are all exercised. Two comparisons:

* ``shared``: both optimizers are fed the very same gradient arrays (torch's),
  so the test isolates the optimizer arithmetic. This is the Adam comparison:
  Adam divides by sqrt(v), so an entry whose gradient is near eps (1e-8) turns
  float32 autograd noise (bounded by ``test_grads``) into steps of up to lr.
* ``own``: each framework steps on its own autograd gradients, the whole
  training step end to end. SGD is linear in the gradient, so this stays tight.
"""

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jaxcnn import models
from jaxcnn.objectives import make_optimizer, seed_loss
from parity.convert import to_flax_value, to_numpy_state_dict
from parity.harness import (
    TORCH_DEVICE,
    as_jax,
    make_pair,
    random_batch,
    to_numpy,
    torch_input,
    torch_loss,
    torch_optimizer,
)
from parity.tolerances import PARAM_ULPS, STEP_RTOL

EPS32 = float(np.finfo(np.float32).eps)
# The seeds' two optimizers with their hyperparameters (seed 003 SGD, seed 002 Adam).
SEED_OPTIMIZERS = {"sgd": (0.01, 0.5), "adam": (0.001, 0.0)}
STEPS = 3


def run_torch(model, opt_name, batches, kind):
    """Steps torch; returns the final params and each step's gradients (torch layout)."""
    lr, momentum = SEED_OPTIMIZERS[opt_name]
    opt = torch_optimizer(opt_name, model.parameters(), lr, momentum)
    grads = []
    for x, y in batches:
        opt.zero_grad()
        torch_loss(model(torch_input(x)), torch.from_numpy(y).to(TORCH_DEVICE), kind).backward()
        grads.append({k: to_numpy(p.grad).copy() for k, p in model.named_parameters()})
        opt.step()
    return {k: to_numpy(v) for k, v in model.state_dict().items()}, grads


def run_jax(model, opt_name, batches, kind, shared_grads=None):
    """Steps optax on jaxcnn's own gradients, or on ``shared_grads`` when given."""
    from parity.convert import path_to_torch_key

    lr, momentum = SEED_OPTIMIZERS[opt_name]
    tx = make_optimizer(opt_name, lr, momentum)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)
    for step, (x, y) in enumerate(batches):
        if shared_grads is None:

            def loss_fn(p, x=x, y=y):
                return seed_loss(nnx.merge(graphdef, p, rest)(as_jax(x)), as_jax(y), kind)

            grads = jax.grad(loss_fn)(params)
        else:
            given = shared_grads[step]
            grads = jax.tree_util.tree_map_with_path(
                lambda path, _, given=given: as_jax(
                    to_flax_value(
                        given[path_to_torch_key(tuple(k.key for k in path if hasattr(k, "key")))]
                    )
                ),
                params,
            )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    nnx.update(model, params)
    return to_numpy_state_dict(model)


CASES = [("sgd", "own"), ("sgd", "shared"), ("adam", "shared")]


@pytest.mark.parametrize(("opt_name", "grads_from"), CASES)
@pytest.mark.parametrize("name", list(models.MODELS))
def test_optimizer_steps_match(name, opt_name, grads_from):
    kind = models.get_spec(name).recipe.loss
    torch_model, jax_model = make_pair(name)
    before = {k: to_numpy(v).copy() for k, v in torch_model.state_dict().items()}
    batches = [random_batch(name, 8, seed=s) for s in range(STEPS)]
    expected, torch_grads = run_torch(torch_model, opt_name, batches, kind)
    shared = torch_grads if grads_from == "shared" else None
    got = run_jax(jax_model, opt_name, batches, kind, shared_grads=shared)
    for key, want in expected.items():
        scale = np.abs(want - before[key]).max()
        assert scale > 0, f"{key}: the torch step did not move this parameter"
        err = np.abs(got[key] - want).max()
        bound = STEP_RTOL * scale + PARAM_ULPS * EPS32 * np.abs(want).max()
        assert err <= bound, f"{key}: max |dp| {err:.3g} > {bound:.3g} (step size {scale:.3g})"
