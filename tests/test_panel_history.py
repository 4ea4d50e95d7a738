"""The panel's history in pages, in a real IPython shell: the kernel sends the latest whole
exchanges first (``history``: about ``HISTORY_FIRST`` messages, with how many are earlier and a
cursor) and the page before a cursor when the front end asks (``history_page``), so a long
history costs the panel's opening one small message (DESIGN §8).

The panel is the real ``ChatPanel`` with its messages to the front end kept;
tests/browser/test_panel_history_browser.py drives the same messages through the labextension.
"""

from __future__ import annotations

import json
from typing import Any

from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import ContentText, ContentToolRequest, ContentToolResult, Turn
from jupyter_llmchat._jupyter._widget import HISTORY_FIRST, HISTORY_PAGE
from tests.fake_openai import FakeOpenAI, Reply
from tests.panel_recorder import RecordingPanel
from tests.test_magics import config, ip, run  # noqa: F401  (a fixture)
from tests.test_panel_stop import panel  # noqa: F401  (a fixture: a recording panel on 'default')


def plain(n: int, start: int = 1) -> list[Turn]:
    """``n`` exchanges of a question and its answer."""
    turns = []
    for i in range(start, start + n):
        turns += [Turn("user", [ContentText(f"Question {i}")]),
                  Turn("assistant", [ContentText(f"Answer {i}")])]
    return turns


def with_tool(i: int) -> list[Turn]:
    """One exchange with a tool round: 4 turns, shown as 3 messages (the round on its call)."""
    call = ContentToolRequest("call-1", "lookup", {"q": i})
    return [Turn("user", [ContentText(f"Question {i}")]),
            Turn("assistant", [ContentText("Looking."), call]),
            Turn("user", [ContentToolResult("call-1", value=f"found {i}", name="lookup",
                                            status="ok", duration=0.25)]),
            Turn("assistant", [ContentText(f"Answer {i}")])]


def hello(panel: RecordingPanel) -> dict[str, Any]:
    panel.sent.clear()
    panel.front_end(type="hello")
    (history,) = [m for m in panel.sent if m["type"] == "history"]
    return history


def page(panel: RecordingPanel, before: Any) -> list[dict[str, Any]]:
    """What the kernel answers a ``history_page`` request (nothing, or one page)."""
    panel.sent.clear()
    panel.front_end(type="history_page", before=before)
    return list(panel.sent)


def test_the_history_comes_latest_first_then_a_page_at_a_time(panel: RecordingPanel) -> None:
    turns = plain(50)
    jupyter_llmchat.session().set_turns(turns)
    history = hello(panel)
    # The latest whole exchanges, and how many messages are before them.
    assert len(history["messages"]) == HISTORY_FIRST == 20
    assert history["messages"][0]["text"] == "Question 41"
    assert history["messages"][-1]["text"] == "Answer 50"
    assert history["earlier"] == 80 and isinstance(history["cursor"], str)
    shown = history["messages"]
    cursor = history["cursor"]
    for earlier in (40, 0):
        (reply,) = page(panel, cursor)
        assert reply["type"] == "history_page" and reply["before"] == cursor
        assert len(reply["messages"]) == HISTORY_PAGE == 40
        assert reply["earlier"] == earlier
        shown = reply["messages"] + shown
        cursor = reply["cursor"]
    assert cursor is None  # nothing before the first page
    # Together, the pages are the history the panel showed before paging: every turn in order,
    # each under its id by position.
    assert [m["text"] for m in shown] == [t.text for t in turns]
    generation = history["messages"][0]["id"].split("-")[0]
    assert [m["id"] for m in shown] == [f"{generation}-turn-{i}" for i in range(100)]
    # Small: the first page of a 2,000-turn history is a few kB, not 650.
    assert len(json.dumps(history)) < 12_000


def test_a_short_history_comes_whole(panel: RecordingPanel) -> None:
    jupyter_llmchat.session().set_turns(plain(3))
    history = hello(panel)
    assert len(history["messages"]) == 6
    assert history["earlier"] == 0 and history["cursor"] is None
    jupyter_llmchat.session().set_turns([])
    history = hello(panel)
    assert history["messages"] == [] and history["earlier"] == 0 and history["cursor"] is None


def test_a_page_keeps_exchanges_whole_with_their_tool_calls(panel: RecordingPanel) -> None:
    # 9 plain exchanges (18 messages) end the history; before them one with a tool round
    # (3 messages): the first page takes it whole (21 messages), never its answer alone.
    turns = plain(20) + with_tool(21) + plain(9, start=22)
    jupyter_llmchat.session().set_turns(turns)
    history = hello(panel)
    messages = history["messages"]
    assert len(messages) == 21 and history["earlier"] == 40
    assert [m["text"] for m in messages[:3]] == ["Question 21", "Looking.", "Answer 21"]
    (call,) = messages[1]["tools"]  # the tool round shows on its call's line, with its result
    assert call["name"] == "lookup" and call["state"] == "ok" and call["result"] == "found 21"
    assert call["seconds"] == 0.25
    (reply,) = page(panel, history["cursor"])
    assert len(reply["messages"]) == 40 and reply["cursor"] is None
    assert reply["messages"][0]["text"] == "Question 1"
    # Every page begins with a question.
    assert messages[0]["role"] == reply["messages"][0]["role"] == "user"


def test_a_cursor_of_an_earlier_history_or_no_cursor_gets_no_answer(
    panel: RecordingPanel,
) -> None:
    chat = jupyter_llmchat.session()
    chat.set_turns(plain(30))
    old = hello(panel)["cursor"]
    # The history changed whole (a cell run again, a session switched): a new history is sent,
    # and a request the front end made for the old one is not answered.
    panel.sent.clear()
    chat.set_turns(plain(30, start=100))
    (history,) = [m for m in panel.sent if m["type"] == "history"]
    assert history["cursor"] != old
    assert page(panel, old) == []
    generation = history["cursor"].split(":")[0]
    # The front end's messages are checked, never trusted: nothing else is a cursor.
    for bad in (None, 3, ["x"], "", "x", f"{generation}:", f"{generation}:0",
                f"{generation}:-1", f"{generation}:999", f"{generation}:1e3", f"{generation}:²",
                f"{generation}:1:2", "1:2:3"):
        assert page(panel, bad) == [], bad
    (reply,) = page(panel, history["cursor"])
    assert reply["messages"][0]["text"] == "Question 100"


def test_pages_come_from_the_history_as_it_was_sent(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    """A cell's exchange added at the end is appended; the pages above stay as they were, and
    no id names two turns."""
    jupyter_llmchat.session().set_turns(plain(30))
    history = hello(panel)
    fake.script(Reply(text="A new answer."))
    panel.sent.clear()
    run(ip, "%%chat\nA new question")
    (append,) = [m for m in panel.sent if m["type"] == "append"]
    (reply,) = page(panel, history["cursor"])
    assert reply["messages"][0]["text"] == "Question 1" and reply["cursor"] is None
    ids = [m["id"] for m in reply["messages"] + history["messages"] + append["messages"]]
    assert len(set(ids)) == len(ids) == 62
