"""The chat panel (``%chat_panel``) in a real JupyterLab and Notebook 7, driven like a user.

The panel is docked in the right side area; a question typed there streams its answer in, shares
history with ``%%chat`` cells both ways, can be stopped (the partial answer stays in history), and
a server error leaves history alone. The answer crosses the comm as deltas, so its bytes are
linear in its length. The kernels talk to the fake OpenAI server of this process.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.harness import ARTIFACTS, JupyterServer, NotebookPage, empty_notebook
from tests.fake_openai import FakeOpenAI, Reply, big_text

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, WebSocket

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

DOCK = ".jp-llmchat-dock"
ANSWER = (
    "Use `sum`:\n\n```python\ntotal = sum(range(10))\nprint(total)\n```\n\nIt prints **45**."
)


@pytest.fixture
def notebook(
    request: pytest.FixtureRequest, jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage], fake_server: FakeOpenAI,
) -> Iterator[NotebookPage]:
    """A new notebook in JupyterLab with the extension loaded and pointed at the fake server."""
    path = f"panel-{request.node.name[:40]}.ipynb".replace("[", "-").replace("]", "")
    jupyter_server.put_notebook(path, empty_notebook())
    nb = open_notebook(path)
    configure(nb, fake_server)
    yield nb
    jupyter_server.shutdown_kernel(path)


def configure(nb: NotebookPage, fake: FakeOpenAI) -> None:
    nb.run_cell("%load_ext jupyter_llmchat")
    nb.run_cell(f'%config ChatMagics.base_url = "{fake.base_url}"\n'
                '%config ChatMagics.model = "test-model"')


# -- the panel, seen as a user sees it ---------------------------------------------------------


def dock(page: Page) -> Locator:
    return page.locator(f"{DOCK}:visible")


def open_panel(nb: NotebookPage) -> int:
    index = nb.run_cell("%chat_panel")
    dock(nb.page).wait_for()
    return index


def ask(page: Page, text: str) -> None:
    """Type a question in the panel's input and press Enter."""
    box = dock(page).locator("textarea").first
    box.click()
    page.keyboard.insert_text(text)
    page.keyboard.press("Enter")


def messages(page: Page) -> list[str]:
    """The text of every message in the panel, in order (the rendered Markdown)."""
    return [t.strip() for t in dock(page).locator(".jp-chat-rendered-message").all_inner_texts()]


def wait_idle(page: Page, timeout_s: float = 30) -> None:
    """Until the panel says nothing is streaming (its Stop button is disabled)."""
    page.wait_for_function(
        "() => { const b = document.querySelector('.jp-llmchat-dock .jp-llmchat-stop');"
        " return b !== null && b.disabled; }",
        timeout=timeout_s * 1000,
    )


def wait_text(page: Page, needle: str, timeout_s: float = 30) -> None:
    page.wait_for_function(
        "(needle) => [...document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message')]"
        ".some(m => m.innerText.includes(needle))",
        arg=needle,
        timeout=timeout_s * 1000,
    )


def kernel_turns(nb: NotebookPage) -> list[tuple[str, bool, str]]:
    """(role, partial, text) of the default session's turns, read in a cell with the Python API."""
    i = nb.run_cell(
        "import json, jupyter_llmchat\n"
        "turns = jupyter_llmchat.session().get_turns()\n"
        "print(json.dumps([(t.role, t.partial, t.text) for t in turns]))"
    )
    return [(role, partial, text) for role, partial, text in json.loads(nb.output(i))]


def rerun(nb: NotebookPage, index: int) -> None:
    """Select a cell that ran, run it again (Shift+Enter in command mode), wait for it."""
    prompt = nb.cell(index).locator(".jp-InputPrompt")
    before = prompt.inner_text().strip()
    prompt.click()
    nb.page.keyboard.press("Escape")
    nb.page.keyboard.press("Shift+Enter")
    nb.page.wait_for_function(
        "([el, before]) => { const t = el.innerText.trim();"
        " return /^\\[\\d+\\]:?$/.test(t) && t !== before; }",
        arg=[prompt.element_handle(), before],
    )


def sent(fake: FakeOpenAI) -> list[tuple[str, str]]:
    """(role, content) of the messages of the last chat request."""
    return [(m["role"], m["content"]) for m in fake.last_body()["messages"]]


def set_theme(nb: NotebookPage, name: str) -> None:
    nb.command("apputils:change-theme", {"theme": name})
    nb.page.wait_for_function(
        "(name) => document.body.dataset.jpThemeName === name", arg=name, timeout=15_000
    )
    nb.page.wait_for_timeout(500)  # the theme's stylesheet applies after the attribute


# -- tests -----------------------------------------------------------------------------------


def test_panel_streams_and_shares_history_with_cells(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    i = open_panel(nb)
    assert "Chat panel for session default is open on the right" in nb.output(i)
    assert dock(page).locator(".jp-llmchat-session").input_value() == "default"

    # A question typed in the panel streams its answer in.
    fake_server.script(Reply(text=ANSWER, chunk_chars=3, delay=0.03))
    ask(page, "How do I add 0 to 9?")
    page.wait_for_function(  # mid-stream: some text, Stop enabled
        "() => { const b = document.querySelector('.jp-llmchat-dock .jp-llmchat-stop');"
        " const m = document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message');"
        " return !b.disabled && m.length === 2 && m[1].innerText.trim().length > 0; }"
    )
    streamed = messages(page)[1]
    wait_idle(page)
    assert messages(page)[0] == "How do I add 0 to 9?"
    final = messages(page)[1]
    assert "It prints 45." in final and "total = sum(range(10))" in final
    assert len(streamed) < len(final)
    assert dock(page).locator(".jp-chat-code-toolbar").count() == 1  # copy / insert into notebook
    status = dock(page).locator(".jp-llmchat-status").inner_text()
    assert "test-model" in status and "in 11" in status and "cost n/a" in status

    # The next %%chat cell carries the panel's turn; the panel shows the cell's.
    fake_server.script(Reply(text="You asked how to add 0 to 9."))
    cell = nb.run_cell("%%chat\nWhat did I just ask?")
    assert "You asked how to add 0 to 9." in nb.output(cell)
    assert sent(fake_server) == [
        ("user", "How do I add 0 to 9?"),
        ("assistant", ANSWER),
        ("user", "What did I just ask?\n"),
    ]
    wait_text(page, "You asked how to add 0 to 9.")
    assert messages(page)[2:] == ["What did I just ask?", "You asked how to add 0 to 9."]
    assert dock(page).locator(".jp-llmchat-origin").all_inner_texts() == ["from a %%chat cell"]

    # The cell run again replaces only its exchange, in the kernel and in the panel: the panel
    # question asked after it stays after it (DESIGN §10).
    fake_server.script(Reply(text="Later answer."))
    ask(page, "A later question")
    wait_text(page, "Later answer.")
    wait_idle(page)
    assert len(messages(page)) == 6
    # Unchanged, the cell would replay its recorded answer (test_replay_browser.py): ask again.
    nb.run_cell("%config ChatMagics.replay = False")
    fake_server.script(Reply(text="Again: how to add 0 to 9."))
    rerun(nb, cell)
    wait_text(page, "Again: how to add 0 to 9.")
    assert messages(page) == [
        "How do I add 0 to 9?", final, "What did I just ask?", "Again: how to add 0 to 9.",
        "A later question", "Later answer."]

    # %chat_panel again focuses the same panel; closed, it comes back with the history.
    open_panel(nb)
    assert page.locator(DOCK).count() == 1
    dock(page).locator(".jp-llmchat-close").click()
    page.locator(DOCK).wait_for(state="detached")
    assert "is closed" in nb.output(i)
    open_panel(nb)
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message').length === 6"
    )
    assert page.locator(DOCK).count() == 1
    assert messages(page)[3] == "Again: how to add 0 to 9."

    # Light and dark themes: colors come from JupyterLab's variables.
    ARTIFACTS.mkdir(exist_ok=True)
    fake_server.script(Reply(status=400, error_message="model 'x' does not exist"))
    ask(page, "One more?")
    dock(page).locator(".jp-llmchat-error").wait_for()
    nb.screenshot("panel-light.png")
    set_theme(nb, "JupyterLab Dark")
    try:
        background = page.evaluate(
            "() => getComputedStyle(document.querySelector('.jp-llmchat-toolbar')).backgroundColor"
        )
        nb.screenshot("panel-dark.png")
    finally:
        set_theme(nb, "JupyterLab Light")
    assert background not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")


def test_stop_keeps_the_partial_answer(notebook: NotebookPage, fake_server: FakeOpenAI) -> None:
    nb, page = notebook, notebook.page
    open_panel(nb)
    fake_server.script(Reply(text="slow " * 400, chunk_chars=5, delay=0.05))
    ask(page, "Tell me a long story")
    wait_text(page, "slow slow slow")
    stop = dock(page).locator(".jp-llmchat-stop")
    assert stop.get_attribute("aria-label") == "Stop the answer"
    stop.click()
    wait_idle(page)
    dock(page).locator(".jp-llmchat-partial").wait_for()
    assert dock(page).locator(".jp-llmchat-partial").inner_text() == "(partial)"

    turns = kernel_turns(nb)
    assert [(role, partial) for role, partial, _ in turns] == [("user", False), ("assistant", True)]
    shown = messages(page)[1].split()
    assert 3 <= len(shown) < 400 and turns[1][2].split() == shown

    # The next question works, and carries the partial answer as history.
    fake_server.script(Reply(text="The end."))
    ask(page, "Finish it")
    wait_text(page, "The end.")
    wait_idle(page)
    assert [role for role, _ in sent(fake_server)] == ["user", "assistant", "user"]
    assert [(role, partial) for role, partial, _ in kernel_turns(nb)][2:] == [
        ("user", False), ("assistant", False)]


def test_server_error_is_one_short_line_and_history_is_unchanged(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    open_panel(nb)
    fake_server.script(Reply(text="Fine."))
    ask(page, "First")
    wait_text(page, "Fine.")
    wait_idle(page)

    fake_server.script(Reply(status=400, error_message="model 'test-model' is not served here"))
    ask(page, "Second")
    error = dock(page).locator(".jp-llmchat-error")
    error.wait_for()
    assert error.get_attribute("role") == "alert"
    assert "400" in error.inner_text()
    assert "is not served here" in (error.get_attribute("title") or "")
    # Short: a long message is cut to a few lines; its tooltip has all of it.
    box = error.bounding_box()
    assert box is not None and box["height"] < 80
    wait_idle(page)
    # The question did not enter history: its bubble is gone, its text is back in the input.
    assert messages(page) == ["First", "Fine."]
    assert dock(page).locator("textarea").first.input_value() == "Second"
    assert kernel_turns(nb) == [("user", False, "First"), ("assistant", False, "Fine.")]

    dock(page).locator(".jp-llmchat-dismiss").click()
    error.wait_for(state="hidden")


def comm_content(frame: bytes) -> dict[str, Any] | None:
    """The content of a kernel message from a websocket frame (v1 binary protocol, or JSON)."""
    try:
        if frame[:1] == b"{":
            msg = json.loads(frame)
            return msg["content"] if msg.get("msg_type") == "comm_msg" else None
        # jupyter_server's v1 protocol: offsets, channel, header, parent, metadata, content, ...
        count = int.from_bytes(frame[:8], "little")
        offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
        parts = [frame[offsets[i]:offsets[i + 1]] for i in range(count - 1)]
        header = json.loads(parts[1])
        return json.loads(parts[4]) if header.get("msg_type") == "comm_msg" else None
    except (ValueError, IndexError, KeyError):
        return None


def test_answer_bytes_on_the_comm_are_linear(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    n = 20_000
    text = big_text(n)
    assert len(text) == n
    frames: list[bytes] = []

    def on_websocket(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: frames.append(
            payload.encode() if isinstance(payload, str) else payload))

    # Only websockets opened from now on are seen: reload, so the kernel's is one of them.
    page.on("websocket", on_websocket)
    page.reload()
    nb.wait_until_open()
    open_panel(nb)
    model_id = (dock(page).get_attribute("id") or "").removeprefix("jupyter-llmchat-panel-")

    # About a second of streaming: the kernel sends a delta at most every 0.1 s.
    fake_server.script(Reply(text=text, chunk_chars=40, delay=0.002))
    frames.clear()
    started = time.monotonic()
    ask(page, "A long answer, please")
    # Done: the answer's footer shows its tokens once the kernel says it is finished.
    dock(page).locator(".jp-llmchat-turn-usage").wait_for(timeout=60_000)
    wait_idle(page)
    seconds = time.monotonic() - started
    assert "Section 71" in messages(page)[1]  # the end of big_text(20000)

    contents = [(f, comm_content(f)) for f in frames]
    ours = [(f, c) for f, c in contents if c is not None and c.get("comm_id") == model_id]
    total = sum(len(f) for f, _ in ours)
    customs = [c["data"]["content"] for _, c in ours if c.get("data", {}).get("method") == "custom"]
    deltas = [m for m in customs if m.get("type") == "delta"]
    print(f"\ncomm bytes for a {n}-character answer: {total} in {len(ours)} comm_msg frames "
          f"({len(deltas)} deltas, {seconds:.1f} s)")
    # Each character crosses once, in order: deltas append, never resend.
    assert "".join(d["text"] for d in deltas if d["kind"] == "text") == text
    assert len(deltas) >= 2  # it did stream
    assert total <= 2 * n + 20_000


def test_panel_in_notebook7(
    jupyter_server: JupyterServer,
    open_notebook: Callable[..., NotebookPage],
    fake_server: FakeOpenAI,
) -> None:
    path = "panel-notebook7.ipynb"
    jupyter_server.put_notebook(path, empty_notebook())
    nb = open_notebook(path, ui="notebook")
    try:
        configure(nb, fake_server)
        open_panel(nb)
        fake_server.script(Reply(text="Hello from **Notebook 7**."))
        ask(nb.page, "Hi")
        wait_text(nb.page, "Hello from Notebook 7.")
        assert messages(nb.page) == ["Hi", "Hello from Notebook 7."]
        # One close button: Notebook 7's side panel has its own, so the dock shows none.
        assert dock(nb.page).locator(".jp-llmchat-close").count() == 0
        nb.screenshot("panel-notebook7.png")
    finally:
        jupyter_server.shutdown_kernel(path)


# -- trust: Stop while waiting, session switches (issue "Trust") --------------------------------


def test_stop_works_while_the_server_has_not_answered(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    open_panel(nb)
    fake_server.script(Reply(text="too late", hang=120))  # a hung server: no headers for 2 min
    ask(page, "Are you there?")
    page.wait_for_function(
        "() => { const b = document.querySelector('.jp-llmchat-dock .jp-llmchat-stop');"
        " return b !== null && !b.disabled; }"
    )
    dock(page).locator(".jp-llmchat-stop").click()
    wait_idle(page, timeout_s=20)  # long before the server would answer
    # Nothing arrived: no turn, the question's bubble gone and its text back in the input. The
    # session's "abort" clears busy a moment before the panel's own "done" drops the bubble.
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message').length === 0",
        timeout=10_000,
    )
    assert messages(page) == []
    assert dock(page).locator("textarea").first.input_value() == "Are you there?"
    assert kernel_turns(nb) == []


def headers(page: Page) -> list[str]:
    """The sender names shown over the panel's messages, in order."""
    return [t.strip() for t in dock(page).locator(".jp-chat-message-header").all_inner_texts()]


def test_switching_sessions_mid_stream_and_back(
    notebook: NotebookPage, fake_server: FakeOpenAI
) -> None:
    nb, page = notebook, notebook.page
    fake_server.script(Reply(text="Other answer.", model="other-model"))
    nb.run_cell("%chat -s other -m other-model Hello other")
    open_panel(nb)
    fake_server.script(Reply(text="slow " * 200, chunk_chars=5, delay=0.05))
    ask(page, "Long one")
    wait_text(page, "slow slow")

    select = dock(page).locator(".jp-llmchat-session")
    select.select_option("other")
    wait_text(page, "Other answer.")
    # The default session's answer goes on streaming in the kernel, but not into this view.
    nb.page.wait_for_timeout(1500)
    assert messages(page) == ["Hello other", "Other answer."]
    assert any("other-model" in h for h in headers(page))

    select.select_option("default")
    wait_text(page, "slow slow slow slow slow slow slow slow slow slow slow slow slow slow")
    wait_idle(page)
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message').length === 2"
    )
    assert messages(page)[0] == "Long one" and messages(page)[1].split() == ["slow"] * 200
    # Each answer is headed with its own turn's model, after switching away and back.
    assert not any("other-model" in h for h in headers(page)), headers(page)
    assert any("test-model" in h for h in headers(page)), headers(page)


def register_tool(nb: NotebookPage, name: str, body: str) -> None:
    """Define ``name(q: str)`` with ``body`` in the kernel and register it on the default session."""
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    nb.run_cell(f"import os, time, jupyter_llmchat\ndef {name}(q: str) -> str:\n{indented}"
                f"jupyter_llmchat.session().register_tool({name})")


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One OpenAI-format tool call, as the fake server streams it."""
    return {"id": "c1", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def test_tool_calls_show_one_line_each_as_text(notebook: NotebookPage, fake_server: FakeOpenAI) -> None:
    """A panel question whose answer calls a tool: the call's line shows while it runs and
    after (name, short arguments, ok, time), opens on arguments and result, all as text; the
    history shown when the panel is opened again has the same line on the turn that asked."""
    nb, page = notebook, notebook.page
    register_tool(nb, "lookup", "'Look q up.'\ntime.sleep(1.0)\n"
                  "return '<img src=x onerror=\"window.pwned=1\"> found'")
    open_panel(nb)
    call = tool_call("lookup", {"q": "<b>bold</b>"})
    fake_server.script(
        Reply(text="", tool_calls=[call], finish_reason="tool_calls", tool_args_chars=4),
        Reply(text="Found **it**."),
    )
    ask(page, "Look it up")
    line = dock(page).locator(".jp-llmchat-tool summary").first
    line.wait_for()
    wait_text(page, "Found it.")
    wait_idle(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-llmchat-dock .jp-llmchat-tool summary')]"
        ".some(s => s.innerText.includes(' — ok'))", timeout=15_000)
    summary = dock(page).locator(".jp-llmchat-tool summary").first.inner_text()
    assert summary.startswith("🔧 lookup(") and '"q": "<b>bold</b>"' in summary and " s" in summary
    tool = dock(page).locator(".jp-llmchat-tool").first
    tool.locator("summary").click()
    assert '<img src=x onerror="window.pwned=1"> found' in tool.locator(".jp-llmchat-tool-result").inner_text()
    # Nothing from the model or the tool became HTML.
    assert dock(page).locator(".jp-llmchat-tools img, .jp-llmchat-tools b").count() == 0
    assert page.evaluate("() => window.pwned") is None
    turns = kernel_turns(nb)
    assert [role for role, _, _ in turns] == ["user", "assistant", "user", "assistant"]
    assert turns[-1][2] == "Found **it**."
    # The whole history again (as after a reload): the results' turn is no message of its own.
    nb.run_cell("jupyter_llmchat.session('other')")
    select = dock(page).locator(".jp-llmchat-session")
    select.select_option("other")
    dock(page).locator(".jp-llmchat-tool").first.wait_for(state="detached")
    select.select_option("default")
    wait_text(page, "Found it.")
    shown = messages(page)
    assert len(shown) == 3 and shown[0] == "Look it up" and shown[2] == "Found it."
    # Reloaded, the line still says how long the call ran (kept in the record, issue 19).
    reloaded = dock(page).locator(".jp-llmchat-tool summary").first.inner_text()
    assert re.fullmatch(r'🔧 lookup\(\{"q": "<b>bold</b>"\}\) — ok · 1\.\d\d s', reloaded), reloaded


def test_approve_and_deny_on_the_calls_line(notebook: NotebookPage, fake_server: FakeOpenAI) -> None:
    """A tool of an MCP server (not read-only) asks before it runs: Approve / Deny on its line
    in the panel; the answer decides whether it runs, and the buttons go."""
    nb, page = notebook, notebook.page
    nb.run_cell("import dataclasses, jupyter_llmchat\nfrom jupyter_llmchat import Tool\n"
                "ran = []\n"
                "def search(q: str) -> str:\n    'Search q.'\n    ran.append(q)\n    return 'found'\n"
                "jupyter_llmchat.session().set_tools("
                "[dataclasses.replace(Tool.from_func(search), server='docs')])")
    open_panel(nb)
    for q, button, state, answer in (("one", "Approve", " — ok · ", "Ran it."),
                                     ("two", "Deny", " — refused", "Not run.")):
        fake_server.script(
            Reply(text="", tool_calls=[tool_call("search", {"q": q})], finish_reason="tool_calls"),
            Reply(text=answer),
        )
        ask(page, f"Search {q}")
        approval = dock(page).locator(".jp-llmchat-approval")
        approval.wait_for()
        assert "Run this tool call?" in approval.inner_text()
        if button == "Approve":
            nb.screenshot("panel-approval.png")
        approval.get_by_role("button", name=button).click()
        wait_text(page, answer)
        wait_idle(page)
        assert dock(page).locator(".jp-llmchat-approval").count() == 0
        lines = dock(page).locator(".jp-llmchat-tool summary").all_inner_texts()
        assert state in lines[-1], lines
    assert nb.output(nb.run_cell("print(ran)")).strip() == "['one']"


# -- promises kept: a question asked while a cell runs, Stop on a sync tool (issue 16) ----------


def blocking_cell(flag: Any) -> str:
    """A cell that runs until ``flag`` (a path) exists: the kernel is busy for as long as the
    test wants, with no timing in the test."""
    return f"import os, time\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.05)"


def queued(page: Page) -> Locator:
    return dock(page).locator(".jp-llmchat-queued")


def questions_sent(fake: FakeOpenAI) -> list[str]:
    """The last user message of every chat request the fake server received."""
    return [r.body["messages"][-1]["content"] for r in fake.chat_requests()]


def test_a_question_asked_while_a_cell_runs_is_queued_then_answered(
    notebook: NotebookPage, fake_server: FakeOpenAI, tmp_path: Any
) -> None:
    nb, page = notebook, notebook.page
    open_panel(nb)
    box = dock(page).locator("textarea").first
    flag = tmp_path / "release"
    running = nb.start_cell(blocking_cell(flag))
    nb.wait_for_kernel_busy()

    # Shown at once, marked as waiting; nothing reaches the server while the cell runs.
    fake_server.script(Reply(text="First answer."))
    ask(page, "First, asked while a cell runs")
    queued(page).wait_for()
    wait_text(page, "First, asked while a cell runs")  # its Markdown renders a moment later
    assert messages(page) == ["First, asked while a cell runs"]
    assert "waiting for the kernel" in queued(page).inner_text()
    ask(page, "Second, to be cancelled")
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-llmchat-dock .jp-llmchat-queued').length === 2")
    assert "2 questions waiting for the kernel" in dock(page).locator(".jp-llmchat-status").inner_text()
    stop = dock(page).locator(".jp-llmchat-stop")
    assert stop.is_enabled() and stop.get_attribute("aria-label") == "Cancel the queued questions"
    nb.screenshot("panel-queued.png")

    # The second one's Cancel acts in the page, at once, while the cell still runs.
    queued(page).nth(1).locator(".jp-llmchat-cancel").click()
    page.wait_for_function(
        "() => document.querySelectorAll('.jp-llmchat-dock .jp-llmchat-queued').length === 1")
    assert messages(page) == ["First, asked while a cell runs"]
    assert box.input_value() == "Second, to be cancelled"  # given back, not dropped
    assert fake_server.chat_requests() == []

    # The cell ends: the first goes out and is answered; the cancelled one never went.
    flag.touch()
    nb.wait_for_cell(running)
    wait_text(page, "First answer.")
    wait_idle(page)
    assert queued(page).count() == 0
    assert messages(page) == ["First, asked while a cell runs", "First answer."]
    assert questions_sent(fake_server) == ["First, asked while a cell runs"]

    # Stop on a queued question: gone at once, text back in the input, never sent.
    flag.unlink()
    running = nb.start_cell(blocking_cell(flag))
    nb.wait_for_kernel_busy()
    box.fill("")
    ask(page, "Third, stopped while queued")
    queued(page).wait_for()
    assert stop.get_attribute("aria-label") == "Cancel the queued question"
    stop.click()
    queued(page).wait_for(state="detached")
    assert box.input_value() == "Third, stopped while queued"
    assert stop.is_disabled()
    flag.touch()
    nb.wait_for_cell(running)
    nb.wait_for_kernel_idle()
    assert questions_sent(fake_server) == ["First, asked while a cell runs"]

    # Nothing is stuck: the next question is answered, with the first exchange as history.
    fake_server.script(Reply(text="Fourth answer."))
    box.fill("")
    ask(page, "Fourth")
    wait_text(page, "Fourth answer.")
    wait_idle(page)
    assert questions_sent(fake_server) == ["First, asked while a cell runs", "Fourth"]
    assert [role for role, _ in sent(fake_server)] == ["user", "assistant", "user"]
    assert not any("Second" in json.dumps(r.body) or "Third" in json.dumps(r.body)
                   for r in fake_server.chat_requests())


def test_stop_during_a_sync_tool_marks_its_line_and_frees_the_panel(
    notebook: NotebookPage, fake_server: FakeOpenAI, tmp_path: Any
) -> None:
    nb, page = notebook, notebook.page
    flag = tmp_path / "release"
    register_tool(nb, "slow_lookup", "'Look q up, slowly.'\n"
                  f"while not os.path.exists({str(flag)!r}):\n    time.sleep(0.05)\n"
                  "return 'late result'")
    open_panel(nb)
    call = tool_call("slow_lookup", {"q": "x"})
    fake_server.script(Reply(text="Looking. ", tool_calls=[call], finish_reason="tool_calls"))
    ask(page, "Look x up")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-llmchat-dock .jp-llmchat-tool summary')]"
        ".some(s => s.innerText.includes('running…'))")
    dock(page).locator(".jp-llmchat-stop").click()
    wait_idle(page)
    line = dock(page).locator(".jp-llmchat-tool summary").first
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-llmchat-dock .jp-llmchat-tool summary')]"
        ".some(s => s.innerText.includes('stopped'))")
    assert "running" not in line.inner_text()
    dock(page).locator(".jp-llmchat-partial").wait_for()

    # The panel takes the next question at once, while the tool still runs in its thread.
    fake_server.script(Reply(text="Next answer."))
    ask(page, "Next?")
    wait_text(page, "Next answer.")
    wait_idle(page)
    assert not flag.exists()
    flag.touch()
    turns = kernel_turns(nb)
    assert turns[-1] == ("assistant", False, "Next answer.")
    assert "late result" not in json.dumps(turns)
    assert len(fake_server.chat_requests()) == 2


#: The length of the last message's text in the panel (a JS expression).
LAST_LENGTH = ("(() => { const m = [...document.querySelectorAll('.jp-llmchat-dock .jp-chat-rendered-message')];"
               " return m.length ? m[m.length - 1].innerText.length : 0; })()")


def test_stop_ends_a_streaming_answer_while_a_cell_runs(
    notebook: NotebookPage, fake_server: FakeOpenAI, tmp_path: Any
) -> None:
    """Stop acts at once on an answer streaming from the panel while a cell runs (JupyterLab
    sends the panel's comm messages on a kernel subshell, which the running cell does not block)."""
    nb, page = notebook, notebook.page
    flag = tmp_path / "release"
    open_panel(nb)
    fake_server.script(Reply(text="word " * 800, chunk_chars=4, delay=0.1))  # ~100 s unless stopped
    ask(page, "Talk for a while")
    wait_text(page, "word")
    running = nb.start_cell(blocking_cell(flag))
    nb.wait_for_kernel_busy()
    # Still streaming while the cell runs (the deltas come from the panel's thread).
    before = int(page.evaluate(LAST_LENGTH))
    page.wait_for_function(f"(before) => {LAST_LENGTH} > before", arg=before)
    dock(page).locator(".jp-llmchat-stop").click()
    # The answer ends now, kept partial, while the cell still runs (it waits for the flag).
    wait_idle(page)
    dock(page).locator(".jp-llmchat-partial").wait_for()
    assert "*" in nb.cell(running).locator(".jp-InputPrompt").inner_text()  # [*]: still running
    flag.touch()
    nb.wait_for_cell(running)
    assert kernel_turns(nb)[-1][:2] == ("assistant", True)
