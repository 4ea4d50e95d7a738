"""How the Jupyter layer shows errors: a short line, no key in any ``%xmode``, the package's
frames hidden, Ctrl-C in one or two lines, warnings without the package's file paths.

A real IPython shell (the ``_ip`` fixture) against the fake server; what the shell prints is
read from stdout and stderr.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import warnings
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import _sessions
from jupyter_llmchat._core import _process
from tests.fake_openai import FakeOpenAI, Reply

pytestmark = [pytest.mark.timeout(120)]

KEY = "sk-shown-9Tq4Zr7Wm2Lx8Kp5"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The package's internals, as a traceback would name them.
INTERNALS = ("_provider.py", "_chat.py", "_magics.py", "_display.py", "_sessions.py")


@pytest.fixture
def shell(_ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """The shell, its default session on the fake server with ``KEY`` as its key."""
    monkeypatch.setenv("LLMCHAT_SHOWN_KEY", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    _sessions.registry.sessions.clear()
    for line in (f'ChatMagics.base_url = "{fake.base_url}"', 'ChatMagics.model = "test-model"',
                 'ChatMagics.credentials_env = "LLMCHAT_SHOWN_KEY"'):
        _ip.run_line_magic("config", line)
    mode = _ip.InteractiveTB.mode
    yield _ip
    _ip.run_line_magic("xmode", mode)
    _ip.run_line_magic("config", 'ChatMagics.credentials_env = "OPENAI_API_KEY"')
    _sessions.registry.sessions.clear()


def run(ip: InteractiveShell, source: str, capsys: pytest.CaptureFixture[str]) -> tuple[object, str]:
    """Run a cell; its error (or None) and what it printed, colours removed."""
    result = ip.run_cell(source, store_history=False)
    out, err = capsys.readouterr()
    return result.error_in_exec, ANSI.sub("", out + err)


def echoing(status: int) -> Reply:
    return Reply(status=status, headers={"Retry-After": "0"},
                 error_message=f"Incorrect API key provided: {KEY}. Authorization: Bearer {KEY}")


def _modes() -> list[str]:
    from IPython.core.ultratb import FormattedTB

    return list(FormattedTB().valid_modes)  # Plain, Context, Verbose, Minimal (+ Docs, Doctest)


MODES = _modes()


@pytest.mark.parametrize("mode", MODES)
def test_no_key_and_no_internals_in_any_xmode(
    shell: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    shell.run_line_magic("xmode", mode)
    capsys.readouterr()
    cells = [("%%chat\nfail 401", [echoing(401)]), ("%%chat\nfail 500", [echoing(500)] * 3),
             ("%%chat\nbroken", [Reply(chunks=["a", "b"], error_event_at=1, error_message=f"key {KEY} revoked")])]
    for source, replies in cells:
        fake.script(*replies)
        _, printed = run(shell, source, capsys)
        assert "chat error:" in printed, printed
        assert "9Tq4Zr7W" not in printed, printed
        # The package's frames are hidden: a traceback (Verbose) names the user's cell only.
        assert not [name for name in INTERNALS if name in printed], printed
        assert "Incorrect API key provided: ***" in printed or "revoked" in printed


def _ctrl_c_once_the_request_is_in(fake: FakeOpenAI, after: float) -> None:
    """Send this process a SIGINT (Ctrl-C), ``after`` seconds after the server got a request."""

    def interrupt() -> None:
        while not fake.chat_requests():
            threading.Event().wait(0.02)
        threading.Event().wait(after)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()


def test_ctrl_c_shows_one_line_and_keeps_the_partial_answer(
    shell: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(chunks=["piece "] * 100, delay=0.1))
    _ctrl_c_once_the_request_is_in(fake, 0.5)  # the answer is streaming then (it lasts 10 s)
    error, printed = run(shell, "%%chat\ntalk for a while", capsys)
    assert error is not None  # the cell stopped: Run All stops here too
    # Besides the answer and its usage line (as any answer has): at most two lines.
    lines = [line for line in printed.replace("piece ", "").splitlines()
             if line.strip() and "test-model ·" not in line]
    assert len(lines) <= 2, printed
    assert "Traceback" not in printed and "KeyboardInterrupt" not in printed
    assert "partial" in printed
    turn = jupyter_llmchat.session().last_turn()
    assert turn is not None and turn.partial and turn.text.startswith("piece ")


@pytest.mark.parametrize("mode", ["Verbose", "Context"])
def test_ctrl_c_while_waiting_for_the_server_shows_no_key(
    shell: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """Ctrl-C during a request through the Python API: the frames it came through (httpx's hold
    the request's headers) are not in the traceback."""
    shell.run_line_magic("xmode", mode)
    capsys.readouterr()
    fake.script(Reply(hang=5))
    shell.user_ns["c"] = jupyter_llmchat.chat_openai_compatible(
        fake.base_url, model="test-model", credentials=KEY, api_args={"user_token": KEY})
    _ctrl_c_once_the_request_is_in(fake, 0.3)
    error, printed = run(shell, "c.chat('hi')", capsys)
    assert isinstance(error, KeyboardInterrupt)
    assert "9Tq4Zr7W" not in printed, printed
    assert not [name for name in INTERNALS + ("httpx", "httpcore") if name in printed], printed


def test_a_broken_stream_says_once_that_the_answer_is_kept(
    shell: InteractiveShell, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(chunks=["a", "b", "c"], error_event_at=2, error_message="upstream died"))
    _, printed = run(shell, "%%chat\nbreak", capsys)
    assert "upstream died" in printed
    assert printed.count("kept") == 1, printed


def test_a_warning_from_the_package_shows_as_a_clean_line(shell: InteractiveShell) -> None:
    """How the package's warnings are shown with the extension loaded (``warnings.formatwarning``,
    what Python's display of a warning calls): the message, not
    ``.../site-packages/jupyter_llmchat/_bridge.py:290: UserWarning:`` and a source line."""
    from jupyter_llmchat._core._provider import OpenAICompatible

    provider = OpenAICompatible(base_url="http://example.invalid/v1", name="x", model="m", params=None,
                                api_args=None, api_headers=None, credentials=lambda: KEY)
    _process.process.plain_http_warned.discard("example.invalid")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        provider.headers()
        warnings.warn("a user's own warning", UserWarning, stacklevel=1)
    mine, users = (warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    assert mine.startswith("jupyter_llmchat: an API key is sent over plain http to example.invalid"), mine
    assert ".py:" not in mine and "UserWarning" not in mine and mine.count("\n") == 1, mine
    # Anyone else's warning keeps its file and line.
    assert "test_error_display.py:" in users and "UserWarning: a user's own warning" in users


def test_a_warning_in_a_kernel_cell_is_one_clean_line() -> None:
    """In a real kernel with the extension loaded, a package warning reaches the cell as its
    message alone (the hook is installed by %load_ext)."""
    from tests.kernel_frontend import kernel

    with kernel(None) as k:
        k.ok("%load_ext jupyter_llmchat")
        out = k.ok(
            "from jupyter_llmchat._core._provider import OpenAICompatible\n"
            "OpenAICompatible(base_url='http://example.invalid/v1', name='x', model='m', params=None,\n"
            "    api_args=None, api_headers=None, credentials=lambda: 'k-0123456789').headers();"
        )
    assert "an API key is sent over plain http to example.invalid" in out, out
    assert ".py:" not in out and "UserWarning" not in out and "warnings.warn" not in out, out
    assert len(out.strip().splitlines()) == 1, out
