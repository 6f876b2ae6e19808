"""jaxcnn: the classic PyTorch CNN tutorials, ported faithfully to Flax NNX."""

from jaxcnn.errors import UserError

__all__ = ["UserError"]
__version__ = "0.1.0"
