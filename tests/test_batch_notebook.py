"""notebooks/03-batch.ipynb runs top to bottom on the embedded model, in a real kernel."""

from __future__ import annotations

import os
import pathlib

import pytest

from jupyter_llmchat._local._model import LocalServer

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.realmodel, pytest.mark.kernel]


def test_batch_notebook_runs_on_the_embedded_model(local_server: LocalServer, tmp_path: pathlib.Path) -> None:
    pytest.importorskip("pandas")
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "03-batch.ipynb", as_version=4)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY")}
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    # One progress line, updated in place (nbclient applies the display updates to it).
    progress = [
        o for o in outputs
        if o.output_type == "display_data" and o.data.get("text/plain", "").startswith("parallel_chat_text:")
    ]
    assert len(progress) == 1
    assert "6/6 done" in progress[0].data["text/plain"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "6 of 6 answered; 0 failed" in printed
    # The cluster recipe names the base_url to change.
    markdown = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "base_url=" in markdown and "vLLM" in markdown and "SGLang" in markdown
