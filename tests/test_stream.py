"""Streaming answers: chunks, usage, thinking, echo, cost, async, and answers cut short.

Real HTTP against the fake server; the history a cut answer leaves behind is checked on the
wire, in the next request.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from genai_prices import Usage, calc_price

from jupyter_llmchat import (
    Chat,
    ConfigurationError,
    ContentText,
    ContentThinking,
    ServerError,
    StreamError,
    Tokens,
    chat_openai,
    token_usage,
)
from tests.helpers import last, new_chat
from tests.fake_openai import PROMPT_TOKENS, FakeOpenAI, Reply

TEXT = "The quick brown fox jumps over the lazy dog."  # 6 chunks of 8 characters



def assert_alternates(chat: Chat) -> None:
    roles = [t.role for t in chat.get_turns()]
    assert roles == ["user", "assistant"] * (len(roles) // 2)


# -- the happy path ---------------------------------------------------------------------------


def test_stream_yields_chunks_and_records_the_exchange(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    chunks = list(chat.stream("Tell me"))
    assert len(chunks) == 6
    assert "".join(chunks) == TEXT

    body = fake.last_body()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Tell me"}]

    user, reply = chat.get_turns()
    assert user.role == "user" and user.text == "Tell me"
    assert reply.role == "assistant" and reply.text == TEXT
    assert reply.contents == [ContentText(TEXT)]
    assert reply.tokens == Tokens(PROMPT_TOKENS, 6, None)
    assert reply.finish_reason == "stop"
    assert reply.partial is False
    assert reply.model == "test-model"
    assert reply.started_at is not None and reply.duration is not None and reply.duration >= 0
    assert chat.busy is False


def test_stream_without_usage_records_unknown_tokens(fake: FakeOpenAI, fake_url: str) -> None:
    # llama.cpp's server: no usage chunk while streaming, even when asked.
    fake.script(Reply(text=TEXT, usage_in_stream=False), Reply(text=TEXT, usage=None))
    chat = new_chat(fake_url, name="NoUsageServer")
    assert "".join(chat.stream("one")) == TEXT
    assert "".join(chat.stream("two")) == TEXT
    for reply in chat.get_turns()[1::2]:
        assert reply.tokens == Tokens(None, None, None)
        assert reply.cost is None
    assert chat.get_cost() is None
    assert chat.get_tokens()[0]["input"] is None  # unknown, never a made-up 0
    row = next(r for r in token_usage() if r["provider"] == "NoUsageServer")
    assert row["turns"] == 2 and row["input"] is None and row["output"] is None


def test_chat_without_echo_does_not_stream_and_gets_usage(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text=TEXT, usage_in_stream=False))
    chat = new_chat(fake_url)
    assert chat.chat("hi") == TEXT
    body = fake.last_body()
    assert body["stream"] is False
    assert "stream_options" not in body
    assert last(chat).tokens == Tokens(PROMPT_TOKENS, 6, None)
    assert capsys.readouterr().out == ""


def test_chat_echo_output_streams_to_stdout(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    assert chat.chat("the prompt", echo="output") == TEXT
    assert fake.last_body()["stream"] is True
    out = capsys.readouterr().out
    assert out == TEXT + "\n"
    assert "the prompt" not in out


def test_chat_echo_all_also_prints_the_prompt(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = new_chat(fake_url, echo="all")  # the chat's default echo
    assert chat.chat("the prompt") == "Hello from the fake server."
    out = capsys.readouterr().out
    assert "the prompt" in out
    assert out.index("the prompt") < out.index("Hello from the fake server.")
    assert chat.chat("quiet", echo="none") == "Hello from the fake server."
    assert capsys.readouterr().out == ""


def test_stream_echo_output(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text=TEXT))
    chunks = list(new_chat(fake_url).stream("hi", echo="output"))
    assert capsys.readouterr().out == "".join(chunks) == TEXT


def test_bad_echo_is_refused(fake: FakeOpenAI, fake_url: str) -> None:
    with pytest.raises(ConfigurationError, match="echo"):
        new_chat(fake_url).chat("hi", echo="loud")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="echo"):
        new_chat(fake_url, echo="loud")
    assert fake.requests == []


def test_reasoning_is_kept_apart_from_the_answer(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, reasoning="Let me think about foxes."))
    chat = new_chat(fake_url)
    assert "".join(chat.stream("q")) == TEXT  # thinking is not yielded as answer text
    reply = chat.last_turn()
    assert reply is not None
    assert reply.contents == [ContentThinking("Let me think about foxes."), ContentText(TEXT)]
    assert reply.text == TEXT
    assert reply.thinking == "Let me think about foxes."
    # Thinking is not sent back as history.
    chat.chat("next")
    assert fake.last_body()["messages"][1] == {"role": "assistant", "content": TEXT}


def test_reasoning_in_a_whole_answer(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, reasoning="Thinking, not streamed."))
    chat = new_chat(fake_url)
    assert chat.chat("q") == TEXT  # only the answer
    assert fake.last_body()["stream"] is False
    reply = chat.last_turn()
    assert reply is not None
    assert reply.text == TEXT
    assert reply.thinking == "Thinking, not streamed."


def test_reasoning_key_of_openrouter_and_vllm() -> None:
    """``delta.reasoning`` (OpenRouter, newer vLLM) is thinking too; checked with a raw stream."""
    from jupyter_llmchat._core._wire import _Answer

    answer = _Answer()
    events = [
        answer.feed('{"choices": [{"delta": {"reasoning": "hmm"}}]}'),
        answer.feed('{"choices": [{"delta": {"content": "ok", "reasoning": " and"}}]}'),
        answer.feed('{"choices": [{"delta": {}, "finish_reason": "stop"}]}'),
    ]
    assert [e for batch in events for e in batch] == [
        ("thinking", "hmm"), ("thinking", " and"), ("text", "ok"),
    ]
    assert answer.complete


# -- cost and token_usage ---------------------------------------------------------------------


def test_cost_of_a_priced_model(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT), Reply(text="short"))
    chat = chat_openai(base_url=fake_url, model="gpt-4o-mini", credentials="test-key")
    chat.chat("one")
    list(chat.stream("two"))

    def price(output: int) -> float:
        usage = Usage(input_tokens=PROMPT_TOKENS, output_tokens=output)
        return float(calc_price(usage, model_ref="gpt-4o-mini", provider_id="openai").total_price)

    first, second = chat.get_turns()[1::2]
    assert first.tokens == Tokens(PROMPT_TOKENS, 6, None)
    assert second.tokens == Tokens(PROMPT_TOKENS, 1, None)
    assert first.cost == pytest.approx(price(6))
    assert second.cost == pytest.approx(price(1))
    assert chat.get_cost("last") == pytest.approx(price(1))
    assert chat.get_cost() == pytest.approx(price(6) + price(1))
    assert (chat.get_cost() or 0) > 0
    assert "cost=$" in repr(chat)


def test_unknown_model_costs_none(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url, model="my-local-model-7b")
    chat.chat("hi")
    assert last(chat).tokens == Tokens(PROMPT_TOKENS, 4, None)
    assert last(chat).cost is None
    assert chat.get_cost() is None
    assert "cost=n/a" in repr(chat)


def test_token_usage_sums_per_provider_and_model(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT), Reply(text="12345678x"), Reply(text="y"))
    chat = new_chat(fake_url, name="UsageSumProvider", model="sum-model")
    chat.chat("one")
    list(chat.stream("two"))
    chat.chat("three", model="other-sum-model")
    rows = {(r["provider"], r["model"]): r for r in token_usage()}
    row = rows[("UsageSumProvider", "sum-model")]
    assert row["turns"] == 2
    assert row["input"] == 2 * PROMPT_TOKENS
    assert row["output"] == 6 + 2
    assert row["cost_usd"] is None
    other = rows[("UsageSumProvider", "other-sum-model")]
    assert other["turns"] == 1 and other["output"] == 1


def test_token_usage_totals_a_priced_model(fake: FakeOpenAI, fake_url: str) -> None:
    before = {(r["provider"], r["model"]): r for r in token_usage()}.get(("OpenAI", "gpt-4o-mini"))
    chat = chat_openai(base_url=fake_url, model="gpt-4o-mini", credentials="k")
    chat.chat("hi")
    row = {(r["provider"], r["model"]): r for r in token_usage()}[("OpenAI", "gpt-4o-mini")]
    spent = chat.get_cost()
    assert spent is not None
    assert row["cost_usd"] == pytest.approx(((before or {}).get("cost_usd") or 0.0) + spent)


# -- async ------------------------------------------------------------------------------------


async def test_stream_async(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    chunks = [c async for c in chat.stream_async("Tell me")]
    assert len(chunks) == 6 and "".join(chunks) == TEXT
    assert fake.last_body()["stream_options"] == {"include_usage": True}
    user, reply = chat.get_turns()
    assert user.text == "Tell me" and reply.text == TEXT
    assert reply.tokens == Tokens(PROMPT_TOKENS, 6, None)
    assert reply.partial is False and reply.finish_reason == "stop"


async def test_chat_async(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="First."), Reply(text="Second.", reasoning="hm"))
    chat = new_chat(fake_url, system_prompt="sys")
    assert await chat.chat_async("one") == "First."
    assert await chat.chat_async("two") == "Second."
    assert [m["content"] for m in fake.last_body()["messages"]] == ["sys", "one", "First.", "two"]
    assert last(chat).thinking == "hm"
    assert_alternates(chat)


async def test_chat_async_like_chat_gets_usage_without_echo(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(Reply(text=TEXT, usage_in_stream=False))
    chat = new_chat(fake_url)
    assert await chat.chat_async("hi") == TEXT
    assert fake.last_body()["stream"] is False
    assert last(chat).tokens == Tokens(PROMPT_TOKENS, 6, None)


async def test_chat_async_echo_output(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    assert await chat.chat_async("p", echo="output") == TEXT
    assert fake.last_body()["stream"] is True
    assert capsys.readouterr().out == TEXT + "\n"


async def test_async_errors_leave_no_turns(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(*[Reply(status=503, headers={"Retry-After": "0"})] * 3)
    chat = new_chat(fake_url)
    with pytest.raises(ServerError):
        await chat.chat_async("hi")
    assert len(fake.chat_requests()) == 3
    assert chat.get_turns() == []


# -- answers cut short ------------------------------------------------------------------------


def test_cut_stream_keeps_the_partial_answer(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, cut_after=2))
    chat = new_chat(fake_url)
    got: list[str] = []
    with pytest.raises(StreamError) as info:
        for chunk in chat.stream("q"):
            got.append(chunk)
    assert "".join(got) == TEXT[:16]
    assert fake_url in str(info.value)
    assert len(fake.chat_requests()) == 1  # never retried once the answer has begun
    user, reply = chat.get_turns()
    assert user.text == "q"
    assert reply.partial is True
    assert reply.text == TEXT[:16]
    assert reply.finish_reason == "error"
    assert reply.tokens == Tokens(None, None, None)


def test_cut_stream_through_chat_with_echo(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text=TEXT, cut_after=3))
    chat = new_chat(fake_url)
    with pytest.raises(StreamError):
        chat.chat("q", echo="output")
    assert capsys.readouterr().out == TEXT[:24]
    assert last(chat).partial and last(chat).text == TEXT[:24]


def test_stream_that_ends_without_finishing_is_partial(fake: FakeOpenAI, fake_url: str) -> None:
    # The connection closes cleanly but without a finish_reason or [DONE]: still cut short.
    fake.script(Reply(text=TEXT, error_event_at=6, error_message=""))
    chat = new_chat(fake_url)
    with pytest.raises(StreamError):
        list(chat.stream("q"))
    assert last(chat).partial


def test_malformed_chunk_is_skipped_and_the_answer_completes(
    fake: FakeOpenAI, fake_url: str
) -> None:
    """One bad line does not end the answer (issue "Trust" item 20): it is skipped and counted."""
    fake.script(Reply(text=TEXT, malformed_at=2))
    chat = new_chat(fake_url)
    assert "".join(chat.stream("q")) == TEXT
    assert len(fake.chat_requests()) == 1
    reply = chat.last_turn()
    assert reply is not None and not reply.partial and reply.text == TEXT and reply.skipped == 1


def test_error_event_mid_stream(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, error_event_at=3, error_message="model overloaded"))
    chat = new_chat(fake_url)
    with pytest.raises(StreamError, match="model overloaded"):
        list(chat.stream("q"))
    assert len(fake.chat_requests()) == 1
    reply = chat.last_turn()
    assert reply is not None and reply.partial and reply.text == TEXT[:24]
    assert reply.finish_reason == "error"


def test_error_event_before_any_text_records_nothing(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, error_event_at=0, error_message="nope"))
    chat = new_chat(fake_url)
    with pytest.raises(StreamError, match="nope"):
        list(chat.stream("q"))
    assert chat.get_turns() == []


def test_failure_before_any_token_adds_no_turns(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.chat("before")
    fake.script(*[Reply(status=500, headers={"Retry-After": "0"})] * 3)
    with pytest.raises(ServerError):
        chat.chat("fails")
    with pytest.raises(ServerError):
        fake.script(*[Reply(status=500, headers={"Retry-After": "0"})] * 3)
        list(chat.stream("fails too"))
    assert [t.text for t in chat.get_turns()] == ["before", "Hello from the fake server."]
    chat.chat("after")
    assert [m["content"] for m in fake.last_body()["messages"]] == [
        "before", "Hello from the fake server.", "after",
    ]


def test_breaking_out_of_the_loop_keeps_a_partial_turn(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    got = []
    for chunk in chat.stream("q"):
        got.append(chunk)
        if len(got) == 2:
            break
    assert chat.busy is False  # the generator was closed, the lock released
    user, reply = chat.get_turns()
    assert reply.partial is True
    assert reply.text == "".join(got) == TEXT[:16]
    assert reply.finish_reason == "interrupted"
    # The next exchange works and carries the partial answer as history.
    assert chat.chat("go on") == "Hello from the fake server."
    assert fake.last_body()["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": TEXT[:16]},
        {"role": "user", "content": "go on"},
    ]
    assert_alternates(chat)


def test_keyboard_interrupt_in_the_loop_keeps_a_partial_turn(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(Reply(text=TEXT, delay=0.01))
    chat = new_chat(fake_url)
    got = []
    with pytest.raises(KeyboardInterrupt):
        for chunk in chat.stream("q"):
            got.append(chunk)
            if len(got) == 3:
                raise KeyboardInterrupt
    assert chat.busy is False
    reply = chat.last_turn()
    assert reply is not None
    assert reply.partial and reply.finish_reason == "interrupted"
    assert reply.text == TEXT[:24]
    chat.chat("next")
    assert [m["role"] for m in fake.last_body()["messages"]] == ["user", "assistant", "user"]
    assert fake.last_body()["messages"][1]["content"] == TEXT[:24]


def test_keyboard_interrupt_while_waiting_for_a_chunk(fake: FakeOpenAI, fake_url: str) -> None:
    """Ctrl-C lands inside the HTTP read (the usual case in a kernel), not in the loop body."""
    import _thread

    fake.script(Reply(text=TEXT, delay=0.3))
    chat = new_chat(fake_url)
    got: list[str] = []
    timer = None
    with pytest.raises(KeyboardInterrupt):
        for chunk in chat.stream("q"):
            got.append(chunk)
            if len(got) == 1:
                timer = threading.Timer(0.1, _thread.interrupt_main)
                timer.start()
    if timer is not None:
        timer.join()
    reply = chat.last_turn()
    assert reply is not None and reply.partial and reply.finish_reason == "interrupted"
    assert reply.text == "".join(got)
    assert chat.busy is False


async def test_cancelling_a_stream_async_consumer_keeps_a_partial_turn(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(Reply(text=TEXT, delay=0.05))
    chat = new_chat(fake_url)
    got: list[str] = []
    two = asyncio.Event()

    async def consume() -> None:
        async for chunk in chat.stream_async("q"):
            got.append(chunk)
            if len(got) == 2:
                two.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert chat.busy is False
    user, reply = chat.get_turns()
    assert reply.partial and reply.finish_reason == "interrupted"
    assert reply.text == "".join(got)
    assert reply.text.startswith(TEXT[:16]) and len(reply.text) < len(TEXT)

    assert await chat.chat_async("go on") == "Hello from the fake server."
    assert fake.last_body()["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": reply.text},
        {"role": "user", "content": "go on"},
    ]
    assert_alternates(chat)


def test_closing_a_held_stream_keeps_a_partial_turn(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    it = chat.stream("q")
    assert next(it) + next(it) == TEXT[:16]
    assert chat.busy
    it.close()  # the iterator is still referenced: only close() ends the exchange
    assert chat.busy is False
    assert last(chat).partial and last(chat).text == TEXT[:16]
    assert last(chat).finish_reason == "interrupted"


async def test_aclosing_a_stream_async_keeps_a_partial_turn_at_once(
    fake: FakeOpenAI, fake_url: str
) -> None:
    from contextlib import aclosing

    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    async with aclosing(chat.stream_async("q")) as chunks:
        async for _ in chunks:
            break
    assert chat.busy is False
    reply = chat.last_turn()
    assert reply is not None and reply.partial and reply.text == TEXT[:8]
    assert reply.finish_reason == "interrupted"
    assert await chat.chat_async("next") == "Hello from the fake server."
    assert [m["content"] for m in fake.last_body()["messages"]] == ["q", TEXT[:8], "next"]


async def test_breaking_out_of_stream_async_frees_the_chat_soon(
    fake: FakeOpenAI, fake_url: str
) -> None:
    """Without aclosing(), asyncio closes the abandoned generator on its next iterations."""
    fake.script(Reply(text=TEXT))
    chat = new_chat(fake_url)
    async for _ in chat.stream_async("q"):
        break
    for _ in range(100):
        if not chat.busy:
            break
        await asyncio.sleep(0.01)
    assert chat.busy is False
    assert last(chat).partial and last(chat).text == TEXT[:8]
    assert await chat.chat_async("next") == "Hello from the fake server."
    assert_alternates(chat)


async def test_stream_async_echo(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text=TEXT))
    chunks = [c async for c in new_chat(fake_url).stream_async("the prompt", echo="all")]
    out = capsys.readouterr().out
    assert "the prompt" in out and out.endswith("".join(chunks))


async def test_async_cut_stream(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, cut_after=2))
    chat = new_chat(fake_url)
    with pytest.raises(StreamError):
        async for _ in chat.stream_async("q"):
            pass
    assert len(fake.chat_requests()) == 1
    assert last(chat).partial and last(chat).text == TEXT[:16]


# -- one exchange at a time ---------------------------------------------------------------------


def test_a_second_send_on_a_busy_chat_is_refused(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat._core._chat import ChatBusyError

    fake.script(Reply(text=TEXT, delay=0.05))
    chat = new_chat(fake_url)
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append("".join(chat.stream("slow"))))
    worker.start()
    deadline = time.monotonic() + 10
    while not chat.busy and time.monotonic() < deadline:
        time.sleep(0.005)
    assert chat.busy
    with pytest.raises(ChatBusyError, match="busy") as info:
        chat.chat("interloper")
    assert isinstance(info.value, ConfigurationError)
    with pytest.raises(ChatBusyError):
        chat.set_turns([])
    with pytest.raises(ChatBusyError):
        chat.reset()
    with pytest.raises(ChatBusyError):
        chat.set_model("another")  # the answer under way keeps its model
    worker.join(timeout=10)
    assert result == [TEXT]
    assert [t.text for t in chat.get_turns()] == ["slow", TEXT]
    assert len(fake.chat_requests()) == 1  # the refused call never reached the server
    assert chat.busy is False
    chat.chat("now it's free")
    assert len(chat.get_turns()) == 4


def test_wait_idle_waits_for_the_answer_to_let_the_chat_go(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, delay=0.05))
    chat = new_chat(fake_url)
    assert chat.wait_idle(0) is True  # nothing streaming: at once
    first = threading.Event()
    seen: list[bool] = []

    def on_start(c: Chat, event: str, exchange: object) -> None:
        if event == "start":
            first.set()
        elif event == "turn":
            seen.append(c.busy)  # heard just before the answer lets the chat go

    chat.add_listener(on_start)
    worker = threading.Thread(target=lambda: "".join(chat.stream("slow")))
    worker.start()
    assert first.wait(10)
    assert chat.wait_idle(0.01) is False  # still answering: gives up after the timeout
    assert chat.wait_idle(10) is True
    assert chat.busy is False
    worker.join(timeout=10)
    assert seen == [True]
    chat.chat("now it's free")  # the wait left the chat free, not held
    assert len(chat.get_turns()) == 4


async def test_a_second_async_send_is_refused(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text=TEXT, delay=0.05))
    chat = new_chat(fake_url)
    first = asyncio.create_task(chat.chat_async("slow", echo="output"))
    while not chat.busy:
        await asyncio.sleep(0.005)
    with pytest.raises(ConfigurationError, match="busy"):
        await chat.chat_async("interloper")
    assert await first == TEXT
    assert [t.text for t in chat.get_turns()] == ["slow", TEXT]
