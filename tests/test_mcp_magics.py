"""``%chat_mcp`` and ``ChatMagics.mcp_servers`` in a real IPython shell, against real MCP servers
(tests/mcp_servers.py), and one real kernel: a hostile tool result shown only as code, Ctrl-C
during a call (the server serves on), and SIGKILL of the kernel leaving no server process (nor
its child) behind."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from traitlets import TraitError

import jupyter_llmchat
from jupyter_llmchat import _sessions
from jupyter_llmchat._core import _mcp
from tests.fake_openai import FakeOpenAI, FakeOpenAIProcess, Reply
from tests.kernel_frontend import Kernel
from tests.test_kernel_iopub import Msg, answer_displays, execute
from tests.test_mcp import (
    SERVER,
    TOKEN,
    _wait_gone,
    call,
    http_url,  # noqa: F401 - the same HTTP server fixture
)

COMMAND = f"{shlex.quote(sys.executable)} {shlex.quote(SERVER)}"
ADD = f"%chat_mcp add calc -- {COMMAND}"


@pytest.fixture
def ip(_ip: InteractiveShell, fake: FakeOpenAI) -> Iterator[InteractiveShell]:
    _sessions.registry.sessions.clear()
    magics = _ip.magics_manager.registry["ChatMagics"]
    _sessions.set_factory(magics._make_session, magics._refresh_from_config)
    _ip.run_line_magic("config", f"ChatMagics.base_url = {fake.base_url!r}")
    _ip.run_line_magic("config", "ChatMagics.model = 'test-model'")
    # These calls are about MCP; whether they ask first is test_tool_approval.py's and
    # test_mcp.py's (a shell with no stdin would refuse the calls that ask).
    _ip.run_line_magic("config", "ChatMagics.tool_approval = 'auto'")
    yield _ip
    _ip.run_line_magic("config", "ChatMagics.tool_approval = 'ask'")
    mcp = _ip.magics_manager.registry["MCPMagics"]
    for name in list(mcp.servers):
        mcp.remove(name)
    _ip.run_line_magic("config", "ChatMagics.mcp_servers = {}")
    _mcp.stop(None)


def test_add_list_reuse_and_remove(ip: InteractiveShell, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALC_TOKEN", TOKEN)
    before = jupyter_llmchat.session()
    ip.run_line_magic("chat_mcp", f"add calc --env T=${{env:CALC_TOKEN}} -- {COMMAND}")
    assert "MCP server 'calc' connected: 9 tools (add, env_value," in capsys.readouterr().out
    tool_names = {t.name for t in before.get_tools()}
    assert {"add", "die", "hang"} <= tool_names
    later = jupyter_llmchat.session("other")  # a session made later gets the tools too
    assert {t.name for t in later.get_tools()} == tool_names
    pid = before.get_tools()[[t.name for t in before.get_tools()].index("pid")].func()
    # The same line again: the same server.
    ip.run_line_magic("chat_mcp", f"add calc --env T=${{env:CALC_TOKEN}} -- {COMMAND}")
    assert "'calc' already running" in capsys.readouterr().out
    tools = {t.name: t for t in later.get_tools()}
    assert tools["pid"].func() == pid
    assert tools["env_sha256"].func(name="T") == hashlib.sha256(TOKEN.encode()).hexdigest()
    ip.run_line_magic("chat_mcp", "list")
    listing = capsys.readouterr().out
    assert "calc: stdio " in listing and "(env: T)" in listing and "running" in listing
    assert TOKEN not in listing and "CALC_TOKEN" not in listing
    ip.run_line_magic("chat_mcp", "remove calc")
    assert "stopped" in capsys.readouterr().out
    assert before.get_tools() == [] and later.get_tools() == []
    _wait_gone(int(pid))
    with pytest.raises(UsageError, match="no MCP server named 'calc'"):
        ip.run_line_magic("chat_mcp", "remove calc")


def test_http_server_with_a_header_from_the_environment(
        ip: InteractiveShell, fake: FakeOpenAI, http_url: str,  # noqa: F811 - the fixture
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_TOKEN", TOKEN)
    ip.run_line_magic("chat_mcp", f"add web --url {http_url} --header X-Token=${{env:WEB_TOKEN}}"
                                  " --ask --include add,hang")
    assert "'web' connected: 2 tools (add, hang)" in capsys.readouterr().out
    (add, _hang) = jupyter_llmchat.session().get_tools()
    assert add.func.mcp_ask is True and add.annotations == {"title": "Add", "readOnlyHint": True}
    fake.script(Reply(tool_calls=[call("w", "add", {"a": 1, "b": 1})], text="",
                      finish_reason="tool_calls"), Reply(text="two"))
    assert ip.run_cell("%%chat\n1+1?", store_history=False).success
    assert fake.chat_requests()[1].body["messages"][2]["content"] == "2"
    ip.run_line_magic("chat_mcp", "list")
    listing = capsys.readouterr().out
    assert "(headers: X-Token), asks before every call" in listing and TOKEN not in listing
    record = json.dumps([t.to_dict() for t in jupyter_llmchat.session().get_turns()])
    assert TOKEN not in record and TOKEN not in jupyter_llmchat.session().to_json()


def test_mcp_servers_from_configuration(ip: InteractiveShell,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    spec = {"calc": {"command": sys.executable, "args": [SERVER], "include_tools": ["add"]}}
    ip.run_line_magic("config", f"ChatMagics.mcp_servers = {spec!r}")
    assert "MCP server 'calc': 1 tools" in capsys.readouterr().out
    assert [t.name for t in jupyter_llmchat.session().get_tools()] == ["add"]
    ip.run_line_magic("config", "ChatMagics.mcp_servers = {}")
    assert jupyter_llmchat.session().get_tools() == [] and not _mcp.mcp_servers.by_name
    magics = ip.magics_manager.registry["ChatMagics"]
    with pytest.raises(TraitError, match="give either command or url"):
        magics.mcp_servers = {"x": {"args": []}}
    assert magics.mcp_servers == {}


def test_mcp_servers_in_the_configuration_connect_at_load(
        ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    """``c.ChatMagics.mcp_servers`` (ipython_config.py), read when the extension loads; a
    server that cannot start is one line, and the extension still loads."""
    spec = {"calc": {"command": sys.executable, "args": [SERVER], "include_tools": ["pid"]},
            "broken": {"command": "no-such-mcp-command-here"}}
    ip.run_line_magic("unload_ext", "jupyter_llmchat")
    ip.config.ChatMagics.mcp_servers = spec
    try:
        ip.run_line_magic("load_ext", "jupyter_llmchat")
        out = capsys.readouterr().out
        assert "MCP server 'calc': 1 tools" in out
        assert "MCP server 'broken' (ChatMagics.mcp_servers): command " in out
        magics = ip.magics_manager.registry["ChatMagics"]
        _sessions.set_factory(magics._make_session, magics._refresh_from_config)
        assert [t.name for t in jupyter_llmchat.session().get_tools()] == ["pid"]
    finally:
        del ip.config.ChatMagics["mcp_servers"]
        magics = ip.magics_manager.registry["ChatMagics"]
        magics.mcp_servers = {}


@pytest.mark.parametrize("line, message", [
    ("add", "the server's name is missing"),
    ("add x", "give one of them"),
    ("add x --url http://h/mcp -- python s.py", "give one of them"),
    ("add x --url http://h/mcp --env A=b", "--env is for stdio servers"),
    ("add x --env A -- python s.py", "write it as KEY=VALUE"),
    ("list extra", "takes no arguments"),
    ("add x -- no-such-mcp-command-here", "command 'no-such-mcp-command-here' not found"),
])
def test_mistakes_are_usage_errors(ip: InteractiveShell, line: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("chat_mcp", line)
    assert jupyter_llmchat.session().get_tools() == []


# -- a real kernel -------------------------------------------------------------------------------


def _descendants_named(root: int, needle: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if needle in " ".join(proc.info["cmdline"] or []) and proc.pid != root:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def _outside_fences(markdown: str) -> str:
    return "".join(part for i, part in enumerate(markdown.split("```")) if i % 2 == 0)


@pytest.mark.kernel
def test_in_a_kernel_results_are_shown_safely_and_sigkill_leaves_no_server(
        server: FakeOpenAIProcess) -> None:
    k = Kernel(None)
    try:
        k.ok("%load_ext jupyter_llmchat")
        k.ok(f"%config ChatMagics.base_url = {server.base_url!r}\n"
             "%config ChatMagics.model = 'test-model'\n"
             "%config ChatMagics.tool_approval = 'auto'")
        k.ok(ADD)
        k.ok("import jupyter_llmchat\n"
             "tools = {t.name: t for t in jupyter_llmchat.session().get_tools()}")
        server_pid = int(k.value("tools['pid'].func()"))
        child_pid = int(k.value("tools['spawn_child'].func()"))
        server.script(Reply(tool_calls=[call("h", "hostile", {})], text="",
                            finish_reason="tool_calls"), Reply(text="done"))
        reply, msgs = k.execute("%%chat\nshow me")
        assert reply["content"]["status"] == "ok", reply["content"]
        final = answer_displays(msgs)[-1]["content"]["data"]["text/markdown"]
        # The result is shown, but only as code (Markdown renders a fence's text literally).
        assert "<script>window.pwned = 1</script>" in final
        assert "<script>" not in _outside_fences(final) and "![x](" not in _outside_fences(final)
        # Ctrl-C while a call waits: the cell stops with one line, the server serves on.
        server.script(Reply(tool_calls=[call("s", "hang", {"seconds": 30})], text="",
                            finish_reason="tool_calls"), Reply(text="after"))
        sent: list[Msg] = []

        def interrupt_when_running(msg: Msg) -> None:
            shown = msg["msg_type"] in ("display_data", "update_display_data")
            if shown and "running" in msg["content"]["data"].get("text/markdown", "") \
                    and not sent:
                sent.append(msg)
                k.km.interrupt_kernel()

        reply, msgs = execute(k.kc, "%%chat\nwait", on_iopub=interrupt_when_running)
        assert sent and reply["content"]["ename"] == "UsageError", reply["content"]
        assert "stopped (Ctrl-C)" in reply["content"]["evalue"]
        assert k.value("tools['add'].func(a=1, b=2)") == "3"
        assert psutil.pid_exists(server_pid) and psutil.pid_exists(child_pid)
        kernel_pid = k.km.provisioner.process.pid
        os.kill(kernel_pid, signal.SIGKILL)
        _wait_gone(server_pid)
        _wait_gone(child_pid)
        deadline = time.monotonic() + 10
        while _descendants_named(kernel_pid, "_mcp_launcher.py " + str(kernel_pid)):
            assert time.monotonic() < deadline, "a launcher outlived its kernel"
            time.sleep(0.1)
    finally:
        k.kc.stop_channels()
        k.km.shutdown_kernel(now=True)
