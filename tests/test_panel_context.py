"""The panel's input side in a real IPython shell against the fake server: the notebook budget
(refused before sending, shown in ``usage``), ``@name`` attachments, the kernel's names for
completion, the model picker (``/models``), the context note; and ``parallel_chat``'s budget.

The panel is the real ``ChatPanel`` with its messages to the front end kept (no front end here;
the Chromium tests drive the same messages through the labextension). Assertions are on what the
fake server received and on the messages, never on model wording.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat._jupyter._bridge import current_bridge
from jupyter_llmchat._errors import LLMChatError
from tests.fake_openai import FakeOpenAI, Reply
from tests.panel_recorder import RecordingPanel
from tests.test_magics import config, ip, run  # noqa: F401  (a fixture)


@pytest.fixture
def panel(ip: InteractiveShell) -> Any:
    from jupyter_llmchat._core._spend import Budget

    from jupyter_llmchat import _sessions

    current_bridge().ledger.load([])
    p = RecordingPanel("default")
    _sessions.registry.panels.append(p)  # as %chat_panel keeps it: told when the budget changes
    yield p
    _sessions.registry.panels.remove(p)
    p.close()
    current_bridge().budget = Budget()


def user_message(fake: FakeOpenAI) -> str:
    msgs = fake.chat_requests()[-1].body["messages"]
    return str(msgs[-1]["content"])


# -- budget -----------------------------------------------------------------------------------


def test_panel_question_over_the_budget_is_refused_before_sending(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    run(ip, "%chat_budget --tokens 100")
    assert panel.usage["budget_tokens"] == 100 and panel.usage["left_tokens"] == 100
    panel.sent.clear()
    panel.ask("hello there")
    error = panel.wait_for("error")
    # Refused as the other refusals are: not recorded, so the front end gives the text back.
    assert error["recorded"] is False
    assert "token budget of 100" in error["message"] and "%chat_budget --tokens N" in error["message"]
    # The remedy is one the panel has: the session's params, not a cell's --max-tokens.
    assert "--max-tokens" not in error["message"] and "ChatMagics.params" in error["message"]
    # The spend guard refused it as the request was made: the front end drops the bubble.
    assert [m["type"] for m in panel.sent] == ["user", "error"]
    assert fake.requests == [] and jupyter_llmchat.session().get_turns() == []


def test_panel_usage_shows_the_usd_budget_and_what_is_left(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    assert "budget_usd" not in panel.usage and panel.usage["free"] is False  # a priced server
    run(ip, "%chat_budget 1")
    assert panel.usage["budget_usd"] == 1.0 and panel.usage["left_usd"] == 1.0
    run(ip, "%chat_budget --off")
    assert "budget_usd" not in panel.usage


def test_parallel_chat_over_the_budget_raises_before_any_request(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    """Each of its requests passes the spend guard; a batch refused whole raises the refusal."""
    chat = jupyter_llmchat.chat_openai_compatible(fake.base_url, model="test-model")
    run(ip, "%chat_budget --tokens 500")
    prompts = ["one", "two", "three"]
    for fn in (jupyter_llmchat.parallel_chat, jupyter_llmchat.parallel_chat_text):
        with pytest.raises(LLMChatError, match="token budget of 500") as info:
            fn(chat, prompts, kwargs={"params": {"max_tokens": 600}}, progress=False)
        assert "refused, nothing sent" in info.value.message and "%chat_budget --tokens N" in info.value.message
    with pytest.raises(LLMChatError, match="token budget of 500"):
        jupyter_llmchat.parallel_chat_structured(chat, prompts, {"type": "object"}, progress=False)
    assert fake.chat_requests() == []
    # Each request's worst case fits, with the others' held while they are in flight: sent.
    out = jupyter_llmchat.parallel_chat_text(chat, prompts, kwargs={"params": {"max_tokens": 20}},
                                             progress=False)
    assert len(out) == 3 and len(fake.chat_requests()) == 3


# -- @name ------------------------------------------------------------------------------------


def test_at_name_attaches_the_kernel_value_as_with_does(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    ip.user_ns["tags"] = ["a", "b", "c"]
    panel.sent.clear()
    panel.ask("How many in @tags?")
    panel.finish()
    sent = user_message(fake)
    assert sent.startswith("How many in @tags?\n\n[attached value `tags`: list]\n```text\n")
    assert "list of length 3" in sent
    notice = panel.wait_for("notice")
    assert notice["text"].startswith("attached: tags (list, ")
    # Not a name: an e-mail address is left alone.
    panel.sent.clear()
    panel.ask("write to a@tags.org")
    panel.finish()
    assert user_message(fake) == "write to a@tags.org"


def test_unknown_at_name_is_refused_and_nothing_is_sent(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    ip.user_ns.pop("nosuch", None)
    panel.sent.clear()
    panel.ask("look at @nosuch")
    error = panel.wait_for("error")
    assert error["recorded"] is False and "'nosuch'" in error["message"]
    assert fake.requests == []


def test_names_are_the_users_top_level_variables(ip: InteractiveShell, panel: RecordingPanel) -> None:
    run(ip, "import os\nsales_total = 3\n_hidden = 1\ndef helper(): pass")
    panel.front_end(type="names")
    names = panel.wait_for("names")["names"]
    assert "sales_total" in names and "helper" in names
    assert not {"os", "_hidden", "In", "Out", "get_ipython", "exit"} & set(names)
    assert names == sorted(names)


# -- the model picker -------------------------------------------------------------------------


def test_models_come_from_the_server_and_picking_one_changes_the_session_model(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    fake.models = ["test-model", "other-model"]
    panel.front_end(type="models")
    reply = panel.wait_for("models")
    assert reply == {"type": "models", "models": ["test-model", "other-model"], "error": ""}
    panel.front_end(type="model", name="other-model")
    assert panel.model == "other-model"
    panel.ask("hi")
    panel.finish()
    assert fake.chat_requests()[-1].body["model"] == "other-model"
    # A cell of the same session uses it too: it is the session's model.
    run(ip, "%chat again")
    assert fake.chat_requests()[-1].body["model"] == "other-model"


def test_the_model_picked_shows_in_every_panel_of_the_session_and_waits_for_an_answer(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    """The picker goes through ``Chat.set_model``: every panel on the session hears its "model"
    event (one set from Python too), and a chat that is answering keeps its model."""
    other = RecordingPanel("default")
    try:
        panel.front_end(type="model", name="other-model")
        assert panel.model == other.model == "other-model"
        jupyter_llmchat.session().set_model("third-model")
        assert panel.model == other.model == "third-model"
        fake.script(Reply(text="slow " * 40, delay=0.05))
        panel.ask("take your time")
        deadline = time.monotonic() + 10
        while not jupyter_llmchat.session().busy and time.monotonic() < deadline:
            time.sleep(0.005)  # the panel's thread takes the session's lock
        assert jupyter_llmchat.session().busy
        panel.front_end(type="model", name="fourth-model")
        busy = [m for m in panel.sent if m["type"] == "error"]
        assert busy and "busy answering" in busy[0]["message"]
        assert busy[0]["hint"] == "change the model when the answer is in"
        assert panel.model == "third-model"
        panel.finish()
        assert fake.chat_requests()[-1].body["model"] == "third-model"
    finally:
        other.close()


def test_switch_binds_the_panel_to_another_session_and_shows_its_history(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    run(ip, "%chat -s second hello")
    panel.sent.clear()
    panel.switch("second")
    assert panel.session == "second" and panel.chat is jupyter_llmchat.session("second")
    history = panel.wait_for("history")
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"]
    assert "second" in panel.sessions
    # The front end's session picker goes the same way; a bad name is refused, the panel stays.
    panel.sent.clear()
    panel.front_end(type="session", name="bad name!")
    assert [m["type"] for m in panel.sent] == ["error"] and panel.session == "second"


def test_a_models_error_is_reported_quietly(
    ip: InteractiveShell, fake: FakeOpenAI, panel: RecordingPanel
) -> None:
    fake.models_status = 500
    panel.front_end(type="models")
    reply = panel.wait_for("models")
    assert reply["models"] == ["test-model"] and reply["error"]
    assert not [m for m in panel.sent if m["type"] == "error"]


# -- the context note (the bundled model) -------------------------------------------------------


def _long_history(n: int) -> list[Any]:
    from jupyter_llmchat import ContentText, Turn

    filler = "The quick brown fox jumps over the lazy dog near the river bank. " * 40
    turns = []
    for i in range(n):
        turns += [Turn("user", [ContentText(f"Exchange {i}. {filler}")]),
                  Turn("assistant", [ContentText(filler)])]
    return turns


@pytest.mark.usefixtures("local_server")
def test_context_note_is_a_quiet_line_in_the_cell_and_the_panel(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    from jupyter_llmchat import params
    from jupyter_llmchat._sessions import local_chat

    chat = local_chat(params=params(max_tokens=4))
    chat.set_turns(_long_history(12))
    jupyter_llmchat.use(chat, "longctx")
    capsys.readouterr()
    run(ip, "%%chat -s longctx\nHello?")
    out, err = capsys.readouterr()
    notes = [line for line in out.splitlines() if "left out of this request" in line]
    assert len(notes) == 1 and "%%chat --new" in notes[0]
    assert "left out" not in err
    p = RecordingPanel("longctx")
    try:
        p.sent.clear()
        started = time.monotonic()
        p.ask("Hello again?")
        p.finish()
        notice = p.wait_for("notice", timeout=max(1.0, 60 - (time.monotonic() - started)))
        assert "left out of this request" in notice["text"]
    finally:
        p.close()
