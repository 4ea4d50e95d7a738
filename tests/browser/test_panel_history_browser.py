"""A long conversation in the chat panel (DESIGN §8: 2,000 turns show in <= 0.5 s): the kernel
sends the latest exchanges first, with how many messages are earlier, and the page before them
when the user scrolls up (or presses "Show earlier"); the panel shows it above, keeping in view
what the user was reading. The kernel's websocket is watched: the first page is all that came at
the panel's opening, and each earlier page came when asked. benchmarks/bench_panel_browser.py
times it against a new notebook.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from jupyter_llmchat._jupyter._widget import HISTORY_FIRST, HISTORY_PAGE
from tests.browser.harness import JupyterServer, NotebookPage, empty_notebook
from tests.browser.test_panel_browser import dock, messages, wait_text
from tests.test_restore import turn

if TYPE_CHECKING:  # playwright is imported only once it is known to be installed
    from playwright.sync_api import Page, WebSocket

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

#: What the kernel sends at first and at each scroll to the top (messages, whole exchanges).
FIRST_SHOWN, PAGE = HISTORY_FIRST, HISTORY_PAGE


def long_record(exchanges: int) -> dict[str, Any]:
    """A notebook record of ``exchanges`` panel exchanges (2 turns each) with Markdown answers."""
    turns = []
    for i in range(1, exchanges + 1):
        answer = (f"Answer {i}: **{i * i}**, as in\n\n```python\n{i} ** 2\n```\n\n"
                  "It is the number times itself; the code above computes it.")
        turns.append(turn("user", f"Question {i}: what is {i} squared?", source="panel",
                          cell_id=None))
        turns.append(turn("assistant", answer, source="panel", cell_id=None))
    provider = {"name": "OpenAI-compatible", "base_url": "http://127.0.0.1:9/v1",
                "model": "test-model"}
    return {"version": 1, "sessions": {"default": {"provider": provider, "system_prompt": None,
                                                    "turns": turns}},
            "usage": [{"provider": "OpenAI-compatible", "model": "test-model", "turns": exchanges,
                       "input": 100 * exchanges, "output": 10 * exchanges, "cached": None,
                       "cost_usd": None}]}


def long_notebook(exchanges: int) -> dict[str, Any]:
    nb = empty_notebook()
    nb["metadata"]["jupyter_llmchat"] = long_record(exchanges)
    return nb


SCROLLER = """() => {
  const box = document.querySelector('.jp-llmchat-dock .jp-chat-messages-container');
  let el = box && box.parentElement;
  while (el && getComputedStyle(el).overflowY !== 'scroll') { el = el.parentElement; }
  return el;
}"""


def scroll_top(nb: NotebookPage) -> float:
    return float(nb.page.evaluate(f"() => ({SCROLLER})().scrollTop"))


class Frames:
    """The panel's messages on the page's websockets (the kernel's among them), in order: each
    a whole frame, as bytes (the record goes to the notebook in frames of its own)."""

    def __init__(self, page: Page) -> None:
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        page.on("websocket", self._watch)

    def _watch(self, ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: self.sent.append(_bytes(payload)))
        ws.on("framereceived", lambda payload: self.received.append(_bytes(payload)))

    def received_with(self, needle: str) -> list[bytes]:
        """The kernel's ``history`` and ``history_page`` messages holding ``needle``."""
        return [f for f in self.received if needle.encode() in f and HISTORY.search(f)]

    def sent_with(self, needle: str) -> list[bytes]:
        return [f for f in self.sent if needle.encode() in f]


#: A frame carrying a panel's history (``"type": "history"`` or ``"history_page"``).
HISTORY = re.compile(rb'"type":\s*"history(_page)?"')


def _bytes(payload: str | bytes) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def question(i: int) -> str:
    return f"Question {i}: what"


def test_scrolling_up_shows_earlier_messages(
    jupyter_server: JupyterServer, open_notebook: Callable[..., NotebookPage], page: Page
) -> None:
    jupyter_server.put_notebook("long.ipynb", long_notebook(100))
    frames = Frames(page)
    nb = open_notebook("long.ipynb")
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell("%chat_panel")
    wait_text(page, "Answer 100:")
    # The first page is all the kernel sent: the latest 10 exchanges, none before them.
    (first,) = frames.received_with("Answer 100:")
    assert question(91).encode() in first and len(first) < 20_000
    assert not frames.received_with(question(90)) and not frames.received_with(question(1))
    assert len(frames.received_with("")) == 1
    assert not frames.sent_with("history_page")
    shown = messages(page)
    assert len(shown) == FIRST_SHOWN  # the latest 10 exchanges, not 200 messages
    assert shown[0].startswith("Question 91:") and shown[-1].startswith("Answer 100:")
    earlier = dock(page).locator(".jp-llmchat-earlier")
    assert earlier.inner_text().startswith("180 earlier messages")
    # Opened at its end: the latest answer is in view.
    page.wait_for_function(
        f"() => {{ const box = ({SCROLLER})().getBoundingClientRect();"
        " const last = [...document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message')]"
        ".pop().getBoundingClientRect();"
        " return last.top >= box.top && last.top < box.bottom; }")

    # The wheel, over the messages, up to the top of the list: the next page shows above.
    box = dock(page).locator(".jp-chat-messages-container")
    box.hover()
    for _ in range(40):
        page.mouse.wheel(0, -2000)
        if dock(page).locator(".jp-chat-message").count() > FIRST_SHOWN:
            break
        page.wait_for_timeout(50)
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message')"
        ".length === 60")
    shown = messages(page)
    assert shown[0].startswith("Question 71:") and shown[PAGE].startswith("Question 91:")
    # Asked of the kernel once, and sent by it then (one page: what the panel shows above).
    assert len(frames.sent_with("history_page")) == 1
    (second,) = frames.received_with(question(71))
    assert b"history_page" in second and question(70).encode() not in second
    # What the user was reading stays in view: the list did not jump to its new top.
    page.wait_for_timeout(200)
    assert scroll_top(nb) > 500
    assert earlier.inner_text().startswith("140 earlier messages")
    nb.screenshot("panel-history-scrolled.png")

    # "Show earlier" pages through the rest; the line goes once nothing is left.
    button = earlier.locator(".jp-llmchat-show-earlier")
    for expected in (100, 140, 180, 200):
        button.click()
        page.wait_for_function(
            "(n) => document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message')"
            ".length === n", arg=expected)
    assert messages(page)[0].startswith("Question 1:")
    assert earlier.is_hidden()
    # Each page came from the kernel when asked; the first exchange came last.
    assert len(frames.sent_with("history_page")) == 5
    (last,) = frames.received_with(question(1))
    assert b"history_page" in last and last == frames.received_with("history_page")[-1]
    # The latest message is still the last one shown, and once in the panel.
    assert messages(page)[-1].startswith("Answer 100:")
    assert len(messages(page)) == len(set(messages(page))) == 200
