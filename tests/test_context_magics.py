"""``--with``, ``--dry-run``, replay, ``%chat_fix``, ``%chat_budget`` and the footer in a real
IPython shell (terminal flavour), against the fake server. Assertions are on the wire (what the
server received) and on the shell's state, never on model wording.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat._jupyter._bridge import current_bridge
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_magics import config, ip, run, texts  # noqa: F401  (a fixture)

pd = pytest.importorskip("pandas")


def user_message(fake: FakeOpenAI) -> str:
    msgs = fake.chat_requests()[-1].body["messages"]
    assert msgs[-1]["role"] == "user"
    return str(msgs[-1]["content"])


@pytest.fixture(autouse=True)
def _no_budget(ip: InteractiveShell) -> Any:
    """No budget, and an empty notebook ledger (the spend of earlier tests is not this one's)."""
    from jupyter_llmchat._core._spend import Budget

    current_bridge().ledger.load([])
    yield
    bridge = current_bridge()
    if bridge is not None:
        bridge.budget = Budget()


# -- --with ------------------------------------------------------------------------------------


def test_with_attaches_bounded_summaries_and_says_so(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns["sales"] = pd.DataFrame({"region": ["N", "S"], "amount": [10.5, 7.25]})
    ip.user_ns["tags"] = ["a", "b", "c"]
    capsys.readouterr()
    run(ip, "%%chat --with sales,tags\nWhich region sold more?")
    sent = user_message(fake)
    assert sent.startswith("Which region sold more?\n\n[attached value `sales`: pandas.DataFrame]\n```text\n")
    assert "2 rows x 2 columns" in sent and "amount: float64" in sent
    assert "[attached value `tags`: list]" in sent and "list of length 3" in sent
    out = capsys.readouterr().out
    assert "attached: sales (pandas.DataFrame, " in out and "tags (list, " in out
    # The history keeps what was sent, so the next question carries the same context.
    assert texts(jupyter_llmchat.session())[0][1] == sent


def test_with_is_bounded_by_the_trait(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    config(ip, context_max_tokens=50)
    ip.user_ns["big"] = "word " * 10_000
    run(ip, "%chat --with big Summarise")
    sent = user_message(fake)
    assert len(sent) < 50 * 4 + 200 and "cut to about 50 tokens" in sent
    config(ip, context_max_tokens=2000)


@pytest.mark.parametrize("line", ["%%chat --with nope\nhi", "%%chat --with df,\nhi", "%chat --with 1x hi"])
def test_unknown_name_is_one_usage_error_and_nothing_is_sent(
    ip: InteractiveShell, fake: FakeOpenAI, line: str
) -> None:
    ip.user_ns.pop("nope", None)
    ip.user_ns["df"] = 1
    result = run(ip, line.replace("df,", "df,nope"))
    assert isinstance(result.error_in_exec, UsageError)
    assert "\n" not in str(result.error_in_exec)
    assert fake.chat_requests() == []


# -- --dry-run ---------------------------------------------------------------------------------


def test_dry_run_shows_the_messages_and_sends_nothing(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text="<script>alert(1)</script> first answer"))
    run(ip, "%%chat --system 'Be terse.'\nfirst")
    before = texts(jupyter_llmchat.session())
    n = len(fake.requests)
    ip.user_ns["xs"] = [1, 2]
    capsys.readouterr()
    run(ip, "%%chat --dry-run --max-tokens 64 --with xs\nsecond {{ 1 + 1 }}")
    out = capsys.readouterr().out
    assert len(fake.requests) == n
    assert texts(jupyter_llmchat.session()) == before
    assert "dry run: nothing sent, nothing recorded" in out
    assert "system prompt: Be terse." in out
    assert "history: 2 turns (1 exchanges" in out
    assert "new message (user):\nsecond 2\n\n[attached value `xs`: list]" in out
    assert "estimate: ~" in out and "up to 64 out" in out
    run(ip, "%%chat --dry-run --new\nthird")
    out = capsys.readouterr().out
    assert "history: 0 turns" in out and texts(jupyter_llmchat.session()) == before
    assert len(fake.requests) == n


# -- replay ------------------------------------------------------------------------------------


def in_cell(ip: InteractiveShell, monkeypatch: pytest.MonkeyPatch, cell_id: str) -> None:
    """Run what follows as notebook cell ``cell_id`` (the id JupyterLab sends with a request)."""
    monkeypatch.setattr(ip, "parent_header", {"metadata": {"cellId": cell_id}}, raising=False)


def test_rerun_replays_without_a_request_and_without_spend(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    fake.script(Reply(text="Paris."))
    ip.user_ns["city"] = "France"
    cell = "%%chat -o ans\nCapital of {{ city }}?"
    run(ip, cell)
    assert len(fake.chat_requests()) == 1
    capsys.readouterr()
    ip.user_ns["ans"] = None
    run(ip, cell)
    out = capsys.readouterr().out
    assert len(fake.chat_requests()) == 1
    assert "Paris." in out and "replayed (recorded " in out
    assert ip.user_ns["ans"] == "Paris."
    assert len(jupyter_llmchat.session().get_turns()) == 2
    spend = current_bridge().ledger.to_list()
    assert sum(r["turns"] for r in spend if r["model"] == "test-model") >= 1
    before_turns = sum(r["turns"] for r in spend)
    # A changed value in {{ }} is a changed prompt: asked again.
    ip.user_ns["city"] = "Peru"
    fake.script(Reply(text="Lima."))
    run(ip, cell)
    assert len(fake.chat_requests()) == 2
    assert sum(r["turns"] for r in current_bridge().ledger.to_list()) == before_turns + 1
    assert texts(jupyter_llmchat.session())[1][1] == "Lima."  # the cell's exchange was replaced


def test_rerun_replays_an_exchange_with_tool_rounds_whole(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replayed answer is the exchange's last turn, not the one that asked for the tool;
    the next exchange of the notebook comes after all of its turns."""
    in_cell(ip, monkeypatch, "cell-1")
    call = {"id": "c1", "type": "function", "function": {"name": "twice", "arguments": '{"x": 4}'}}
    fake.script(Reply(text="", tool_calls=[call], finish_reason="tool_calls"), Reply(text="Eight."))

    def twice(x: int) -> int:
        """Double x."""
        return 2 * x

    jupyter_llmchat.session().register_tool(twice)
    cell = "%%chat -o ans\nTwice 4?"
    run(ip, cell)
    capsys.readouterr()
    ip.user_ns["ans"] = None
    run(ip, cell)
    out = capsys.readouterr().out
    assert len(fake.chat_requests()) == 2  # the two of the first run only
    assert "[tool call] twice" in out and "Eight." in out and "replayed (recorded " in out
    assert ip.user_ns["ans"] == "Eight."
    assert len(jupyter_llmchat.session().get_turns()) == 4


def test_the_same_question_in_another_cell_is_asked(
    ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    run(ip, "%%chat\nsame")
    in_cell(ip, monkeypatch, "cell-2")
    run(ip, "%%chat\nsame")
    assert len(fake.chat_requests()) == 2
    # With no cell ids (a terminal), asking again later is a new question too.
    monkeypatch.setattr(ip, "parent_header", {}, raising=False)
    run(ip, "%%chat\nsame")
    assert len(fake.chat_requests()) == 3


def test_refresh_and_replay_off_ask_again(
    ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    run(ip, "%%chat\nsame")
    run(ip, "%%chat --refresh\nsame")
    assert len(fake.chat_requests()) == 2
    config(ip, replay=False)
    try:
        run(ip, "%%chat --new\nsame")
        run(ip, "%%chat --new\nsame")
    finally:
        config(ip, replay=True)
    assert len(fake.chat_requests()) == 4


def test_other_history_model_or_params_ask_again(
    ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    run(ip, "%%chat\nq")
    run(ip, "%%chat -m other-model\nq")
    run(ip, "%%chat -t 0.5\nq")
    assert len(fake.chat_requests()) == 3
    run(ip, "%%chat -t 0.5\nq")  # unchanged since: replayed
    assert len(fake.chat_requests()) == 3
    run(ip, "%%chat --new\nq")
    assert len(fake.chat_requests()) == 4  # its params are not the recorded ones (-t 0.5)


# -- footer ------------------------------------------------------------------------------------


def test_footer_under_each_answer_and_off_with_the_trait(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text="abcdefgh" * 2))
    run(ip, "%chat hello")
    out = capsys.readouterr().out
    assert "test-model · 11 in / 2 out · n/a" in out
    config(ip, footer=False)
    try:
        run(ip, "%chat hello again")
    finally:
        config(ip, footer=True)
    assert " in / " not in capsys.readouterr().out


def test_footer_counts_every_request_of_a_tool_exchange(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    fake.script(
        Reply(text="", tool_calls=[call], finish_reason="tool_calls", usage={"prompt_tokens": 40, "completion_tokens": 6}),
        Reply(text="It is 5.", usage={"prompt_tokens": 60, "completion_tokens": 4}),
    )

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    jupyter_llmchat.session().register_tool(add)
    try:
        run(ip, "%chat What is 2 + 3?")
    finally:
        jupyter_llmchat.session().set_tools([])
    assert "test-model · 100 in / 10 out · n/a · 2 requests" in capsys.readouterr().out


# -- %chat_fix ---------------------------------------------------------------------------------


def test_chat_fix_sends_the_error_and_the_cell(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    cell = "def ratio(a, b):\n    return a / b\n\nratio(1, 0)\n"
    result = ip.run_cell(cell, store_history=True)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    fake.script(Reply(text="Divide by b only when it is not 0.\n```python\nratio(1, 1)\n```"))
    capsys.readouterr()
    run(ip, "%chat_fix -o fixed")
    sent = user_message(fake)
    assert "ZeroDivisionError: division by zero" in sent
    assert "```python\n" + cell.rstrip("\n") + "\n```" in sent
    assert "line 2, in ratio" in sent and "return a / b" in sent
    assert "interactiveshell" not in sent and "site-packages" not in sent
    assert "Divide by b" in capsys.readouterr().out
    assert ip.user_ns["fixed"] == "ratio(1, 1)"
    # Its prompt is not a template: braces in the user's code reach the model verbatim.
    ip.run_cell("{{'a': 1}}['b']", store_history=True)
    run(ip, "%chat_fix")
    assert "{{'a': 1}}['b']" in user_message(fake)


def test_chat_fix_names_the_cell_as_ipythons_traceback_does(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    """The frames of a cell are named by the shell's compiler (``format_code_name``), as
    IPython's own traceback names them: "Cell In[N]", N the cell's execution count."""
    defined = ip.run_cell("def halve(x):\n    return x / 0\n", store_history=True)
    failed = ip.run_cell("halve(4)\n", store_history=True)
    assert isinstance(failed.error_in_exec, ZeroDivisionError)
    fake.script(Reply(text="Do not divide by 0."))
    run(ip, "%chat_fix")
    sent = user_message(fake)
    assert f"Cell In[{failed.execution_count}], line 1, in <module>" in sent
    assert f"Cell In[{defined.execution_count}], line 2, in halve" in sent


def test_chat_fix_with_no_error_sends_nothing(
    ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(sys, "last_value", raising=False)
    monkeypatch.delattr(sys, "last_traceback", raising=False)
    capsys.readouterr()
    result = run(ip, "%chat_fix")
    assert result.error_in_exec is None
    assert "no error yet" in capsys.readouterr().out
    assert fake.requests == []


# -- %chat_budget ------------------------------------------------------------------------------


def test_token_budget_refuses_before_sending(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ip, "%chat_budget --tokens 300")
    assert "token budget: 300" in capsys.readouterr().out
    assert current_bridge().record()["budget"] == {"usd": None, "tokens": 300}
    result = run(ip, "%chat --max-tokens 1000 hello")
    assert isinstance(result.error_in_exec, UsageError)
    assert "token budget of 300" in str(result.error_in_exec) and "%chat_budget --tokens" in str(result.error_in_exec)
    assert fake.requests == []
    # Small enough: sent. Then the spend counts against the budget.
    fake.default_reply = Reply(text="ok", usage={"prompt_tokens": 250, "completion_tokens": 60})
    run(ip, "%chat --max-tokens 20 hello")
    assert len(fake.chat_requests()) == 1
    result = run(ip, "%chat --max-tokens 1 again")
    assert isinstance(result.error_in_exec, UsageError) and "token budget reached" in str(result.error_in_exec)
    assert len(fake.chat_requests()) == 1
    capsys.readouterr()
    run(ip, "%chat_usage")
    assert "token budget: 300, used 310, left 0" in capsys.readouterr().out
    run(ip, "%chat_budget --off")
    run(ip, "%chat --max-tokens 1 again")
    assert len(fake.chat_requests()) == 2
    assert "budget" not in current_bridge().record()


def test_usd_budget_uses_the_known_price(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    config(ip, provider_name="OpenAI", model="gpt-4o")
    run(ip, "%chat_budget 0.001")
    result = run(ip, "%chat --max-tokens 4000 hello")
    assert isinstance(result.error_in_exec, UsageError)
    assert "pass the budget of $0.001" in str(result.error_in_exec)
    assert fake.requests == []
    run(ip, "%chat --max-tokens 10 hello")
    assert len(fake.chat_requests()) == 1


@pytest.mark.parametrize("line", ["-1", "--off 1", "--tokens -5", "abc", "nan"])
def test_budget_mistakes_are_usage_errors(ip: InteractiveShell, line: str) -> None:
    result = run(ip, f"%chat_budget {line}")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec


def test_chat_fix_is_refused_by_the_budget(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    ip.run_cell("1 / 0", store_history=True)
    run(ip, "%chat_budget --tokens 10")
    result = run(ip, "%chat_fix")
    assert isinstance(result.error_in_exec, UsageError) and "token budget of 10" in str(result.error_in_exec)
    assert fake.requests == []


def test_help_lists_the_new_options(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "%%chat?")
    out = capsys.readouterr().out
    for option in ("--with NAME[,NAME...]", "--dry-run", "--refresh"):
        assert option in out, option
    assert "-s SESSION" in ip.find_line_magic("chat_fix").__doc__
    assert "--tokens" in ip.find_line_magic("chat_budget").__doc__
    magics = ip.magics_manager.registry["ChatMagics"]
    assert magics.context_max_tokens == 2000 and magics.replay and magics.footer
