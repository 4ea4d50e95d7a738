"""The chat record in the notebook's metadata, end to end: kernel, comm, JupyterLab, file, restore.

A user's path through JupyterLab (and once Notebook 7): chat in cells, save, read the .ipynb
back through the contents API; then restart the kernel, close and reopen the notebook, shut its
kernel down, and check every time that the kernel got its history back from the notebook.
The kernels talk to the fake OpenAI server of this process (tests/fake_openai.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import jupyter_llmchat
from tests.browser.harness import (
    ARTIFACTS,
    JupyterServer,
    NotebookPage,
    console_messages,
    empty_notebook,
)
from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

SECRET = "sk-test-SECRET1234567890abcd"
SCHEMA = json.loads(
    (Path(jupyter_llmchat.__file__).parent / "schema" / "metadata-v1.json").read_text(encoding="utf-8")
)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# Four exchanges; numbers chosen so that sums are easy to spot in %chat_usage.
QUESTIONS = ["What is the capital of France?", "And of Germany?", "And of Italy?", "And of Spain?",
             "And of Portugal?"]
REPLIES = [
    Reply(text="**Paris** is the capital of France.\n\n- on the Seine\n- since 987",
          usage=usage(1201, 17), chunk_chars=5, delay=0.01),
    Reply(text="And `Berlin` is the capital of Germany.", usage=usage(1302, 9), finish_reason="length"),
    Reply(text="*Rome* is the capital of Italy.", usage=usage(1403, 8)),
    Reply(text="Madrid.", usage=usage(1504, 2)),
    Reply(text="Lisbon.", usage=usage(1605, 2)),
]


def expected_messages(n_exchanges: int) -> list[tuple[str, str]]:
    """(role, text) of the first n exchanges, as the kernel sends them (cell bodies end with \\n)."""
    out: list[tuple[str, str]] = []
    for q, r in zip(QUESTIONS[:n_exchanges], REPLIES[:n_exchanges]):
        out += [("user", q + "\n"), ("assistant", r.content())]
    return out


def sent_messages(fake: FakeOpenAI) -> list[tuple[str, str]]:
    """(role, text) of the last chat request's messages."""
    out = []
    for m in fake.last_body()["messages"]:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append((m["role"], content))
    return out


def setup_cells(nb: NotebookPage, fake: FakeOpenAI) -> None:
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell(f'%config ChatMagics.base_url = "{fake.base_url}"')
    nb.run_cell('%config ChatMagics.model = "test-model"')


def chat(nb: NotebookPage, fake: FakeOpenAI, i: int) -> int:
    """Run the i-th exchange in a new %%chat cell; its index."""
    fake.script(REPLIES[i])
    index = nb.run_cell(f"%%chat\n{QUESTIONS[i]}")
    out = nb.output(index)
    assert REPLIES[i].content().split()[-1].strip("*`.") in out, out
    assert "chat error" not in out
    return index


def saved(server: JupyterServer, path: str) -> tuple[dict[str, Any], str]:
    """The notebook as saved (contents API) and the file's raw text."""
    model = server.contents(path)
    assert model["type"] == "notebook"
    return model["content"], server.read_text(path)


def check_record(record: Any, n_exchanges: int) -> list[dict[str, Any]]:
    """Valid against the schema, one session with the first n exchanges; returns its turns."""
    jsonschema.Draft202012Validator(
        SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(record)
    assert list(record["sessions"]) == ["default"]
    turns = record["sessions"]["default"]["turns"]
    assert [(t["role"], t["contents"][0]["text"]) for t in turns] == expected_messages(n_exchanges)
    for t, reply in zip(turns[1::2], REPLIES):
        u = reply.usage
        assert isinstance(u, dict)
        assert t["tokens"] == {"input": u["prompt_tokens"], "output": u["completion_tokens"], "cached": None}
        assert t["cost_usd"] is None  # no known price for "test-model"
        assert t["finish_reason"] == reply.finish_reason
        assert t["partial"] is False
        assert t["model"] == "test-model"
    assert all(t["source"] == "cell" for t in turns)
    return turns  # type: ignore[no-any-return]


def usage_row(record: dict[str, Any]) -> dict[str, Any]:
    (row,) = record["usage"]
    return row  # type: ignore[no-any-return]


def llmchat_console_problems(nb: NotebookPage) -> list[str]:
    # JupyterLab's "Plugin ... took N ms to activate" measures the machine's load (seen over 5 s
    # on 2 busy cores while the plugin's activate() is synchronous), not a fault of ours.
    return [m for m in console_messages(nb.page)
            if "llmchat" in m.lower() and m.startswith(("error", "warning", "pageerror"))
            and not re.search(r"took [\d.]+ ?ms to activate", m)]


def test_lab_record_is_saved_and_restored_after_restart_reopen_and_shutdown(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    server, fake, path = jupyter_server, fake_server, "metadata-lab.ipynb"
    server.put_notebook(path, empty_notebook())
    nb = open_notebook(path)

    # -- two chats, then save -------------------------------------------------------------------
    env_cell = nb.run_cell(f"%env OPENAI_API_KEY={SECRET}")
    setup_cells(nb, fake)
    first = chat(nb, fake, 0)
    chat(nb, fake, 1)
    # The answer streamed, and its final display is rendered Markdown.
    assert nb.cell(first).locator(".jp-RenderedMarkdown strong").inner_text() == "Paris"
    assert nb.cell(first).locator(".jp-RenderedMarkdown li").count() == 2
    assert nb.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
    # The key was live in the kernel and went to the server...
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in fake.chat_requests())
    # ...but the cell that set it is not part of what is saved: only the record is under test.
    nb.delete_cell(env_cell)
    nb.save()
    nb.screenshot("metadata-lab.png")

    content, raw = saved(server, path)
    record = content["metadata"]["jupyter_llmchat"]
    (ARTIFACTS / "metadata-lab.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    turns = check_record(record, 2)
    chat_cells = [c for c in content["cells"] if c["source"].startswith("%%chat")]
    assert [t["cell_id"] for t in turns] == [chat_cells[0]["id"]] * 2 + [chat_cells[1]["id"]] * 2
    assert record["sessions"]["default"]["provider"] == {
        "name": "OpenAI-compatible", "base_url": fake.base_url, "model": "test-model"}
    assert usage_row(record) == {"provider": "OpenAI-compatible", "model": "test-model", "turns": 2,
                                 "input": 2503, "output": 26, "cached": None, "cost_usd": None}
    assert SECRET not in raw and SECRET[8:] not in raw
    assert "authorization" not in raw.lower()

    # -- restart: %load_ext reads the record back from the file ---------------------------------
    nb.restart_kernel()
    nb.run_cell("%load_ext jupyter_llmchat")
    report = nb.output(nb.run_cell("%chat_usage"))
    assert "2,503" in report and "26" in report, report  # input and output tokens of both answers
    nb.run_cell(f'%config ChatMagics.base_url = "{fake.base_url}"')
    nb.run_cell('%config ChatMagics.model = "test-model"')
    chat(nb, fake, 2)
    assert sent_messages(fake) == expected_messages(2) + [("user", QUESTIONS[2] + "\n")]
    nb.save()
    record = saved(server, path)[0]["metadata"]["jupyter_llmchat"]
    check_record(record, 3)
    assert usage_row(record)["turns"] == 3 and usage_row(record)["input"] == 2503 + 1403

    # -- close the tab and open it again: the running kernel's comm is joined again -------------
    nb.close()
    nb.reopen()
    report = nb.output(nb.run_cell("%chat_usage"))
    assert "3,906" in report, report
    chat(nb, fake, 3)
    assert sent_messages(fake) == expected_messages(3) + [("user", QUESTIONS[3] + "\n")]
    assert len(nb.metadata()["sessions"]["default"]["turns"]) == 8  # the kernel's record arrived
    nb.save()
    check_record(saved(server, path)[0]["metadata"]["jupyter_llmchat"], 4)

    # -- close, shut the kernel down, open again: a new kernel restores from the file -----------
    nb.close()
    server.shutdown_kernel(path)
    nb.reopen()
    setup_cells(nb, fake)
    report = nb.output(nb.run_cell("%chat_usage"))
    assert "5,410" in report, report  # 1201 + 1302 + 1403 + 1504
    chat(nb, fake, 4)
    assert sent_messages(fake) == expected_messages(4) + [("user", QUESTIONS[4] + "\n")]
    nb.save()
    content, raw = saved(server, path)
    record = content["metadata"]["jupyter_llmchat"]
    check_record(record, 5)
    assert usage_row(record)["turns"] == 5
    assert SECRET not in raw and "authorization" not in raw.lower()
    assert llmchat_console_problems(nb) == []


def test_notebook7_records_a_chat(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    path = "metadata-nb7.ipynb"
    jupyter_server.put_notebook(path, empty_notebook())
    nb = open_notebook(path, ui="notebook")
    setup_cells(nb, fake_server)
    chat(nb, fake_server, 0)
    nb.save()
    content, _ = saved(jupyter_server, path)
    turns = check_record(content["metadata"]["jupyter_llmchat"], 1)
    chat_cell = next(c for c in content["cells"] if c["source"].startswith("%%chat"))
    assert {t["cell_id"] for t in turns} == {chat_cell["id"]}
    assert llmchat_console_problems(nb) == []


def test_a_kernel_shared_by_two_notebooks_writes_only_its_own_record(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    """b.ipynb, with a record of its own, is switched to a.ipynb's running kernel; chatting in
    a.ipynb must leave b.ipynb's record as it was, in the page and in the file."""
    from tests.test_restore import valid_record

    server, fake = jupyter_server, fake_server
    theirs = valid_record()
    b_nb = empty_notebook()
    b_nb["metadata"]["jupyter_llmchat"] = theirs
    server.put_notebook("shared-a.ipynb", empty_notebook())
    server.put_notebook("shared-b.ipynb", b_nb)
    a = open_notebook("shared-a.ipynb")
    setup_cells(a, fake)
    b = NotebookPage(a.page, server, "shared-b.ipynb", "lab")
    b.reopen()
    try:
        kernel_id = b.use_kernel_of("shared-a.ipynb")
        assert [s["kernel"]["id"] for s in server.sessions("shared-b.ipynb")] == [kernel_id]
        a.activate()
        chat(a, fake, 0)
        # b's hello (its own record) did not reach a's sessions: the request has a's history only.
        assert sent_messages(fake) == [("user", QUESTIONS[0] + "\n")]
        a.save()
        b.activate()
        b.run_cell("1 + 1")  # b uses the shared kernel; its record still must not move
        assert b.metadata() == theirs
        b.save()
        assert saved(server, "shared-b.ipynb")[0]["metadata"]["jupyter_llmchat"] == theirs
        check_record(saved(server, "shared-a.ipynb")[0]["metadata"]["jupyter_llmchat"], 1)
        assert llmchat_console_problems(a) == []
    finally:
        server.shutdown_kernel("shared-b.ipynb")


def test_a_notebook_renamed_while_its_kernel_runs_keeps_recording(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    """Renamed in the file browser while its kernel runs, then the page reloaded: the record
    follows the notebook (its id), and every turn after the rename is still recorded."""
    server, fake = jupyter_server, fake_server
    server.put_notebook("rename-a.ipynb", empty_notebook())
    nb = open_notebook("rename-a.ipynb")
    setup_cells(nb, fake)
    chat(nb, fake, 0)
    nb.save()
    record_id = nb.metadata().get("id")
    # What the file browser's rename does: the contents API moves it, the open document follows.
    nb.js("await app.serviceManager.contents.rename(path, 'rename-b.ipynb');")
    nb.path = "rename-b.ipynb"
    nb._wait_js("panel !== null")
    chat(nb, fake, 1)
    nb.save()
    nb.goto()  # a page reload: a new connection to the same running kernel
    chat(nb, fake, 2)
    nb.save()
    record = saved(server, "rename-b.ipynb")[0]["metadata"]["jupyter_llmchat"]
    check_record(record, 3)
    assert record_id is not None and record["id"] == record_id
    assert sent_messages(fake)[:-1] == expected_messages(2)  # the history came along too
    assert llmchat_console_problems(nb) == []
