"""Registers the ``redis_only`` marker when the chaos tests run on their own (tests/integration/conftest.py
registers it for the integration suite)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "redis_only: about Redis itself; runs on the Redis broker only "
                                       "(the docstring says why)")
