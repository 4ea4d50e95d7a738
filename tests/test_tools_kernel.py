"""Tool exchanges that end badly, as they reach a notebook through a real kernel (issue 16):
the cell's output is finished (final bundle with its metadata, footer, the error shown), and a
call stopped by Ctrl-C does not stay "running" in the saved output."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.test_kernel_iopub import Msg, answer_displays, displays, execute
from tests.test_kernel_iopub import kc, kernel  # noqa: F401 - the same kernel fixtures

pytestmark = pytest.mark.kernel

#: A tool on the default session; q == "slow" sleeps long enough to be interrupted.
TOOL = (
    "import time, jupyter_llmchat\n"
    "def lookup(q: str) -> str:\n"
    "    'Look q up.'\n"
    "    if q == 'slow':\n"
    "        time.sleep(60)\n"
    "    return q.upper()\n"
    "jupyter_llmchat.session().set_tools([lookup])\n"
    "jupyter_llmchat.session().max_tool_rounds = {rounds}\n"
)


def with_tool(kc: Any, rounds: int = 10) -> None:
    reply, _ = execute(kc, TOOL.format(rounds=rounds))
    assert reply["content"]["status"] == "ok", reply["content"]


def tool_reply(call_id: str, q: str) -> Reply:
    call = {"id": call_id, "type": "function",
            "function": {"name": "lookup", "arguments": json.dumps({"q": q})}}
    return Reply(text="", tool_calls=[call], finish_reason="tool_calls")


def plain(msgs: list[Msg]) -> list[str]:
    return [m["content"]["data"].get("text/plain", "") for m in displays(msgs)]


def test_past_max_tool_rounds_the_output_is_finished(kc: Any, server: FakeOpenAIProcess) -> None:
    server.script(tool_reply("c0", "a"), tool_reply("c1", "b"))
    with_tool(kc, rounds=1)
    reply, msgs = execute(kc, "%%chat\nLook it up forever.\n")
    assert reply["content"]["status"] == "ok", reply["content"]
    final = answer_displays(msgs)[-1]["content"]
    assert "▍" not in final["data"]["text/markdown"]  # no cursor left behind
    record = final["metadata"]["jupyter_llmchat"]
    assert record["partial"] is True and record["prompt"] == "Look it up forever.\n"
    assert [t["role"] for t in record["rounds"]] == ["assistant", "user", "assistant", "user"]
    shown = plain(msgs)
    footer = [s for s in shown if s.startswith("test-model · ")]
    assert footer and "n/a in" not in footer[0], shown  # the two answers' tokens are known
    assert any(s.startswith("chat error:") and "max_tool_rounds=1" in s for s in shown), shown


def test_ctrl_c_during_a_tool_says_interrupted_in_the_saved_output(
    kernel: tuple[Any, Any], kc: Any, server: FakeOpenAIProcess
) -> None:
    km, _ = kernel
    server.script(tool_reply("s", "slow"), Reply(text="after"))
    with_tool(kc)

    sent: list[Msg] = []

    def interrupt_when_running(msg: Msg) -> None:
        shown = msg["msg_type"] in ("display_data", "update_display_data")
        data = msg["content"].get("data", {}) if shown else {}
        if "running" in data.get("text/markdown", "") and not sent:
            sent.append(msg)  # once: the tool is now sleeping in the kernel
            km.interrupt_kernel()

    reply, msgs = execute(kc, "%%chat\nLook it up slowly.\n", on_iopub=interrupt_when_running)
    # An ordinary stop ends the cell with one line (the magics' Ctrl-C rule), not a traceback.
    assert reply["content"]["ename"] == "UsageError"
    assert "stopped (Ctrl-C)" in reply["content"]["evalue"]
    final = answer_displays(msgs)[-1]["content"]
    md = final["data"]["text/markdown"]
    assert "<code>lookup</code>" in md and "— interrupted" in md and "running" not in md, md
    assert final["metadata"]["jupyter_llmchat"]["finish_reason"] == "interrupted"
