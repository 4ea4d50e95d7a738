"""``%%chat --insert`` in a real kernel (DESIGN §3): where the labextension listens, the answer's
code goes to it as ``{"type": "insert_cell", "cell", "source"}`` (an upsert the front end ties to
the asking cell's id), never as a ``set_next_input`` payload too; a replayed answer inserts
nothing; a cell asked again sends its new code for the same cell. With no front end on the comm
(nbclient, VS Code), IPython's ``set_next_input`` payload carries the code instead.

What the front end does with the message (one inserted cell, replaced when asked again) is
tests/browser/test_insert_browser.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.kernel_frontend import FrontEnd, Kernel, kernel, load, notebook_file

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

CELL = "%%chat --insert\nWrite code\n"


def run(k: Kernel, code: str, cell_id: str) -> tuple[dict[str, Any], str]:
    """The execute reply's content and the text the cell shows (streams and displays)."""
    reply, msgs = k.execute(code, cell=cell_id)
    assert reply["content"]["status"] == "ok", reply["content"]
    shown = [m["content"].get("text") or m["content"].get("data", {}).get("text/plain", "")
             for m in msgs if m["msg_type"] in ("stream", "display_data", "update_display_data")]
    return reply["content"], "\n".join(shown)


def next_inputs(content: dict[str, Any]) -> list[str]:
    return [p["text"] for p in content.get("payload", []) if p.get("source") == "set_next_input"]


def test_insert_goes_to_the_front_end_once_per_asking(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    nb = notebook_file(tmp_path / "insert.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("insert.ipynb"))
        load(k, server.base_url)
        k.sync()
        server.script(Reply(text="Here:\n\n```python\nx = 1\n```\n\nand ```py\nnot this\n```"))
        content, _ = run(k, CELL, "cell-a")
        inserts = [d for d, _ in fe.received if d["type"] == "insert_cell"]
        assert inserts == [{"type": "insert_cell", "cell": "cell-a", "source": "x = 1",
                            "path": "insert.ipynb"}]
        assert next_inputs(content) == []  # the front end inserts: no second cell from IPython
        # Replayed (the same cell run again, unchanged): nothing inserted again.
        asked = len(server.chat_requests())
        content, out = run(k, CELL, "cell-a")
        assert "replayed" in out and len(server.chat_requests()) == asked
        assert [d for d, _ in fe.received if d["type"] == "insert_cell"] == inserts
        assert next_inputs(content) == []
        # Asked again: the new code, for the same asking cell (the front end replaces its cell).
        server.script(Reply(text="```python\nx = 2\n```"))
        run(k, CELL.replace("--insert", "--insert --refresh"), "cell-a")
        inserts = [d for d, _ in fe.received if d["type"] == "insert_cell"]
        assert [(d["cell"], d["source"]) for d in inserts] == [
            ("cell-a", "x = 1"), ("cell-a", "x = 2")]


def test_without_a_front_end_the_code_is_the_next_input(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    nb = notebook_file(tmp_path / "plain.ipynb")
    with kernel(nb) as k:  # nobody answers the comm: nbclient, VS Code, Lab without the extension
        load(k, server.base_url)
        server.script(Reply(text="```python\nprint('hi')\n```"))
        content, _ = run(k, CELL, "cell-b")
        assert next_inputs(content) == ["print('hi')"]
        replace = [p["replace"] for p in content["payload"] if p.get("source") == "set_next_input"]
        assert replace == [False]  # a new cell below, never over the asking cell
