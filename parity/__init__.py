"""The parity package: the seeds' PyTorch models and the torch <-> Flax converter.

Importing it needs ``torch`` (the ``parity`` extra); ``jaxcnn`` itself does not.
"""

from parity.convert import (
    CheckpointError,
    load_torch_checkpoint,
    load_torch_state_dict,
    to_torch_state_dict,
)

__all__ = [
    "CheckpointError",
    "load_torch_checkpoint",
    "load_torch_state_dict",
    "to_torch_state_dict",
]
