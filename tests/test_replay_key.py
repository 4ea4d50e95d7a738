"""The replay key with its parts apart (DESIGN §3, §6): a cell asked again says why, a value
changed behind its summary is asked again, a replayed tool exchange says its tools did not run,
and replay-only mode sends nothing from any path. Real IPython shell, real fake server; what a
saved notebook of the previous key does under nbclient is in test_replay_headless.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat._core._replay import KEY_FIELD, Request, RequestKey, check_replay
from jupyter_llmchat._core._spend import request_hash
from jupyter_llmchat._core._turns import Turn
from jupyter_llmchat._jupyter._display import StreamDisplay
from jupyter_llmchat._record._metadata import RecordError, validate_record
from tests.fake_openai import FakeOpenAI, Reply
from tests.test_context_magics import in_cell
from tests.test_magics import config, ip, run, texts  # noqa: F401  (a fixture)

pd = pytest.importorskip("pandas")


def asked_again(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("asked again: ")]


# -- --with values by content ------------------------------------------------------------------


def test_a_value_changed_where_its_summary_does_not_show_is_asked_again(
    ip: InteractiveShell,
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    ip.user_ns["df"] = pd.DataFrame(
        {"name": [f"user{i}" for i in range(1000)], "score": range(1000)}
    )
    cell = "%%chat --with df\nWho is in row 500?"
    run(ip, cell)
    run(ip, cell)
    assert len(fake.chat_requests()) == 1  # unchanged: replayed
    sent = fake.chat_requests()[0].body["messages"][-1]["content"]
    run(ip, "df.loc[500, 'name'] = 'Mallory'")
    assert "Mallory" not in sent and "user500" not in sent  # the summary cannot show it
    capsys.readouterr()
    run(ip, cell)
    assert len(fake.chat_requests()) == 2
    assert asked_again(capsys.readouterr().out) == ["asked again: a --with value changed: df"]
    assert fake.chat_requests()[1].body["messages"][-1]["content"] == sent  # the same summary
    run(ip, cell)
    assert len(fake.chat_requests()) == 2  # recorded with the new content: replayed again


# -- why a cell is asked again -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "cell", "why"),
    [
        (None, "%%chat\nq?", "its prompt changed"),
        (None, "%%chat -m other-model\nq", "the model changed"),
        (None, "%%chat -t 0.5\nq", "the params changed"),
        (None, "%%chat --system 'Be brief.'\nq", "the system prompt changed"),
        ("tool", "%%chat\nq", "the tools changed"),
    ],
)
def test_a_cell_asked_again_says_why_in_one_line(
    ip: InteractiveShell,
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    change: str | None,
    cell: str,
    why: str,
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    run(ip, "%%chat\nq")
    if change == "tool":

        def twice(x: int) -> int:
            """Double x."""
            return 2 * x

        jupyter_llmchat.session().register_tool(twice)
    capsys.readouterr()
    run(ip, cell)
    assert len(fake.chat_requests()) == 2
    assert asked_again(capsys.readouterr().out) == [f"asked again: {why}"]


def test_a_cell_below_a_changed_one_says_the_conversation_above_changed(
    ip: InteractiveShell,
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    run(ip, "%%chat\nMy name is Ada.")
    in_cell(ip, monkeypatch, "cell-2")
    run(ip, "%%chat\nWhat is my name?")
    # Another answer above (the first cell asked again elsewhere, restored): the one below is stale.
    chat = jupyter_llmchat.session()
    turns = chat.get_turns()
    turns[1] = Turn("assistant", Turn.user("Hello, Eve.").contents, model="test-model")
    chat.set_turns(turns)
    capsys.readouterr()
    run(ip, "%%chat\nWhat is my name?")
    assert len(fake.chat_requests()) == 3
    assert asked_again(capsys.readouterr().out) == ["asked again: the conversation above changed"]


def test_first_runs_refresh_and_replay_off_say_nothing(
    ip: InteractiveShell,
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    run(ip, "%%chat\nq")
    run(ip, "%%chat --refresh\nq")
    config(ip, replay=False)
    run(ip, "%%chat\nq")
    config(ip, replay=True)
    assert len(fake.chat_requests()) == 3
    assert asked_again(capsys.readouterr().out) == []


# -- the key in the record ---------------------------------------------------------------------


def request(prompt: str = "q", history: list[Turn] | None = None, **kw: Any) -> Request:
    args: dict[str, Any] = {
        "prompt": prompt,
        "text": prompt,
        "history": history or [],
        "provider": "P",
        "model": "m",
        "system_prompt": None,
        "params": {},
    }
    return Request(**{**args, **kw})


def recorded(req: Request, answer: str = "a", **meta: Any) -> list[Turn]:
    user = Turn.user(req.text, meta={**req.meta(), **meta})
    return [*req.history, user, Turn("assistant", Turn.user(answer).contents)]


def test_the_key_keeps_its_parts_and_survives_the_record() -> None:
    req = request(attached=[("df", "d1"), ("s", "d2")])
    user = Turn.from_dict(recorded(req)[0].to_dict())
    key = user.meta[KEY_FIELD]
    assert key["v"] == 2 and set(key) == {
        "v",
        "prompt",
        "history",
        "model",
        "system",
        "params",
        "tools",
        "with",
    }
    assert key["with"] == {"df": "d1", "s": "d2"}
    assert RequestKey.from_dict(key) == req.key()
    assert user.meta["request_hash"] == request_hash(
        "q", [], provider="P", model="m", system_prompt=None, params={}
    )
    other = request(attached=[("df", "d1"), ("s", "CHANGED")])
    assert check_replay(recorded(req), 0, other).reason() == "a --with value changed: s"
    assert check_replay(recorded(req), 0, request()).reason() == "the --with names changed"
    assert check_replay(recorded(req), 0, req).index == 0


def test_an_exchange_with_only_the_version_1_hash_is_still_replayed() -> None:
    """Saved before the key had parts: replayed by its hash, and a change said as far as the
    record shows it."""
    req = request(
        "How many rows?", text="How many rows?\n\n[attached value `df`: x]", attached=[("df", "d")]
    )
    turns = recorded(req)
    del turns[0].meta[KEY_FIELD]
    assert check_replay(turns, 0, req).index == 0
    assert check_replay(turns, 0, request("Other?")).reason() == "its prompt changed"
    edited = request(
        "How many rows?", text="How many rows?\n\n[attached value `df`: y]", attached=[("df", "e")]
    )
    assert check_replay(turns, 0, edited).reason() == "what --with attached changed"
    assert (
        check_replay(
            turns, 0, request("How many rows?", text=req.text, model="n", attached=[("df", "d")])
        ).reason()
        == "the conversation above, the model, the system prompt or the params changed"
    )


def test_a_key_of_a_newer_version_is_kept_and_the_hash_beside_it_decides() -> None:
    req = request()
    turns = recorded(req)
    newer = {"v": 3, "parts": ["whatever", "a newer writer keeps"]}
    turns[0].meta[KEY_FIELD] = newer
    again = Turn.from_dict(turns[0].to_dict())
    assert again.meta[KEY_FIELD] == newer  # not dropped from the record written again
    assert check_replay(turns, 0, req).index == 0
    del turns[0].meta["request_hash"]
    assert check_replay(turns, 0, req).reason() == "its replay key is not one this version reads"


def test_a_record_with_an_unreadable_key_is_refused_whole() -> None:
    """Not read and then written without it: the record is refused (and never written over)."""
    u = Turn.user("q").to_dict()
    a = Turn("assistant", Turn.user("a").contents).to_dict()
    for bad in ("a string", {"v": 2, "big": "x" * 9000}):
        record = {
            "version": 1,
            "sessions": {"default": {"provider": {}, "turns": [{**u, KEY_FIELD: bad}, a]}},
            "usage": [],
        }
        with pytest.raises(RecordError, match="request_key"):
            validate_record(record)


def test_a_partial_recorded_answer_is_asked_again_and_says_so() -> None:
    req = request()
    turns = recorded(req)
    turns[1].partial = True
    check = check_replay(turns, 0, req)
    assert check.index is None and check.reason() == "its recorded answer is partial"
    assert check_replay(turns, 2, req) == check_replay([], 0, req)  # nothing recorded there


# -- a replayed tool exchange ------------------------------------------------------------------


def test_a_replayed_tool_line_says_the_tool_was_not_run_again() -> None:
    shown: list[dict[str, str]] = []
    display = StreamDisplay(
        display=lambda b, **kw: shown.append(b), update=lambda b, **kw: shown.append(b)
    )
    display.tool_request("c1", "twice", {"x": 4}, replayed=True)
    display.tool_result("c1", 8, None, replayed=True)
    display.fill("text", "Eight.")
    display.final("markdown", {})
    assert len(shown) == 1  # the final bundle only
    md = shown[0]["text/markdown"]
    assert "ok · recorded, not run again" in md and " s</summary>" not in md and "0.00 s" not in md
    assert "Result:" in md and "8" in md


def test_a_replayed_tool_exchange_in_a_terminal_says_so(
    ip: InteractiveShell,
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    call = {"id": "c1", "type": "function", "function": {"name": "twice", "arguments": '{"x": 4}'}}
    fake.script(Reply(text="", tool_calls=[call], finish_reason="tool_calls"), Reply(text="Eight."))
    ran: list[int] = []

    def twice(x: int) -> int:
        """Double x."""
        ran.append(x)
        return 2 * x

    jupyter_llmchat.session().register_tool(twice)
    run(ip, "%%chat\nTwice 4?")
    capsys.readouterr()
    run(ip, "%%chat\nTwice 4?")
    out = capsys.readouterr().out
    assert ran == [4] and "[tool ok, recorded: not run again]" in out and "Eight." in out


# -- replay-only -------------------------------------------------------------------------------


def test_replay_only_replays_and_fails_a_changed_cell_naming_what_changed(
    ip: InteractiveShell,
    fake: FakeOpenAI,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    in_cell(ip, monkeypatch, "cell-1")
    run(ip, "%%chat\nq")
    config(ip, replay="only")
    try:
        capsys.readouterr()
        assert run(ip, "%%chat --refresh\nq").error_in_exec is None  # "only" overrides --refresh
        assert "replayed (recorded " in capsys.readouterr().out
        result = run(ip, "%%chat\nq, edited")
        assert isinstance(result.error_in_exec, UsageError)
        message = str(result.error_in_exec)
        assert message == (
            "replay-only mode (ChatMagics.replay = 'only'): its recorded answer does not "
            "match: its prompt changed; nothing sent"
        )
        in_cell(ip, monkeypatch, "cell-2")
        message = str(run(ip, "%%chat\nnew").error_in_exec)
        assert "it has no recorded answer" in message
        assert run(ip, "%%chat --dry-run\nnew").error_in_exec is None  # shows, sends nothing
    finally:
        config(ip, replay=True)
    assert len(fake.chat_requests()) == 1
    assert texts(jupyter_llmchat.session()) == [
        ("user", "q\n"),
        ("assistant", "Hello from the fake server."),
    ]


def test_replay_only_from_the_environment_refuses_every_path(
    ip: InteractiveShell, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_LLMCHAT_REPLAY", "only")
    chat = jupyter_llmchat.session()
    with pytest.raises(jupyter_llmchat.ReplayOnlyError, match="JUPYTER_LLMCHAT_REPLAY=only"):
        chat.chat("hi")
    with pytest.raises(jupyter_llmchat.BudgetExceeded):  # handled wherever a refusal is
        list(chat.stream("hi"))
    with pytest.raises(jupyter_llmchat.ReplayOnlyError):
        jupyter_llmchat.parallel_chat(chat, ["a", "b"], progress=False)
    # Over %config: the environment is CI's.
    config(ip, replay=False)
    assert "JUPYTER_LLMCHAT_REPLAY=only" in str(run(ip, "%%chat --refresh\nq").error_in_exec)
    config(ip, replay=True)
    assert fake.chat_requests() == [] and chat.get_turns() == []
    # A value that is no mode refuses too: a typo in CI must not spend.
    monkeypatch.setenv("JUPYTER_LLMCHAT_REPLAY", "onyl")
    with pytest.raises(jupyter_llmchat.ReplayOnlyError, match="not a mode"):
        chat.chat("hi")
    monkeypatch.delenv("JUPYTER_LLMCHAT_REPLAY")
    assert chat.chat("hi") == "Hello from the fake server."


def test_replay_only_refuses_a_panel_question_before_sending(
    ip: InteractiveShell, fake: FakeOpenAI
) -> None:
    from jupyter_llmchat import _sessions
    from tests.panel_recorder import RecordingPanel

    config(ip, replay="only")
    panel = RecordingPanel("default")
    _sessions.registry.panels.append(panel)
    try:
        panel.ask("hello there")
        error = panel.wait_for("error")
    finally:
        _sessions.registry.panels.remove(panel)
        panel.close()
        config(ip, replay=True)
    assert error["recorded"] is False
    assert "replay-only mode (ChatMagics.replay = 'only'): nothing is sent" in error["message"]
    assert fake.requests == [] and jupyter_llmchat.session().get_turns() == []
