"""Replay after a restart, headless: a notebook executed with nbclient, saved, then executed again
from the saved file sends nothing for unchanged cells (the record is rebuilt from its outputs at
``%load_ext``). Also what the new outputs are on IOPub: plain text only where text is untrusted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAIProcess, Reply

pytestmark = pytest.mark.kernel

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]


def notebook(base_url: str, cells: list[str]) -> Any:
    nb = nbformat.v4.new_notebook()
    setup = (
        "%load_ext jupyter_llmchat\n"
        f"%config ChatMagics.base_url = {base_url!r}\n"
        "%config ChatMagics.model = 'test-model'\n"
    )
    nb.cells = [nbformat.v4.new_code_cell(setup)] + [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


def execute(path: Path) -> Any:
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # How a kernel learns its notebook's path (JupyterLab sets it the same way).
    env["JPY_SESSION_NAME"] = str(path)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    nbformat.write(nb, path)
    return nb


def plain(nb: Any, i: int) -> str:
    out = []
    for o in nb.cells[i].outputs:
        if o.get("output_type") == "stream":
            out.append(o["text"])
        else:
            out.append(str((o.get("data") or {}).get("text/plain", "")))
    return "\n".join(out)


def all_answers(report: str) -> int:
    """The answers column of the test-model row in the "All answers of this notebook" table."""
    tail = report.split("All answers of this notebook")[1]
    row = next(line for line in tail.splitlines() if "test-model" in line).split()
    return int(row[row.index("test-model") + 1])


def test_reexecuting_the_saved_notebook_sends_nothing_for_unchanged_cells(
    server: FakeOpenAIProcess, tmp_path: Path
) -> None:
    server.reset()
    path = tmp_path / "replay.ipynb"
    cells = [
        "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': [3.0, 4.5]})",
        "%%chat --with df\nDescribe the frame.",
        "%%chat\nAnd then?",
        "%%chat --dry-run\nNot sent.",
        "%chat_usage --all",
        "def mean(xs):\n    return sum(xs) / len(xs)\n\nmean([])",
        "%chat_fix",
    ]
    nb = notebook(server.base_url, cells)
    nb.cells[6].metadata["tags"] = ["raises-exception"]
    nbformat.write(nb, path)
    server.script(Reply(text="<img src=x onerror=alert(1)> first"), Reply(text="second"), Reply(text="fix"))
    first = execute(path)
    assert len(server.chat_requests()) == 3
    # %chat_fix in a kernel: ipykernel's cell files are found, library frames left out.
    fix = server.chat_requests()[-1].body["messages"][-1]["content"]
    assert "ZeroDivisionError: division by zero" in fix
    assert "```python\ndef mean(xs):\n    return sum(xs) / len(xs)\n\nmean([])\n```" in fix
    assert "line 2, in mean" in fix and "ipykernel" not in fix and "IPython" not in fix
    assert "first" in plain(first, 2) and "attached: df (pandas.DataFrame" in plain(first, 2)
    assert "test-model · 11 in" in plain(first, 2)
    # The dry run and the footer are plain text only: untrusted text never renders.
    for o in first.cells[4].outputs + first.cells[2].outputs[-1:]:
        assert set(o.get("data", {"text/plain": ""})) == {"text/plain"}
    assert "history: 4 turns" in plain(first, 4)

    second = execute(path)
    assert len(server.chat_requests()) == 3  # nothing new was asked
    for i in (2, 3, 7):
        assert "replayed (recorded " in plain(second, i)
    assert "second" in plain(second, 3)
    # %chat_usage --all stays exact: the saved notebook's three answers, the replays add nothing.
    assert all_answers(plain(first, 5)) == 2  # %chat_fix had not run yet
    assert all_answers(plain(second, 5)) == 3

    # A changed cell asks again, and so does the one after it (its history changed).
    second.cells[3].source = "%%chat\nAnd after that?"
    nbformat.write(second, path)
    server.script(Reply(text="changed"))
    third = execute(path)
    # The changed cell and the %chat_fix after it (its history changed) ask again.
    assert len(server.chat_requests()) == 5
    assert "replayed" in plain(third, 2) and "changed" in plain(third, 3)
    assert "replayed" not in plain(third, 7)
    assert all_answers(plain(third, 5)) == 4


@pytest.mark.realmodel
def test_context_notebook_runs_on_the_embedded_model_and_replays(local_server: Any, tmp_path: Path) -> None:
    """notebooks/04-context.ipynb top to bottom on the embedded model, then again from the saved
    file: the second run replays every answer (the kernel starts its own local model)."""
    src = nbformat.read(ROOT / "notebooks" / "04-context.ipynb", as_version=4)
    path = tmp_path / "04-context.ipynb"
    nbformat.write(src, path)
    first = execute(path)  # execute() leaves OPENAI_* out: the embedded model answers
    second = execute(path)

    def answers(nb: Any) -> list[Any]:
        return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "display_data" and "jupyter_llmchat" in o.get("metadata", {})
                and "session" in o.metadata["jupyter_llmchat"]]

    for nb in (first, second):
        errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  and "raises-exception" not in c.metadata.get("tags", [])
                  for o in c.outputs if o.output_type == "error"]
        assert not errors, errors
    text = "\n".join(plain(first, i) for i in range(len(first.cells)) if first.cells[i].cell_type == "code")
    assert "attached: sales (pandas.DataFrame" in text
    assert "dry run: nothing sent" in text and "[attached value `sales`" in text
    assert "token budget: 20,000" in text and "free, local" in text
    fix = answers(first)[-1].metadata["jupyter_llmchat"]
    assert "KeyError" in fix["prompt"] and 'sales["revenue"].sum()' in fix["prompt"]
    assert len(answers(first)) == 2
    # Run again from the saved file: the same answers, replayed, nothing asked.
    assert [o.data["text/plain"] for o in answers(second)] == [o.data["text/plain"] for o in answers(first)]
    assert all(o.metadata["jupyter_llmchat"].get("replayed") for o in answers(second))
