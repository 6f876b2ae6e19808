"""The parity package: the seeds' PyTorch models and the torch <-> Flax converter.

Importing it needs ``torch`` (the ``parity`` extra); ``jaxcnn`` itself does not.
The converter (and with it jax) is imported on first use, so a torch-only program
(``parity.torch_script``, ``parity.torch_models``) starts without jax.
"""

from __future__ import annotations

import importlib

__all__ = [
    "CheckpointError",
    "load_torch_checkpoint",
    "load_torch_params",
    "load_torch_state_dict",
    "to_torch_state_dict",
]


def __getattr__(name: str):
    """``parity.load_torch_checkpoint`` etc., from :mod:`parity.convert` when first asked."""
    if name in __all__:
        return getattr(importlib.import_module("parity.convert"), name)
    raise AttributeError(f"module 'parity' has no attribute {name!r}")
