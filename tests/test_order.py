"""The notebook's order of cells and the conversation it makes (``_record/_order.py``, DESIGN
§10), and the core's ``stream(replace=(i, j))`` that puts one exchange in place: against the
fake server, so what was sent is what the server received."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from jupyter_llmchat import ConfigurationError
from jupyter_llmchat._core._replay import KEY_FIELD, Request
from jupyter_llmchat._core._turns import NEW_KEY, ContentText, Turn
from jupyter_llmchat._record._order import CellOrder, exchange_spans
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import new_chat
from tests.test_magics import config, ip, run  # noqa: F401  (fixtures)
from tests.test_panel_context import panel  # noqa: F401  (a fixture)


def exchange(
    cell: str | None, text: str, *, in_panel: bool = False, above: list[Turn] | None = None
) -> list[Turn]:
    meta: dict[str, str] = {"source": "panel"} if in_panel else {"source": "cell"}
    if cell is not None:
        meta["after_cell" if in_panel else "cell_id"] = cell
    if above is not None:  # asked on the conversation ``above``: its replay key says so
        meta[KEY_FIELD] = Request(prompt=text, text=text, history=above, provider="p", model="m",
                                  system_prompt=None, params={}).key().to_dict()
    return [Turn("user", [ContentText(text)], meta=meta),
            Turn("assistant", [ContentText(text + "!")])]


def texts(turns: list[Turn]) -> list[str]:
    return [t.text for t in turns[0::2]]


def test_arrange_follows_the_order_and_sets_deleted_cells_aside() -> None:
    a, b, c = exchange("A", "a"), exchange("B", "b"), exchange("C", "c")
    loose = exchange(None, "from python")
    asked = exchange("A", "asked in the panel", in_panel=True)
    order = CellOrder()
    order.set(["C", "A", "B"])
    kept, out = order.arrange([*a, *loose, *b, *asked, *c])
    # C first; the loose exchange after the one it followed (A's); the panel question after A's.
    assert texts(kept) == ["c", "a", "from python", "asked in the panel", "b"]
    assert out == []
    order.delete(["B"])
    kept, out = order.arrange(kept)
    assert texts(kept) == ["c", "a", "from python", "asked in the panel"]
    assert [texts(part) for part in out] == [["b"]]
    order.set(["C", "A", "B"])  # an undo: B is back, and so is its exchange
    kept, out = order.arrange([*kept, *out[0]])
    assert texts(kept)[-1] == "b" and out == []


def test_first_runs_stand_in_without_a_notebook_order() -> None:
    order = CellOrder()
    restored = [*exchange("X", "x"), *exchange("Y", "y")]
    order.known(restored)  # an earlier kernel's first runs: kept, nothing is taken as deleted
    assert order.cells == ["X", "Y"] and not order.from_notebook
    kept, out = order.arrange(restored)
    assert texts(kept) == ["x", "y"] and out == []
    assert order.ran("Z") and order.cells == ["X", "Y", "Z"]
    assert order.span(kept, "Z") == (4, 4)  # not run yet: after the others
    assert order.span(kept, "X") == (0, 2)


def test_span_of_a_new_cell_is_after_the_cells_above_it() -> None:
    order = CellOrder()
    order.set(["A", "B", "C"])
    turns = [*exchange("A", "a"), *exchange("A", "a2"), *exchange("C", "c")]
    assert order.span(turns, "A") == (0, 4)  # both exchanges of A (two %chat lines)
    assert order.span(turns, "B") == (4, 4)
    assert order.after(turns, "A") == 4 and order.after(turns, None) == 6


def test_stale_names_cells_whose_conversation_above_changed() -> None:
    order = CellOrder()
    order.set(["A", "B", "C"])
    a = exchange("A", "a", above=[])
    b = exchange("B", "b", above=a)
    c = exchange("C", "c", above=[*a, *b])
    assert order.stale([*a, *b, *c]) == []
    assert order.stale([*a, *c]) == ["C"]  # B deleted
    a2 = exchange("A", "a again", above=[])
    assert order.stale([*a2, *b, *c]) == ["B", "C"]  # A asked again, with another answer
    assert order.stale([*c, *a, *b]) == ["C", "A", "B"]  # C moved to the top
    assert order.stale(exchange("D", "no mark")) == []  # restored without a mark: not known
    # A record of the version before (both marks): the key decides, its above_hash is kept.
    old = [Turn.from_dict({**t.to_dict(), "above_hash": "0" * 24}) for t in b]
    assert old[0].meta["above_hash"] == "0" * 24 and old[0].to_dict()["above_hash"] == "0" * 24
    assert order.stale([*a, *old]) == []
    unread = exchange("B", "b")
    unread[0].meta[KEY_FIELD] = {"v": 3, "history": "x"}  # a later version: not judged
    assert order.stale([*a2, *unread]) == []


def test_stale_starts_over_at_a_new_conversation() -> None:
    order = CellOrder()
    order.set(["A", "B", "C"])
    a, a2 = exchange("A", "a", above=[]), exchange("A", "a again", above=[])
    b = exchange("B", "b", above=[])
    b[0].meta[NEW_KEY] = True
    c = exchange("C", "c", above=b)
    assert order.stale([*a, *b, *c]) == []
    assert order.stale([*a2, *b, *c]) == []  # A asked again: nothing below B stood on it
    assert order.stale([*b, *a, *c]) == ["A", "C"]  # A moved below B: both stand on more now


def test_order_ignores_junk_ids() -> None:
    order = CellOrder()
    assert order.set(["A", 3, "", None, "A", "B"])  # type: ignore[list-item]
    assert order.cells == ["A", "B"]
    assert not order.set(["A", "B"])  # unchanged
    assert not order.delete(["nope", 7])  # type: ignore[list-item]
    assert [e.anchor for e in exchange_spans([*exchange("A", "a"), *exchange(None, "b")])] == ["A", None]


def test_stream_replace_puts_one_exchange_in_place(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    for i in range(3):
        fake.script(Reply(text=f"answer {i}"))
        chat.chat(f"question {i}")
    fake.script(Reply(text="answer 1, again"))
    s = chat.stream("question 1, again", replace=(2, 4))
    assert "".join(s) == "answer 1, again"
    # Only the turns above it were sent; the exchange after it stays.
    assert [m["content"] for m in fake.last_body()["messages"]] == [
        "question 0", "answer 0", "question 1, again"]
    assert texts(chat.get_turns()) == ["question 0", "question 1, again", "question 2"]
    assert s.at == 2 and s.replaced == 2
    fake.script(Reply(text="inserted"))
    s = chat.stream("between", replace=(2, 2))
    list(s)
    assert texts(chat.get_turns()) == ["question 0", "between", "question 1, again", "question 2"]
    assert s.at == 2 and s.replaced == 0
    before = len(fake.chat_requests())
    for bad in [(1, 2), (2, 99), (4, 2)]:
        with pytest.raises(ConfigurationError):
            list(chat.stream("no", replace=bad))
    with pytest.raises(ConfigurationError):
        list(chat.stream("no", replace=(0, 2), replace_from=0))
    assert len(fake.chat_requests()) == before  # nothing sent for a bad span
    assert len(chat.get_turns()) == 8


# -- in a shell: the panel's question sits after the cell that ran last -----------------------


def in_cell(monkeypatch: pytest.MonkeyPatch, shell: Any, cell: str, n: int) -> None:
    """The next cell runs as JupyterLab's cell ``cell`` (its id in the request's metadata)."""
    monkeypatch.setattr(shell, "parent_header", {"metadata": {"cellId": cell},
                                              "header": {"msg_id": f"{cell}-{n}"}}, raising=False)


def test_a_panel_question_sits_after_the_cell_that_ran_last(  # noqa: F811 - fixtures
    ip: Any, fake: FakeOpenAI, panel: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    from jupyter_llmchat import session

    for n, cell in enumerate(["A", "B"]):
        in_cell(monkeypatch, ip, cell, n)
        fake.script(Reply(text=f"answer {cell}"))
        assert run(ip, f"%%chat\nquestion {cell}").success
    in_cell(monkeypatch, ip, "A", 2)  # A again: it ran last, so the panel's question follows A
    fake.script(Reply(text="answer A2"))
    assert run(ip, "%%chat\nquestion A2").success
    panel.sent.clear()
    fake.script(Reply(text="from the panel"))
    panel.ask("in the panel")
    panel.finish()
    sent = [m["content"] for m in fake.last_body()["messages"]]
    assert sent == ["question A2\n", "answer A2", "in the panel"]
    turns = session().get_turns()
    assert texts(turns) == ["question A2\n", "in the panel", "question B\n"]
    assert turns[2].meta["after_cell"] == "A"
    monkeypatch.setattr(ip, "parent_header", {}, raising=False)


# -- --new, and a cell that leaves its session (DESIGN §10) -----------------------------------


#: Execution numbers, unique in the test run: the shell (and its runner) is shared by the tests.
_executions = itertools.count()


class Cells:
    """Runs sources as JupyterLab's cells by id, each run a new execution (its own msg_id)."""

    def __init__(self, shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ip, self.monkeypatch = shell, monkeypatch

    def __call__(self, cell: str, source: str) -> Any:
        in_cell(self.monkeypatch, self.ip, cell, next(_executions))
        try:
            return run(self.ip, source)
        finally:
            self.monkeypatch.setattr(self.ip, "parent_header", {}, raising=False)


def sent_texts(fake: FakeOpenAI) -> list[str]:
    return [m["content"].strip() for m in fake.last_body()["messages"]]


def session_texts(name: str = "default") -> list[str]:
    from jupyter_llmchat import session

    return [t.strip() for t in texts(session(name).get_turns())]


def spent_requests() -> int:
    from jupyter_llmchat._jupyter._bridge import current_bridge

    bridge = current_bridge()
    assert bridge is not None
    return sum(row["turns"] or 0 for row in bridge.ledger.to_list())


def test_new_starts_the_conversation_for_the_cells_below(
    ip: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - fixtures
) -> None:
    from jupyter_llmchat import session


    cell = Cells(ip, monkeypatch)
    fake.script(Reply(text="Hello Ada."), Reply(text="Paris is lovely."), Reply(text="In Paris."))
    assert cell("A", "%%chat\nMy name is Ada").success
    assert cell("B", "%%chat --new\nI live in Paris").success
    assert sent_texts(fake) == ["I live in Paris"]  # nothing above a --new cell is sent
    assert cell("C", "%%chat\nWhat is my name?").success
    assert sent_texts(fake) == ["I live in Paris", "Paris is lovely.", "What is my name?"]
    # The cells above keep their exchanges: the session holds all three, in order.
    assert session_texts() == ["My name is Ada", "I live in Paris", "What is my name?"]
    turns = session().get_turns()
    assert turns[2].meta[NEW_KEY] is True and NEW_KEY not in turns[0].meta
    assert turns[2].to_dict()[NEW_KEY] is True  # in the record, so it survives a restart
    assert Turn.from_dict(turns[2].to_dict()).meta[NEW_KEY] is True
    # Run All: every cell replays, its key unchanged, nothing is asked.
    before = len(fake.chat_requests())
    for c, source in [("A", "%%chat\nMy name is Ada"), ("B", "%%chat --new\nI live in Paris"),
                      ("C", "%%chat\nWhat is my name?")]:
        assert cell(c, source).success
    assert len(fake.chat_requests()) == before
    # A question from Python continues the conversation of the cells below B.
    fake.script(Reply(text="Ada? I was not told."))
    session().chat("Who am I?", echo="none")
    assert sent_texts(fake)[:2] == ["I live in Paris", "Paris is lovely."]
    # B run again without --new: it continues A now, and the cells below it stand on more.
    fake.script(Reply(text="Noted."))
    assert cell("B", "%%chat\nI live in Paris").success
    assert sent_texts(fake) == ["My name is Ada", "Hello Ada.", "I live in Paris"]
    assert NEW_KEY not in session().get_turns()[2].meta


def test_history_shows_where_a_new_conversation_starts(
    ip: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - fixtures
) -> None:
    cell = Cells(ip, monkeypatch)
    cell("A", "%%chat\nalpha")
    cell("B", "%%chat --new\nomega")
    shown = ip.run_line_magic("chat_history", "")
    text, md = repr(shown), shown._repr_markdown_()
    assert text.index("[user] alpha") < text.index("new conversation") < text.index("[user] omega")
    assert md.index("alpha") < md.index("new conversation") < md.index("omega")
    # An export says so at the same place, from the record.
    from jupyter_llmchat._jupyter._bridge import current_bridge
    from jupyter_llmchat._record._export import to_html, to_markdown

    bridge = current_bridge()
    assert bridge is not None
    for page in (to_markdown(bridge.record(), ["A", "B"]), to_html(bridge.record(), ["A", "B"])):
        assert page.index("alpha") < page.index("new conversation") < page.index("omega")


def test_rerun_in_another_session_leaves_the_old_one(
    ip: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - fixtures
) -> None:
    cell = Cells(ip, monkeypatch)
    cell("A", "%%chat\nfirst")
    cell("B", "%%chat\nsecond")
    spent = spent_requests()
    assert cell("A", "%%chat -s other\nfirst, elsewhere").success
    assert session_texts() == ["second"]  # A shows another session's answer now
    assert session_texts("other") == ["first, elsewhere"]
    assert spent_requests() == spent + 1  # the answer that left is still counted
    fake.script(Reply(text="again"))
    cell("B", "%%chat --refresh\nsecond")
    assert sent_texts(fake) == ["second"]  # A's old exchange is not above B any more


def test_two_lines_in_two_sessions_both_stay_and_replay(
    ip: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - fixtures
) -> None:
    cell = Cells(ip, monkeypatch)
    source = "%chat -s one to one\n%chat -s two to two"
    assert cell("A", source).success
    assert cell("A", source).success  # replayed, both
    assert len(fake.chat_requests()) == 2
    assert session_texts("one") == ["to one"] and session_texts("two") == ["to two"]


def test_rerun_with_no_history_leaves_the_session(
    ip: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - fixtures
) -> None:
    cell = Cells(ip, monkeypatch)
    cell("A", "%%chat\nfirst")
    cell("B", "%%chat\nsecond")
    spent = spent_requests()
    assert cell("A", "%%chat --no-history\nan aside").success
    assert sent_texts(fake) == ["an aside"]
    assert session_texts() == ["second"]
    assert spent_requests() == spent + 1


def test_a_rerun_that_fails_before_any_token_leaves_the_session(
    ip: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - fixtures
) -> None:
    cell = Cells(ip, monkeypatch)
    cell("A", "%%chat\nfirst")
    cell("B", "%%chat\nsecond")
    spent = spent_requests()
    fake.script(Reply(status=400, error_message="no such thing"))
    cell("A", "%%chat\nfirst, changed")
    assert session_texts() == ["second"]  # the cell shows an error now, not its old answer
    assert spent_requests() == spent  # the old answer's spend stays; the failure cost nothing
    # Failing after some tokens keeps the partial answer in place, marked partial.
    fake.script(Reply(text="a partial answer, cut", chunk_chars=4, cut_after=2))
    cell("B", "%%chat\nsecond, changed")
    from jupyter_llmchat import session

    turns = session().get_turns()
    assert session_texts() == ["second, changed"] and turns[-1].partial
    assert turns[-1].text == "a partial answer, cut"[:8]


def test_outputs_rebuild_a_new_cell_and_the_cells_above_it(
    ip: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch  # noqa: F811 - fixtures
) -> None:
    """Headless (no extension), the record is rebuilt from the answers' outputs: a --new cell
    keeps the cells above it and carries its mark, as the kernel's record does."""
    from jupyter_llmchat import session
    from jupyter_llmchat._record._metadata import (
        KEY,
        display_metadata,
        record_from_outputs,
        validate_record,
    )

    cell = Cells(ip, monkeypatch)
    cell("A", "%%chat\none")
    cell("B", "%%chat --new\ntwo")
    chat = session()
    turns = chat.get_turns()
    cells = [{"cell_type": "code", "outputs": [{
        "output_type": "display_data", "data": {"text/plain": turns[i + 1].text},
        "metadata": display_metadata("default", chat, turns[i:i + 2], recorded=True, new=new)}]}
        for i, new in [(0, False), (2, True)]]
    rebuilt = validate_record(record_from_outputs({"cells": cells}))["sessions"]["default"]["turns"]
    assert [t.text.strip() for t in rebuilt[0::2]] == ["one", "two"]
    assert rebuilt[2].meta.get(NEW_KEY) is True and NEW_KEY not in rebuilt[0].meta
    assert KEY in cells[1]["outputs"][0]["metadata"]


def test_a_record_follows_ours_when_it_holds_all_of_our_exchanges() -> None:
    """The merge at a hello (DESIGN §7): the front end's record is taken when it holds every
    exchange of ours, appended to or in another order; never when it lacks one of ours."""
    from jupyter_llmchat._record._metadata import turns_follow

    a, b, c = exchange("A", "a"), exchange("B", "b"), exchange("C", "c")
    b_again = exchange("B", "b, asked again")
    assert turns_follow([*a, *b], [*b, *a])  # moved
    assert turns_follow([*a, *b], [*a, *b, *c])  # appended
    assert turns_follow([*a, *b], [*c, *a, *b])  # inserted above
    assert not turns_follow([*a, *b], [*a, *b])  # nothing new
    assert not turns_follow([*a, *b], [*a])  # ours has more: keep ours
    assert not turns_follow([*a, *b], [*a, *b_again])  # ours was asked here: keep it
