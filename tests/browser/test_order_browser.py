"""The notebook is the conversation, in a real JupyterLab (DESIGN §10): deleting, moving and
re-running cells changes what the cells below send, as the fake server receives it, and a cell
whose answer was made on another conversation above it carries the stale badge (a class on the
cell; its answer is not rendered again) until it is run and asks again."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.browser.harness import JupyterServer, NotebookPage, empty_notebook
from tests.browser.test_metadata_browser import setup_cells
from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

STALE = "jp-llmchat-stale"


def sent(fake: FakeOpenAI) -> list[str]:
    return [f"{m['role']}: {m['content']}" for m in fake.last_body()["messages"]]


def stale(nb: NotebookPage) -> list[int]:
    """Indexes of the cells that carry the badge."""
    return list(nb.js(f"return panel.content.widgets.flatMap((w, i) => "
                      f"w.hasClass('{STALE}') ? [i] : []);"))


def wait_for(what: Callable[[], object], expected: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := what()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{got!r} != {expected!r}")
        time.sleep(0.1)


def rerun(nb: NotebookPage, fake: FakeOpenAI, index: int) -> None:
    """Run cell ``index`` again (select it, Run Selected Cell), until its answer is in."""
    before = len(fake.chat_requests())
    nb.cell(index).locator(".jp-InputPrompt").click()
    nb.command("notebook:run-cell")
    wait_for(lambda: len(fake.chat_requests()), before + 1)
    nb.wait_for_kernel_idle()


def test_delete_move_and_rerun_change_what_is_sent_and_the_badge(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    server, fake, path = jupyter_server, fake_server, "order-lab.ipynb"
    server.put_notebook(path, empty_notebook())
    nb = open_notebook(path)
    setup_cells(nb, fake)
    fake.script(Reply(text="Hello Ada."), Reply(text="Paris is lovely."), Reply(text="In Paris."))
    a = nb.run_cell("%%chat\nMy name is Ada")
    b = nb.run_cell("%%chat\nI live in Paris")
    c = nb.run_cell("%%chat\nWhere do I live?")
    assert "I live in Paris\n" in "".join(sent(fake))
    assert stale(nb) == []

    # Delete B: C's answer was made with B above it. The badge, and the answer left as it was.
    nb.delete_cell(b)
    c -= 1
    wait_for(lambda: stale(nb), [c])
    assert "In Paris." in nb.output(c)
    shot = nb.screenshot("order-stale-badge.png")
    assert shot.exists()

    # Run C again: it asks (no replay), without B's exchange, and is fresh.
    fake.script(Reply(text="You have not said."))
    rerun(nb, fake, c)
    assert sent(fake) == ["user: My name is Ada\n", "assistant: Hello Ada.",
                          "user: Where do I live?\n"]
    wait_for(lambda: stale(nb), [])
    assert "You have not said." in nb.output(c)

    # Move C above A: both now stand on another conversation above them (C on none, A on C's
    # exchange): both are stale; re-run, A sends C's exchange first.
    nb.cell(c).locator(".jp-InputPrompt").click()
    nb.command("notebook:move-cell-up")
    a, c = c, a
    wait_for(lambda: stale(nb), [c, a])
    fake.script(Reply(text="Hello again, Ada."))
    rerun(nb, fake, a)
    assert sent(fake) == ["user: Where do I live?\n", "assistant: You have not said.",
                          "user: My name is Ada\n"]
    wait_for(lambda: stale(nb), [c])
    record = nb.metadata()["sessions"]["default"]["turns"]
    assert [t["contents"][0]["text"] for t in record] == [
        "Where do I live?\n", "You have not said.", "My name is Ada\n", "Hello again, Ada."]
