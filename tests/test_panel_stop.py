"""The panel's question id and Stop, in a real IPython shell against the fake server.

The front end shows a question as soon as it is asked (queued while the kernel runs a cell) under
an id of its own; the kernel answers under that id, so the queued bubble becomes the question.
Stop during a sync tool call abandons the call: the answer is kept partial, the call's line says
it was stopped, and the panel takes the next question at once while the tool's thread finishes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import _sessions
from tests.fake_openai import FakeOpenAI, Reply
from tests.kernel_frontend import kernel, load
from tests.panel_recorder import RecordingPanel
from tests.test_magics import config, ip, run  # noqa: F401  (a fixture)


@pytest.fixture
def panel(ip: InteractiveShell) -> Iterator[RecordingPanel]:
    p = RecordingPanel("default")
    _sessions.registry.panels.append(p)
    yield p
    _sessions.registry.panels.remove(p)
    p.close()


def of_type(panel: RecordingPanel, kind: str) -> list[dict[str, Any]]:
    with panel.arrived:
        return [m for m in panel.sent if m["type"] == kind]


def test_the_question_keeps_the_front_ends_id(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    fake.script(Reply(text="Hi."))
    panel.sent.clear()
    panel.front_end(type="send", text="hello", id="q-7")
    panel.finish()
    (user,) = of_type(panel, "user")
    assert user["message"]["id"] == "q-7" and user["message"]["text"] == "hello"
    (done,) = of_type(panel, "done")
    assert done["user_id"] == "q-7" and done["recorded"] is True
    # A question refused before it is sent names its bubble too, so the front end drops it.
    panel.sent.clear()
    panel.front_end(type="send", text="look at @nosuch", id="q-8")
    (error,) = of_type(panel, "error")
    assert error["recorded"] is False and error["user_id"] == "q-8"
    # Without an id (an older front end), the kernel makes one.
    panel.sent.clear()
    fake.script(Reply(text="Hi again."))
    panel.front_end(type="send", text="again")
    panel.finish()
    assert of_type(panel, "user")[0]["message"]["id"]


def test_stop_during_a_sync_tool_abandons_the_call(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    release = threading.Event()
    started = threading.Event()
    finished = threading.Event()

    def slow_lookup(q: str) -> str:
        """Look q up (slowly)."""
        started.set()
        release.wait(60)
        finished.set()
        return "late result"

    chat = jupyter_llmchat.session()
    chat.register_tool(slow_lookup)
    call = {"id": "c1", "type": "function",
            "function": {"name": "slow_lookup", "arguments": json.dumps({"q": "x"})}}
    fake.script(Reply(text="Looking it up. ", tool_calls=[call], finish_reason="tool_calls"))
    try:
        panel.sent.clear()
        panel.ask("Look x up")
        assert started.wait(30)
        panel.stop()
        # The answer ends while the tool still runs: kept partial, its call's line stopped.
        panel.finish(timeout=20)
        assert not finished.is_set()
        (done,) = of_type(panel, "done")
        assert done["recorded"] is True and done["message"]["partial"] is True
        states = [m["call"]["state"] for m in of_type(panel, "tool")]
        assert states == ["running", "stopped"]
        assert panel.busy is False
        turns = chat.get_turns()
        assert turns[-1].role == "assistant" and turns[-1].partial
        assert len(fake.chat_requests()) == 1  # the tool's result was never sent on

        # The next question is taken at once, while the abandoned tool still runs.
        fake.script(Reply(text="Next answer."))
        panel.sent.clear()
        panel.ask("Next?")
        panel.finish()
        assert not finished.is_set()
        assert [m["type"] for m in panel.sent if m["type"] in ("done", "error")] == ["done"]
        assert chat.get_turns()[-1].text == "Next answer."
        before = [t.to_dict() for t in chat.get_turns()]
    finally:
        release.set()
    # The tool's late result is discarded: history is as it was.
    assert finished.wait(30)
    after = [t.to_dict() for t in chat.get_turns()]
    assert after == before and "late result" not in json.dumps(after)
    assert panel.busy is False


def test_stop_reaches_a_streaming_answer_while_a_cell_runs(fake: FakeOpenAI) -> None:
    """JupyterLab sends widget comm messages on a subshell of their own, and ipykernel routes
    a comm's incoming messages to the subshell of the parent of what the comm last sent. The
    panel's deltas go out from its thread: they must carry the panel question's parent, not
    whatever cell the main thread runs, or Stop waits in the main shell's queue until the cell
    ends."""
    fake.script(Reply(text="word " * 800, chunk_chars=4, delay=0.05))  # ~50 s unless stopped
    with kernel(None) as k:
        load(k, fake.base_url)
        out = k.ok("from jupyter_llmchat._jupyter._widget import ChatPanel\n"
                   "p = ChatPanel('default'); print('@@' + p.comm.comm_id)")
        comm_id = out.split("@@", 1)[1].strip()
        kc = k.kc
        kc.control_channel.send(kc.session.msg("create_subshell_request", {}))
        subshell = kc.get_control_msg(timeout=30)["content"]["subshell_id"]

        def to_panel(data: dict[str, Any]) -> None:
            # What JupyterLab 4.6's widget manager sends: on the comm target's subshell.
            msg = kc.session.msg("comm_msg", {"comm_id": comm_id,
                                              "data": {"method": "custom", "content": data}})
            msg["header"]["subshell_id"] = subshell
            kc.shell_channel.send(msg)

        seen: list[dict[str, Any]] = []  # every IOPub message, in order

        def upto(found: Any) -> dict[str, Any]:
            """The first IOPub message (from now on) for which ``found`` is true."""
            while True:
                seen.append(kc.get_iopub_msg(timeout=60))
                if found(seen[-1]):
                    return seen[-1]

        def said(kind: str) -> Any:
            def found(msg: dict[str, Any]) -> bool:
                content = msg["content"]
                return (msg["msg_type"] == "comm_msg" and content["comm_id"] == comm_id
                        and content["data"].get("content", {}).get("type") == kind)
            return found

        def of_cell(msg_type: str, state: str | None = None) -> Any:
            return lambda m: (m["parent_header"].get("msg_id") == cell and m["msg_type"] == msg_type
                              and (state is None or m["content"]["execution_state"] == state))

        to_panel({"type": "send", "text": "talk", "id": "q-1"})
        upto(said("delta"))
        # A cell that waits for the answer to end (and gives up after 30 s).
        cell = kc.execute("import time\nfor _ in range(600):\n    if not p.busy: break\n"
                          "    time.sleep(0.05)\nprint('busy' if p.busy else 'stopped')")
        upto(of_cell("execute_input"))
        upto(said("delta"))  # streaming on while the cell runs
        to_panel({"type": "stop"})
        done = upto(said("done"))["content"]["data"]["content"]
        assert done["user_id"] == "q-1" and done["message"]["partial"] is True
        if not any(of_cell("status", "idle")(m) for m in seen):
            upto(of_cell("status", "idle"))
        printed = "".join(m["content"]["text"] for m in seen if of_cell("stream")(m))
        # The Stop took effect while the cell ran, not when it ended.
        assert printed.split() == ["stopped"]
