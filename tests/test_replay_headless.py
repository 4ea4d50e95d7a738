"""A saved notebook run again headless (nbclient, ``jupyter execute``): the record made before
the replay key had parts is still replayed, and replay-only mode (CI, docs builds) sends nothing,
passing when the record matches and failing loudly, naming what changed, when it does not.

``fixtures/v1-record.ipynb`` was saved by main's code before the key had parts (see
``fixtures/make_v1_notebook.py``): its record is in its metadata and in its answers' outputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from tests.fake_openai import FakeOpenAI

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "v1-record.ipynb"
KEY = "jupyter_llmchat"


@pytest.fixture(autouse=True)
def kernel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The kernel inherits this environment: no notebook path, no real server, no proxy."""
    for name in (
        "OPENAI_BASE_URL",
        "OPENAI_MODEL",
        "OPENAI_API_KEY",
        "JPY_SESSION_NAME",
        "JUPYTER_LLMCHAT_REPLAY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    path = [str(ROOT), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    yield


def saved_notebook(tmp_path: Path, fake: FakeOpenAI, *, record: bool = True) -> Path:
    """The fixture, its config cell pointed at this test's fake server (a request would show
    there); ``record=False``: without the metadata record (only the outputs hold the turns)."""
    nb = json.loads(FIXTURE.read_text(encoding="utf-8"))
    config = nb["cells"][1]
    source = "".join(config["source"])
    config["source"] = re.sub(r"http://127\.0\.0\.1:\d+/v1", fake.base_url, source)
    if not record:
        del nb["metadata"][KEY]
    path = tmp_path / "saved.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def nbclient_execute(path: Path) -> Any:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    try:
        NotebookClient(
            nb,
            timeout=60,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        nbformat.write(nb, path)
    return nb


def answers(nb: Any) -> list[dict[str, Any]]:
    return [
        o["metadata"][KEY]
        for c in nb.cells
        for o in c.get("outputs", [])
        if KEY in (o.get("metadata") or {}) and "prompt" in o["metadata"][KEY]
    ]


def outputs_text(nb: Any) -> str:
    return "".join(
        str(o.get("text", ""))
        + str((o.get("data") or {}).get("text/markdown", ""))
        + str((o.get("data") or {}).get("text/plain", ""))
        for c in nb.cells
        for o in c.get("outputs", [])
    )


@pytest.mark.parametrize("record", [True, False], ids=["metadata-record", "outputs-only"])
def test_a_notebook_saved_with_the_version_1_key_is_replayed(
    fake: FakeOpenAI, tmp_path: Path, record: bool
) -> None:
    nb = nbclient_execute(saved_notebook(tmp_path, fake, record=record))
    assert fake.chat_requests() == []
    assert [a.get("replayed") for a in answers(nb)] == [True, True, True, True]
    text = outputs_text(nb)
    assert "Your name is Ada." in text and "Eight." in text and "asked again" not in text
    # The tool exchange is shown as recorded, not as a call that ran.
    assert "recorded, not run again" in text and "ok · 0.00 s" not in text


def test_replay_only_under_nbclient_passes_when_the_record_matches(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_LLMCHAT_REPLAY", "only")
    nb = nbclient_execute(saved_notebook(tmp_path, fake))
    assert fake.chat_requests() == []
    assert [a.get("replayed") for a in answers(nb)] == [True, True, True, True]


def test_replay_only_under_nbclient_fails_an_edited_prompt_naming_it(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("JUPYTER_LLMCHAT_REPLAY", "only")
    path = saved_notebook(tmp_path, fake)
    nb = json.loads(path.read_text(encoding="utf-8"))
    nb["cells"][3]["source"] = "%%chat\nWhat is my name, please?"
    path.write_text(json.dumps(nb), encoding="utf-8")
    with pytest.raises(CellExecutionError) as caught:
        nbclient_execute(path)
    assert fake.chat_requests() == []
    message = str(caught.value)
    assert "replay-only mode (JUPYTER_LLMCHAT_REPLAY=only)" in message
    assert "its recorded answer does not match: its prompt changed; nothing sent" in message
    # The cell above it replayed; the run stopped at the edited one, its output the error.
    cells = nbformat.read(path, as_version=4).cells
    assert [a.get("replayed") for a in answers(nbformat.from_dict({"cells": cells[:3]}))] == [True]
    shown = [o.get("text", "") for o in cells[3].outputs]
    assert len(shown) == 1 and shown[0].startswith("UsageError: replay-only mode"), shown


def test_replay_only_under_jupyter_execute_fails_a_changed_value(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_LLMCHAT_REPLAY", "only")
    path = saved_notebook(tmp_path, fake)
    nb = json.loads(path.read_text(encoding="utf-8"))
    source = "".join(nb["cells"][4]["source"])
    nb["cells"][4]["source"] = source.replace("range(1000)", "range(1, 1001)", 1)
    path.write_text(json.dumps(nb), encoding="utf-8")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-execute"), path.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode != 0
    assert fake.chat_requests() == []
    assert "replay-only mode (JUPYTER_LLMCHAT_REPLAY=only)" in done.stderr + done.stdout


def test_replay_only_under_papermill(
    fake: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_LLMCHAT_REPLAY", "only")
    path = saved_notebook(tmp_path, fake)
    out = tmp_path / "out.ipynb"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "papermill"),
            str(path),
            str(out),
            "--cwd",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    assert fake.chat_requests() == []


def test_copies_of_one_notebook_hold_one_record_and_others_do_not(tmp_path: Path) -> None:
    """papermill's output starts as a copy of its input, beside it: the same record, so the
    headless look-up may take either; two notebooks with different records stay ambiguous."""
    from jupyter_llmchat._jupyter._bridge import _one_record

    def write(name: str, record: object) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"cells": [], "metadata": {"jupyter_llmchat": record}}))
        return str(path)

    a = write("a.ipynb", {"version": 1, "sessions": {}})
    b = write("b.ipynb", {"version": 1, "sessions": {}})
    c = write("c.ipynb", {"version": 1, "sessions": {"default": {}}})
    none = write("d.ipynb", None)
    assert _one_record([a, b])
    assert not _one_record([a, c])
    assert not _one_record([none, write("e.ipynb", None)])  # nothing to replay from either
