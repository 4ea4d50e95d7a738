"""``--tools`` through a real kernel, against the fake server that scripts the model's tool
calls: notebooks/05-tools.ipynb top to bottom (nbclient), and "Restart and Run All" replaying a
``--tools`` cell without running its tools again, headless (nbclient, the saved notebook) and
as in JupyterLab (tests/kernel_frontend.py, the record kept by the front end)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

import jupyter_llmchat
from tests.fake_openai import FakeOpenAIProcess, Reply
from tests.kernel_frontend import FrontEnd, kernel, load, notebook_file
from tests.test_kernel_tools import CANARY, call
from tests.test_record_kernel import shown

pytestmark = pytest.mark.kernel

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
#: notebooks/05-tools.ipynb's MCP part starts at this heading; it needs %chat_mcp (the mcp SDK).
MCP_HEADING = "## An MCP server"


def execute(path: Path, base_url: str) -> Any:
    """Run the saved notebook in a fresh kernel pointed at the fake server, and save it."""
    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_BASE_URL=base_url, OPENAI_MODEL="test-model")
    # As in an activated environment: `python` (05-tools's MCP server) is this one.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["JPY_SESSION_NAME"] = str(path)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)
    nbformat.write(nb, path)
    return nb


def plain(cell: Any) -> str:
    out = []
    for o in cell.outputs:
        if o.get("output_type") == "stream":
            out.append(o["text"])
        elif o.get("output_type") == "error":
            out.append(f"{o['ename']}: {o['evalue']}")
        else:
            out.append(str((o.get("data") or {}).get("text/plain", "")))
    return "\n".join(out)


def errors(nb: Any) -> list[Any]:
    return [(i, plain(c)) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and "raises-exception" not in c.metadata.get("tags", [])
            and any(o.output_type == "error" for o in c.outputs)]


def tool_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def has_mcp() -> bool:
    """%chat_mcp is there (Chat's MCP API, and the SDK it is built on)."""
    return (importlib.util.find_spec("mcp") is not None
            and hasattr(jupyter_llmchat.Chat, "register_mcp_tools_stdio"))


def test_run_all_replays_a_tools_cell_without_running_its_tools(
    server: FakeOpenAIProcess, tmp_path: Path
) -> None:
    server.reset()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in [
        "%load_ext jupyter_llmchat",
        "calls = []\ndef lookup(q: str) -> str:\n    'Look q up.'\n"
        "    calls.append(q)\n    return q.upper()",
        "%%chat --tools lookup,kernel\nLook up spam, and list my variables.",
        "print('calls:', len(calls))",
    ]]
    path = tmp_path / "tools.ipynb"
    nbformat.write(nb, path)
    server.script(call("c1", "lookup", q="spam"), call("c2", "kernel_variables"),
                  Reply(text="SPAM it is."))
    first = execute(path, server.base_url)
    assert not errors(first), errors(first)
    assert len(server.chat_requests()) == 3
    looked_up, listing = tool_messages(server.chat_requests()[-1].body)
    assert looked_up == "SPAM"
    # The user's two names only: nothing of IPython's or ipykernel's.
    assert listing == ("2 variables:\ncalls: list of length 1\n"
                       "lookup: function lookup(q: str) -> str")
    assert "calls: 1" in plain(first.cells[3])
    record = next(o.metadata["jupyter_llmchat"] for o in first.cells[2].outputs
                  if "jupyter_llmchat" in o.get("metadata", {}))
    assert [c["type"] for t in record["rounds"] for c in t["contents"]].count("tool_request") == 2

    second = execute(path, server.base_url)
    assert not errors(second), errors(second)
    assert len(server.chat_requests()) == 3  # nothing asked again
    assert "replayed (recorded " in plain(second.cells[2])
    assert "calls: 0" in plain(second.cells[3])  # the recorded exchange ran no tool


def test_the_tools_notebook_runs_on_the_fake_server(
    server: FakeOpenAIProcess, tmp_path: Path
) -> None:
    """notebooks/05-tools.ipynb top to bottom (its MCP part when %chat_mcp is there), then
    again from the saved file: every answer replayed. The notebook's `api_key` never reaches
    the server."""
    server.reset()
    src = nbformat.read(ROOT / "notebooks" / "05-tools.ipynb", as_version=4)
    start = next(i for i, c in enumerate(src.cells) if c.source.startswith(MCP_HEADING))
    if not has_mcp():  # the MCP part needs %chat_mcp (and the mcp extra)
        src.cells = src.cells[:start]
    path = tmp_path / "05-tools.ipynb"
    nbformat.write(src, path)
    replies = [
        call("p1", "price", fruit="melon", quantity=3),
        call("p2", "price", fruit="pear", quantity=4),
        Reply(text="12 euros."),
        call("k1", "kernel_last_error"), call("k2", "kernel_variables"),
        call("k3", "kernel_value", name="orders"), call("k4", "kernel_value", name="api_key"),
        call("k5", "price", fruit="apple", quantity=3), Reply(text="Use quantity, not qty."),
    ]
    if has_mcp():
        replies += [call("m1", "in_season", month="october"),
                    call("m2", "reserve", fruit="apple", quantity=2), Reply(text="Reserved.")]
    server.script(*replies)
    first = execute(path, server.base_url)
    assert not errors(first), errors(first)
    requests = server.chat_requests()
    assert len(requests) == len(replies)
    assert tool_messages(requests[2].body) == ["9.0", "3.0"]
    kernel = tool_messages(requests[8].body)[2:]  # after the first cell's two, in the history
    assert "KeyError: 'qty'" in kernel[0] and 'o["qty"]' in kernel[0]
    assert "orders: list of length 2" in kernel[1] and "PRICES: dict with 3 items" in kernel[1]
    assert "api_key: (value not shown: its name looks secret)" in kernel[1]
    assert "'melon'" in kernel[2] and "is not shown: its name looks secret" in kernel[3]
    assert kernel[4] == "1.5"
    if has_mcp():
        assert tool_messages(requests[-1].body)[-2:] == ["apple, pear", "reserved 2 apple"]
    for r in requests:
        assert "sk-not-a-real-key" not in json.dumps(r.body)

    second = execute(path, server.base_url)
    assert not errors(second), errors(second)
    assert len(server.chat_requests()) == len(replies)
    asked = [c for c in second.cells if c.cell_type == "code" and c.source.startswith("%%chat")]
    assert asked and all("replayed (recorded " in plain(c) for c in asked)


def test_a_tools_cell_is_recorded_and_replays_after_a_restart_without_its_tools(
    tmp_path: Path, server: FakeOpenAIProcess
) -> None:
    """JupyterLab's way (the front end keeps the record): the exchange with its tool calls is
    in the record, without the secret-named value; a restarted kernel given that record shows
    it again with no request and no tool run."""
    server.reset()
    path = notebook_file(tmp_path / "look.ipynb")
    cells = [
        "calls = []\ndef lookup(q: str) -> str:\n    'Look q up.'\n    calls.append(q)\n"
        "    return q.upper()",
        f"api_key = {CANARY!r}\nsales = [3, 5, 8]",
        "%%chat --tools kernel,lookup\nWhat is in my kernel?",
    ]
    server.script(call("c1", "kernel_variables"), call("c2", "kernel_value", name="api_key"),
                  call("c3", "lookup", q="sales"), Reply(text="Sales, and a key I may not see."))
    with kernel(path) as k:
        fe = k.attach(FrontEnd("look.ipynb"))
        load(k, server.base_url)
        for cell in cells:
            shown(k, cell)
        turns = fe.record["sessions"]["default"]["turns"]
        record = fe.record
        received = json.dumps([d for d, _ in fe.received])
    kinds = [c["type"] for t in turns for c in t["contents"]]
    assert kinds.count("tool_request") == 3 and kinds.count("tool_result") == 3
    assert len(server.chat_requests()) == 4
    for seen in [received, *(json.dumps(r.body) for r in server.chat_requests())]:
        assert CANARY not in seen

    with kernel(path) as k:  # Restart Kernel and Run All, the record given back at hello
        k.attach(FrontEnd("look.ipynb", record))
        load(k, server.base_url)
        out = "".join(shown(k, cell) for cell in cells)
        assert "replayed (recorded " in out and "Sales, and a key I may not see." in out
        assert k.value("len(calls)") == 0
    assert len(server.chat_requests()) == 4
