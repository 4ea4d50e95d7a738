"""Tools on the wire: schemas from type hints, streamed tool calls assembled, results sent back
as ``tool`` messages, errors and rejections, the round bound, and the typed stream.

Every assertion is on the requests the fake server received or on the recorded turns.
"""

from __future__ import annotations

import asyncio
import enum
import json
import threading
from typing import Literal, Optional

import pytest

from jupyter_llmchat import (
    Chat,
    ChatExchange,
    ConfigurationError,
    ContentText,
    ContentThinking,
    ContentToolRequest,
    ContentToolResult,
    StreamError,
    Tool,
    ToolError,
    ToolRejectError,
    Turn,
)
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import new_chat


def call(id: str, name: str, arguments: object) -> dict[str, object]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def tool_reply(*calls: dict[str, object], **kw: object) -> Reply:
    kw.setdefault("text", "")
    return Reply(tool_calls=list(calls), finish_reason="tool_calls", **kw)  # type: ignore[arg-type]


def assert_valid_history(chat: Chat) -> None:
    turns = chat.get_turns()
    assert [t.role for t in turns] == ["user", "assistant"] * (len(turns) // 2)
    Chat(chat.provider, turns=turns)  # set_turns' validation accepts it


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


def get_weather(city: str, days: int = 1, unit: Literal["C", "F"] = "C") -> str:
    """Get the weather forecast for a city.

    Args:
        city: The city's name, e.g. Paris.
        days: How many days ahead,
            from 1 to 7.
        unit: Temperature unit.
    """
    return f"{city}: sunny for {days} day(s), 21 {unit}"


# -- schema -------------------------------------------------------------------------------------


def test_schema_from_type_hints_and_docstring() -> None:
    tool = Tool.from_func(get_weather)
    assert tool.schema() == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather forecast for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city's name, e.g. Paris."},
                    "days": {"type": "integer", "description": "How many days ahead, from 1 to 7.",
                             "default": 1},
                    "unit": {"type": "string", "enum": ["C", "F"], "description": "Temperature unit.",
                             "default": "C"},
                },
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }


def test_schema_of_containers_optional_and_enums() -> None:
    def f(xs: list[int], tags: dict[str, float], color: Color, flag: bool,
          note: Optional[str] = None, pair: tuple[int, str] = (1, "a")) -> None:
        """No Args section."""

    params = Tool.from_func(f).parameters
    props = params["properties"]
    assert props["xs"] == {"type": "array", "items": {"type": "integer"}}
    assert props["tags"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["color"] == {"type": "string", "enum": ["red", "blue"]}
    assert props["flag"] == {"type": "boolean"}
    assert props["note"] == {"type": ["string", "null"]}
    assert props["pair"]["type"] == "array" and len(props["pair"]["prefixItems"]) == 2
    assert params["required"] == ["xs", "tags", "color", "flag"]


def test_name_and_description_overrides_and_bad_names(fake_url: str) -> None:
    chat = new_chat(fake_url)
    tool = chat.register_tool(lambda: 1, name="one", description="Returns one.")
    assert tool.name == "one" and tool.description == "Returns one."
    with pytest.raises(ConfigurationError):
        chat.register_tool(lambda: 1)  # "<lambda>" is not a valid tool name
    assert [t.name for t in chat.get_tools()] == ["one"]
    chat.set_tools([get_weather])
    assert [t.name for t in chat.get_tools()] == ["get_weather"]
    chat.set_tools([])
    assert chat.get_tools() == []


# -- the tool loop on the wire --------------------------------------------------------------------


def test_streamed_tool_call_with_split_arguments_runs_and_returns(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(
        tool_reply(call("call_1", "get_weather", {"city": "Paris", "days": 2}), tool_args_chars=3),
        Reply(text="It will be sunny."),
    )
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    items = list(chat.stream("Weather in Paris?", content="all"))

    first, second = (r.body for r in fake.chat_requests())
    assert first["tools"] == [Tool.from_func(get_weather).schema()]
    assert second["tools"] == first["tools"]
    assert second["messages"][:1] == [{"role": "user", "content": "Weather in Paris?"}]
    assistant, tool_msg = second["messages"][1:]
    assert assistant["role"] == "assistant" and assistant["content"] is None
    assert assistant["tool_calls"][0]["id"] == "call_1"
    assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris", "days": 2}
    assert tool_msg == {"role": "tool", "tool_call_id": "call_1",
                        "content": get_weather("Paris", days=2)}

    request = ContentToolRequest("call_1", "get_weather", {"city": "Paris", "days": 2})
    result = ContentToolResult("call_1", get_weather("Paris", days=2), None, name="get_weather")
    texts = [i.text for i in items if isinstance(i, ContentText)]
    assert "".join(texts) == "It will be sunny."
    assert [i for i in items if not isinstance(i, ContentText)] == [request, result]
    assert items.index(request) < items.index(result) < items.index(next(i for i in items if isinstance(i, ContentText)))

    turns = chat.get_turns()
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[1].tool_requests == [request] and turns[1].finish_reason == "tool_calls"
    assert turns[2].contents == [result]
    assert turns[3].text == "It will be sunny."
    assert_valid_history(chat)

    # The next exchange sends the whole tool round again, in the same wire form.
    chat.chat("Thanks")
    assert fake.last_body()["messages"][1:3] == second["messages"][1:3]


@pytest.mark.parametrize("interleave", [False, True])
def test_two_parallel_calls_both_run_in_order(
    fake: FakeOpenAI, fake_url: str, interleave: bool
) -> None:
    fake.script(
        tool_reply(call("a", "get_weather", {"city": "Oslo"}), call("b", "get_weather", {"city": "Rome"}),
                   tool_args_chars=4, interleave_tool_calls=interleave),
        Reply(text="done"),
    )
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    assert chat.chat("two cities") == "done"
    msgs = fake.last_body()["messages"]
    assert [c["id"] for c in msgs[1]["tool_calls"]] == ["a", "b"]
    assert msgs[2:] == [
        {"role": "tool", "tool_call_id": "a", "content": get_weather("Oslo")},
        {"role": "tool", "tool_call_id": "b", "content": get_weather("Rome")},
    ]


def test_a_whole_answer_with_tool_calls(fake: FakeOpenAI, fake_url: str) -> None:
    """chat() without echo asks for the whole answer: the message's tool_calls, no indexes."""
    fake.script(tool_reply(call("c1", "add", {"a": 2, "b": 3})), Reply(text="5"))
    chat = new_chat(fake_url)

    def add(a: int, b: int) -> int:
        return a + b

    chat.register_tool(add)
    assert chat.chat("2+3?") == "5"
    first, second = (r.body for r in fake.chat_requests())
    assert first["stream"] is False
    assert second["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "5"}
    assert chat.get_turns()[2].contents == [ContentToolResult("c1", 5, None, name="add")]


def test_a_raising_tool_sends_its_error_and_a_rejection_its_reason(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(tool_reply(call("x", "boom", {}), call("y", "guarded", {"path": "/etc"})),
                Reply(text="sorry"))
    chat = new_chat(fake_url)

    def boom() -> str:
        raise ValueError("disk on fire")

    def guarded(path: str) -> str:
        raise ToolRejectError("the user said no")

    chat.register_tool(boom)
    chat.register_tool(guarded)
    assert chat.chat("go") == "sorry"
    boom_msg, guarded_msg = fake.last_body()["messages"][2:]
    assert boom_msg["tool_call_id"] == "x" and "ValueError" in boom_msg["content"]
    assert "disk on fire" in boom_msg["content"]
    assert guarded_msg["tool_call_id"] == "y" and "the user said no" in guarded_msg["content"]
    results = chat.get_turns()[2].tool_results
    assert all(r.error is not None and r.value is None for r in results)
    assert_valid_history(chat)


def test_unknown_tool_and_bad_arguments_become_error_results(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(tool_reply(call("u", "nope", {}), call("v", "get_weather", "{not json")),
                Reply(text="ok"))
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    assert chat.chat("go") == "ok"
    unknown, bad = fake.last_body()["messages"][2:]
    assert unknown["tool_call_id"] == "u" and "nope" in unknown["content"]
    assert bad["tool_call_id"] == "v" and "not json" in bad["content"]


def test_tool_rounds_are_bounded(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.max_tool_rounds = 2
    chat.register_tool(get_weather)
    fake.script(*(tool_reply(call(f"c{i}", "get_weather", {"city": "Oslo"})) for i in range(3)))
    with pytest.raises(ToolError, match="max_tool_rounds=2"):
        chat.chat("loop forever")
    assert len(fake.chat_requests()) == 3
    turns = chat.get_turns()
    assert turns[-1].partial and turns[-1].role == "assistant"
    assert "not run" in (turns[-2].tool_results[0].error or "")
    assert_valid_history(chat)
    # The history it left is accepted by the server's rules: the next request pairs every call.
    fake.script(Reply(text="fine"))
    assert chat.chat("stop now") == "fine"
    msgs = fake.last_body()["messages"]
    call_ids = [c["id"] for m in msgs if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert call_ids == [m["tool_call_id"] for m in msgs if m["role"] == "tool"] == ["c0", "c1", "c2"]


def test_a_stream_cut_inside_a_tool_call_runs_nothing(fake: FakeOpenAI, fake_url: str) -> None:
    ran: list[str] = []

    def record(city: str) -> str:
        ran.append(city)
        return city

    fake.script(tool_reply(call("c", "record", {"city": "Oslo"}), text="Checking. ",
                           tool_args_chars=2, cut_in_tool_calls=3))
    chat = new_chat(fake_url)
    chat.register_tool(record)
    with pytest.raises(StreamError):
        list(chat.stream("go"))
    assert ran == []
    user, reply = chat.get_turns()
    assert reply.partial and reply.text == "Checking. " and reply.tool_requests == []
    assert_valid_history(chat)


def test_stopping_between_request_and_result_keeps_a_valid_history(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(tool_reply(call("c", "get_weather", {"city": "Oslo"})))
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    s = chat.stream("go", content="all")
    for item in s:
        if isinstance(item, ContentToolRequest):
            break
    s.close()
    assert chat.busy is False
    turns = chat.get_turns()
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2].tool_results[0].error is not None and turns[3].partial
    assert s.turn is turns[3] and s.user_turn is turns[0] and s.turns == turns
    assert_valid_history(chat)


# -- async: calls of one answer run concurrently ----------------------------------------------


async def test_async_tools_run_concurrently_under_chat_async(fake: FakeOpenAI, fake_url: str) -> None:
    both_started = asyncio.Event()
    started: list[str] = []

    async def slow(name: str) -> str:
        started.append(name)
        if len(started) == 2:
            both_started.set()
        # Each call waits for the other to start: run one after the other, this would time out.
        await asyncio.wait_for(both_started.wait(), timeout=10)
        return name.upper()

    fake.script(tool_reply(call("1", "slow", {"name": "a"}), call("2", "slow", {"name": "b"})),
                Reply(text="both"))
    chat = new_chat(fake_url)
    chat.register_tool(slow)
    assert await chat.chat_async("go") == "both"
    assert fake.last_body()["messages"][2:] == [
        {"role": "tool", "tool_call_id": "1", "content": "A"},
        {"role": "tool", "tool_call_id": "2", "content": "B"},
    ]


async def test_stream_async_all_yields_typed_contents(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(
        tool_reply(call("c", "get_weather", {"city": "Oslo"}), reasoning="hmm"),
        Reply(text="Sunny."),
    )
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    s = chat.stream_async("go", content="all")
    items = [i async for i in s]
    kinds = [type(i).__name__ for i in items]
    assert kinds[0] == "ContentThinking"
    assert kinds.index("ContentToolRequest") < kinds.index("ContentToolResult") < kinds.index("ContentText")
    assert s.turn is not None and s.turn.text == "Sunny." and s.recorded
    assert len(s.turns) == 4


def test_sync_chat_runs_an_async_tool(fake: FakeOpenAI, fake_url: str) -> None:
    async def aecho(text: str) -> str:
        await asyncio.sleep(0)
        return text

    fake.script(tool_reply(call("c", "aecho", {"text": "hi"})), Reply(text="ok"))
    chat = new_chat(fake_url)
    chat.register_tool(aecho)
    assert chat.chat("go") == "ok"
    assert fake.last_body()["messages"][2]["content"] == "hi"


async def test_sync_chat_runs_an_async_tool_inside_a_running_loop(
    fake: FakeOpenAI, fake_url: str
) -> None:
    """As in a Jupyter cell: chat() called on a thread whose loop is running."""

    async def aecho(text: str) -> str:
        return text + "!"

    fake.script(tool_reply(call("c", "aecho", {"text": "hi"})), Reply(text="ok"))
    chat = new_chat(fake_url)
    chat.register_tool(aecho)
    assert chat.chat("go") == "ok"
    assert fake.last_body()["messages"][2]["content"] == "hi!"


# -- the typed stream and per-call options -----------------------------------------------------


def test_stream_all_without_tools_and_per_call_overrides(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="abcdefghij", chunk_chars=4, reasoning="r"))
    chat = new_chat(fake_url)
    s = chat.stream("q", content="all", model="other-model", params={"temperature": 0.5},
                    meta={"cell_id": "c-1", "source": "cell"})
    assert s.turn is None and s.turns == []
    items = list(s)
    assert items == [ContentThinking("r"), ContentText("abcd"), ContentText("efgh"), ContentText("ij")]
    body = fake.last_body()
    assert body["model"] == "other-model" and body["temperature"] == 0.5
    assert s.turn is chat.last_turn() and s.turn is not None and s.turn.meta["cell_id"] == "c-1"
    assert s.user_turn is chat.last_turn("user")


def test_stream_history_false_and_replace_from(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.chat("first")
    s = chat.stream("aside", history=False)
    assert "".join(s) == "Hello from the fake server."
    assert s.recorded is False and s.turn is not None and len(chat.get_turns()) == 2
    assert fake.last_body()["messages"] == [{"role": "user", "content": "aside"}]
    s = chat.stream("again", replace_from=0)
    list(s)
    assert [t.text for t in chat.get_turns()] == ["again", "Hello from the fake server."]


def test_bad_content_kind_is_refused(fake_url: str) -> None:
    with pytest.raises(ConfigurationError):
        new_chat(fake_url).stream("q", content="some")  # type: ignore[arg-type]


def test_listeners_hear_every_turn_of_an_exchange(fake: FakeOpenAI, fake_url: str) -> None:
    """A layer watching a chat (the ledger, the panel) gets the exchange's turns, tool rounds
    included, from the "turn" event, whichever send method made it."""
    fake.script(tool_reply(call("c1", "add", {"a": 1, "b": 2})), Reply(text="3"))
    chat = new_chat(fake_url)

    def add(a: int, b: int) -> int:
        return a + b

    chat.register_tool(add)
    heard: list[tuple[str, object]] = []
    chat.add_listener(lambda c, event, exchange: heard.append((event, exchange)))
    assert chat.chat("q") == "3"
    assert [e for e, _ in heard] == ["start", "turn"]
    exchange = heard[-1][1]
    assert isinstance(exchange, ChatExchange)
    assert exchange.turns == chat.get_turns() and len(exchange.turns) == 4
    assert exchange.turn is chat.get_turns()[-1] and exchange.recorded
    assert not hasattr(chat, "last_exchange") and not hasattr(chat, "_events")


# -- records --------------------------------------------------------------------------------------


def test_tool_turns_survive_to_json_and_the_notebook_record(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat._record._metadata import build_record, Ledger, validate_record

    fake.script(tool_reply(call("c", "get_weather", {"city": "Oslo"})), Reply(text="Sunny."))
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    chat.chat("go")
    again = Chat.from_json(chat.to_json())
    assert [t.contents for t in again.get_turns()] == [t.contents for t in chat.get_turns()]
    record = json.loads(json.dumps(build_record({"default": chat}, Ledger())))
    kinds = [c["type"] for t in record["sessions"]["default"]["turns"] for c in t["contents"]]
    assert kinds == ["text", "tool_request", "tool_result", "text"]
    import pathlib

    import jsonschema

    schema_file = pathlib.Path(__file__).resolve().parents[1] / "jupyter_llmchat" / "schema" / "metadata-v1.json"
    jsonschema.Draft202012Validator(json.loads(schema_file.read_text("utf-8"))).validate(record)
    restored = validate_record(record)["sessions"]["default"]["turns"]
    assert [t.contents for t in restored] == [t.contents for t in chat.get_turns()]
    Chat(chat.provider, turns=restored)


def test_set_turns_refuses_unpaired_tool_turns(fake_url: str) -> None:
    chat = new_chat(fake_url)
    req = Turn("assistant", [ContentToolRequest("c", "f", {})])
    res = Turn("user", [ContentToolResult("c", 1)])
    other = Turn("user", [ContentToolResult("zzz", 1)])
    end = Turn("assistant", [ContentText("ok")])
    chat.set_turns([Turn.user("q"), req, res, end])
    with pytest.raises(ConfigurationError):
        chat.set_turns([Turn.user("q"), req, other, end])
    with pytest.raises(ConfigurationError):
        chat.set_turns([Turn.user("q"), req])


def test_a_record_with_unpaired_tool_turns_is_refused_by_the_validator() -> None:
    from jupyter_llmchat._record._metadata import RecordError, validate_record

    turns = [Turn.user("q"), Turn("assistant", [ContentToolRequest("c", "f", {})]),
             Turn("user", [ContentToolResult("other", 1)]), Turn("assistant", [ContentText("ok")])]
    record = {"version": 1, "sessions": {"default": {"turns": [t.to_dict() for t in turns]}}, "usage": []}
    with pytest.raises(RecordError, match="tool"):
        validate_record(record)


def test_copy_keeps_tools_but_not_the_history_link(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    twin = chat.copy()
    assert [t.name for t in twin.get_tools()] == ["get_weather"]
    twin.set_tools([])
    assert [t.name for t in chat.get_tools()] == ["get_weather"]


def test_a_tool_running_in_another_thread_does_not_block_the_lock_release(
    fake: FakeOpenAI, fake_url: str
) -> None:
    """A tool may use threads of its own; the chat is busy while it runs, free after."""
    seen: list[bool] = []
    chat = new_chat(fake_url)

    def probe() -> str:
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(chat.busy))
        t.start()
        t.join()
        seen.extend(result)
        return "ok"

    chat.register_tool(probe)
    fake.script(tool_reply(call("p", "probe", {})), Reply(text="done"))
    assert chat.chat("go") == "done"
    assert seen == [True] and chat.busy is False


# -- the fake server's concurrency count, and module structure --------------------------------


async def test_fake_server_counts_concurrent_requests(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="a", gate=2), Reply(text="b", gate=2))
    chat = new_chat(fake_url)
    answers = await asyncio.gather(chat.copy().chat_async("1"), chat.copy().chat_async("2"))
    assert sorted(answers) == ["a", "b"]
    assert fake.wait_idle()  # the handlers finish a moment after the client has the answers
    assert fake.stats() == {"active": 0, "max_active": 2}


def test_from_json_does_not_import_the_presets() -> None:
    """``_presets`` builds on ``_chat``; ``_chat`` never reaches back (no import cycle)."""
    import subprocess
    import sys

    code = (
        "import sys, jupyter_llmchat._core._chat as c\n"
        "chat = c.Chat.from_json({'provider': {'base_url': 'http://127.0.0.1:9/v1', 'model': 'm'}})\n"
        "print(chat.provider.model, 'jupyter_llmchat._core._presets' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["m", "False"]


def test_ctrl_c_inside_a_tool_keeps_a_valid_history(fake: FakeOpenAI, fake_url: str) -> None:
    def slow() -> str:
        raise KeyboardInterrupt  # what Ctrl-C does while a tool runs

    fake.script(tool_reply(call("k", "slow", {}), text="Let me look. "))
    chat = new_chat(fake_url)
    chat.register_tool(slow)
    with pytest.raises(KeyboardInterrupt):
        chat.chat("go")
    assert chat.busy is False
    user, asked, results, end = chat.get_turns()
    assert asked.tool_requests[0].id == "k"
    assert "interrupted" in (results.tool_results[0].error or "")
    assert end.partial and end.finish_reason == "interrupted"
    assert_valid_history(chat)
    fake.script(Reply(text="ok"))
    assert chat.chat("next") == "ok"
    assert [m["role"] for m in fake.last_body()["messages"]] == [
        "user", "assistant", "tool", "assistant", "user"]


async def test_cancelling_chat_async_while_tools_run(fake: FakeOpenAI, fake_url: str) -> None:
    started = asyncio.Event()

    async def forever() -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    fake.script(tool_reply(call("f", "forever", {})))
    chat = new_chat(fake_url)
    chat.register_tool(forever)
    task = asyncio.create_task(chat.chat_async("go"))
    await asyncio.wait_for(started.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert chat.busy is False
    turns = chat.get_turns()
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[2].tool_results[0].error is not None and turns[3].partial
    assert_valid_history(chat)


def test_echo_shows_one_line_per_call(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(tool_reply(call("c", "get_weather", {"city": "Oslo"})), Reply(text="Sunny."))
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    assert chat.chat("go", echo="output") == "Sunny."
    out = capsys.readouterr().out
    assert 'get_weather({"city": "Oslo"})' in out and "[tool ok] get_weather" in out
    assert out.rstrip().endswith("Sunny.")


def test_args_section_with_types_in_parentheses() -> None:
    def f(a: int, b: str = "x") -> None:
        """Do f.

        Args:
            a (int): The first.
            b (str, optional): The second,
                continued.

        Returns:
            Nothing at all.
        """

    props = Tool.from_func(f).parameters["properties"]
    assert props["a"]["description"] == "The first."
    assert props["b"]["description"] == "The second, continued."
    assert Tool.from_func(f).description == "Do f."


def test_a_call_without_an_id_gets_one_and_its_result_is_tied_to_it(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(tool_reply({"type": "function", "function": {"name": "get_weather",
                                                             "arguments": '{"city": "Oslo"}'}}),
                Reply(text="ok"))
    chat = new_chat(fake_url)
    chat.register_tool(get_weather)
    list(chat.stream("go"))
    assistant, tool_msg = fake.last_body()["messages"][1:]
    call_id = assistant["tool_calls"][0]["id"]
    assert call_id and tool_msg["tool_call_id"] == call_id


# -- issue 16: results that cannot be text, calls cut off by max_tokens, big results ---------------


class Unprintable:
    """A tool's result that JSON cannot hold and whose ``str`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_a_result_that_cannot_be_text_is_an_error_result(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(tool_reply(call("u", "odd", {})), Reply(text="I see"))
    chat = new_chat(fake_url)

    def odd() -> object:
        return Unprintable()

    chat.register_tool(odd)
    assert chat.chat("go") == "I see"
    tool_msg = fake.last_body()["messages"][2]
    assert tool_msg["tool_call_id"] == "u"
    assert "RuntimeError" in tool_msg["content"] and "no text for you" in tool_msg["content"]
    (result,) = chat.get_turns()[2].tool_results
    assert result.value is None and result.error == tool_msg["content"]
    assert_valid_history(chat)


async def test_an_async_result_that_cannot_be_text_is_an_error_result(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(tool_reply(call("u", "odd", {})), Reply(text="I see"))
    chat = new_chat(fake_url)

    async def odd() -> object:
        return Unprintable()

    chat.register_tool(odd)
    assert await chat.chat_async("go") == "I see"
    assert "no text for you" in fake.last_body()["messages"][2]["content"]


@pytest.mark.parametrize("earlier_round", [False, True])
def test_a_call_cut_off_by_max_tokens_stops_at_once(
    fake: FakeOpenAI, fake_url: str, earlier_round: bool
) -> None:
    ran: list[str] = []

    def record(city: str) -> str:
        ran.append(city)
        return city

    cut = Reply(text="Let me check. ", tool_calls=[call("c", "record", '{"city": "Os')],
                finish_reason="length", tool_args_chars=3)
    first = [tool_reply(call("a", "record", {"city": "Rome"}))] if earlier_round else []
    fake.script(*first, cut, Reply(text="never asked"))
    chat = new_chat(fake_url)
    chat.register_tool(record)
    with pytest.raises(ToolError, match="max_tokens") as err:
        chat.chat("go", params={"max_tokens": 5})
    assert "raise max_tokens" in err.value.hint
    assert len(fake.chat_requests()) == 1 + len(first)  # no further round
    assert ran == (["Rome"] if earlier_round else [])  # the cut call never ran
    turns = chat.get_turns()
    end = turns[-1]
    assert end.role == "assistant" and end.partial and end.finish_reason == "length"
    assert end.text == "Let me check. " and end.tool_requests == []
    assert len(turns) == (4 if earlier_round else 2)
    assert_valid_history(chat)
    fake.reset()
    fake.script(Reply(text="fine"))
    assert chat.chat("next") == "fine"


def test_a_big_result_is_capped_on_the_wire_in_every_later_request(
    fake: FakeOpenAI, fake_url: str
) -> None:
    big = "x" * 2_100_000
    fake.script(tool_reply(call("b", "dump", {})), Reply(text="got it"), Reply(text="again"))
    chat = new_chat(fake_url)

    def dump() -> str:
        return big

    chat.register_tool(dump)
    s = chat.stream("go", content="all")
    items = list(s)
    # The caller gets the whole result: in the stream and in the history.
    (shown,) = [i for i in items if isinstance(i, ContentToolResult)]
    assert shown.value == big and chat.get_turns()[2].tool_results[0].value == big
    chat.chat("and now?")
    for request in fake.chat_requests()[1:]:
        (tool_msg,) = [m for m in request.body["messages"] if m["role"] == "tool"]
        sent = tool_msg["content"]
        assert len(sent) < 33_000 and sent.startswith("x" * 32_000)
        assert "2,068,000 of 2,100,000 characters" in sent and "left out" in sent
    assert chat.max_tool_result_chars == 32_000


def test_the_result_cap_is_configurable(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(tool_reply(call("b", "dump", {})), Reply(text="got it"))
    chat = new_chat(fake_url)
    chat.max_tool_result_chars = 10
    chat.register_tool(lambda: "0123456789abcdef", name="dump")
    chat.chat("go")
    sent = fake.last_body()["messages"][2]["content"]
    assert sent.startswith("0123456789") and "abcdef" not in sent and "6 of 16 characters" in sent
    assert chat.copy().max_tool_result_chars == 10
    fake.script(tool_reply(call("c", "dump", {})), Reply(text="whole"))
    chat.max_tool_result_chars = None  # no cap
    chat.chat("again")
    assert fake.last_body()["messages"][-1]["content"] == "0123456789abcdef"


def test_the_turn_closing_a_cut_tool_round_cost_nothing(fake: FakeOpenAI, fake_url: str) -> None:
    """Past max_tool_rounds no request answers the last turn: its tokens are 0, not unknown,
    so the exchange's totals stay known."""
    chat = new_chat(fake_url)
    chat.max_tool_rounds = 1
    chat.register_tool(get_weather)
    fake.script(*(tool_reply(call(f"c{i}", "get_weather", {"city": "Oslo"})) for i in range(2)))
    with pytest.raises(ToolError):
        chat.chat("loop")
    rows = chat.get_tokens()
    assert [r["input"] for r in rows] == [11, 11, 0] and rows[-1]["partial"]
    assert rows[-1]["output"] == 0 and rows[-1]["cost"] in (0.0, None)
    # The footer and %chat_usage count requests: two were sent; the closing turn was none.
    from jupyter_llmchat._core._spend import exchange_spend

    assert exchange_spend(chat.get_turns())[2] == len(fake.requests) == 2


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "100"])
def test_a_bad_result_cap_is_refused(fake_url: str, bad: object) -> None:
    chat = new_chat(fake_url)
    with pytest.raises(ConfigurationError, match="max_tool_result_chars"):
        chat.max_tool_result_chars = bad  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="max_tool_result_chars"):
        Chat(chat.provider, max_tool_result_chars=bad)  # type: ignore[arg-type]
    assert chat.max_tool_result_chars == 32_000
