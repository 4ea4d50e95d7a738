"""``%%chat --tools NAME[,NAME...]`` and ``--tools kernel`` in a real IPython shell, against the
fake server (which scripts the model's tool calls). Assertions are on the wire: which tools were
offered, what the tools sent back, and that nothing secret-looking ever left the kernel."""

from __future__ import annotations

import json
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat._jupyter._kernel_tools import kernel_tools, looks_secret
from tests import test_magics
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_magics import config, run

ip = test_magics.ip  # the fixture: a shell with the extension, on the fake server

CANARY = "sk-canary-Kt7Vb2Qw9Lz4"
FRAGMENTS = (CANARY, "Kt7Vb2Qw", "Qw9Lz4")


def call(call_id: str, tool: str, /, **arguments: Any) -> Reply:
    """The model asks for one tool call (then the exchange waits for its result)."""
    spec = {"id": call_id, "type": "function",
            "function": {"name": tool, "arguments": json.dumps(arguments)}}
    return Reply(text="", tool_calls=[spec], finish_reason="tool_calls")


def offered(fake: FakeOpenAI, i: int = 0) -> list[str]:
    return [t["function"]["name"] for t in fake.chat_requests()[i].body.get("tools", [])]


def tool_results(fake: FakeOpenAI) -> list[str]:
    """The tool messages of the last request: what the tools sent back to the model."""
    return [m["content"] for m in fake.last_body()["messages"] if m["role"] == "tool"]


@pytest.fixture(autouse=True)
def _clean_ns(ip: InteractiveShell) -> Any:
    yield
    for name in ("lookup", "sales", "notes", "api_key", "github_token", "DB_PASSWORD",
                 "client_secret", "n", "Point", "cfg", "total", "conn", "Conn", "os"):
        ip.user_ns.pop(name, None)


# -- --tools NAME ------------------------------------------------------------------------------


def test_a_function_of_the_namespace_is_a_tool_for_that_cell_only(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    run(ip, "def lookup(city: str) -> str:\n    'The weather in a city.'\n"
            "    return city.upper() + ': sunny'\n")
    jupyter_llmchat.session().register_tool(lambda: "pong", name="ping")
    fake.script(call("c1", "lookup", city="oslo"), Reply(text="It is sunny."))
    result = run(ip, "%%chat --tools lookup\nWeather in Oslo?")
    assert result.error_in_exec is None, result.error_in_exec
    assert offered(fake, 0) == ["ping", "lookup"] and offered(fake, 1) == ["ping", "lookup"]
    tools = fake.chat_requests()[0].body["tools"]
    schema = next(t for t in tools if t["function"]["name"] == "lookup")
    assert schema["function"]["description"] == "The weather in a city."
    assert tool_results(fake) == ["OSLO: sunny"]
    # Afterwards the session has its own tools again, and the next cell offers only those.
    assert [t.name for t in jupyter_llmchat.session().get_tools()] == ["ping"]
    fake.script(Reply(text="ok"))
    run(ip, "%%chat\nAnd tomorrow?")
    assert offered(fake, 2) == ["ping"]
    jupyter_llmchat.session().set_tools([])


def test_tools_are_removed_when_the_request_fails(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    run(ip, "def lookup(city: str) -> str:\n    return city\n")
    fake.script(Reply(status=500))
    run(ip, "%%chat --tools lookup\nWeather?")
    assert len(fake.chat_requests()) >= 1 and offered(fake, 0) == ["lookup"]
    assert jupyter_llmchat.session().get_tools() == []


@pytest.mark.parametrize(
    ("setup", "line", "message"),
    [
        ("", "--tools lookup", "no function named 'lookup' in the namespace"),
        ("n = 3", "--tools n", "'n' is a int, not a function"),
        ("class Point: pass", "--tools Point", "'Point' is a class, not a function"),
        ("", "--tools 'a.b'", "not 'a.b'"),
        ("", "--tools ,", "--tools needs function names or kernel"),
        ("def lookup(q, /): return q", "--tools lookup", "positional-only"),
    ],
)
def test_a_bad_name_is_one_usage_error_and_nothing_is_sent(
    ip: InteractiveShell, fake: FakeOpenAI, setup: str, line: str, message: str
) -> None:
    run(ip, setup)
    result = run(ip, f"%%chat {line}\nhi")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert message in str(result.error_in_exec) and "\n" not in str(result.error_in_exec)
    assert fake.chat_requests() == []
    assert jupyter_llmchat.session().get_tools() == []


def test_tools_also_work_on_the_line_magic(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    run(ip, "def lookup(city: str) -> str:\n    return city\n")
    fake.script(Reply(text="ok"))
    run(ip, "%chat --tools lookup What is the weather?")
    assert offered(fake) == ["lookup"]
    assert fake.last_body()["messages"][-1]["content"] == "What is the weather?"


def test_a_dry_run_names_the_tools_and_sends_nothing(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ip, "def lookup(city: str) -> str:\n    return city\n")
    capsys.readouterr()
    run(ip, "%%chat --dry-run --tools lookup,kernel\nWeather?")
    out = capsys.readouterr().out
    assert ("--tools, offered for this cell: lookup, kernel_variables, kernel_value, "
            "kernel_last_error") in out
    assert fake.chat_requests() == [] and jupyter_llmchat.session().get_tools() == []


# -- --tools kernel ----------------------------------------------------------------------------


def test_kernel_tools_are_read_only_and_described() -> None:
    tools = kernel_tools(None, 2000, None)
    assert [t.name for t in tools] == ["kernel_variables", "kernel_value", "kernel_last_error"]
    assert all(t.annotations == {"readOnlyHint": True} for t in tools)
    assert tools[1].parameters["required"] == ["name"]
    assert all(t.description for t in tools)


def test_the_model_looks_into_the_kernel_and_changes_nothing(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    pd = pytest.importorskip("pandas")
    ip.user_ns["sales"] = pd.DataFrame({"region": ["N", "S", "E"], "units": [3, 5, 8]})
    ip.user_ns["notes"] = ["a", "b"]
    run(ip, "def lookup(city: str, days: int = 1) -> str:\n"
            "    'The weather in a city.'\n    return city")
    run(ip, "total = sales['revenue'].sum()")  # a KeyError: the last error
    before = {k: v for k, v in ip.user_ns.items()}
    fake.script(
        call("c1", "kernel_variables"), call("c2", "kernel_value", name="sales"),
        call("c3", "kernel_last_error"), call("c4", "kernel_value", name="nope"),
        call("c5", "kernel_value", name="lookup"),
        Reply(text="The revenue column is missing."),
    )
    result = run(ip, "%%chat --tools kernel\nWhy did my cell fail?")
    assert result.error_in_exec is None, result.error_in_exec
    assert offered(fake) == ["kernel_variables", "kernel_value", "kernel_last_error"]
    listing, value, error, missing, function = tool_results(fake)
    assert "lookup: function lookup(city: str, days: int = 1) -> str" in listing
    assert function == ("lookup: function lookup(city: str, days: int = 1) -> str\n"
                        "The weather in a city.")
    assert "sales: pandas.DataFrame: 3 rows x 2 columns" in listing
    assert "notes: list of length 2" in listing
    assert "pd:" not in listing and "In:" not in listing  # modules, IPython's own names
    assert value.startswith("sales: pandas.DataFrame\n") and "units" in value
    assert "KeyError: 'revenue'" in error and "sales['revenue'].sum()" in error
    assert missing == ("Tool call failed with error: ValueError: "
                       "the kernel has no user variable named 'nope'")
    # Nothing changed: the same names bound to the same objects (no _, Out or new variables).
    after = {k: v for k, v in ip.user_ns.items()}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert jupyter_llmchat.session().get_tools() == []


def test_kernel_tools_are_bounded_like_with(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    config(ip, context_max_tokens=50)
    for i in range(40):
        ip.user_ns[f"v{i:02d}"] = i
    ip.user_ns["notes"] = "word " * 10_000
    try:
        fake.script(call("c1", "kernel_variables"), call("c2", "kernel_value", name="notes"),
                    Reply(text="ok"))
        run(ip, "%%chat --tools kernel\nWhat is there?")
        listing, value = tool_results(fake)
        assert len(listing) <= 50 * 4 + 80 and "more (not listed: the list is bounded)" in listing
        assert len(value) <= 50 * 4 + 40 and "cut to about 50 tokens" in value
    finally:
        config(ip, context_max_tokens=2000)
        for i in range(40):
            ip.user_ns.pop(f"v{i:02d}", None)


def test_no_error_yet_says_so(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    magics = ip.magics_manager.registry["ChatMagics"]
    magics.cell_runs.key = None
    import sys

    saved = getattr(sys, "last_value", None)
    sys.last_value = None
    try:
        fake.script(call("c1", "kernel_last_error"), Reply(text="ok"))
        run(ip, "%%chat --tools kernel\nAny error?")
        no_error = "No error: nothing has raised an exception in this kernel yet."
        assert tool_results(fake) == [no_error]
    finally:
        sys.last_value = saved


@pytest.mark.parametrize(
    "name", ["api_key", "OPENAI_API_KEY", "github_token", "DB_PASSWORD", "client_secret", "Keys"]
)
def test_secret_looking_names(name: str) -> None:
    assert looks_secret(name)


def test_secret_looking_values_never_leave_the_kernel(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The canary: no request body and no output ever holds a value whose name looks secret,
    whichever kernel tool the model calls: the list, a value by name, a container holding it
    under a secret-looking key or field, the last error raised on the line that assigned it."""
    run(ip, f"github_token = {CANARY!r}\nDB_PASSWORD = [{CANARY!r}]\n"
            f"client_secret = {{'v': {CANARY!r}}}\ncfg = {{'api_key': {CANARY!r}, 'n': 1}}\n"
            "import dataclasses\n@dataclasses.dataclass\nclass Conn:\n    host: str\n"
            f"    token: str\nconn = Conn('db', {CANARY!r})")
    monkeypatch.setenv("MY_TOKEN", "")  # the cell sets it; restored (removed) afterwards
    run(ip, "import os")
    result = run(ip, f"api_key = {CANARY!r}; os.environ['MY_TOKEN'] = {CANARY!r}; total = 1 / 0")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    capsys.readouterr()
    names = ["api_key", "github_token", "DB_PASSWORD", "client_secret", "cfg", "conn"]
    fake.script(
        call("c1", "kernel_variables"),
        *[call(f"v{i}", "kernel_value", name=n) for i, n in enumerate(names)],
        call("c9", "kernel_last_error"),
        Reply(text="done"),
    )
    result = run(ip, "%%chat --tools kernel\nShow me everything, keys included.")
    assert result.error_in_exec is None, result.error_in_exec
    results = tool_results(fake)
    assert len(results) == 8
    assert "api_key: (value not shown: its name looks secret)" in results[0]
    assert "cfg: dict with 2 items" in results[0]
    assert all("is not shown: its name looks secret" in r for r in results[1:5])
    assert "'api_key': <hidden>" in results[5] and "'n': 1" in results[5]
    assert "host='db', token=<hidden>" in results[6]
    assert "ZeroDivisionError: division by zero" in results[7]
    assert 'api_key = <hidden>; os.environ["<hidden>"] = "<hidden>"' in results[7]
    bodies = [json.dumps(r.body) for r in fake.chat_requests()]
    shown = capsys.readouterr().out
    for fragment in FRAGMENTS:
        assert all(fragment not in b for b in bodies)
        assert fragment not in shown
