"""Tool approval (DESIGN §3, issue 19): ``ChatMagics.tool_approval`` = ask / auto / never.

In a real IPython shell (its stdin a pipe the test fills), in a real kernel that answers the
kernel's ``input_request`` on the stdin channel as a front end does, and under nbclient (no
stdin: refused with a line saying how to allow it). A "server" tool is what an MCP server
registers: a ``Tool`` whose ``server`` names it."""

from __future__ import annotations

import dataclasses
import io
import json
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import ContentToolResult, Tool, _sessions
from jupyter_llmchat._jupyter._approval import approval_for
from tests.fake_openai import FakeOpenAI, FakeOpenAIProcess, Reply
from tests.panel_recorder import RecordingPanel
from tests.test_kernel_iopub import Msg, displays, start_kernel
from tests.test_magics import chat_magics, config, ip, run  # noqa: F401  (ip is a fixture)
from tests.test_tools import call, tool_reply

ASK_HINT = '%config ChatMagics.tool_approval = "auto"'


def search(q: str) -> str:
    """Search the docs for q."""
    return f"found {q}"


def server_tool(server: str = "docs", **annotations: Any) -> Tool:
    """A tool as an MCP server's: it names its server; its annotations are the server's."""
    tool = Tool.from_func(search, annotations=annotations or None)
    return dataclasses.replace(tool, server=server)


def results(chat: jupyter_llmchat.Chat) -> list[ContentToolResult]:
    return [c for t in chat.get_turns() for c in t.contents if isinstance(c, ContentToolResult)]


@pytest.fixture
def shell(ip: InteractiveShell) -> Iterator[InteractiveShell]:  # noqa: F811
    """The shell, approval back to its default and forgetting "always" afterwards."""
    config(ip, tool_approval="ask")
    yield ip
    approval = chat_magics(ip).approval
    approval.always.clear()
    approval.ask_servers.clear()
    config(ip, tool_approval="ask")


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """What the user types at the prompts (input() reads sys.stdin in a terminal shell)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


def ask(shell: InteractiveShell, fake: FakeOpenAI, tool: Tool, q: str = "x") -> ContentToolResult:
    chat = jupyter_llmchat.session()
    chat.set_tools([tool])
    fake.script(tool_reply(call(f"c-{q}", tool.name, {"q": q})), Reply(text="done"))
    result = run(shell, "%%chat\nSearch it.\n")
    assert result.success, result.error_in_exec
    return results(chat)[-1]


def test_the_decision_table() -> None:
    mine = Tool.from_func(search)
    assert approval_for(mine, "ask") == "run"  # the user's own function
    assert approval_for(Tool.from_func(search, annotations={"destructiveHint": True}), "ask") == "ask"
    assert approval_for(server_tool(), "ask") == "ask"
    assert approval_for(server_tool(readOnlyHint=True), "ask") == "run"
    assert approval_for(server_tool(readOnlyHint=True), "ask", {"docs"}) == "ask"  # --ask
    assert approval_for(server_tool(readOnlyHint=True), "ask", {"other"}) == "run"
    assert approval_for(server_tool(), "auto") == "run"
    assert approval_for(mine, "never") == "refuse"
    assert approval_for(None, "ask") == "run"  # no such tool: it fails without running


def test_the_users_functions_and_read_only_server_tools_run_unasked(
    shell: InteractiveShell, fake: FakeOpenAI
) -> None:
    # stdin is pytest's (reading it raises): a prompt would refuse these calls.
    assert ask(shell, fake, Tool.from_func(search)).status == "ok"
    assert ask(shell, fake, server_tool(readOnlyHint=True)).status == "ok"


def test_yes_no_and_always_at_the_prompt(
    shell: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stdin(monkeypatch, "y\nno\nalways\n")
    assert ask(shell, fake, server_tool(), "one").status == "ok"
    assert "Allow the tool call search" in capsys.readouterr().out  # the prompt, with the call
    declined = ask(shell, fake, server_tool(), "two")
    assert declined.status == "refused" and "the user declined" in (declined.error or "")
    sent = [m for m in fake.chat_requests()[-1].body["messages"] if m["role"] == "tool"]
    assert sent[-1]["content"] == "Tool call rejected. the user declined this call"
    assert ask(shell, fake, server_tool(), "three").status == "ok"  # "always"
    # stdin is empty now: a fourth prompt would be refused. "always" means it is not asked.
    assert ask(shell, fake, server_tool(), "four").status == "ok"
    assert chat_magics(shell).approval.always == {"search"}
    shown = repr(shell.run_line_magic("chat_config", ""))
    assert "ChatMagics.tool_approval" in shown and "ask (always allowed: search)" in shown


def test_nobody_to_answer_refuses_with_a_line_that_says_how_to_allow_it(
    shell: InteractiveShell, fake: FakeOpenAI
) -> None:
    refused = ask(shell, fake, server_tool())  # pytest's stdin cannot be read
    assert refused.status == "refused" and ASK_HINT in (refused.error or "")
    history = repr(shell.run_line_magic("chat_history", ""))
    assert "search" in history and "refused" in history and ASK_HINT in history


def test_auto_and_never(shell: InteractiveShell, fake: FakeOpenAI) -> None:
    config(shell, tool_approval="auto")
    assert ask(shell, fake, server_tool()).status == "ok"
    config(shell, tool_approval="never")
    never = ask(shell, fake, Tool.from_func(search))
    assert never.status == "refused" and '"never"' in (never.error or "")


def test_a_destructive_function_of_the_users_asks(
    shell: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, "n\n")
    tool = Tool.from_func(search, annotations={"destructiveHint": True})
    assert ask(shell, fake, tool).status == "refused"


def test_a_server_added_with_ask_asks_for_every_call(
    shell: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat_magics(shell).approval.ask_servers.add("docs")
    stdin(monkeypatch, "n\n")
    assert ask(shell, fake, server_tool(readOnlyHint=True)).status == "refused"


def test_a_call_from_parallel_chat_is_asked_on_the_cells_thread(
    shell: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stdin(monkeypatch, "y\nn\n")
    chat = jupyter_llmchat.session()
    chat.set_tools([server_tool()])
    prompts = ["first.", "second."]
    for i, p in enumerate(prompts):
        fake.script_for(p, tool_reply(call(f"p{i}", "search", {"q": p})), Reply(text=f"ok {i}"))
    copies = jupyter_llmchat.parallel_chat(chat, prompts, progress=False)
    statuses = []
    for copy in copies:
        assert isinstance(copy, jupyter_llmchat.Chat)
        (result,) = results(copy)
        statuses.append(result.status)
    assert sorted(statuses) == ["ok", "refused"]  # one yes, one no, in whichever order
    assert capsys.readouterr().out.count("Allow the tool call search") == 2


def test_a_call_from_another_thread_is_refused_with_a_line(
    shell: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, "y\n")  # someone is at the prompt, but not on that thread
    chat = jupyter_llmchat.session()
    chat.set_tools([server_tool()])
    fake.script(tool_reply(call("t1", "search", {"q": "x"})), Reply(text="done"))
    worker = threading.Thread(target=chat.chat, args=("Search it.",))
    worker.start()
    worker.join(30)
    (result,) = results(chat)
    assert result.status == "refused" and "came off the cell's thread" in (result.error or "")
    assert ASK_HINT in (result.error or "")
    assert sys.stdin.read() == "y\n"  # nothing was asked


# -- the panel: Approve / Deny on the call's line --------------------------------------------------


@pytest.fixture
def panel(shell: InteractiveShell) -> Iterator[RecordingPanel]:
    p = RecordingPanel("default")
    _sessions.registry.panels.append(p)
    yield p
    _sessions.registry.panels.remove(p)
    p.close()


@pytest.mark.parametrize(("answer", "status"), [("yes", "ok"), ("no", "refused"), ("maybe", "refused")])
def test_the_panel_asks_on_the_calls_line(
    shell: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel, answer: str, status: str
) -> None:
    chat = jupyter_llmchat.session()
    chat.set_tools([server_tool()])
    fake.script(tool_reply(call("w1", "search", {"q": "x"})), Reply(text="done"))
    panel.sent.clear()
    panel.ask("Search it.")
    asked = panel.wait_for("approve")
    assert asked["call_id"] == "w1" and asked["id"]
    tool_lines = [m for m in panel.sent if m["type"] == "tool"]
    assert tool_lines[0]["id"] == asked["id"]  # the same answer's line: the buttons go there
    panel.front_end(type="approval", call_id="w1", answer=answer)
    panel.finish()
    states = [m["call"]["state"] for m in panel.sent if m["type"] == "tool"]
    assert states == ["running", status]
    assert results(chat)[-1].status == status


def test_stop_while_the_panel_asks_refuses_the_call(
    shell: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    chat = jupyter_llmchat.session()
    chat.set_tools([server_tool()])
    fake.script(tool_reply(call("w2", "search", {"q": "x"})), Reply(text="never sent"))
    panel.sent.clear()
    panel.ask("Search it.")
    panel.wait_for("approve")
    panel.stop()
    panel.finish(timeout=20)
    assert len(fake.chat_requests()) == 1  # nothing went on after the stop
    turns = chat.get_turns()
    assert turns[-1].role == "assistant" and turns[-1].partial


# -- a real kernel, answering on its stdin channel ------------------------------------------------

SETUP = (
    "import dataclasses, jupyter_llmchat\n"
    "from jupyter_llmchat import Tool\n"
    "def search(q: str) -> str:\n"
    "    'Search the docs for q.'\n"
    "    return 'found ' + q\n"
    "jupyter_llmchat.session().set_tools("
    "[dataclasses.replace(Tool.from_func(search), server='docs')])\n"
)


@pytest.fixture(scope="module")
def kernel(server: FakeOpenAIProcess) -> Iterator[tuple[Any, Any]]:
    yield from start_kernel(
        "%load_ext jupyter_llmchat\n"
        f"%config ChatMagics.base_url = {server.base_url!r}\n"
        "%config ChatMagics.model = 'test-model'\n"
    )


def execute_answering(
    kc: Any, code: str, answer: str, timeout: float = 60, allow_stdin: bool = True
) -> tuple[Msg, list[Msg], list[str]]:
    """Run ``code`` (stdin allowed unless told); answer each input_request with ``answer``, as
    a front end does; return the reply, the IOPub messages and the prompts asked."""
    msg_id = kc.execute(code, allow_stdin=allow_stdin)
    msgs: list[Msg] = []
    prompts: list[str] = []
    deadline = time.monotonic() + timeout
    idle = False
    while not idle:
        assert time.monotonic() < deadline, [m["msg_type"] for m in msgs]
        try:
            req = kc.get_stdin_msg(timeout=0.05)
        except queue.Empty:
            pass
        else:
            if req["msg_type"] == "input_request":
                prompts.append(req["content"]["prompt"])
                kc.input(answer)
        try:
            msg = kc.get_iopub_msg(timeout=0.05)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        idle = msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle"
    while True:
        reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply, msgs, prompts


def final_markdown(msgs: list[Msg]) -> str:
    shown = [m["content"]["data"].get("text/markdown", "") for m in displays(msgs)]
    return [s for s in shown if "<code>search</code>" in s][-1]


@pytest.mark.kernel
@pytest.mark.parametrize(("answer", "state"), [("y", "— ok · "), ("n", "— refused: the user declined")])
def test_a_kernel_asks_through_its_stdin_channel(
    kernel: tuple[Any, Any], server: FakeOpenAIProcess, answer: str, state: str
) -> None:
    _, kc = kernel
    server.reset()
    reply, _, _ = execute_answering(kc, SETUP + "%chat_reset", "")
    assert reply["content"]["status"] == "ok", reply["content"]
    server.script(tool_reply(call("k1", "search", {"q": "jupyter"})), Reply(text="Found it."))
    reply, msgs, prompts = execute_answering(kc, "%%chat\nSearch the docs.\n", answer)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert len(prompts) == 1 and 'search({"q": "jupyter"})' in prompts[0], prompts
    assert "[a]lways" in prompts[0]
    assert state in final_markdown(msgs)
    sent = [m for m in server.last_body()["messages"] if m["role"] == "tool"]
    assert sent[0]["content"] == ("found jupyter" if answer == "y"
                                  else "Tool call rejected. the user declined this call")


@pytest.mark.kernel
def test_a_cell_run_without_stdin_after_one_with_it_is_refused_not_stuck(
    kernel: tuple[Any, Any], server: FakeOpenAIProcess
) -> None:
    _, kc = kernel
    server.reset()
    reply, _, _ = execute_answering(kc, SETUP + "%chat_reset", "")
    assert reply["content"]["status"] == "ok", reply["content"]
    server.script(tool_reply(call("k2", "search", {"q": "x"})), Reply(text="Could not."))
    reply, msgs, prompts = execute_answering(kc, "%%chat\nSearch the docs.\n", "y",
                                             allow_stdin=False)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert prompts == []
    assert "— refused: it needs approval and nobody can answer" in final_markdown(msgs)


# -- nbclient: no stdin ---------------------------------------------------------------------------


def test_under_nbclient_a_call_that_asks_is_refused_with_a_line(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    from nbclient import NotebookClient

    fake.script(tool_reply(call("n1", "search", {"q": "x"})), Reply(text="Could not search."))
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(
            "%load_ext jupyter_llmchat\n"
            f"%config ChatMagics.base_url = {fake.base_url!r}\n"
            "%config ChatMagics.model = 'test-model'\n" + SETUP),
        nbformat.v4.new_code_cell("%%chat\nSearch the docs.\n"),
    ])
    NotebookClient(nb, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[1].outputs
    md = "".join(str((o.get("data") or {}).get("text/markdown", "")) for o in outputs)
    assert "<code>search</code>" in md and "— refused: it needs approval and nobody can answer" in md, md
    assert ASK_HINT.replace('"', "&quot;") in md or ASK_HINT in md, md
    sent = [m for m in fake.chat_requests()[-1].body["messages"] if m["role"] == "tool"]
    assert ASK_HINT in json.dumps(sent[0]["content"]).replace('\\"', '"')
