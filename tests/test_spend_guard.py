"""The one spend guard every request of the kernel passes, with the notebook's budget on it: a
cell, each tool round, the panel's session, ``session().chat()``, ``parallel_chat`` and a ``Chat``
the user made; one ledger that ``%chat_usage --all`` and the budget both read.

A real IPython shell (terminal flavour) with the extension loaded, against the fake server on
127.0.0.1. Assertions are on what the server received, the ledger and the messages shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import BudgetExceeded, LLMChatError, TransportError
from jupyter_llmchat._jupyter._bridge import current_bridge
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import closed_port_url
from tests.test_magics import config, ip, run  # noqa: F401  (a fixture)


@pytest.fixture(autouse=True)
def _fresh_budget(ip: InteractiveShell) -> Iterator[None]:
    """No budget and an empty notebook ledger before and after each test."""
    from jupyter_llmchat._core._spend import Budget

    current_bridge().set_budget(Budget())
    current_bridge().ledger.load([])
    yield
    current_bridge().set_budget(Budget())


def spent_tokens() -> int:
    total = current_bridge().ledger.total()
    return (total.input or 0) + (total.output or 0)


def user_chat(fake: FakeOpenAI, **kwargs: Any) -> jupyter_llmchat.Chat:
    """A Chat the user makes in a notebook cell, not one of the sessions."""
    return jupyter_llmchat.chat_openai_compatible(base_url=fake.base_url, model="test-model", **kwargs)


# -- item 5: one ledger, fed by every Chat of the kernel ------------------------------------


def test_every_chat_of_the_kernel_is_in_the_ledger_and_the_budget(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.default_reply = Reply(text="ok", usage={"prompt_tokens": 20, "completion_tokens": 5})
    run(ip, "%chat_budget --tokens 100000")
    mine = user_chat(fake)
    mine.chat("a user's own Chat")
    jupyter_llmchat.session().chat("the session from Python")
    jupyter_llmchat.parallel_chat_text(mine, ["one", "two"], progress=False)
    assert len(fake.chat_requests()) == 4
    assert current_bridge().ledger.total().turns == 4 and spent_tokens() == 100
    capsys.readouterr()
    run(ip, "%chat_budget")
    assert "token budget: 100,000, used 100, left 99,900" in capsys.readouterr().out
    result = run(ip, "%chat_usage --all")
    assert result.error_in_exec is None
    rows = current_bridge().record()["usage"]
    assert [(r["turns"], r["input"], r["output"]) for r in rows] == [(4, 80, 20)]


def test_a_users_chat_and_parallel_chat_are_refused_by_the_budget(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    run(ip, "%chat_budget --tokens 50")
    mine = user_chat(fake)
    with pytest.raises(BudgetExceeded, match="token budget of 50") as info:
        mine.chat("hello", params={"max_tokens": 100})
    assert isinstance(info.value, LLMChatError)
    # Python's remedy: the Chat's params, not a cell's option.
    assert "params(max_tokens=N)" in info.value.message and "--max-tokens" not in info.value.message
    with pytest.raises(BudgetExceeded, match="token budget of 50"):
        jupyter_llmchat.session().chat("hello")  # max_tokens unset: the default worst case
    with pytest.raises(BudgetExceeded, match=r"parallel_chat_text: prompt 1 of 3 refused, nothing sent"):
        jupyter_llmchat.parallel_chat_text(mine, ["a", "b", "c"], kwargs={"params": {"max_tokens": 100}},
                                           progress=False)
    assert fake.chat_requests() == [] and mine.get_turns() == []


def test_parallel_chat_reports_a_refused_prompt_and_keeps_the_others(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    run(ip, "%chat_budget --tokens 400")
    prompts = ["small one", "x" * 2000, "small two"]  # the second alone passes the budget
    out = jupyter_llmchat.parallel_chat_text(user_chat(fake), prompts, kwargs={"params": {"max_tokens": 20}},
                                             on_error="continue", progress=False)
    assert out[0] is not None and out[2] is not None and out[1] is None
    assert isinstance(out.errors[1], BudgetExceeded)
    assert len(fake.chat_requests()) == 2


# -- item 6: every round of a tool exchange passes the guard --------------------------------


def test_each_tool_round_is_checked_and_a_refused_round_ends_the_exchange_partial(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    fake.default_reply = Reply(text="", tool_calls=[call], finish_reason="tool_calls",
                               usage={"prompt_tokens": 11, "completion_tokens": 4})

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    chat = jupyter_llmchat.session()
    chat.register_tool(add)
    run(ip, "%chat_budget --tokens 100")
    try:
        result = run(ip, "%chat --max-tokens 20 What is 2 + 3?")
    finally:
        chat.set_tools([])
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "token budget of 100" in str(result.error_in_exec)
    assert "the exchange so far is kept, marked partial" in str(result.error_in_exec)
    sent = len(fake.chat_requests())
    assert 1 < sent < 11  # rounds went out until the next one's worst case would pass the budget
    assert spent_tokens() == 15 * sent <= 100
    turns = chat.get_turns()
    # The exchange is recorded partial, its last tool results answered (a valid history).
    assert [t.role for t in turns] == ["user", "assistant"] * (sent + 1)
    assert turns[-1].partial and turns[-2].tool_results and not turns[-1].tool_requests
    # The refused round sent nothing, so it costs nothing.
    assert turns[-1].tokens is not None and turns[-1].tokens.input == 0


# -- item 7: the model is resolved before the worst case is checked ---------------------------


def test_the_worst_case_of_a_model_from_models_is_checked(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    fake.models = ["gpt-4o"]
    config(ip, provider_name="OpenAI", model="")
    run(ip, "%chat_budget 0.001")
    result = run(ip, "%chat --max-tokens 4000 hello")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert "pass the budget of $0.001" in str(result.error_in_exec)
    assert "lower --max-tokens" in str(result.error_in_exec)  # a cell's remedy
    assert fake.chat_requests() == [] and len(fake.requests) == 1  # GET /models only
    run(ip, "%chat --max-tokens 10 hello")
    assert len(fake.chat_requests()) == 1


# -- the one estimate: what --dry-run shows is what the guard counts ----------------------------


def test_the_guard_counts_the_estimate_dry_run_shows(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    run(ip, "%chat First question")
    capsys.readouterr()
    run(ip, "%%chat --dry-run --max-tokens 7\nA second question, with history before it.")
    estimate = int(re.search(r"~([\d,]+) tokens in", capsys.readouterr().out).group(1).replace(",", ""))
    used = spent_tokens()
    run(ip, f"%chat_budget --tokens {used + estimate + 7 - 1}")
    result = run(ip, "%%chat --max-tokens 7\nA second question, with history before it.")
    assert isinstance(result.error_in_exec, UsageError) and len(fake.chat_requests()) == 1
    assert f"up to {estimate + 7:,} tokens ({estimate:,} in, up to 7 out)" in str(result.error_in_exec)
    run(ip, f"%chat_budget --tokens {used + estimate + 7}")
    assert run(ip, "%%chat --max-tokens 7\nA second question, with history before it.").error_in_exec is None
    assert len(fake.chat_requests()) == 2


def test_dry_run_counts_a_tool_round_in_the_history_as_the_guard_does(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tool calls' arguments and results are sent, so both count them (the dry run's own
    estimate once left them out: history text only, one message per turn)."""
    import re

    call = {"id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"key": "' + "k" * 400 + '"}'}}
    fake.script(Reply(text="", tool_calls=[call], finish_reason="tool_calls"), Reply(text="done"))

    def lookup(key: str) -> str:
        """Look a key up."""
        return "v" * 800

    chat = jupyter_llmchat.session()
    chat.register_tool(lookup)
    try:
        run(ip, "%chat Look it up.")
        capsys.readouterr()
        run(ip, "%%chat --dry-run --max-tokens 7\nAnd now?")
        out = capsys.readouterr().out
        assert "history: 4 turns (1 exchanges," in out  # a tool round is inside its exchange
        estimate = int(re.search(r"~([\d,]+) tokens in", out).group(1).replace(",", ""))
        assert estimate > 300  # the 400-character arguments and the 800-character result
        used = spent_tokens()
        run(ip, f"%chat_budget --tokens {used + estimate + 7 - 1}")
        result = run(ip, "%%chat --max-tokens 7\nAnd now?")
        assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
        assert f"({estimate:,} in, up to 7 out)" in str(result.error_in_exec)
    finally:
        chat.set_tools([])
    assert len(fake.chat_requests()) == 2


# -- in flight: reserved while the answer streams, settled when it is in ------------------------


def test_requests_in_flight_hold_their_worst_case_until_their_answer_settles(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    from jupyter_llmchat._core._spend import Spent, spend_guard

    fake.default_reply = Reply(text="a long enough answer", chunk_chars=4,
                               usage={"prompt_tokens": 10, "completion_tokens": 5})
    run(ip, "%chat_budget --tokens 130")
    first, second = user_chat(fake), user_chat(fake)
    stream = first.stream("first", params={"max_tokens": 100})
    next(stream)  # its answer is arriving: the request is in flight, its worst case held
    held = spend_guard.held()
    assert held.tokens > 100
    with pytest.raises(BudgetExceeded, match="held by requests in flight"):
        second.chat("second", params={"max_tokens": 20})
    assert len(fake.chat_requests()) == 1
    list(stream)  # the answer is in: its 15 tokens are spent, the hold let go
    assert spend_guard.held() == Spent() and spent_tokens() == 15
    second.chat("second", params={"max_tokens": 20})
    assert len(fake.chat_requests()) == 2 and spent_tokens() == 30


def test_a_failed_request_releases_its_hold(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    from jupyter_llmchat._core._spend import Spent, spend_guard

    run(ip, "%chat_budget --tokens 1000")
    broken = jupyter_llmchat.chat_openai_compatible(base_url=closed_port_url(), model="m")
    with pytest.raises(TransportError):
        broken.chat("hello", params={"max_tokens": 100})
    assert spend_guard.held() == Spent() and spent_tokens() == 0
    user_chat(fake).chat("hello", params={"max_tokens": 900})  # the whole budget is there again
    assert len(fake.chat_requests()) == 1


# -- item 9: no budget past a sane maximum, and no formatter raises -----------------------------


@pytest.mark.parametrize("line", ["1e30", "1e7", "--tokens 10000000000000"])
def test_a_budget_past_the_maximum_is_a_usage_error(
    ip: InteractiveShell, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(ip, f"%chat_budget {line}")
    assert isinstance(result.error_in_exec, UsageError) and "from 0 to" in str(result.error_in_exec)
    for magic in ("%chat_budget", "%chat_usage", "%chat_usage --all"):
        assert run(ip, magic).error_in_exec is None
    run(ip, "%chat_budget 1000000")
    assert "budget: $1,000,000.00" in capsys.readouterr().out
