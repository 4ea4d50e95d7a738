"""Shared fixtures: one fake OpenAI-compatible server per session, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fake_openai import FakeOpenAI

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
