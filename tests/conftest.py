"""Shared fixtures: one fake OpenAI-compatible server per session, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from IPython.core.interactiveshell import InteractiveShell
from IPython.testing import globalipapp

from jupyter_llmchat import _sessions
from tests.fake_openai import FakeOpenAI, FakeOpenAIProcess

pytest_plugins = ["tests.conftest_local"]


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key in the developer's environment must not leak into the tests' requests."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake(_fake_server: FakeOpenAI) -> FakeOpenAI:
    """The session's fake server, with an empty script and request log."""
    _fake_server.reset()
    return _fake_server


@pytest.fixture
def fake_url(fake: FakeOpenAI) -> str:
    """``fake.base_url``: ``http://127.0.0.1:PORT/v1``."""
    return fake.base_url


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIProcess]:
    """A fake server in a process of its own (a kernel talks to it while the test waits), per module."""
    with FakeOpenAIProcess() as srv:
        yield srv


@pytest.fixture(scope="module")
def _ip() -> Iterator[InteractiveShell]:
    """The test IPython shell with the extension loaded; every session dropped at the module's end."""
    globalipapp.start_ipython()
    shell = globalipapp.get_ipython()
    shell.run_line_magic("load_ext", "jupyter_llmchat")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_llmchat")
    _sessions.registry.sessions.clear()
