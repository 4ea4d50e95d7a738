"""The notebook's order of cells and the conversation it makes (``_record/_order.py``, DESIGN
§10), and the core's ``stream(replace=(i, j))`` that puts one exchange in place: against the
fake server, so what was sent is what the server received."""

from __future__ import annotations

from typing import Any

import pytest

from jupyter_llmchat import ConfigurationError
from jupyter_llmchat._core._turns import ContentText, Turn
from jupyter_llmchat._record._order import ABOVE_KEY, CellOrder, above_hash, exchange_spans
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
    if above is not None:
        meta[ABOVE_KEY] = above_hash(above)
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
