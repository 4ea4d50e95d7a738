"""The fault matrix: every way a server or the network fails, through every surface a user has.

Faults (rows): the server unreachable, statuses with and without retries, timeouts, streams cut,
malformed, oddly shaped, huge or slow. Surfaces (columns): ``chat.chat``, ``chat.stream``, a
``%%chat`` cell in a real IPython shell with the extension loaded, and the chat panel
(``ChatPanel.ask``, its messages to the front end captured).

For each pair: no crash (nothing raised outside ``LLMChatError``), exactly one clear error
where one is expected and none otherwise, no lost or duplicated turn, history still a valid
user/assistant alternation, and a partial answer kept and marked partial where text arrived.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import (
    APIStatusError,
    AuthenticationError,
    ContentText,
    LLMChatError,
    RateLimitError,
    ServerError,
    StreamError,
    TransportError,
    Turn,
    chat_openai_compatible,
)
from jupyter_llmchat import _sessions
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import closed_port_url
from tests.panel_recorder import RecordingPanel

SESSION = "faults"
QUESTION = "What went wrong?"
NOW: dict[str, str] = {"Retry-After": "0"}


def http_date_now() -> str:
    return email.utils.formatdate(time.time(), usegmt=True)


@dataclass
class Fault:
    replies: Callable[[], list[Reply]] = list
    #: "ok": a whole answer; "error": an error and no new turn; "partial": an error, and the
    #: text so far kept as a partial answer.
    expect: str = "ok"
    error: type[LLMChatError] | None = None
    #: What the error says (regex), so a user can tell what happened.
    says: str = ""
    text: str | None = None
    url: Callable[[FakeOpenAI], str] | None = None
    timeout: float = 10.0
    requests: int | None = None
    check: Callable[[Turn], None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _reasoned(turn: Turn) -> None:
    assert turn.thinking == "Let me think about it."
    assert turn.text == "The answer."


def _no_usage(turn: Turn) -> None:
    assert turn.tokens is not None and (turn.tokens.input, turn.tokens.output) == (None, None)


def _skipped(n: int) -> Callable[[Turn], None]:
    def check(turn: Turn) -> None:
        assert turn.skipped == n

    return check


FAULTS: dict[str, Fault] = {
    "connect_refused": Fault(
        url=lambda _: closed_port_url(), expect="error", error=TransportError, says="cannot connect"
    ),
    "dns_failure": Fault(
        url=lambda _: "http://llm-server.invalid/v1", expect="error", error=TransportError,
        says="cannot connect.*llm-server.invalid",
    ),
    "401": Fault(lambda: [Reply(status=401)], "error", AuthenticationError, "401", requests=1),
    "403": Fault(lambda: [Reply(status=403)], "error", AuthenticationError, "403", requests=1),
    "404_model": Fault(
        lambda: [Reply(status=404, error_message="The model `nope` does not exist")],
        "error", APIStatusError, "404.*does not exist", requests=1,
    ),
    "413": Fault(
        lambda: [Reply(status=413, error_message="request too large")],
        "error", APIStatusError, "413", requests=1,
    ),
    "429_retry_after_seconds": Fault(
        lambda: [Reply(status=429, headers={"Retry-After": "1"}), Reply(text="after the wait")],
        "ok", text="after the wait", requests=2,
    ),
    "429_retry_after_date": Fault(
        lambda: [Reply(status=429, headers={"Retry-After": http_date_now()}) for _ in range(3)],
        "error", RateLimitError, "429", requests=3,
    ),
    "500": Fault(lambda: [Reply(status=500)] * 3, "error", ServerError, "500", requests=3),
    "502": Fault(lambda: [Reply(status=502, headers=NOW)] * 3, "error", ServerError, "502", requests=3),
    "503": Fault(lambda: [Reply(status=503, headers=NOW)] * 3, "error", ServerError, "503", requests=3),
    "504": Fault(lambda: [Reply(status=504, headers=NOW)] * 3, "error", ServerError, "504", requests=3),
    "503_then_ok": Fault(
        lambda: [Reply(status=503, headers=NOW), Reply(text="fine now")], "ok", text="fine now",
        requests=2,
    ),
    "read_timeout": Fault(
        lambda: [Reply(hang=3.0)], "error", TransportError, "timed out", timeout=0.5, requests=1
    ),
    "reset_before_any_byte": Fault(
        lambda: [Reply(drop="reset"), Reply(text="sent again")], "ok", text="sent again", requests=2,
    ),
    "closed_before_any_byte_every_time": Fault(
        lambda: [Reply(drop="close")] * 3, "error", TransportError, "closed the connection before answering",
        requests=3,
    ),
    "400_key_unknown_to_the_proxy": Fault(  # LiteLLM's proxy, for a key it cannot look up
        lambda: [Reply(status=400, error_body={"error": {"message": "No connected db.", "type": "no_db_connection"}})],
        "error", AuthenticationError, "No connected db", requests=1,
    ),
    "stream_cut_after_3_tokens": Fault(
        lambda: [Reply(chunks=["One ", "two ", "three ", "four"], cut_after=3)],
        "partial", StreamError, "stream", text="One two three ", requests=1,
    ),
    "stream_cut_before_any_token": Fault(
        lambda: [Reply(chunks=["One ", "two"], cut_after=0)], "error", StreamError, "stream",
        requests=1,
    ),
    "error_event_mid_stream": Fault(
        lambda: [Reply(chunks=["One ", "two"], error_event_at=1, error_message="overloaded")],
        "partial", StreamError, "overloaded", text="One ",
    ),
    "malformed_chunk": Fault(
        lambda: [Reply(chunks=["Hel", "lo ", "world"], malformed_at=1)], text="Hello world",
        check=_skipped(1),
    ),
    "empty_choices": Fault(
        lambda: [Reply(chunks=["a", "b"], extra_events=[(1, '{"choices": []}')])], text="ab",
        check=_skipped(0),
    ),
    "non_dict_delta": Fault(
        lambda: [Reply(chunks=["a", "b"], extra_events=[(1, '{"choices": [{"delta": "x"}]}')])],
        text="ab", check=_skipped(1),
    ),
    "non_dict_choice": Fault(
        lambda: [Reply(chunks=["a", "b"], extra_events=[(1, '{"choices": ["x"]}')])],
        text="ab", check=_skipped(1),
    ),
    "missing_usage": Fault(lambda: [Reply(text="no usage here", usage=None)], text="no usage here",
                           check=_no_usage),
    "reasoning_deltas": Fault(
        lambda: [Reply(text="The answer.", reasoning="Let me think about it.")],
        text="The answer.", check=_reasoned,
    ),
    "one_mb_single_chunk": Fault(lambda: [Reply(chunks=["x" * 1_000_000])], text="x" * 1_000_000),
    "slow_drip": Fault(
        lambda: [Reply(chunks=list("drip drip"), delay=0.03)], text="drip drip"
    ),
}


# -- what one run through a surface gives back ------------------------------------------------


@dataclass
class Outcome:
    #: One entry per error the user was shown (an exception, an error line, an error message).
    errors: list[str]
    #: The answer text the user saw (streamed pieces joined), None if the surface shows none.
    seen: str | None = None
    exception: BaseException | None = None


def via_chat(chat: jupyter_llmchat.Chat, ip: InteractiveShell) -> Outcome:
    try:
        text = chat.chat(QUESTION, stream=True)
    except LLMChatError as exc:
        return Outcome([str(exc)], None, exc)
    return Outcome([], text)


def via_stream(chat: jupyter_llmchat.Chat, ip: InteractiveShell) -> Outcome:
    pieces: list[str] = []
    try:
        for piece in chat.stream(QUESTION):
            pieces.append(piece)
    except LLMChatError as exc:
        return Outcome([str(exc)], "".join(pieces), exc)
    return Outcome([], "".join(pieces))


def via_cell(chat: jupyter_llmchat.Chat, ip: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> Outcome:
    capsys.readouterr()
    result = ip.run_cell(f"%%chat -s {SESSION}\n{QUESTION}\n", store_history=False)
    out, err = capsys.readouterr()
    exc = result.error_in_exec
    # A magic may refuse with UsageError (shown as one line); anything else is a crash.
    assert exc is None, f"%%chat raised {exc!r}\n{err}"
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("chat error:")]
    other = [line for line in err.splitlines() if line.strip() and not line.startswith("chat error:")]
    assert other == [], other
    return Outcome(errors, out)


def via_panel(chat: jupyter_llmchat.Chat, ip: InteractiveShell) -> Outcome:
    panel = RecordingPanel(SESSION)
    try:
        panel.sent.clear()
        panel.ask(QUESTION)
        panel.finish(60)
        deadline = time.monotonic() + 30
        while panel.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not panel.busy
        assert panel.busy_at_end
    finally:
        panel.close()
    kinds = [m["type"] for m in panel.sent]
    assert kinds.count("user") == 1, kinds
    errors = [f"{m['message']} ({m.get('hint', '')})" for m in panel.sent if m["type"] == "error"]
    done = [m for m in panel.sent if m["type"] == "done"]
    assert len(errors) + len(done) == 1, kinds
    seen = "".join(m["text"] for m in panel.sent if m["type"] == "delta" and m["kind"] == "text")
    recorded = [m.get("recorded") for m in panel.sent if m["type"] in ("done", "error")]
    new_turns = len(chat.get_turns()) - 2
    assert recorded == [new_turns == 2], (recorded, new_turns)
    return Outcome(errors, seen)


SURFACES = ["chat", "stream", "cell", "panel"]


# -- fixtures ---------------------------------------------------------------------------------


# -- the matrix -------------------------------------------------------------------------------


@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize("name", list(FAULTS))
def test_fault(
    name: str, surface: str, fake: FakeOpenAI, _ip: InteractiveShell,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault = FAULTS[name]
    fake.script(*fault.replies())
    url = fault.url(fake) if fault.url else fake.base_url
    chat = chat_openai_compatible(url, model="test-model", timeout=fault.timeout)
    earlier = [Turn.user("An earlier question"), Turn("assistant", [ContentText("An earlier answer.")])]
    chat.set_turns(earlier)
    jupyter_llmchat.use(chat, SESSION)
    try:
        if surface == "cell":
            outcome = via_cell(chat, _ip, capsys)
        else:
            outcome = {"chat": via_chat, "stream": via_stream, "panel": via_panel}[surface](chat, _ip)
    finally:
        _sessions.drop(SESSION)

    turns = chat.get_turns()
    # History: the earlier exchange untouched, then at most this question and its answer.
    assert turns[:2] == earlier
    assert [t.role for t in turns] == ["user", "assistant"] * (len(turns) // 2)
    assert not chat.busy

    if fault.expect == "error":
        assert len(outcome.errors) == 1, outcome.errors
        assert len(turns) == 2, turns
    else:
        assert len(turns) == 4, turns
        question, answer = turns[2:]
        assert question.text == QUESTION or question.text == QUESTION + "\n"
        if fault.text is not None:
            assert answer.text == fault.text
        if fault.expect == "partial":
            assert len(outcome.errors) == 1, outcome.errors
            assert answer.partial and answer.finish_reason == "error"
        else:
            assert outcome.errors == []
            assert not answer.partial and answer.finish_reason == "stop"
            if fault.check is not None:
                fault.check(answer)
        if outcome.seen is not None and surface != "cell":
            assert outcome.seen == answer.text  # what was shown is what was kept
        elif outcome.seen is not None:
            assert answer.text in outcome.seen

    if outcome.errors:
        line = outcome.errors[0]
        assert re.search(fault.says, line, re.IGNORECASE | re.DOTALL), line
        assert "Traceback" not in line and len(line.splitlines()) == 1
        if outcome.exception is not None and fault.error is not None:
            assert isinstance(outcome.exception, fault.error)
    if fault.requests is not None:
        assert len(fake.chat_requests()) == fault.requests

    # The chat is usable again at once (no stuck lock, no broken connection kept), and the next
    # request carries exactly the history kept above.
    if fault.url is None:
        before = len(turns)
        fake.script(Reply(text="Next answer."))
        assert chat.chat("Next question", stream=True) == "Next answer."
        sent = fake.last_body()["messages"]
        assert [m["content"] for m in sent[:-1]] == [t.text for t in turns]
        assert len(chat.get_turns()) == before + 2
