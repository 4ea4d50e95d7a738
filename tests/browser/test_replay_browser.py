"""Replay in JupyterLab: "Restart Kernel and Run All" on a saved notebook sends nothing for its
unchanged ``%%chat`` cells (the record is read from the file at ``%load_ext``; cells are matched
by their ids), and each shows its recorded answer marked as replayed."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.browser.harness import JupyterServer, NotebookPage, empty_notebook
from tests.browser.test_metadata_browser import setup_cells
from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


def wait_for_text(nb: NotebookPage, index: int, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = nb.output(index)
        if text in out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"cell {index} never showed {text!r}: {out!r}")
        time.sleep(0.2)


def test_restart_kernel_and_run_all_replays_unchanged_cells(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    server, fake, path = jupyter_server, fake_server, "replay-lab.ipynb"
    server.put_notebook(path, empty_notebook())
    nb = open_notebook(path)
    setup_cells(nb, fake)
    fake.script(Reply(text="Paris <b>is</b> the capital."), Reply(text="Berlin."))
    first = nb.run_cell("%%chat\nWhat is the capital of France?")
    second = nb.run_cell("%%chat\nAnd of Germany?")
    assert len(fake.chat_requests()) == 2
    assert "replayed" not in nb.output(first) + nb.output(second)
    nb.save()

    nb.command("notebook:restart-run-all", wait=False)
    nb.page.locator(".jp-Dialog .jp-mod-accept").click()
    out = wait_for_text(nb, second, "replayed (recorded ")
    assert "Berlin." in out
    out = nb.output(first)
    assert "Paris" in out and "replayed (recorded " in out
    nb.wait_for_kernel_idle()
    assert len(fake.chat_requests()) == 2  # nothing was asked again
    # The history is the same conversation: a new question carries both exchanges once.
    fake.script(Reply(text="Rome."))
    nb.run_cell("%%chat\nAnd of Italy?")
    sent = [(m["role"], m["content"]) for m in fake.last_body()["messages"]]
    assert [r for r, _ in sent] == ["user", "assistant", "user", "assistant", "user"]
