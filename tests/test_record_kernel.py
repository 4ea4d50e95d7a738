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

from jupyter_llmchat._metadata import validate_record
from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.kernel_frontend import FrontEnd, kernel, load, notebook_file, record_texts
from tests.test_tools import call, tool_reply

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

RECORD = "__import__('jupyter_llmchat._bridge')._bridge.current_bridge().record()"
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
