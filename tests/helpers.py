"""Small helpers shared by the client's test modules."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from jupyter_llmchat import Chat, Turn, chat_openai_compatible


def new_chat(url: str, **kwargs: Any) -> Chat:
    """A chat on ``url`` with the fake server's model, unless told otherwise."""
    kwargs.setdefault("model", "test-model")
    return chat_openai_compatible(url, **kwargs)


def last(chat: Chat) -> Turn:
    """The chat's last assistant turn (there must be one)."""
    turn = chat.last_turn()
    assert turn is not None
    return turn


def run_notebook(sources: list[str], directory: Path, *, allow_errors: bool = False) -> Any:
    """A notebook of one code cell per source, executed by nbclient in a python3 kernel whose
    working directory is ``directory``; returned with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=allow_errors,
                   resources={"metadata": {"path": str(directory)}}).execute()
    return nb


def quiet_run(nb: Any) -> Any:
    """``nb`` after checking no cell showed an error or wrote to stderr; what its last cell
    printed, read as JSON."""
    for cell in nb.cells:
        errors = [o for o in cell.outputs if o.output_type == "error" or o.get("name") == "stderr"]
        assert not errors, (cell.source, errors)
    (printed,) = [o for o in nb.cells[-1].outputs if o.output_type == "stream"]
    return json.loads(printed.text)


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"
