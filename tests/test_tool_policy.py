"""Tool policy hooks (DESIGN §1): ``on_tool_request`` / ``on_tool_result`` and their removers,
``ToolRejectError`` from a callback, MCP's annotations on ``Tool``, each result's status and
duration (in the turns, ``to_json`` and the notebook record), and sync tools of different
prompts running at once under ``parallel_chat``.

Against the fake server: the assertions are on what it received and on the recorded turns."""

from __future__ import annotations

import json
import threading
import time

import pytest

import jupyter_llmchat
from jupyter_llmchat import (
    Chat,
    ConfigurationError,
    ContentToolRequest,
    ContentToolResult,
    LLMChatError,
    Tool,
    ToolRejectError,
    Turn,
    parallel_chat_text,
)
from jupyter_llmchat._record._metadata import bounded_turn, validate_record
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import new_chat
from tests.test_tools import call, tool_reply


def lookup(q: str) -> str:
    """Look q up."""
    return q.upper()


def tool_messages(fake: FakeOpenAI) -> list[dict[str, object]]:
    body = fake.chat_requests()[-1].body
    return [m for m in body["messages"] if m["role"] == "tool"]


def results_of(chat: Chat) -> list[ContentToolResult]:
    return [c for t in chat.get_turns() for c in t.contents if isinstance(c, ContentToolResult)]


def test_tool_reject_error_is_one_of_the_package_errors() -> None:
    from jupyter_llmchat import _errors
    from jupyter_llmchat._core import _tools

    assert jupyter_llmchat.ToolRejectError is _errors.ToolRejectError is _tools.ToolRejectError
    assert issubclass(ToolRejectError, LLMChatError)
    assert "ToolRejectError" in jupyter_llmchat.__all__


def test_a_request_callback_sees_the_call_and_its_tool_and_can_refuse_it(
    fake: FakeOpenAI, fake_url: str
) -> None:
    ran: list[str] = []

    def tool(q: str) -> str:
        """Look q up."""
        ran.append(q)
        return q

    fake.script(tool_reply(call("c1", "tool", {"q": "secret"}), call("c2", "tool", {"q": "ok"})),
                Reply(text="done"))
    chat = new_chat(fake_url)
    chat.register_tool(tool)
    seen: list[ContentToolRequest] = []

    def policy(request: ContentToolRequest) -> None:
        seen.append(request)
        if request.arguments["q"] == "secret":
            raise ToolRejectError("not that one")

    chat.on_tool_request(policy)
    assert chat.chat("Look both up.") == "done"
    assert ran == ["ok"]  # the refused call never ran
    assert [r.name for r in seen] == ["tool", "tool"]
    assert all(isinstance(r.tool, Tool) and r.tool.name == "tool" for r in seen)
    sent = tool_messages(fake)
    assert sent[0] == {"role": "tool", "tool_call_id": "c1",
                       "content": "Tool call rejected. not that one"}
    assert sent[1]["content"] == "ok"
    refused, ok = results_of(chat)
    assert (refused.status, refused.duration) == ("refused", None)
    assert ok.status == "ok" and ok.duration is not None and ok.duration >= 0
    # The tool travels on the callback's copy only: the recorded request is plain data.
    recorded = chat.get_turns()[1].contents[0]
    assert isinstance(recorded, ContentToolRequest) and recorded.tool is None


def test_removers_unregister_and_result_callbacks_hear_every_outcome(
    fake: FakeOpenAI, fake_url: str
) -> None:
    def fails(q: str) -> str:
        """Fail."""
        raise ValueError("boom")

    chat = new_chat(fake_url)
    chat.register_tool(lookup)
    chat.register_tool(fails)
    heard: list[tuple[str, str | None]] = []
    remove_result = chat.on_tool_result(lambda r: heard.append((r.id, r.status)))
    remove_request = chat.on_tool_request(lambda r: (_ for _ in ()).throw(ToolRejectError("no")))
    fake.script(tool_reply(call("a", "lookup", {"q": "x"})), Reply(text="1"))
    chat.chat("one")
    assert heard == [("a", "refused")]
    remove_request()
    remove_request()  # a second call does nothing
    fake.script(tool_reply(call("b", "lookup", {"q": "x"}), call("c", "fails", {"q": "y"})),
                Reply(text="2"))
    chat.chat("two")
    assert heard[1:] == [("b", "ok"), ("c", "error")]
    remove_result()
    fake.script(tool_reply(call("d", "lookup", {"q": "x"})), Reply(text="3"))
    chat.chat("three")
    assert len(heard) == 3


def test_a_callback_that_fails_refuses_the_call_and_a_result_callback_loses_nothing(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = new_chat(fake_url)
    chat.register_tool(lookup)
    chat.on_tool_request(lambda r: 1 / 0)
    chat.on_tool_result(lambda r: [][1])
    fake.script(tool_reply(call("a", "lookup", {"q": "x"})), Reply(text="after"))
    assert chat.chat("go") == "after"
    (result,) = results_of(chat)
    assert result.status == "refused" and "ZeroDivisionError" in (result.error or "")
    assert "on_tool_result callback failed" in capsys.readouterr().err
    assert len(chat.get_turns()) == 4


async def test_callbacks_run_under_chat_async_and_copies_keep_them(
    fake: FakeOpenAI, fake_url: str
) -> None:
    chat = new_chat(fake_url)
    chat.register_tool(lookup)
    seen: list[str] = []
    chat.on_tool_request(lambda r: seen.append(r.id))
    copy = chat.copy()
    fake.script(tool_reply(call("a", "lookup", {"q": "x"})), Reply(text="done"))
    assert await copy.chat_async("go") == "done"
    assert seen == ["a"]


def test_annotations_are_checked_and_kept(fake_url: str) -> None:
    chat = new_chat(fake_url)
    tool = chat.register_tool(lookup, annotations={"readOnlyHint": True, "title": "Look up"})
    assert tool.annotations == {"readOnlyHint": True, "title": "Look up"}
    assert chat.get_tools()[0].annotations == tool.annotations
    assert Tool.from_func(lookup).annotations is None
    with pytest.raises(ConfigurationError, match="unknown tool annotation 'readonly'") as exc:
        chat.register_tool(lookup, annotations={"readonly": True})
    assert "readOnlyHint" in str(exc.value)  # the hint lists MCP's keys
    with pytest.raises(ConfigurationError, match="must be a bool"):
        chat.register_tool(lookup, annotations={"destructiveHint": "yes"})
    with pytest.raises(ConfigurationError, match="must be a dict"):
        chat.register_tool(lookup, annotations=["readOnlyHint"])  # type: ignore[arg-type]
    again = chat.register_tool(tool, annotations={"destructiveHint": True})
    assert again.annotations == {"destructiveHint": True}
    # Annotations are the approval's input, not the model's: the schema sent is unchanged.
    assert "annotations" not in json.dumps(again.schema())


def test_status_and_duration_survive_to_json_and_the_record(fake: FakeOpenAI, fake_url: str) -> None:
    def slow(q: str) -> str:
        """Sleep a little."""
        time.sleep(0.05)
        return q

    chat = new_chat(fake_url)
    chat.register_tool(slow)
    chat.on_tool_request(lambda r: None)
    fake.script(tool_reply(call("a", "slow", {"q": "x"})), Reply(text="done"))
    chat.chat("go")
    (result,) = results_of(chat)
    assert result.duration is not None and result.duration >= 0.05
    d = result.to_dict()
    assert d["status"] == "ok" and d["duration_s"] == round(result.duration, 3)
    again = Chat.from_json(chat.to_json())
    (back,) = results_of(again)
    assert (back.status, back.duration) == ("ok", d["duration_s"])
    record = {"version": 1, "sessions": {"default": {
        "provider": {"name": "x", "base_url": fake_url, "model": "test-model"},
        "system_prompt": None,
        "turns": [bounded_turn(t) for t in chat.get_turns()]}}, "usage": []}
    validate_record(record)
    results = record["sessions"]["default"]["turns"][2]["contents"]
    assert results[0]["status"] == "ok" and results[0]["duration_s"] >= 0.05


def test_an_older_or_odd_record_reads_without_status_or_duration() -> None:
    old = Turn.from_dict({"role": "user", "contents": [
        {"type": "tool_result", "id": "a", "value": None, "error": "Tool call failed"},
        {"type": "tool_result", "id": "b", "value": 1, "error": None,
         "status": "someday-new", "duration_s": -3},
        {"type": "tool_result", "id": "c", "value": None, "error": "Tool call rejected. no",
         "status": "refused", "duration_s": True}]})
    a, b, c = old.contents
    assert isinstance(a, ContentToolResult) and (a.status, a.duration) == ("error", None)
    assert isinstance(b, ContentToolResult) and (b.status, b.duration) == ("ok", None)
    assert isinstance(c, ContentToolResult) and (c.status, c.duration) == ("refused", None)


def test_sync_tools_of_different_prompts_run_at_the_same_time(fake: FakeOpenAI, fake_url: str) -> None:
    n = 8  # more than asyncio's default pool on a 2-core machine (min(32, CPUs + 4) = 6)
    running = 0
    most = 0
    lock = threading.Lock()
    gate = threading.Barrier(n, timeout=10)

    def wait(i: int) -> str:
        """Wait until every prompt's call runs."""
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            gate.wait()  # only returns when all n run at once
        finally:
            with lock:
                running -= 1
        return str(i)

    chat = new_chat(fake_url)
    chat.register_tool(wait)
    prompts = [f"prompt {i}." for i in range(n)]
    for i, p in enumerate(prompts):
        fake.script_for(p, tool_reply(call(f"c{i}", "wait", {"i": i})), Reply(text=f"done {i}"))
    t0 = time.perf_counter()
    answers = parallel_chat_text(chat, prompts, max_active=n, progress=False)
    assert not answers.errors, answers.errors
    assert list(answers) == [f"done {i}" for i in range(n)]
    assert most == n and time.perf_counter() - t0 < 10


def test_max_active_bounds_the_tools_too(fake: FakeOpenAI, fake_url: str) -> None:
    running = 0
    most = 0
    lock = threading.Lock()

    def wait(i: int) -> str:
        """Wait a little."""
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return str(i)

    chat = new_chat(fake_url)
    chat.register_tool(wait)
    prompts = [f"bounded {i}." for i in range(6)]
    for i, p in enumerate(prompts):
        fake.script_for(p, tool_reply(call(f"c{i}", "wait", {"i": i})), Reply(text=f"done {i}"))
    answers = parallel_chat_text(chat, prompts, max_active=2, progress=False)
    assert not answers.errors and 1 <= most <= 2
