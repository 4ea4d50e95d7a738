"""Fixtures for the bundled local model (a pytest plugin, loaded by tests/conftest.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from jupyter_llmchat._errors import ConfigurationError
from jupyter_llmchat._local._model import (
    LocalServer,
    check_installed,
    ensure_local_server,
    stop_local_server,
)


@pytest.fixture(scope="session")
def local_server() -> Iterator[LocalServer]:
    """The process-wide local gemma-3-270m server, started once for the whole test session."""
    try:
        check_installed()
    except ConfigurationError as exc:
        if os.environ.get("CI"):  # CI installs the extra: a skip there would hide a broken install
            pytest.fail(f"the extra 'local' is not installed: {exc.message}")
        pytest.skip(f"the extra 'local' is not installed: {exc.message}")
    server = ensure_local_server()
    yield server
    stop_local_server()
