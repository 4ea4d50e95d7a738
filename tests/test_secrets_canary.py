"""Secrets canary: a key used every way a user gives one must never show up anywhere.

One canary key goes in through the environment (``$OPENAI_API_KEY`` and
``ChatMagics.credentials_env``), a ``credentials`` callable and ``api_headers``; the server is
told to echo it back in its errors. Then every place a user or a log can see text is searched
for it: return values, reprs, exception texts, ``to_json``, the turns and their dicts, stdout,
stderr, log records, the rich outputs of ``%%chat``, ``%chat_config``, ``%chat_usage`` and
``%chat_history`` in a real IPython shell, and a notebook run headless with nbclient and saved.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import LLMChatError, chat_openai_compatible, token_usage
from jupyter_llmchat import _sessions
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import closed_port_url, run_notebook

pytestmark = [pytest.mark.timeout(180)]

CANARY = "sk-canary-7Qx2Lm9Vt4Rw8Zp3"
#: Pieces a partial leak would show (a prefix cut by truncation, a suffix after a cut).
FRAGMENTS = (CANARY, "7Qx2Lm9V", "t4Rw8Zp3", "canary-7Qx2")
ENV_VAR = "LLMCHAT_CANARY_KEY"


class Seen:
    """Everything a user (or a log) could read, gathered as text."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, value: Any) -> None:
        text = value if isinstance(value, str) else repr(value)
        self.texts.append((where, text))

    def add_exception(self, where: str, exc: BaseException) -> None:
        self.add(where + " str", str(exc))
        self.add(where + " repr", repr(exc))
        for attr in ("message", "hint", "body", "url"):
            if hasattr(exc, attr):
                self.add(f"{where} .{attr}", str(getattr(exc, attr)))
        if exc.__cause__ is not None or exc.__context__ is not None:
            self.add(where + " cause", repr(exc.__cause__) + repr(exc.__context__))

    def add_chat(self, where: str, chat: jupyter_llmchat.Chat) -> None:
        self.add(where + " repr", repr(chat))
        self.add(where + " provider", repr(chat.provider))
        self.add(where + " to_json", chat.to_json())
        self.add(where + " tokens", chat.get_tokens())
        for t in chat.get_turns(include_system_prompt=True):
            self.add(where + " turn", repr(t))
            self.add(where + " turn dict", json.dumps(t.to_dict(), default=str))

    def leaks(self) -> list[str]:
        return [f"{where}: ...{text[max(0, text.find(f) - 60):text.find(f) + 60]}..."
                for where, text in self.texts for f in FRAGMENTS if f in text]


@pytest.fixture
def canary_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv(ENV_VAR, CANARY)
    for name in ("OPENAI_BASE_URL", "OPENAI_MODEL", "JPY_SESSION_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    yield


def echoing_errors() -> list[Reply]:
    """A 401, then 500s (retried), each echoing the key back the way some servers do."""
    echo = f"Incorrect API key provided: {CANARY}. Authorization: Bearer {CANARY}"
    return [Reply(status=401, error_message=echo)] + [
        Reply(status=500, error_message="x" * 280 + echo, headers={"Retry-After": "0"})
    ] * 3


def echoing_auth() -> list[Reply]:
    """A 401, 500s (retried) and a stream error, each quoting the Authorization header it got."""
    now = {"Retry-After": "0"}
    return [Reply(status=401, echo_auth=True, error_message="Incorrect API key provided")] + [
        Reply(status=500, echo_auth=True, error_message="upstream failed", headers=now)
    ] * 3 + [Reply(chunks=["a", "b", "c"], error_event_at=2, echo_auth=True, error_message="key revoked")]


def xmodes() -> list[str]:
    """IPython's exception modes (Plain, Context, Verbose, Minimal, and Docs where it has it)."""
    from IPython.core.ultratb import FormattedTB

    return list(FormattedTB().valid_modes)


#: Cells that fail with the key echoed (the replies of ``echoing_auth``, in order): a %%chat,
#: the Python API (a traceback through Chat), a %%chat whose stream breaks.
FAILING_CELLS = (
    "%%chat\nThis one fails with 401",
    "import jupyter_llmchat\njupyter_llmchat.session().chat('this one fails with 500')",
    "%%chat\nThis one breaks mid-stream",
)


def python_flows(fake: FakeOpenAI, seen: Seen) -> None:
    fake.require_auth = f"Bearer {CANARY}"
    chats = {
        "env": chat_openai_compatible(fake.base_url, model="test-model"),
        "callable": chat_openai_compatible(fake.base_url, model="test-model", credentials=lambda: CANARY),
        "headers": chat_openai_compatible(
            fake.base_url, model="test-model", credentials=lambda: {"Authorization": f"Bearer {CANARY}"},
            api_headers={"X-Api-Key": CANARY},
        ),
    }
    for name, chat in chats.items():
        fake.script(Reply(text="Hello.", reasoning="thinking"), Reply(text="Streamed."))
        seen.add(f"{name} chat", chat.chat("hi", echo="all"))
        seen.add(f"{name} stream", list(chat.stream("more", echo="all")))
        fake.script(Reply(text="Async."))
        seen.add(f"{name} async", asyncio.run(chat.chat_async("async")))
        fake.script(*echoing_errors())
        for _ in range(2):  # the 401, then the 500 after its retries
            with pytest.raises(LLMChatError) as info:
                chat.chat("fail")
            seen.add_exception(f"{name} error", info.value)
        fake.script(Reply(chunks=["a", "b", "c"], error_event_at=2, error_message=f"key {CANARY} revoked"))
        with pytest.raises(LLMChatError) as info:
            list(chat.stream("mid-stream"))
        seen.add_exception(f"{name} stream error", info.value)
        seen.add_chat(name, chat)
        seen.add(f"{name} copy", repr(chat.copy()))
        seen.add(f"{name} from_json", repr(jupyter_llmchat.Chat.from_json(chat.to_json())))
    fake.require_auth = None

    refused = chat_openai_compatible(closed_port_url(), model="m", credentials=lambda: CANARY)
    with pytest.raises(LLMChatError) as info:
        refused.chat("hi")
    seen.add_exception("connect refused", info.value)
    with pytest.raises(LLMChatError) as info:
        chat_openai_compatible(f"http://user:{CANARY}@127.0.0.1:9/v1")
    seen.add_exception("userinfo", info.value)
    seen.add("token_usage", token_usage())


def shell_flows(ip: InteractiveShell, fake: FakeOpenAI, seen: Seen, capsys: pytest.CaptureFixture[str]) -> None:
    _sessions.registry.sessions.clear()
    magics = ip.magics_manager.registry["ChatMagics"]
    _sessions.set_factory(magics._make_session, magics._refresh_from_config)
    for line in (
        f'ChatMagics.base_url = "{fake.base_url}"',
        'ChatMagics.model = "test-model"',
        f'ChatMagics.credentials_env = "{ENV_VAR}"',
        f'ChatMagics.api_headers = {{"X-Api-Key": "{CANARY}"}}',
        f'ChatMagics.api_args = {{"user": "me", "secret_token": "{CANARY}"}}',
    ):
        ip.run_line_magic("config", line)
    fake.require_auth = f"Bearer {CANARY}"
    fake.script(Reply(text="Cell answer."), Reply(text="Line answer."), *echoing_errors())
    for source in ("%%chat\nhello", "%chat again", "%%chat\nfail 401", "%%chat\nfail 500"):
        result = ip.run_cell(source, store_history=False)
        seen.add(f"cell {source!r} result", result.result)
        seen.add(f"cell {source!r} error", repr(result.error_in_exec))
    for magic in ("chat_config", "chat_usage", "chat_usage --all --turns", "chat_history"):
        name, _, args = magic.partition(" ")
        value = ip.run_line_magic(name, args)
        data, metadata = ip.display_formatter.format(value)
        seen.add(f"%{magic} bundle", json.dumps(data, default=str))
        seen.add(f"%{magic} metadata", json.dumps(metadata, default=str))
    # The chat panel on the same session: a question, then one that fails with the key echoed.
    from jupyter_llmchat._jupyter._widget import ChatPanel

    class RecordingPanel(ChatPanel):
        def send(self, content: dict[str, Any], buffers: Any = None) -> None:
            seen.add("panel message", json.dumps(content, default=str))
            if content.get("type") in ("done", "error"):
                finished.set()

    import threading

    panel = RecordingPanel("default")
    for question, replies in (("panel hi", [Reply(text="Panel answer.")]), ("panel fail", echoing_errors()[:1])):
        finished = threading.Event()
        fake.script(*replies)
        panel.ask(question)
        assert finished.wait(30)
        while panel.busy:
            finished.wait(0.01)
    panel.close()
    panel_texts = [t for where, t in seen.texts if where == "panel message"]
    assert any('"type": "error"' in t and "401" in t for t in panel_texts), panel_texts
    out, err = capsys.readouterr()
    seen.add("shell stdout", out)
    seen.add("shell stderr", err)
    seen.add_chat("shell session", jupyter_llmchat.session())
    fake.require_auth = None
    _sessions.registry.sessions.clear()


def notebook_flow(fake: FakeOpenAI, tmp_path: Path, seen: Seen) -> None:
    fake.require_auth = f"Bearer {CANARY}"
    fake.script(Reply(text="Notebook answer."), *echoing_errors(), Reply(text="Panel-free answer."))
    sources = [
        "%load_ext jupyter_llmchat",
        f'%config ChatMagics.base_url = "{fake.base_url}"',
        '%config ChatMagics.model = "test-model"',
        f'%config ChatMagics.credentials_env = "{ENV_VAR}"',
        # The key comes from the environment, so the notebook's own sources never hold it.
        f'import os\n%config ChatMagics.api_headers = {{"X-Api-Key": os.environ["{ENV_VAR}"]}}',
        "%%chat\nWhat is a key?",
        "%%chat\nThis one fails with 401",
        "%%chat\nThis one fails with 500",
        "%chat One more",
        "%chat_config",
        "%chat_usage --all --turns",
        "%chat_history",
        "import jupyter_llmchat\njupyter_llmchat.session()",
        "jupyter_llmchat.session().provider",
        "print(jupyter_llmchat.session().to_json())",
        "import jupyter_llmchat._jupyter._bridge as b, json\nprint(json.dumps(b.current_bridge().record()))",
    ]
    for mode in xmodes():  # the key echoed back, in every exception mode, saved with the outputs
        sources += [f"%xmode {mode}", *FAILING_CELLS]
        fake.script(*echoing_auth())
    nb = run_notebook(sources, tmp_path, allow_errors=True)
    fake.require_auth = None
    path = tmp_path / "canary.ipynb"
    nbformat.write(nb, path)
    text = path.read_text()
    seen.add("saved notebook", text)
    # The notebook really ran: two answers, two errors shown as one line each.
    assert "Notebook answer." in text and "Panel-free answer." in text
    assert text.count("chat error:") >= 2

    from jupyter_llmchat._cli import main

    main(["consolidate", str(path)])
    seen.add("consolidated notebook", path.read_text())


def test_the_canary_key_never_shows(
    fake: FakeOpenAI, canary_env: None, _ip: InteractiveShell, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = Seen()
    python_flows(fake, seen)
    shell_flows(_ip, fake, seen, capsys)
    notebook_flow(fake, tmp_path, seen)
    out, err = capsys.readouterr()
    seen.add("stdout", out)
    seen.add("stderr", err)
    seen.add("logs", "\n".join(r.getMessage() for r in caplog.records))
    seen.add("log args", "\n".join(repr(r.args) for r in caplog.records))

    # The key was really used: every authenticated request carried it.
    assert all(
        r.headers.get("authorization") == f"Bearer {CANARY}"
        for r in fake.requests if r.path.startswith("/v1/chat")
    )
    assert len(seen.texts) > 50
    leaks = seen.leaks()
    assert leaks == [], "\n".join(leaks)


def test_the_canary_never_shows_in_a_kernel_in_any_xmode(fake: FakeOpenAI) -> None:
    """Every IOPub message and reply of a real kernel (tracebacks included), in each
    ``%xmode``, and what the ``jupyter_llmchat`` logger wrote there, for a server that quotes
    the Authorization header it got in its 401, its 500s and a stream error."""
    from tests.kernel_frontend import kernel, load

    seen = Seen()
    with kernel(None, env={ENV_VAR: CANARY}) as k:
        load(k, fake.base_url)
        k.ok(f"%config ChatMagics.credentials_env = {ENV_VAR!r}")
        k.ok("import io, logging\n_canary_log = io.StringIO()\n"
             "_logger = logging.getLogger('jupyter_llmchat')\n"
             "_logger.addHandler(logging.StreamHandler(_canary_log)); _logger.setLevel(logging.DEBUG)")
        fake.require_auth = f"Bearer {CANARY}"
        modes = k.value("__import__('IPython').core.ultratb.FormattedTB().valid_modes")
        assert {"Plain", "Context", "Verbose", "Minimal"} <= set(modes)
        errors = 0
        for mode in modes:
            k.ok(f"%xmode {mode}")
            fake.script(*echoing_auth())
            for source in FAILING_CELLS:
                reply, msgs = k.execute(source)
                seen.add(f"{mode} {source!r} reply", json.dumps(reply["content"]))
                seen.add(f"{mode} {source!r} iopub", json.dumps([m["content"] for m in msgs]))
                errors += reply["content"]["status"] == "error"
        fake.require_auth = None
        seen.add("jupyter_llmchat logger", k.value("_canary_log.getvalue()"))
    # The server really echoed the key (the test would pass vacuously otherwise).
    assert errors >= len(modes)
    assert any(CANARY in r.headers.get("authorization", "") for r in fake.chat_requests())
    leaks = seen.leaks()
    assert leaks == [], "\n".join(leaks)
