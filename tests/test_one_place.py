"""One place per rule (issue 17, item 2): where an exchange begins, whether an answer was free,
what the provider is. Each test is a case where copies of a rule once disagreed.

Chats against the fake server on 127.0.0.1; the views are the real ones (``HistoryView``,
``UsageReport``, the record's builders), read as text.
"""

from __future__ import annotations

import html
import json
from typing import Any

from jupyter_llmchat import Chat, chat_openai_compatible
from jupyter_llmchat._core._provider import OpenAICompatible
from jupyter_llmchat._core._turns import (
    ContentText,
    ContentToolRequest,
    ContentToolResult,
    Turn,
    call_line,
    exchange_end,
    exchanges,
    record_exchanges,
    short_arguments,
)
from jupyter_llmchat._core._usage import FREE, UsageRow
from jupyter_llmchat._jupyter._report import HistoryView, UsageReport
from jupyter_llmchat._record._metadata import session_record
from tests.fake_openai import FakeOpenAI, Reply


def _tool_history() -> list[Turn]:
    """Two exchanges; the first has a tool round whose results turn also carries a text (an
    untrusted record may hold one: it still answers the calls before it, it asks nothing)."""
    return [
        Turn.user("first question"),
        Turn("assistant", [ContentToolRequest("c1", "lookup", {"k": 1})], model="m"),
        Turn("user", [ContentToolResult("c1", "v"), ContentText("a note next to the result")]),
        Turn("assistant", [ContentText("first answer")], model="m"),
        Turn.user("second question"),
        Turn("assistant", [ContentText("second answer")], model="m"),
    ]


def test_every_view_cuts_exchanges_at_the_same_turns() -> None:
    turns = _tool_history()
    assert [len(ex) for ex in exchanges(turns)] == [4, 2]
    assert [len(ex) for ex in record_exchanges([t.to_dict() for t in turns])] == [4, 2]
    assert exchange_end(turns, 0) == 4


def test_chat_history_n_never_starts_at_a_tool_results_turn() -> None:
    chat = chat_openai_compatible(base_url="http://127.0.0.1:9/v1", model="m")
    chat.set_turns(_tool_history())
    view = HistoryView("default", chat, last=2)
    assert view.turns[0].text == "first question"  # the two exchanges whole
    assert repr(HistoryView("default", chat, last=1)).startswith("[user] second question")


def _free_chat(fake: FakeOpenAI, **kw: Any) -> Chat:
    return Chat(OpenAICompatible(base_url=fake.base_url, model="test-model", params=None,
                                 api_args=None, api_headers=None, credentials=None, **kw))


def test_free_is_what_the_provider_says_not_its_name(fake: FakeOpenAI) -> None:
    fake.default_reply = Reply(text="ok", usage={"prompt_tokens": 3, "completion_tokens": 4})
    free = _free_chat(fake, name="my own llama server", price_provider=FREE)
    named = _free_chat(fake, name="llama.cpp (local)")  # the bundled model's name, not its provider
    free.chat("hi")
    named.chat("hi")
    answer = free.last_turn()
    assert answer is not None and answer.free and answer.to_dict()["free"] is True
    assert Turn.from_dict(answer.to_dict()).free
    other = named.last_turn()
    assert other is not None and not other.free and "free" not in other.to_dict()
    rows = {r.provider: r for r in UsageReport({"a": free, "b": named}).rows}
    assert rows["my own llama server"].free and not rows["llama.cpp (local)"].free
    text = repr(UsageReport({"a": free, "b": named}))
    assert "$0, local" in text
    # The record keeps the flag on the answer (DESIGN §6: an additive field, only where true).
    assert session_record(free)["turns"][1]["free"] is True
    assert "free" not in session_record(named)["turns"][1]
    merged = UsageRow("", "")
    for r in rows.values():
        merged.merge(r)
    assert not merged.free  # a total is free only when every answer in it is


def test_one_provider_description_in_the_record_and_to_json() -> None:
    chat = chat_openai_compatible(base_url="http://127.0.0.1:9/v1?key=s", model="m")
    described = chat.provider.describe()
    assert described == {"name": "OpenAI-compatible", "base_url": "http://127.0.0.1:9/v1",
                         "model": "m"}
    assert session_record(chat)["provider"] == described
    assert json.loads(chat.to_json())["provider"] == described


def test_a_call_is_cut_alike_in_the_echo_and_the_views(
    fake: FakeOpenAI, capsys: Any
) -> None:
    """The echo cut arguments at 80 characters with "...", the views at 60 with "…"."""
    from jupyter_llmchat._jupyter._display import tool_line

    arguments = {"text": "x" * 200}
    call = {"id": "c1", "type": "function",
            "function": {"name": "echo", "arguments": json.dumps(arguments)}}
    fake.script(Reply(text="", tool_calls=[call], finish_reason="tool_calls"), Reply(text="ok"))

    def echo(text: str) -> str:
        """Say it back."""
        return text

    chat = chat_openai_compatible(base_url=fake.base_url, model="test-model")
    chat.register_tool(echo)
    chat.chat("go", echo="all")
    short = short_arguments(arguments)
    assert len(short) == 60 and short.endswith("…")
    assert f"[tool call] echo({short})\n" in capsys.readouterr().out
    history = repr(HistoryView("default", chat))
    assert f"[tool] {call_line('echo', arguments, chat.get_turns()[2].tool_results[0])}" in history
    assert f"echo({short}) → ok" in history
    assert html.escape(short) in tool_line("echo", arguments, "x", None, 0.1)
