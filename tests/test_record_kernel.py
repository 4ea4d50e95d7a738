"""The record keeps following the notebook (DESIGN §6-7), in real kernels with the scripted
front end of ``tests/kernel_frontend.py`` and the fake server in a subprocess:

- one oversized content (a tool's 2.1 MB result, a huge prompt) is cut in the record with a
  note, so every later turn is still recorded, and the large result is stored once at most;
- a notebook renamed while its kernel runs keeps its record: ownership follows the record's id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_llmchat._record._metadata import validate_record
from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.kernel_frontend import FrontEnd, kernel, load, notebook_file, record_texts
from tests.test_tools import call, tool_reply

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

RECORD = "__import__('jupyter_llmchat._jupyter._bridge')._jupyter._bridge.current_bridge().record()"
BIG = 2_100_000


def final_outputs(msgs: list[dict[str, Any]]) -> int:
    """Bytes a notebook keeps of a cell's outputs: each display's last state, as JSON."""
    last: dict[str, Any] = {}
    for i, m in enumerate(msgs):
        if m["msg_type"] in ("display_data", "update_display_data", "stream", "execute_result"):
            content = m["content"]
            key = (content.get("transient") or {}).get("display_id") or f"out{i}"
            last[key] = {k: content.get(k) for k in ("data", "metadata", "text")}
    return len(json.dumps(list(last.values())))


def shown(k: Any, code: str) -> str:
    """What the cell ``code`` showed: its streams and its displays' text/plain."""
    reply, msgs = k.execute(code)
    assert reply["content"]["status"] == "ok"
    return "".join(m["content"].get("text", "") + str((m["content"].get("data") or {}).get("text/plain", ""))
                   for m in msgs)


def page_on_the_same_kernel(k: Any, fe: FrontEnd, path: str) -> FrontEnd:
    """A page showing ``path`` that takes over ``fe``'s comm (a reload, or another notebook
    switched to this kernel) and says hello with ``fe``'s record."""
    page = k.attach(FrontEnd(path, fe.record, hello=False))
    page.comm_id = fe.comm_id
    page.say_hello()
    return page


def test_a_large_tool_result_is_cut_once_and_later_turns_are_recorded(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    nb = notebook_file(tmp_path / "big.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("big.ipynb"))
        load(k, server.base_url)
        k.ok(f"import jupyter_llmchat as j\ndef dump():\n    'A large result.'\n    return 'z' * {BIG}\n"
             "j.session().register_tool(dump)")
        server.script(tool_reply(call("c1", "dump", {})), Reply(text="It is long."))
        reply, msgs = k.execute("%%chat\nDump it.")
        assert reply["content"]["status"] == "ok"
        out = "".join(m["content"].get("text", "") for m in msgs if m["msg_type"] == "stream")
        server.script(Reply(text="Later."))
        out += k.ok("%chat And later?")
        assert "not written into the notebook" not in out, out
        # Every turn is in the front end's record, the same as the kernel's, and readable.
        assert fe.record == k.value(RECORD)
        validate_record(fe.record)
        turns = fe.record["sessions"]["default"]["turns"]
        assert len(turns) == 6 and turns[-1]["contents"][0]["text"] == "Later."
        (result,) = turns[2]["contents"]
        assert result["type"] == "tool_result"
        stored = json.dumps(result)
        assert len(stored) < 100_000 and "cut" in stored and f"{BIG:,}" in stored
        # The cell's outputs: not the whole result in the display, its metadata and the record.
        assert final_outputs(msgs) < 100_000


def test_a_huge_prompt_is_cut_and_the_next_turn_is_still_recorded(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    nb = notebook_file(tmp_path / "prompt.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("prompt.ipynb"))
        load(k, server.base_url)
        out = k.ok("import jupyter_llmchat as j\nj.session().chat('x' * 2_000_001, echo='none')")
        out += k.ok("j.session().chat('y', echo='none')")
        assert "not written into the notebook" not in out
        validate_record(fe.record)
        texts = record_texts(fe.record)
        assert len(texts) == 4 and texts[2] == "y"
        assert len(texts[0]) <= 2_000_000 and "cut" in texts[0][-200:]


def test_a_notebook_renamed_while_its_kernel_runs_keeps_its_record(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    old = notebook_file(tmp_path / "old.ipynb")
    with kernel(old) as k:
        fe = k.attach(FrontEnd("old.ipynb"))
        load(k, server.base_url)
        k.ok("%chat one")
        record_id = fe.record["id"]
        # Renamed in the file browser, then the page reloaded: a new front end, the new path.
        old.rename(tmp_path / "new.ipynb")
        k.front_ends.remove(fe)
        again = page_on_the_same_kernel(k, fe, "new.ipynb")
        k.ok("%chat two")
        assert record_texts(again.record)[::2] == ["one", "two"]
        assert again.record["id"] == record_id and again.ignored == 0
        # Renamed again while open: the front end says so, the record follows.
        (tmp_path / "new.ipynb").rename(tmp_path / "newer.ipynb")
        again.rename("newer.ipynb")
        k.ok("%chat three")
        assert record_texts(again.record)[::2] == ["one", "two", "three"]
        assert again.record == k.value(RECORD) and again.record["id"] == record_id


def test_a_copy_saying_hello_to_the_kernel_is_told_in_the_notebook(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    nb = notebook_file(tmp_path / "a.ipynb")
    with kernel(nb) as k:
        fe = k.attach(FrontEnd("a.ipynb"))
        load(k, server.base_url)
        k.ok("%chat one")
        # A copy of it (the same record id, a.ipynb still there) switched to this kernel.
        notebook_file(tmp_path / "a-Copy1.ipynb", fe.record)
        copy = page_on_the_same_kernel(k, fe, "a-Copy1.ipynb")
        out = shown(k, "%chat two")
        assert copy.received == []
        # Shown in the cell's output, not only on the kernel's stderr.
        assert "a-Copy1.ipynb" in out and "gets no record" in out, out
        assert record_texts(fe.record)[::2] == ["one", "two"]


def test_a_copied_notebook_gets_a_new_id_on_its_first_record_write(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    from tests.test_restore import valid_record

    record = {**valid_record(), "id": "0123456789abcdef0123456789abcdef"}
    notebook_file(tmp_path / "a.ipynb", record)
    for name, kept in (("a.ipynb", True), ("a-Copy1.ipynb", False)):
        # The original alone keeps its id; then a copy of it is made, and opened.
        path = notebook_file(tmp_path / name, record)
        with kernel(path) as k:
            fe = k.attach(FrontEnd(path.name, record))
            load(k, server.base_url)
            k.ok("%chat one")
            assert (fe.record["id"] == record["id"]) is kept, path.name
            assert fe.record == k.value(RECORD)


def test_a_record_refused_at_hello_is_said_in_the_notebook(tmp_path: Path, server: FakeOpenAIProcess) -> None:
    from tests.test_bridge_kernel import refused_record

    record = refused_record("invalid")
    nb = notebook_file(tmp_path / "refused.ipynb")
    with kernel(nb) as k:
        k.attach(FrontEnd("refused.ipynb", record))
        load(k, server.base_url)
        out = shown(k, "%chat Hello") + shown(k, "%chat Again")
        # The hello is handled outside any cell: the next cell's output says it, once.
        assert out.count("ignoring the notebook's chat record") == 1, out
