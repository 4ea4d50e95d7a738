"""``%%chat --insert`` in a real JupyterLab (DESIGN §3): the answer's first code block lands in a
new code cell below the asking cell; a replay inserts nothing; asked again, the same inserted
cell gets the new code (the front end's upsert keyed by the asking cell's id), so the notebook
holds one inserted cell, not two. The screenshot is tests/artifacts/insert-replaced.png.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.browser.harness import JupyterServer, NotebookPage, empty_notebook
from tests.browser.test_panel_browser import configure, rerun
from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def sources(nb: NotebookPage) -> list[tuple[str, str | None]]:
    """Each cell's source, and the asking cell it was inserted for (None: not inserted)."""
    return [(s, by) for s, by in nb.js(
        "return panel.model.sharedModel.cells.map(c => [c.getSource(),"
        " (c.getMetadata('jupyter_llmchat') ?? {}).inserted_by ?? null]);"
    )]


def wait_source(nb: NotebookPage, index: int, source: str) -> None:
    """Until cell ``index`` of the notebook in front holds ``source``."""
    nb.page.wait_for_function(
        "([i, source]) => {"
        " const c = window.jupyterapp.shell.currentWidget.model.sharedModel.cells;"
        " return c.length > i && c[i].getSource() === source; }",
        arg=[index, source],
    )


def test_insert_then_replay_then_ask_again_keeps_one_inserted_cell(
    jupyter_server: JupyterServer, open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    jupyter_server.put_notebook("insert.ipynb", empty_notebook())
    nb = open_notebook("insert.ipynb")
    configure(nb, fake_server)
    fake_server.script(Reply(text="Try:\n\n```python\ntotal = 1 + 1\n```\n\n```python\nno\n```"))
    asking = nb.run_cell("%%chat --insert\nAdd one and one")
    cell_id = nb.js(f"return panel.model.sharedModel.cells[{asking}].id;")
    wait_source(nb, asking + 1, "total = 1 + 1")
    inserted = [(s, by) for s, by in sources(nb) if by is not None]
    assert inserted == [("total = 1 + 1", cell_id)]

    # The same cell again, unchanged: its recorded answer replays, and nothing is inserted.
    asked = len(fake_server.chat_requests())
    rerun(nb, asking)
    assert "replayed" in nb.output(asking)
    assert len(fake_server.chat_requests()) == asked
    assert [(s, by) for s, by in sources(nb) if by is not None] == inserted

    # Asked again (replay off): the inserted cell gets the new code; no second cell.
    nb.run_cell("%config ChatMagics.replay = False")
    fake_server.script(Reply(text="Better:\n\n```python\ntotal = sum([1, 1])\n```"))
    rerun(nb, asking)
    wait_source(nb, asking + 1, "total = sum([1, 1])")
    inserted = [(s, by) for s, by in sources(nb) if by is not None]
    assert inserted == [("total = sum([1, 1])", cell_id)]
    assert nb.cell(asking + 1).locator(".cm-content").inner_text() == "total = sum([1, 1])"
    nb.screenshot("insert-replaced.png")
