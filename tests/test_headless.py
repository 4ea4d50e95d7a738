"""Headless re-execution (DESIGN §3, §7): ``jupyter execute`` and nbclient tell the kernel no
notebook path, so the kernel finds its notebook in its working directory by the sources it
executes, and a saved notebook run again replays its answers with no request. No front end
speaks the comm there, so the kernel opens none (no "No handler found for comm target").
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
KEY = "jupyter_llmchat"
JUPYTER_EXECUTE = Path(sys.executable).parent / "jupyter-execute"


@pytest.fixture(autouse=True)
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernel inherits this environment: no notebook path, no real server, no proxy."""
    for name in ("OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY", "JPY_SESSION_NAME",
                 "JUPYTER_LLMCHAT_REPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    yield


def chat_notebook(path: Path, fake: FakeOpenAI) -> Path:
    sources = [
        "%load_ext jupyter_llmchat",
        f'%config ChatMagics.base_url = "{fake.base_url}"\n%config ChatMagics.model = "test-model"',
        "%%chat\nWhat is the capital of France?",
        "%%chat\nAnd of Italy?",
    ]
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in sources],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)
    return path


def answers(path: Path) -> list[dict[str, Any]]:
    """The final displays' record metadata of the notebook's answers, in order."""
    nb = nbformat.read(path, as_version=4)
    return [o["metadata"][KEY] for c in nb.cells for o in c.get("outputs", [])
            if KEY in (o.get("metadata") or {}) and "prompt" in o["metadata"][KEY]]


def texts(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(str(o.get("text", "")) + str((o.get("data") or {}).get("text/plain", ""))
                   for c in nb.cells for o in c.get("outputs", []))


def jupyter_execute(path: Path) -> str:
    done = subprocess.run([str(JUPYTER_EXECUTE), "--inplace", path.name], cwd=path.parent,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def nbclient_execute(path: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


def script(fake: FakeOpenAI) -> None:
    fake.script(Reply(text="Paris."), Reply(text="Rome."))


def test_jupyter_execute_inplace_twice_replays_and_logs_no_missing_comm_handler(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    # Another notebook in the folder, which does not hold these cells, must not confuse it.
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("%load_ext jupyter_llmchat\n1")]),
                   tmp_path / "other.ipynb")
    path = chat_notebook(tmp_path / "capitals.ipynb", fake)
    script(fake)
    first = jupyter_execute(path)
    assert len(fake.chat_requests()) == 2
    assert "No handler found" not in first
    assert [a.get("replayed", False) for a in answers(path)] == [False, False]

    fake.reset()
    second = jupyter_execute(path)
    assert fake.chat_requests() == []  # every answer replayed from the saved outputs
    assert "No handler found" not in second
    assert [a.get("replayed") for a in answers(path)] == [True, True]
    assert "Paris." in texts(path) and "Rome." in texts(path)


def test_nbclient_twice_replays(fake: FakeOpenAI, tmp_path: Path) -> None:
    path = chat_notebook(tmp_path / "capitals.ipynb", fake)
    script(fake)
    nbclient_execute(path)
    assert len(fake.chat_requests()) == 2
    fake.reset()
    nbclient_execute(path)
    assert fake.chat_requests() == []
    assert [a.get("replayed") for a in answers(path)] == [True, True]


def test_two_notebooks_holding_the_cells_say_so_in_one_line(fake: FakeOpenAI, tmp_path: Path) -> None:
    path = chat_notebook(tmp_path / "capitals.ipynb", fake)
    script(fake)
    nbclient_execute(path)
    (tmp_path / "capitals-Copy1.ipynb").write_bytes(path.read_bytes())
    fake.reset()
    script(fake)
    nbclient_execute(path)
    # Which one is ours is not known: nothing is replayed, and the notebook says why.
    assert len(fake.chat_requests()) == 2
    lines = [line for line in texts(path).splitlines() if "JPY_SESSION_NAME" in line]
    assert len(lines) == 1, texts(path)
    assert "capitals-Copy1.ipynb" in lines[0] and "--cwd" in lines[0]
