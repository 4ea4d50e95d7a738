"""parallel_chat and friends, on the wire against the fake server.

Limits are checked on what the server saw (its count of concurrent requests, the times requests
arrived), never on how long a run took.
"""

from __future__ import annotations

import _thread
import asyncio
import json
import random
import threading
import time
from typing import Any

import pytest

from jupyter_llmchat import (
    Chat,
    ConfigurationError,
    LLMChatError,
    ParallelChatError,
    RateLimitError,
    ServerError,
    parallel_chat,
    parallel_chat_structured,
    parallel_chat_text,
)
from tests.fake_openai import FakeOpenAI, RecordedRequest, Reply
from tests.helpers import new_chat

FAST = 60_000  # rpm: starts 1 ms apart, so only max_active limits what a test looks at


def prompt_of(request: RecordedRequest) -> str:
    return str(request.body["messages"][-1]["content"])


def requests_for(fake: FakeOpenAI, match: str) -> list[RecordedRequest]:
    return [r for r in fake.chat_requests() if match in prompt_of(r)]


def test_answers_come_back_in_prompt_order(fake: FakeOpenAI, fake_url: str) -> None:
    rng = random.Random(7)
    prompts = [f"question {i:02d}" for i in range(12)]
    for i, p in enumerate(prompts):
        # Random server delays: the answers finish in another order than they were asked.
        fake.script_for(p, Reply(text=f"answer {i:02d}", hang=rng.uniform(0, 0.15)))
    chat = new_chat(fake_url, system_prompt="Be brief.")
    chat.set_turns([])

    answers = parallel_chat_text(chat, prompts, max_active=6, rpm=FAST)

    assert answers == [f"answer {i:02d}" for i in range(12)]
    assert answers.errors == {} and not answers.interrupted
    assert chat.get_turns() == []  # the chat given is left untouched
    bodies = [r.body for r in fake.chat_requests()]
    assert sorted(prompt_of(r) for r in fake.chat_requests()) == prompts
    assert all(b["messages"][0] == {"role": "system", "content": "Be brief."} for b in bodies)


def test_parallel_chat_returns_copies_that_keep_working(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.chat("Earlier question")
    fake.reset()
    fake.script_for("one", Reply(text="first"))
    fake.script_for("two", Reply(text="second"))

    chats = parallel_chat(chat, ["one", ["two"]], rpm=FAST)

    assert len(chats) == 2 and all(isinstance(c, Chat) for c in chats)
    assert [c.last_turn().text for c in chats] == ["first", "second"]  # type: ignore[union-attr]
    assert len(chat.get_turns()) == 2  # untouched
    for body in (r.body for r in fake.chat_requests()):
        # Each copy carries the history it was copied with.
        assert [m["content"] for m in body["messages"][:2]] == ["Earlier question", fake.default_reply.text]
    # A copy's HTTP client belonged to the run's private loop: it must still work afterwards.
    first = chats[0]
    assert isinstance(first, Chat)
    first.chat("and again")
    assert len(first.get_turns()) == 6


def test_max_active_is_honoured(fake: FakeOpenAI, fake_url: str) -> None:
    prompts = [f"q{i}" for i in range(9)]
    # The first answers are held until three requests are in progress: max_active is then
    # reached whatever the machine's speed, and a fourth sent meanwhile would show as 4.
    fake.script(*[Reply(text="ok", gate=3) for _ in range(3)])
    fake.default_reply = Reply(text="ok", hang=0.05)
    answers = parallel_chat_text(new_chat(fake_url), prompts, max_active=3, rpm=FAST)
    assert answers == ["ok"] * 9
    assert fake.max_in_flight == 3  # reached, never passed


def test_rpm_is_honoured(fake: FakeOpenAI, fake_url: str) -> None:
    rpm = 600  # one start every 0.1 s
    chat = new_chat(fake_url)
    # A first run pays one-off imports (asyncio backends, TLS) on the loop, which can hold the
    # first requests back and deliver them together: measure a warm run.
    parallel_chat_text(chat, ["warm-up"], rpm=FAST)
    fake.reset()
    answers = parallel_chat_text(chat, [f"q{i}" for i in range(5)], max_active=5, rpm=rpm)
    assert len(answers) == 5 and None not in answers
    times = sorted(r.time for r in fake.chat_requests())
    interval = 60 / rpm
    # Five starts spaced by the interval span four intervals (a little slack for scheduling).
    # Single gaps are not checked: a busy machine may deliver two spaced starts together.
    assert times[-1] - times[0] >= 4 * interval - 0.03


def test_429_with_retry_after_then_success(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script_for("slow down", Reply(status=429, headers={"Retry-After": "0.3"}), Reply(text="done"))
    answers = parallel_chat_text(new_chat(fake_url), ["fine", "slow down"], rpm=FAST)
    assert answers == [fake.default_reply.text, "done"]
    tries = requests_for(fake, "slow down")
    # The client's own retry, honouring Retry-After; parallel_chat adds no second layer.
    assert len(tries) == 2
    assert tries[1].time - tries[0].time >= 0.25


def test_a_request_failing_for_good_loses_no_other_answer(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script_for("broken", *[Reply(status=500, headers={"Retry-After": "0"})] * 10)
    prompts = ["a", "b", "broken", "c", "d"]

    answers = parallel_chat_text(new_chat(fake_url), prompts, max_active=2, rpm=FAST, on_error="continue")

    ok = fake.default_reply.text
    assert answers == [ok, ok, None, ok, ok]
    assert list(answers.errors) == [2] and isinstance(answers.errors[2], ServerError)
    assert len(requests_for(fake, "broken")) == 3  # the client's max_tries, not retried again


def test_parallel_chat_puts_the_error_in_its_slot(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script_for("limited", *[Reply(status=429, headers={"Retry-After": "0"})] * 10)
    chats = parallel_chat(new_chat(fake_url), ["limited", "fine"], rpm=FAST, on_error="continue")
    assert isinstance(chats[0], RateLimitError)
    assert isinstance(chats[1], Chat)


def test_on_error_return_sends_nothing_new_after_a_failure(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script_for("first", *[Reply(status=500, headers={"Retry-After": "0"})] * 10)
    answers = parallel_chat_text(new_chat(fake_url), ["first", "second", "third"], max_active=1, rpm=FAST)
    assert answers == [None, None, None]
    assert isinstance(answers.errors[0], ServerError)
    assert requests_for(fake, "second") == [] and requests_for(fake, "third") == []


def test_on_error_stop_raises_with_what_finished(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script_for("one", Reply(text="first"))
    fake.script_for("two", *[Reply(status=500, headers={"Retry-After": "0"})] * 10)
    with pytest.raises(ParallelChatError) as info:
        parallel_chat_text(new_chat(fake_url), ["one", "two", "three"], max_active=1, rpm=FAST, on_error="stop")
    assert info.value.results == ["first", None, None]
    assert isinstance(info.value.errors[1], ServerError)
    assert isinstance(info.value.__cause__, ServerError)
    assert isinstance(info.value, LLMChatError)


def test_ctrl_c_keeps_what_finished(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script_for("quick 1", Reply(text="one"))
    fake.script_for("quick 2", Reply(text="two"))
    fake.script_for("stuck 1", Reply(text="never", hang=3))
    fake.script_for("stuck 2", Reply(text="never", hang=3))
    running = threading.Event()
    running.set()

    def press_ctrl_c() -> None:
        # Once the two quick answers are out and the two stuck ones wait on the server.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and running.is_set():
            if len(fake.chat_requests()) == 4 and fake.in_flight == 2:
                time.sleep(0.3)  # let the client read the two finished answers
                _thread.interrupt_main()
                return
            time.sleep(0.02)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        answers = parallel_chat_text(
            new_chat(fake_url), ["quick 1", "stuck 1", "quick 2", "stuck 2"], max_active=4, rpm=FAST
        )
        presser.join()  # a late Ctrl-C must land here, inside the try, never after the test
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped parallel_chat_text")
    finally:
        running.clear()
        presser.join()
    assert answers == ["one", None, "two", None]
    assert answers.interrupted and answers.errors == {}
    assert "interrupted; kept 2 of 4 results" in capsys.readouterr().err


async def test_usable_while_an_event_loop_runs(fake: FakeOpenAI, fake_url: str) -> None:
    """A notebook cell runs inside the kernel's loop: the sync API must not need it."""
    asyncio.get_running_loop()
    answers = parallel_chat_text(new_chat(fake_url), ["x", "y"], rpm=FAST)
    assert answers == [fake.default_reply.text] * 2


def test_no_progress_output_outside_a_terminal_or_notebook(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parallel_chat_text(new_chat(fake_url), ["x"], rpm=FAST)
    assert capsys.readouterr() == ("", "")


def test_kwargs_reach_each_request(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat import params

    parallel_chat_text(new_chat(fake_url), ["x", "y"], rpm=FAST, kwargs={"params": params(max_tokens=7)})
    assert [r.body["max_tokens"] for r in fake.chat_requests()] == [7, 7]
    assert all(r.body["stream"] is False for r in fake.chat_requests())


@pytest.mark.parametrize(
    ("prompts", "options"),
    [
        ("one prompt", {}),
        (["x"], {"max_active": 0}),
        (["x"], {"rpm": 0}),
        (["x"], {"on_error": "ignore"}),
    ],
)
def test_user_mistakes_are_clear_errors(fake: FakeOpenAI, fake_url: str, prompts: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        parallel_chat_text(new_chat(fake_url), prompts, **options)
    assert fake.chat_requests() == []


def test_no_prompts_no_requests(fake: FakeOpenAI, fake_url: str) -> None:
    assert parallel_chat(new_chat(fake_url), []) == []
    assert fake.requests == []


def test_structured_answers_in_prompt_order(fake: FakeOpenAI, fake_url: str) -> None:
    import dataclasses

    @dataclasses.dataclass
    class Person:
        name: str
        age: int

    people = [("Ada", 36), ("Alan", 41), ("Grace", 85)]
    for name, age in people:
        fake.script_for(name, Reply(text=json.dumps({"name": name, "age": age}), hang=random.uniform(0, 0.1)))
    fake.script_for("nobody", Reply(text="not json at all"))
    prompts = [f"Who is {n}?" for n, _ in people] + ["Who is nobody?"]

    found = parallel_chat_structured(new_chat(fake_url), prompts, Person, rpm=FAST, on_error="continue")

    assert found[:3] == [Person(n, a) for n, a in people]
    assert found[3] is None and isinstance(found.errors[3], LLMChatError)
    for r in fake.chat_requests():
        assert r.body["response_format"]["type"] == "json_schema"




def test_progress_line_counts_every_request_of_a_tool_exchange(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat._core._parallel import _State

    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    chat = new_chat(fake_url)
    chat.chat("earlier", echo="none")  # history the copies start with: not counted again

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    chat.register_tool(add)
    fake.script(
        Reply(text="", tool_calls=[call], finish_reason="tool_calls", usage={"prompt_tokens": 40, "completion_tokens": 6}),
        Reply(text="It is 5.", usage={"prompt_tokens": 60, "completion_tokens": 4}),
    )
    [copy] = parallel_chat(chat, ["What is 2 + 3?"], rpm=FAST, progress=False)
    assert isinstance(copy, Chat)
    state = _State(1, len(chat.get_turns()))
    state.add(copy)
    assert state.line() == "1/1 done · tokens 100 in, 10 out · cost n/a"
    free = _State(1, len(chat.get_turns()))
    for t in (copy.get_turns()[-1], copy.get_turns()[-3]):  # answers their provider said are free
        t.cost, t.free = 0.0, True
    free.add(copy)
    assert free.line() == "1/1 done · tokens 100 in, 10 out · cost $0, local"


def test_connections_dropped_before_any_byte_lose_no_prompt(fake: FakeOpenAI, fake_url: str) -> None:
    """A busy server resets or closes some connections before answering (29 of 2,000 prompts
    failed under max_active=50): each such request is sent again, and every prompt is answered."""
    prompts = [f"prompt {i:02d}" for i in range(20)]
    for i, p in enumerate(prompts):
        drops = [Reply(drop="reset" if i % 2 else "close")] * (i % 3)  # none, one or two drops
        fake.script_for(p, *drops, Reply(text=f"answer {i:02d}"))
    answers = parallel_chat_text(new_chat(fake_url), prompts, max_active=10, rpm=FAST)
    assert answers == [f"answer {i:02d}" for i in range(20)]
    assert answers.errors == {}
    assert len(fake.chat_requests()) == sum(1 + i % 3 for i in range(20))
