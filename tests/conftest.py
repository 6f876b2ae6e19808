"""Every test runs offline: see ``tests.helpers.NO_NETWORK``."""

import pytest

from tests.helpers import NO_NETWORK


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    for name, value in NO_NETWORK.items():
        monkeypatch.setenv(name, value)
