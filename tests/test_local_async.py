"""The bundled model's provider on an event loop: nothing it does blocks the loop.

The server is the fake one here (a ``LocalProvider`` pointed at it): what is under test is how
the provider asks the server (the context fit, the request) from ``chat_async`` and
``stream_async``. The server's start, which takes seconds, is tested against the real model in a
fresh process (``test_starting_the_local_model_does_not_block_the_loop``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from jupyter_llmchat import Chat, params
from jupyter_llmchat._errors import ConfigurationError
from jupyter_llmchat._local._model import LocalProvider, check_installed
from jupyter_llmchat._core._turns import ContentText, Turn
from tests.fake_openai import FakeOpenAI, Reply

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class FakeBackedLocal(LocalProvider):
    """The bundled model's provider, its server the fake one (already running)."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self._server_url = base_url

    def start(self, on_status: Callable[[str], None] | None = None) -> str:
        self.base_url = self._server_url
        return self.base_url


def _history(n: int) -> list[Turn]:
    turns: list[Turn] = []
    for i in range(n):
        turns += [Turn("user", [ContentText(f"question {i}")]),
                  Turn("assistant", [ContentText(f"answer {i}")])]
    return turns


async def _ticks_while(coro: Awaitable[T]) -> tuple[int, T]:
    """Run ``coro`` while a task ticks every 10 ms; the ticks counted until it is done."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0)  # the ticker is waiting: it ticks whenever the loop is free
    try:
        result = await coro
    finally:
        ticker.cancel()
    return ticks, result


async def test_the_context_fit_does_not_block_the_loop(fake: FakeOpenAI) -> None:
    fake.configure({"fit": {"drop": 0, "delay": 1.0}})
    fake.script(Reply(text="Hi there"))
    chat = Chat(FakeBackedLocal(fake.base_url))
    ticks, text = await _ticks_while(chat.chat_async("Hello"))
    assert text == "Hi there"
    paths = [r.path for r in fake.requests]
    assert paths == ["/extras/jupyter-llmchat/fit", "/v1/chat/completions"]
    # The fit answered after 1 s: a loop left free ticked all along (about 100 times).
    assert ticks >= 20


async def test_the_context_fit_does_not_block_a_stream(fake: FakeOpenAI) -> None:
    fake.configure({"fit": {"drop": 0, "delay": 1.0}})
    fake.script(Reply(text="Hi there"))
    chat = Chat(FakeBackedLocal(fake.base_url))

    async def read() -> str:
        return "".join([piece async for piece in chat.stream_async("Hello")])

    ticks, text = await _ticks_while(read())
    assert text == "Hi there"
    assert ticks >= 20


async def test_the_async_fit_leaves_the_oldest_exchanges_out(fake: FakeOpenAI) -> None:
    fake.configure({"fit": {"drop": 2, "n_ctx": 4096}})
    fake.script(Reply(text="Third"))
    chat = Chat(FakeBackedLocal(fake.base_url), system_prompt="Be brief.", turns=_history(2))
    stream = chat.stream_async("question 2")
    assert "".join([piece async for piece in stream]) == "Third"
    sent = fake.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in sent] == ["Be brief.", "question 1", "answer 1", "question 2"]
    assert stream.user_turn is not None
    assert "1 oldest exchange left out" in stream.user_turn.meta["context_note"]
    assert len(chat.get_turns()) == 6  # the history keeps every turn; only the request is cut


async def test_a_tool_round_sends_the_fitted_conversation_again(fake: FakeOpenAI) -> None:
    fake.configure({"fit": {"drop": 2, "n_ctx": 4096}})
    call = {"id": "call_1", "type": "function",
            "function": {"name": "double", "arguments": '{"x": 2}'}}
    fake.script(Reply(text="", tool_calls=[call], finish_reason="tool_calls"), Reply(text="4"))
    chat = Chat(FakeBackedLocal(fake.base_url), turns=_history(2))

    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    chat.register_tool(double)
    assert await chat.chat_async("double 2", params=params(max_tokens=16)) == "4"
    first, second = (r.body["messages"] for r in fake.chat_requests())
    assert [m["content"] for m in first] == ["question 1", "answer 1", "double 2"]
    assert [m.get("content") for m in second[:3]] == ["question 1", "answer 1", "double 2"]
    assert [m["role"] for m in second[3:]] == ["assistant", "tool"]
    # The fit is asked once per exchange, as in the sync path.
    assert sum(r.path.endswith("/fit") for r in fake.requests) == 1


def test_the_sync_path_fits_as_before(fake: FakeOpenAI) -> None:
    fake.configure({"fit": {"drop": 2, "n_ctx": 4096}})
    fake.script(Reply(text="Third"))
    chat = Chat(FakeBackedLocal(fake.base_url), turns=_history(2))
    stream = chat.stream("question 2")
    assert "".join(stream) == "Third"
    sent = fake.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in sent] == ["question 1", "answer 1", "question 2"]
    assert stream.user_turn is not None and "context_note" in stream.user_turn.meta


_START_SCRIPT = """
import asyncio
from jupyter_llmchat import Chat, params
from jupyter_llmchat._local._model import _slot, local_provider

async def main():
    chat = Chat(local_provider(params=params(max_tokens=2, temperature=0)))
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            if _slot.server is None:  # the server is still starting
                ticks += 1

    ticker = asyncio.ensure_future(tick())
    await asyncio.sleep(0)
    await chat.chat_async("Hello")
    ticker.cancel()
    assert _slot.server is not None and _slot.server.running
    print("TICKS", ticks)

asyncio.run(main())
"""


@pytest.mark.realmodel
def test_starting_the_local_model_does_not_block_the_loop() -> None:
    try:
        check_installed()
    except ConfigurationError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the extra 'local' is not installed: {exc.message}")
        pytest.skip(f"the extra 'local' is not installed: {exc.message}")
    # A fresh process: its first question starts a server of its own (this one's may run).
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", _START_SCRIPT], env=dict(os.environ, PYTHONPATH=path),
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ticks = int(done.stdout.split("TICKS")[-1])
    # Starting takes seconds; a blocked loop would not have ticked once before it was up.
    assert ticks >= 10
