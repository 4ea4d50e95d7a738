"""MCP servers' tools, against real servers on the SDK's own server class (tests/mcp_servers.py):
stdio and streamable HTTP on 127.0.0.1, sync and async, a server that dies mid-call and one that
hangs, secrets in env and headers, reuse, and the launcher that ends a server's process group."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jupyter_llmchat import Chat, ConfigurationError, ContentToolRequest
from jupyter_llmchat._core import _mcp, _mcp_config
from jupyter_llmchat._errors import MCPError
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import new_chat

SERVER = str(Path(__file__).with_name("mcp_servers.py"))
TOKEN = "tok-3f9c1d-very-secret"


def call(id: str, name: str, arguments: object) -> dict[str, object]:
    return {"id": id, "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)}}


def run(tool_name: str, chat: Chat, **arguments: object) -> object:
    tool = {t.name: t for t in chat.get_tools()}[tool_name]
    return tool.invoke(ContentToolRequest("c", tool_name, dict(arguments)))


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    _mcp.stop(None)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    env = dict(os.environ, MCP_TEST_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, SERVER, "http"], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    yield f"http://127.0.0.1:{int(line.split()[1])}/mcp"
    proc.kill()
    proc.wait()


def test_stdio_tools_keep_annotations_and_run_in_the_tool_loop(
        fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    tools = chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="calc")
    by_name = {t.name: t for t in tools}
    assert by_name["add"].annotations == {"title": "Add", "readOnlyHint": True}
    assert by_name["add"].parameters["properties"].keys() == {"a", "b"}
    assert by_name["add"].func.mcp_server == "calc" and by_name["add"].func.mcp_ask is False
    fake.script(Reply(tool_calls=[call("c1", "add", {"a": 2, "b": 40})], text="",
                      finish_reason="tool_calls"), Reply(text="42"))
    assert chat.chat("2+40?") == "42"
    second = fake.chat_requests()[1].body
    assert second["messages"][2] == {"role": "tool", "tool_call_id": "c1", "content": "42"}
    assert {"add", "die"} <= {t["function"]["name"] for t in second["tools"]}


def test_include_exclude_namespace_and_unknown_names(fake_url: str) -> None:
    chat = new_chat(fake_url)
    tools = chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="calc",
                                          include_tools=["add"], namespace="m")
    assert [t.name for t in tools] == ["m_add"]
    assert run("m_add", chat, a=1, b=1).value == "2"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="no tool named 'nope'"):
        chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="calc2",
                                      exclude_tools=["nope"])
    assert "calc2" not in _mcp.mcp_servers.by_name  # not left running
    with pytest.raises(ConfigurationError, match="not both"):
        chat.register_mcp_tools_stdio(sys.executable, [SERVER], include_tools=["a"],
                                      exclude_tools=["b"])


def test_same_configuration_reuses_the_server_and_cleanup_stops_it(fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="calc")
    first = run("pid", chat).value  # type: ignore[attr-defined]
    other = new_chat(fake_url)
    other.register_mcp_tools_stdio(sys.executable, [SERVER], name="calc")
    assert run("pid", other).value == first  # type: ignore[attr-defined]
    # Another configuration under the same name replaces the server.
    other.register_mcp_tools_stdio(sys.executable, [SERVER], name="calc", timeout=30)
    second = run("pid", other).value  # type: ignore[attr-defined]
    assert second != first and not psutil.pid_exists(int(first))
    other.cleanup_mcp_tools(["calc"])
    assert other.get_tools() == [] and not _mcp.mcp_servers.by_name
    _wait_gone(int(second))
    with pytest.raises(ConfigurationError, match="no MCP server named 'calc'"):
        other.cleanup_mcp_tools(["calc"])


def test_a_server_that_dies_mid_call_is_a_clear_error_and_the_chat_goes_on(
        fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="fragile")
    fake.script(Reply(tool_calls=[call("d", "die", {})], text="", finish_reason="tool_calls"),
                Reply(text="it died"), Reply(text="still here"))
    assert chat.chat("die please") == "it died"
    sent = fake.chat_requests()[1].body["messages"][2]["content"]
    assert "MCPError" in sent and "'fragile' ended or closed its connection" in sent
    assert "(seen at a call to 'die')" in sent
    later = run("add", chat, a=1, b=2)
    assert "is not running (it ended or closed its connection" in later.error  # type: ignore
    assert chat.chat("and now?") == "still here"
    # Adding it again starts a new one.
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="fragile")
    assert run("add", chat, a=1, b=2).value == "3"  # type: ignore[attr-defined]


def test_a_server_that_ended_between_calls_is_restarted_by_adding_it_again(
        fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="quiet")
    first = int(run("pid", chat).value)  # type: ignore[attr-defined]
    os.kill(first, signal.SIGKILL)
    _wait_gone(first)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="quiet")  # pings: gone
    assert int(run("pid", chat).value) != first  # type: ignore[attr-defined]


def test_a_hanging_call_times_out_clearly_and_the_server_stays_usable(fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="slow", timeout=1.5)
    start = time.monotonic()
    result = run("hang", chat, seconds=30)
    assert 1.4 < time.monotonic() - start < 5
    assert "MCPTimeoutError" in result.error and "within 1.5 s" in result.error  # type: ignore
    assert run("add", chat, a=2, b=2).value == "4"  # type: ignore[attr-defined]


def test_env_refs_are_read_from_the_environment_and_never_shown(
        fake_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_MCP_TOKEN", TOKEN)
    chat = new_chat(fake_url)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="envy",
                                  env={"TOKEN": "${env:MY_MCP_TOKEN}"})
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    assert run("env_sha256", chat, name="TOKEN").value == digest  # type: ignore[attr-defined]
    # A server that echoes the secret: it reaches neither the model nor the record.
    assert run("env_value", chat, name="TOKEN").value == "TOKEN=***"  # type: ignore[attr-defined]
    conn = _mcp.mcp_servers.by_name["envy"]
    shown = [repr(conn), repr(conn.config), conn.config.describe(), repr(chat.get_tools()),
             chat.to_json(), repr(chat)]
    assert all(TOKEN not in s and "MY_MCP_TOKEN" not in s for s in shown)
    assert "(env: TOKEN)" in conn.config.describe()
    monkeypatch.delenv("MY_MCP_TOKEN")
    with pytest.raises(ConfigurationError, match=r"\$\{env:MISSING_VAR_X\}, which is not set"):
        chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="envy2",
                                      env={"T": "${env:MISSING_VAR_X}"})


def test_http_stream_with_a_header_from_the_environment(
        fake: FakeOpenAI, fake_url: str, http_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    chat = new_chat(fake_url)
    with pytest.raises(MCPError, match="could not start the MCP server") as info:
        chat.register_mcp_tools_http_stream(http_url, name="web")  # no token: refused
    assert TOKEN not in str(info.value)
    monkeypatch.setenv("WEB_TOKEN", TOKEN)
    tools = chat.register_mcp_tools_http_stream(http_url, name="web",
                                                headers={"X-Token": "${env:WEB_TOKEN}"})
    assert {t.name for t in tools} >= {"add", "hang"}
    fake.script(Reply(tool_calls=[call("h", "add", {"a": 20, "b": 22})], text="",
                      finish_reason="tool_calls"), Reply(text="42"))
    assert chat.chat("sum?") == "42"
    conn = _mcp.mcp_servers.by_name["web"]
    shown = [repr(conn), repr(conn.config), conn.config.describe(), chat.to_json(),
             json.dumps([t.to_dict() for t in chat.get_turns()])]
    assert all(TOKEN not in s for s in shown)
    assert "(headers: X-Token)" in conn.config.describe()


async def test_async_registration_and_calls_under_chat_async(
        fake: FakeOpenAI, fake_url: str, http_url: str) -> None:
    chat = new_chat(fake_url)
    await chat.register_mcp_tools_stdio_async(sys.executable, [SERVER], name="a1")
    fake.script(Reply(tool_calls=[call("x", "add", {"a": 1, "b": 2}),
                                  call("y", "pid", {})], text="", finish_reason="tool_calls"),
                Reply(text="done"))
    assert await chat.chat_async("go") == "done"
    msgs = fake.chat_requests()[1].body["messages"]
    assert msgs[2]["content"] == "3" and msgs[3]["content"].isdigit()
    await chat.cleanup_mcp_tools_async()
    assert chat.get_tools() == []
    await asyncio.sleep(0)


def test_a_missing_command_and_the_config_shape_of_other_clients(fake_url: str) -> None:
    chat = new_chat(fake_url)
    with pytest.raises(MCPError, match="command 'no-such-mcp-server' not found"):
        chat.register_mcp_tools_stdio("no-such-mcp-server")
    config = _mcp_config.config_from_dict("x", {"command": "python", "args": ["-m", "s"],
                                         "env": {"K": "v"}})
    assert config == _mcp_config.MCPServerConfig.stdio("python", ["-m", "s"], name="x", env={"K": "v"})
    with pytest.raises(ConfigurationError, match="either command or url"):
        _mcp_config.config_from_dict("x", {"args": []})
    with pytest.raises(ConfigurationError, match="unknown keys colour"):
        _mcp_config.config_from_dict("x", {"url": "http://h/mcp", "colour": 1})


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive")


def test_the_launcher_ends_the_group_when_its_parent_is_killed() -> None:
    """A parent (standing in for the kernel) starts a server through the launcher, the server
    starts a child that ignores SIGTERM; SIGKILL of the parent ends both."""
    code = (
        "import sys, json\n"
        "from jupyter_llmchat import chat_openai_compatible, ContentToolRequest\n"
        "chat = chat_openai_compatible(base_url='http://127.0.0.1:9/v1', model='m')\n"
        f"chat.register_mcp_tools_stdio(sys.executable, [{SERVER!r}], name='k')\n"
        "tools = {t.name: t for t in chat.get_tools()}\n"
        "req = lambda n: ContentToolRequest('c', n, {})\n"
        "print(json.dumps([tools['pid'].invoke(req('pid')).value,"
        " tools['spawn_child'].invoke(req('spawn_child')).value]), flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ))
    assert parent.stdout is not None
    server_pid, child_pid = (int(p) for p in json.loads(parent.stdout.readline()))
    assert psutil.pid_exists(server_pid) and psutil.pid_exists(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _wait_gone(server_pid)
    _wait_gone(child_pid)


def test_hostile_results_and_errors_are_inert_in_exports(fake: FakeOpenAI, fake_url: str) -> None:
    """What a server sends reaches the record as data, and the exports show it as text."""
    from jupyter_llmchat._record._export import to_html, to_markdown

    chat = new_chat(fake_url)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="evil")
    fake.script(Reply(tool_calls=[call("a", "hostile", {}), call("b", "hostile_error", {})],
                      text="", finish_reason="tool_calls"), Reply(text="ok"))
    assert chat.chat("go") == "ok"
    results = {r.id: r for r in chat.get_turns()[2].tool_results}
    assert results["a"].value.startswith("<script>")
    assert "MCPError" in results["b"].error and "<img src=x onerror" in results["b"].error
    record = {"version": 1, "usage": [], "sessions": {"default": {
        "provider": {"name": "p", "base_url": "http://127.0.0.1:9/v1", "model": "test-model"},
        "system_prompt": None, "turns": [t.to_dict() for t in chat.get_turns()]}}}
    html, md = to_html(record), to_markdown(record)
    assert re.search(r"hostile_error\(\{\}\) → error( · [0-9.]+ s)?: Tool call failed with error: "
                     r"MCPError", html)
    for text in (html, md):
        assert "<img src=x" not in text and "<script>window" not in text and "![y](" not in text


def test_calls_from_several_threads_run_at_once(fake_url: str) -> None:
    """parallel_chat's workers and the panel call from threads of their own: one server's calls
    are not serialized by the client (the test server runs sync tools in threads)."""
    from concurrent.futures import ThreadPoolExecutor

    chat = new_chat(fake_url)
    chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="busy")
    run("add", chat, a=0, b=0)  # warm
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run("hang", chat, seconds=1.0), range(4)))
    elapsed = time.monotonic() - start
    assert [r.value for r in results] == ["woke"] * 4  # type: ignore[attr-defined]
    assert elapsed < 2.5, elapsed  # one after another would take 4 s


def test_the_approval_tells_server_tools_apart_and_ask_marks_every_call(fake_url: str) -> None:
    """An MCP tool names its server, so "ask" lets its read-only tools run and asks for the
    rest; a server added with ``ask`` asks for every call, its read-only ones too."""
    from jupyter_llmchat._jupyter._approval import approval_for

    chat = new_chat(fake_url)
    quiet = {t.name: t for t in chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="calc")}
    assert quiet["add"].server == "calc"
    assert approval_for(quiet["add"], "ask") == "run"  # readOnlyHint
    assert approval_for(quiet["pid"], "ask") == "ask"  # no hint: a server's tool asks
    assert approval_for(quiet["env_value"], "ask") == "ask"  # destructiveHint
    asking = chat.register_mcp_tools_stdio(sys.executable, [SERVER], name="strict",
                                           namespace="s", ask=True)
    by_name = {t.name: t for t in asking}
    assert approval_for(by_name["s_add"], "ask") == "ask"
    assert approval_for(by_name["s_add"], "auto") == "run"
    assert approval_for(by_name["s_add"], "never") == "refuse"
