"""The tour notebook, as a new user meets it: JupyterLab, Run All, the bundled local model.

Its screenshot goes to tests/artifacts/tour.png, to be looked at: answers, and the token counts
and cost of ``%chat_usage``. Asserts protocol facts only (no errors, answers recorded with
their tokens), never the model's wording.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jupyter_llmchat._local._model import LocalServer
from tests.browser.harness import ARTIFACTS, JupyterServer, NotebookPage

pytestmark = [pytest.mark.browser, pytest.mark.realmodel, pytest.mark.timeout(400)]

TOUR = Path(__file__).resolve().parents[2] / "notebooks" / "01-tour.ipynb"


def test_tour_runs_all_on_the_bundled_model(
    local_server: LocalServer,  # skips without the extra "local"; the kernel starts its own
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
) -> None:
    jupyter_server.put_notebook("01-tour.ipynb", json.loads(TOUR.read_text(encoding="utf-8")))
    nb = open_notebook("01-tour.ipynb")
    nb.page.set_viewport_size({"width": 1500, "height": 2600})
    nb.command("notebook:run-all-cells")
    deadline = time.monotonic() + 300
    code_cells = nb.js("return panel.content.widgets.filter(c => c.model.type === 'code').length;")
    while True:
        done = nb.js(
            "return panel.content.widgets.filter(c => c.model.type === 'code' "
            "&& c.model.executionCount !== null).length;"
        )
        idle = nb.js("return panel.sessionContext.session?.kernel?.status === 'idle';")
        if done == code_cells and idle:
            break
        assert time.monotonic() < deadline, f"{done} of {code_cells} cells ran"
        time.sleep(0.5)
    errors = nb.js(
        "return panel.content.widgets.flatMap(c => c.model.type === 'code' ? "
        "Array.from({length: c.model.outputs.length}, (_, i) => c.model.outputs.get(i).toJSON()) : [])"
        ".filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue);"
    )
    assert errors == []
    # Scroll so the answers and the usage table are in view, then keep the picture.
    nb.js("panel.content.activeCellIndex = 1; panel.content.scrollToItem(1, 'start');")
    time.sleep(1.0)
    ARTIFACTS.mkdir(exist_ok=True)
    nb.page.screenshot(path=str(ARTIFACTS / "tour.png"))
    # The record of each answer carries the model's own token counts and a known (zero) cost.
    nb.save()
    saved = json.loads(jupyter_server.read_text("01-tour.ipynb"))
    answers = [
        o["metadata"]["jupyter_llmchat"]
        for c in saved["cells"] if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "display_data" and "jupyter_llmchat" in o.get("metadata", {})
    ]  # fmt: skip
    assert len(answers) == 3
    for meta in answers:
        assert meta["tokens"]["input"] > 0 and meta["tokens"]["output"] > 0, meta
        assert meta["cost_usd"] == 0.0
