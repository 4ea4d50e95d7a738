"""What a first user trips on: the reporting magics, -o names, parallel progress, %chat_fix.

Magics run in the real test IPython shell against the fake server (tests/fake_openai.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import ParallelChatError, parallel_chat_text
from jupyter_llmchat._jupyter._bridge import HELLO_GRACE_S
from tests import kernel_frontend
from tests.fake_openai import FakeOpenAI, FakeOpenAIProcess, Reply
from tests.helpers import new_chat
from tests.test_kernel_iopub import Msg, displays, execute, kernel, stdout  # noqa: F401  (kernel: a fixture)
from tests.test_magics import chat_magics, config, ip, run  # noqa: F401  (ip is a fixture)

ADD_CALL = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def ask_with_a_tool_round(ip: InteractiveShell, fake: FakeOpenAI, prompt: str = "What is 2 + 3?") -> None:
    """One exchange with one tool round: the model calls add, then answers."""
    config(ip, footer=False)
    fake.script(
        Reply(text="", tool_calls=[ADD_CALL], finish_reason="tool_calls",
              usage={"prompt_tokens": 40, "completion_tokens": 6}),
        Reply(text="It is 5.", usage={"prompt_tokens": 60, "completion_tokens": 4}),
    )
    jupyter_llmchat.session().register_tool(add)
    assert run(ip, f"%%chat\n{prompt}").success


# -- %chat_history --------------------------------------------------------------------------------


def test_history_in_a_fresh_kernel_says_no_conversation_yet(ip: InteractiveShell) -> None:
    result = run(ip, "%chat_history")
    assert result.success, result.error_in_exec
    view = result.result
    assert "No conversation yet" in repr(view) and "%%chat" in repr(view)
    assert "No conversation yet" in view._repr_markdown_()


def test_history_shows_tool_calls_compactly_not_as_empty_turns(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    ask_with_a_tool_round(ip, fake)
    view = ip.run_line_magic("chat_history", "")
    text = repr(view)
    # Each call's line says how long it ran (issue 19: the time is kept in the turns).
    assert re.fullmatch(r'\[user\] What is 2 \+ 3\?\n\n\[tool\] add\(\{"a": 2, "b": 3\}\) → ok · '
                        r'\d+\.\d\d s\n\n\[assistant\] It is 5\.', text), text
    markdown = view._repr_markdown_()
    assert markdown.count("**you**") == 1  # the tool results are not a message from "you"
    assert markdown.count("**test-model**") == 1  # nor is the round an empty answer
    assert "add" in markdown and "→ ok" in markdown
    # -n counts exchanges, not the tool round's turns.
    assert repr(ip.run_line_magic("chat_history", "-n 1")) == text


def test_history_shows_a_failed_tool_call_as_an_error(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    config(ip, footer=False)
    boom = {"id": "c9", "type": "function", "function": {"name": "nosuch", "arguments": "{}"}}
    fake.script(Reply(text="", tool_calls=[boom], finish_reason="tool_calls"), Reply(text="Sorry."))
    assert run(ip, "%%chat\nUse nosuch").success
    text = repr(ip.run_line_magic("chat_history", ""))
    assert "[tool] nosuch({}) → error: " in text


# -- %chat_usage ------------------------------------------------------------------------------------


def test_usage_counts_answers_and_numbers_exchanges(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    ask_with_a_tool_round(ip, fake)
    fake.script(Reply(text="Bye.", usage={"prompt_tokens": 7, "completion_tokens": 1}))
    assert run(ip, "%chat Thanks").success
    text = repr(ip.run_line_magic("chat_usage", "--turns"))
    lines = text.splitlines()
    # Two questions, two answers; the tool round's tokens are in the first answer's.
    assert lines[2].split()[3:6] == ["2", "107", "11"]
    exchanges = [ln.split() for ln in lines if ln.split()[:1] == ["default"]][1:]
    assert [r[1] for r in exchanges] == ["1", "2"]
    assert exchanges[0][4:6] == ["100", "10"] and exchanges[1][4:6] == ["7", "1"]
    first = next(ln for ln in lines if ln.split()[:2] == ["default", "1"])
    assert first.endswith("stop (1 tool round)")
    assert any("include 1 tool round (a request" in ln for ln in lines)
    # The notebook's ledger counts requests, and says so.
    spend = repr(ip.run_line_magic("chat_usage", "--all")).splitlines()
    head = spend.index(next(ln for ln in spend if ln.startswith("provider")))
    assert spend[head].split()[2] == "requests"


# -- -o VAR -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, says", [
    ("print", "would hide Python's built-in 'print'"),
    ("list", "would hide Python's built-in 'list'"),
    ("Out", "would hide IPython's 'Out'"),
    ("class", "needs a variable name"),
    ("1abc", "needs a variable name"),
])
def test_output_name_that_would_shadow_or_is_invalid_is_refused_before_sending(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], name: str, says: str
) -> None:
    result = run(ip, f"%chat -o {name} hello")
    assert isinstance(result.error_in_exec, UsageError) and says in str(result.error_in_exec)
    assert fake.chat_requests() == []
    assert ip.user_ns.get("print", print) is print


def test_output_name_that_is_fine_stores_the_answer(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    assert run(ip, "%chat -o print_answer hello").success
    assert ip.user_ns["print_answer"] == fake.default_reply.text


# -- parallel_chat's progress line ------------------------------------------------------------------


@contextlib.contextmanager
def tty_stderr() -> Iterator[Callable[[], str]]:
    """sys.stderr on a real pseudo-terminal, as in a terminal IPython; yields a reader of it.

    Entered inside the test: pytest's own capture sets sys.stderr again between phases."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", buffering=1, encoding="utf-8")
    saved, sys.stderr = sys.stderr, stream
    chunks: list[bytes] = []

    def read() -> str:
        stream.flush()
        while select.select([master], [], [], 0)[0]:
            chunks.append(os.read(master, 65536))
        return b"".join(chunks).decode("utf-8", "replace")

    try:
        yield read
    finally:
        sys.stderr = saved
        stream.close()
        os.close(master)


def last_progress(text: str) -> str:
    return text.replace("\r\n", "\n").split("\r")[-1].strip()


def test_progress_counts_failures_apart_and_messages_count_from_one(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script_for("two", *[Reply(status=400)] * 3)
    with tty_stderr() as read:
        answers = parallel_chat_text(new_chat(fake_url), ["one", "two", "three"], max_active=1, rpm=60_000,
                                     on_error="continue")
        line = last_progress(read())
    assert answers.errors.keys() == {1}
    assert line.startswith("parallel_chat_text: 2/3 done, 1 failed")
    fake.script_for("two", *[Reply(status=400)] * 3)
    with pytest.raises(ParallelChatError, match=r"^prompt 2 of 3 failed \(errors\[1\]\)"):
        parallel_chat_text(new_chat(fake_url), ["one", "two", "three"], max_active=1, rpm=60_000,
                           on_error="stop", progress=False)


def test_progress_says_when_the_rpm_limit_holds_the_run_back(
    fake: FakeOpenAI, fake_url: str
) -> None:
    # One request at a time against an instant server, starts 0.5 s apart: every start after
    # the first waits for the limit, none for the server.
    with tty_stderr() as read:
        parallel_chat_text(new_chat(fake_url), [f"q{i}" for i in range(4)], max_active=1, rpm=120)
        line = last_progress(read())
    assert line.startswith("parallel_chat_text: 4/4 done")
    assert "held back by rpm=120 (at most 2 requests/s): pass a higher rpm=" in line


def test_progress_says_nothing_of_rpm_when_the_server_is_the_limit(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.default_reply = Reply(text="slow", hang=0.3)
    with tty_stderr() as read:
        parallel_chat_text(new_chat(fake_url), [f"q{i}" for i in range(5)], max_active=1, rpm=600)
        line = last_progress(read())
    assert line.startswith("parallel_chat_text: 5/5 done") and "rpm" not in line


# -- %chat_fix ------------------------------------------------------------------------------------------


def test_chat_fix_after_the_failed_cell_ran_cleanly_sends_nothing_stale(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    assert isinstance(ip.run_cell("ratio = 1 / 0", store_history=True, cell_id="c-a").error_in_exec,
                      ZeroDivisionError)
    assert ip.run_cell("ratio = 1 / 1", store_history=True, cell_id="c-a").success  # fixed, same cell
    assert ip.run_cell("x = 2", store_history=True, cell_id="c-b").success
    capsys.readouterr()
    assert run(ip, "%chat_fix").success
    out = capsys.readouterr().out
    assert "nothing to fix" in out and "ZeroDivisionError" in out and "since run without error" in out
    assert fake.chat_requests() == []


def test_chat_fix_after_a_chat_error_does_not_explain_an_older_exception(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not ip.run_cell("1 / 0", store_history=True, cell_id="c-z").success
    fake.script(Reply(status=400, error_message="model not found"))
    assert ip.run_cell("%chat hello", store_history=True, cell_id="c-chat").success  # shown, not raised
    capsys.readouterr()
    assert run(ip, "%chat_fix").success
    out = capsys.readouterr().out
    assert "is a chat request that failed" in out and "Nothing sent" in out
    assert "ZeroDivisionError" not in out
    assert len(fake.chat_requests()) == 1  # the failed %chat only
    # A newer Python error is the one explained.
    assert not ip.run_cell("undefined_name + 1", store_history=True, cell_id="c-n").success
    fake.script(Reply(text="Define it first."))
    assert run(ip, "%chat_fix").success
    sent = fake.chat_requests()[-1].body["messages"][-1]["content"]
    assert "NameError" in sent and "undefined_name + 1" in sent and "ZeroDivision" not in sent


# -- a notebook front end without the extension -------------------------------------------------------

NOTE = "jupyter-llmchat extension did not answer"


def shown_text(msgs: list[Msg]) -> str:
    return stdout(msgs) + "".join(m["content"]["data"].get("text/plain", "") for m in displays(msgs))


@pytest.mark.kernel
def test_a_notebook_front_end_without_the_extension_is_told_once(
    kernel: tuple[Any, Any], server: FakeOpenAIProcess
) -> None:
    """The kernel fixture's client never answers the extension's comm."""
    _, kc = kernel
    server.reset()
    # The comm opens at the first request that carries JupyterLab's cell id (as JupyterLab's
    # every request does); a cell run well after that: an extension would have said hello by now.
    execute(kc, "1 + 1", cell_id="cell-1")
    time.sleep(HELLO_GRACE_S + 0.5)
    _, msgs = execute(kc, "%chat hello again", cell_id="cell-2")
    text = shown_text(msgs)
    assert NOTE in text and "JupyterLab 4.2+" in text and "jupyter labextension list" in text
    _, msgs = execute(kc, "%chat and again", cell_id="cell-3")
    assert NOTE not in shown_text(msgs)  # once per kernel


def run_all(kc: Any, front: kernel_frontend.FrontEnd, cells: list[str]) -> list[list[Msg]]:
    """Send every cell at once, as Run All does (with cell ids); each one's IOPub messages."""
    ids = []
    for i, code in enumerate(cells):
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        msg = kc.session.msg("execute_request", content, metadata={"cellId": f"run-all-{i}"})
        kc.shell_channel.send(msg)
        ids.append(msg["header"]["msg_id"])
    out: dict[str, list[Msg]] = {i: [] for i in ids}
    idle: set[str] = set()
    while idle != set(ids):
        msg = kc.get_iopub_msg(timeout=60)
        front.on_iopub(msg)
        parent = msg["parent_header"].get("msg_id")
        if parent in out:
            out[parent].append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle.add(parent)
    return [out[i] for i in ids]


@pytest.mark.kernel
def test_no_note_under_run_all_without_cell_ids_or_with_the_extension(server: FakeOpenAIProcess) -> None:
    """Under Run All the hello comes after every cell; nbclient sends no cell ids; a front end
    that said hello has the extension."""
    with kernel_frontend.kernel(None) as k:
        front = k.attach(kernel_frontend.FrontEnd("nb.ipynb"))
        shown = run_all(k.kc, front, [
            f"%load_ext jupyter_llmchat\n%config ChatMagics.base_url = {server.base_url!r}\n"
            "%config ChatMagics.model = 'test-model'",
            "import time; time.sleep(%s)" % (HELLO_GRACE_S + 0.5),
            "%chat sent before the hello could come",
        ])
        assert NOTE not in shown_text(shown[2])
        k.sync()
        assert front.hello_path == "nb.ipynb"
        time.sleep(HELLO_GRACE_S + 0.5)
        _, msgs = execute(k.kc, "%chat with the extension", cell_id="c1", on_iopub=front.on_iopub)
        assert NOTE not in shown_text(msgs)
    with kernel_frontend.kernel(None) as k:  # no front end, no cell ids: nbclient
        kernel_frontend.load(k, server.base_url)
        time.sleep(HELLO_GRACE_S + 0.5)
        _, msgs = k.execute("%chat no cell id")
        assert NOTE not in shown_text(msgs)
