"""pytest setup for ``pytest parity/``: full float32 precision on both sides."""

import pytest

from parity.harness import TORCH_DEVICE, full_float32_precision

full_float32_precision()


def pytest_report_header(config):
    import jax
    import torch

    return (
        f"parity: torch {torch.__version__} on {TORCH_DEVICE}, "
        f"jax {jax.__version__} on {jax.default_backend()}, float32 'highest' precision"
    )


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
