"""One usage ledger and one cost formatter (STYLE.md "One place per fact").

Every view adds answers up by ``_usage.UsageRow``'s rule: a total is None while no answer
reported it (never a made-up 0), and answers with unknown tokens or cost are counted so a
partial total says so. These tests run one session with a known and an unknown answer through
each view and check that they agree.
"""

from __future__ import annotations

import sys

import pytest

from jupyter_llmchat import Chat, chat_openai_compatible, token_usage
from jupyter_llmchat._jupyter._report import UsageReport
from jupyter_llmchat._core._spend import Spent, footer, spend_guard
from jupyter_llmchat._core._turns import Tokens
from jupyter_llmchat._core._process import process_ledger
from jupyter_llmchat._core._usage import (
    Ledger,
    UsageRow,
    format_cost,
    format_limit,
    format_row_cost,
)
from tests.fake_openai import FakeOpenAI, Reply


def test_the_rule_unknown_stays_none_and_is_counted() -> None:
    row = UsageRow("p", "m")
    assert (row.input, row.cost, row.complete_cost) == (None, None, None)
    row.add(Tokens(), None)  # nothing reported
    assert (row.turns, row.input, row.output, row.cost) == (1, None, None, None)
    assert (row.unknown_tokens, row.unknown_cost) == (1, 1)
    row.add(Tokens(10, 2, 4), 0.5)
    assert (row.turns, row.input, row.output, row.cached, row.cost) == (2, 10, 2, 4, 0.5)
    assert (row.unknown_tokens, row.unknown_cost) == (1, 1)
    assert row.complete_cost is None  # one answer's cost is unknown: no total claims to be whole
    known = UsageRow("p", "m")
    known.add(Tokens(1, 1), 0.25)
    known.add(Tokens(1, 1), 0.25)
    assert known.complete_cost == 0.5


def test_record_rows_keep_their_form_through_the_ledger() -> None:
    rows = [
        {"provider": "A", "model": "m", "turns": 2, "input": 10, "output": 5, "cached": None, "cost_usd": 0.25},
        {"provider": "B", "model": "n", "turns": 3, "input": None, "output": None, "cached": None,
         "cost_usd": None},
    ]
    ledger = Ledger()
    ledger.load(rows)
    assert ledger.to_list() == rows
    both = Ledger.sum(ledger, ledger)
    assert both.to_list()[0] == {**rows[0], "turns": 4, "input": 20, "output": 10, "cost_usd": 0.5}
    assert ledger.to_list() == rows  # the parts are left alone
    total = ledger.total()
    assert (total.turns, total.cost, total.unknown_cost, total.unknown_tokens) == (5, 0.25, 3, 3)
    assert Spent.of(total) == Spent.from_rows(rows) == Spent(usd=0.25, tokens=15, unknown_cost=3)


def _priced_chat(url: str) -> Chat:
    # A provider and model genai-prices knows, so answers with tokens have a cost.
    return chat_openai_compatible(url, name="OpenAI", model="gpt-4o")


def test_every_view_agrees_on_a_session_with_an_unknown_answer(fake: FakeOpenAI, fake_url: str) -> None:
    chat = _priced_chat(fake_url)
    before = {(r["provider"], r["model"]): r for r in token_usage()}.get(("OpenAI", "gpt-4o"))
    fake.script(Reply(text="One."), Reply(text="Two.", usage=None))
    chat.chat("a", echo="none")
    chat.chat("b", echo="none")
    first, second = [t for t in chat.get_turns() if t.role == "assistant"]
    assert first.cost is not None and first.cost > 0 and second.cost is None

    # The chat: the cost of all is unknown, the first one's is known.
    assert chat.get_cost() is None
    assert chat.get_cost(include="last") is None
    row = UsageRow("", "").add_turns(chat.get_turns())
    assert (row.turns, row.input, row.cost, row.unknown_tokens, row.unknown_cost) == (
        2, first.tokens.input if first.tokens else None, first.cost, 1, 1)

    # %chat_usage: partial totals carry a "+"; the cost of the known answer, by the one formatter.
    text = repr(UsageReport({"s": chat}))
    assert f"{format_cost(first.cost)}+" in text
    assert f"{row.input:,}+" in text

    # token_usage(): the process ledger took both answers by the same rule.
    after = {(r["provider"], r["model"]): r for r in token_usage()}[("OpenAI", "gpt-4o")]
    turns_before = before["turns"] if before else 0
    assert after["turns"] - turns_before == 2
    assert after["cost"] == after["cost_usd"]
    assert process_ledger().rows[("OpenAI", "gpt-4o")].unknown_cost >= 1


def test_the_process_ledger_hears_each_request_from_the_spend_guard(
    fake: FakeOpenAI, fake_url: str
) -> None:
    """Nothing in the core writes into the process ledger: it is a listener of the spend guard
    every request passes, as any other ledger may be, and hears each answer as it arrives (a
    tool exchange's every round), also while the exchange is still going."""
    chat = _priced_chat(fake_url)
    key = ("OpenAI", "gpt-4o")
    heard: list[tuple[str, str | None]] = []
    mid_exchange: list[int] = []

    def rows() -> int:
        row = process_ledger().rows.get(key)
        return row.turns if row is not None else 0

    def clock() -> str:
        mid_exchange.append(rows())  # the first round is in the ledger before the next is sent
        return "noon"

    chat.register_tool(clock)
    remove = spend_guard.on_spend(lambda provider, turn: heard.append((provider, turn.model)))
    before = rows()
    try:
        call = {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
        fake.script(Reply(text="", tool_calls=[call], finish_reason="tool_calls"), Reply(text="Noon."))
        assert chat.chat("time?", echo="none") == "Noon."
    finally:
        remove()
    assert heard == [key, key]  # one per request: the tool round and the answer
    assert mid_exchange == [before + 1] and rows() == before + 2
    fake.script(Reply(text="again"))
    chat.chat("once more", echo="none")
    assert heard == [key, key] and rows() == before + 3  # removed: no longer told


def test_a_broken_spend_listener_loses_no_answer(
    fake: FakeOpenAI, fake_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = _priced_chat(fake_url)

    def broken(provider: str, turn: object) -> None:
        raise RuntimeError("ledger on fire")

    remove = spend_guard.on_spend(broken)
    try:
        fake.script(Reply(text="Kept."))
        assert chat.chat("hi", echo="none") == "Kept."
    finally:
        remove()
    assert [t.text for t in chat.get_turns()] == ["hi", "Kept."]
    assert "spend listener failed: RuntimeError('ledger on fire')" in capsys.readouterr().err


def test_the_bundled_model_is_free_in_one_place() -> None:
    assert format_row_cost(0.0, free=True) == "$0, local"
    assert format_row_cost(0.0, free=True, prose=True) == "free, local"
    assert format_row_cost(0.0) == "$0"  # a priced provider's zero is just zero
    assert format_row_cost(None) == "n/a"  # unknown is never free
    assert format_row_cost(0.5, unknown=2) == "$0.50+"
    # Free is what the answers say (their provider set it), never read from a provider's name.
    row = UsageRow("llama.cpp (local)", "m")
    assert not row.free  # no answer yet
    row.add(Tokens(3, 4), 0.0, free=True)
    assert row.free and UsageRow.from_dict(row.to_dict()).free
    row.add(Tokens(3, 4), 0.0)
    assert not row.free and "free" not in row.to_dict()  # one priced answer: not all free
    assert footer("g", Tokens(3, 4), 0.0, free=True) == "g · 3 in / 4 out · free, local"
    spend = [
        {"provider": "llama.cpp (local)", "model": "gemma", "turns": 1, "input": 3, "output": 4,
         "cached": None, "cost_usd": 0.0, "free": True},
        {"provider": "OpenAI", "model": "gpt-4o", "turns": 1, "input": 3, "output": 4,
         "cached": None, "cost_usd": 0.0},
    ]
    lines = repr(UsageReport({}, spend=spend)).splitlines()
    assert next(line for line in lines if "gemma" in line).endswith("$0, local")
    assert next(line for line in lines if "gpt-4o" in line).endswith("$0")


@pytest.mark.parametrize(("usd", "text"), [(0.001, "$0.001"), (0.00125, "$0.00125"), (1.0, "$1.00"),
                                           (1234.5, "$1,234.50")])
def test_a_budget_shows_as_set(usd: float, text: str) -> None:
    # A limit the user typed is shown exactly; a cost is rounded to two significant digits.
    assert format_limit(usd) == text


@pytest.mark.parametrize("usd", [1e30, 1e308, sys.float_info.max, 5e-324, 1e-20, 2.5e-7, 0.125, 1e28])
def test_no_formatter_raises_on_a_finite_value(usd: float) -> None:
    """A budget or a spend of any finite size prints (1e30 once broke every report with
    decimal.InvalidOperation), and never as an exponent."""
    from jupyter_llmchat._core._spend import Budget, Spent, budget_lines

    shown = [format_cost(usd), format_cost(-usd), format_limit(usd), format_row_cost(usd, unknown=1),
             *budget_lines(Budget(usd, 10**30), Spent(usd / 3, 10**29)), footer("m", Tokens(1, 2), usd)]
    for text in shown:
        assert "e+" not in text and "e-" not in text and "n/a" not in text, text
    assert float(format_limit(usd)[1:].replace(",", "")) == usd  # a limit reads back as set
