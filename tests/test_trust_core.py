"""The core client's edge cases from issue "Trust" (items 13, 15, 20 and DESIGN §9's last bullet).

Each test reproduces what a user hit: a half-applied ``set_turns``, a second ``asyncio.run``, a
blocking model lookup on the event loop, a key cut in half by truncation, chunks of odd shapes,
two threads racing for one session, an Azure URL, a ``user:pass@`` URL, one bad line in a
stream, and a key sent in clear to another machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import warnings
from typing import Any

import pytest

from jupyter_llmchat import (
    ConfigurationError,
    StreamError,
    TransportError,
    Turn,
    chat_openai_compatible,
)
from jupyter_llmchat import _sessions
from jupyter_llmchat._core import _process
from jupyter_llmchat._core import _provider
from jupyter_llmchat._core._provider import OpenAICompatible
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import last, new_chat

CANARY = "ZQX9canary-0123456789abcdef"


def roles(chat: Any) -> list[str]:
    return [t.role for t in chat.get_turns()]


# -- set_turns checks everything before changing anything -------------------------------------


def test_set_turns_refused_leaves_system_prompt_and_history_alone(fake_url: str) -> None:
    chat = new_chat(fake_url, system_prompt="old prompt")
    good = [Turn.user("q"), Turn("assistant", [])]
    chat.set_turns(good)
    bad = [Turn.user("new prompt"), Turn.user("a"), Turn.user("b")]
    bad[0].role = "system"
    with pytest.raises(ConfigurationError, match="turn 2"):
        chat.set_turns(bad)
    assert chat.system_prompt == "old prompt"
    assert chat.get_turns() == good


@pytest.mark.parametrize("junk", [["not a turn"], [None, Turn.user("q")], [{"role": "system"}]])
def test_set_turns_with_a_non_turn_is_a_configuration_error(fake_url: str, junk: list[Any]) -> None:
    chat = new_chat(fake_url, system_prompt="keep")
    with pytest.raises(ConfigurationError, match="not a Turn"):
        chat.set_turns(junk)
    assert chat.system_prompt == "keep" and chat.get_turns() == []


# -- async: one client per event loop, no blocking call on the loop ---------------------------


def test_two_asyncio_runs_in_a_row(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="one"), Reply(text="two"), Reply(text="three"))
    chat = new_chat(fake_url)
    assert asyncio.run(chat.chat_async("a")) == "one"
    assert asyncio.run(chat.chat_async("b")) == "two"

    async def streamed() -> list[str]:
        return [c async for c in chat.stream_async("c")]

    assert "".join(asyncio.run(streamed())) == "three"
    assert roles(chat) == ["user", "assistant"] * 3


def test_async_model_lookup_does_not_block_the_loop(fake: FakeOpenAI, fake_url: str) -> None:
    """GET /models answers only once another coroutine on the same loop has run: a blocking
    lookup would hold the loop, that coroutine would never run, and the lookup time out."""
    gate = threading.Event()
    fake.models_gate = gate
    chat = chat_openai_compatible(fake_url, timeout=3)

    async def main() -> str:
        async def open_gate() -> None:
            await asyncio.sleep(0.05)
            gate.set()

        opener = asyncio.ensure_future(open_gate())
        answer = await chat.chat_async("hi")
        await opener
        return answer

    assert asyncio.run(main()) == "Hello from the fake server."
    assert chat.get_model() == "test-model"
    assert [(r.method, r.path) for r in fake.requests] == [
        ("GET", "/v1/models"), ("POST", "/v1/chat/completions")
    ]


async def test_stream_async_resolves_the_model_too(fake: FakeOpenAI, fake_url: str) -> None:
    chat = chat_openai_compatible(fake_url)
    assert "".join([c async for c in chat.stream_async("hi")]) == "Hello from the fake server."
    assert fake.last_body()["model"] == "test-model"


# -- redaction before truncation --------------------------------------------------------------


@pytest.mark.parametrize("pad", [280, 290, 295, 1970, 1974])
def test_a_key_cut_by_truncation_leaks_no_prefix(fake: FakeOpenAI, fake_url: str, pad: int) -> None:
    fake.script(Reply(status=400, error_message="x" * pad + CANARY + " is not valid"))
    chat = new_chat(fake_url, credentials=CANARY)
    with pytest.raises(Exception) as info:
        chat.chat("hi")
    exc = info.value
    for text in (str(exc), repr(exc), getattr(exc, "body", "")):
        assert "ZQX9" not in text


def test_an_error_event_mid_stream_is_redacted(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(error_event_at=1, error_message="y" * 195 + CANARY))
    chat = new_chat(fake_url, credentials=CANARY)
    with pytest.raises(StreamError) as info:
        list(chat.stream("hi"))
    assert "ZQX9" not in str(info.value)
    assert last(chat).partial


# -- chunks of odd shapes: skipped, never a bare AttributeError -------------------------------


ODD_CHUNKS = [
    '{"choices": "not a list"}',
    '{"choices": [null]}',
    '{"choices": ["a string"]}',
    '{"choices": [{"delta": "not an object"}]}',
    '{"choices": [{"delta": ["a", "list"]}]}',
    '{"choices": [{"message": 42}]}',
    '{"choices": {"0": {"delta": {"content": "x"}}}}',
    '["a", "list"]',
    '"a string"',
    "42",
    "null",
    "not json at all",
]


@pytest.mark.parametrize("odd", ODD_CHUNKS)
def test_odd_chunks_are_skipped_and_counted(fake: FakeOpenAI, fake_url: str, odd: str) -> None:
    fake.script(Reply(chunks=["one ", "two ", "three"], extra_events=[(1, odd)]))
    chat = new_chat(fake_url)
    assert chat.chat("hi", stream=True) == "one two three"
    turn = last(chat)
    assert turn.skipped == 1 and not turn.partial and turn.finish_reason == "stop"
    assert "skipped" not in json.dumps(turn.to_dict())  # not part of the record


def test_empty_choices_and_usage_chunks_are_not_counted(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(chunks=["a", "b"], extra_events=[(1, '{"choices": []}'), (1, "{}")]))
    chat = new_chat(fake_url)
    assert chat.chat("hi", stream=True) == "ab"
    assert last(chat).skipped == 0
    assert last(chat).tokens is not None and last(chat).tokens.output == 2


def test_a_malformed_line_is_skipped_and_the_answer_goes_on(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(chunks=["Hel", "lo ", "world"], malformed_at=1))
    chat = new_chat(fake_url)
    assert "".join(chat.stream("hi")) == "Hello world"
    turn = last(chat)
    assert (turn.partial, turn.skipped, turn.finish_reason) == (False, 1, "stop")
    assert roles(chat) == ["user", "assistant"]


def test_a_whole_completion_that_is_not_json_is_one_stream_error(fake_url: str) -> None:
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"<html>gateway page</html>")

    chat = new_chat(fake_url)
    chat.provider._client = httpx.Client(transport=httpx.MockTransport(handler))
    with pytest.raises(StreamError, match="1 unreadable chunks skipped"):
        chat.chat("hi")
    assert chat.get_turns() == []


# -- sessions: one Chat per name, whoever asks first --------------------------------------------


def test_two_threads_creating_one_session_get_the_same_chat(fake_url: str) -> None:
    made: list[Any] = []

    def slow_factory(name: str) -> Any:
        time.sleep(0.2)  # widens the race window; not a timing assertion
        chat = new_chat(fake_url)
        made.append(chat)
        return chat

    old_factory, old_refresher = _sessions.registry.factory, _sessions.registry.refresher
    _sessions.set_factory(slow_factory)
    got: list[Any] = []
    try:
        _sessions.drop("race")
        threads = [threading.Thread(target=lambda: got.append(_sessions.session("race"))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        _sessions.drop("race")
        _sessions.set_factory(old_factory, old_refresher)
    assert len(made) == 1
    assert len(got) == 4 and all(c is made[0] for c in got)


# -- base_url: Azure's query string, userinfo refused -------------------------------------------


def test_query_in_base_url_stays_after_the_path(fake: FakeOpenAI, fake_url: str) -> None:
    chat = chat_openai_compatible(f"{fake_url}?api-version=2024-02-01")
    assert chat.chat("hi") == "Hello from the fake server."
    asyncio.run(chat.chat_async("again"))
    paths = [(r.method, r.path) for r in fake.requests]
    assert paths == [
        ("GET", "/v1/models?api-version=2024-02-01"),
        ("POST", "/v1/chat/completions?api-version=2024-02-01"),
        ("POST", "/v1/chat/completions?api-version=2024-02-01"),
    ]
    for shown in (chat.provider.display_url, repr(chat), chat.to_json()):
        assert "api-version" not in shown
    assert json.loads(chat.to_json())["provider"]["base_url"] == fake_url


def test_query_with_a_trailing_slash_path(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(f"{fake_url}/?api-version=1")
    chat.chat("hi")
    assert fake.chat_requests()[0].path == "/v1/chat/completions?api-version=1"


@pytest.mark.parametrize("userinfo", ["user:hunter2-password@", "user@", ":hunter2-password@"])
def test_userinfo_in_base_url_is_refused(fake: FakeOpenAI, userinfo: str) -> None:
    url = f"http://{userinfo}127.0.0.1:{fake.port}/v1"
    with pytest.raises(ConfigurationError) as info:
        chat_openai_compatible(url, model="m")
    text = str(info.value)
    assert "credentials=" in text and "user:pass@" in text
    assert "hunter2" not in text and "hunter2" not in repr(info.value)
    assert fake.requests == []


def test_a_query_key_is_redacted_from_errors(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=400, error_message=f"bad key {CANARY}"))
    chat = new_chat(f"{fake_url}?key={CANARY}")
    with pytest.raises(Exception) as info:
        chat.chat("hi")
    assert "ZQX9" not in str(info.value) and "ZQX9" not in getattr(info.value, "body", "")


# -- timeout= ---------------------------------------------------------------------------------


def test_timeout_keyword_bounds_the_wait(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(hang=3.0))
    chat = new_chat(fake_url, timeout=0.3)
    with pytest.raises(TransportError, match="timed out"):
        chat.chat("hi")
    assert chat.get_turns() == []
    assert chat.copy().provider.timeout == 0.3


@pytest.mark.parametrize("bad", [0, -1, "5", True])
def test_timeout_must_be_positive_seconds(fake_url: str, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        new_chat(fake_url, timeout=bad)


# -- a key over plain http to another machine -------------------------------------------------


def provider(url: str, credentials: Any = None, api_headers: dict[str, str] | None = None) -> OpenAICompatible:
    return OpenAICompatible(
        base_url=url, name="t", model="m", params=None, api_args=None,
        api_headers=api_headers, credentials=credentials,
    )


def test_key_over_plain_http_warns_once_per_host_without_the_key() -> None:
    warned = _process.process.plain_http_warned
    warned.discard("llm.example.invalid")
    warned.discard("other.example.invalid")
    p = provider("http://llm.example.invalid/v1", credentials=lambda: CANARY)
    with pytest.warns(UserWarning, match="plain http to llm.example.invalid") as record:
        p.headers()
    assert len(record) == 1 and "ZQX9" not in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.headers()  # once per host
        provider("http://llm.example.invalid/v2", credentials=lambda: "k" * 20).headers()
    with pytest.warns(UserWarning, match="other.example.invalid"):
        provider("http://other.example.invalid/v1", api_headers={"X-Api-Key": CANARY}).headers()


@pytest.mark.parametrize(
    "url, credentials",
    [
        ("https://llm.example.invalid/v1", lambda: CANARY),
        ("http://127.0.0.1:8080/v1", lambda: CANARY),
        ("http://127.3.4.5:8080/v1", lambda: CANARY),
        ("http://localhost:8080/v1", lambda: CANARY),
        ("http://[::1]:8080/v1", lambda: CANARY),
        ("http://nokey.example.invalid/v1", None),
        ("http://nokey.example.invalid/v1", lambda: None),
    ],
)
def test_no_warning_over_https_on_loopback_or_without_a_key(url: str, credentials: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        provider(url, credentials=credentials).headers()


def test_provider_repr_shows_no_secret(fake_url: str) -> None:
    chat = new_chat(f"{fake_url}?key={CANARY}", credentials=CANARY)
    assert "ZQX9" not in repr(chat.provider) and "OpenAICompatible" in repr(chat.provider)


def test_a_raising_credentials_function_is_a_configuration_error(fake: FakeOpenAI, fake_url: str) -> None:
    def broken() -> str:
        raise RuntimeError("token service down")

    chat = new_chat(fake_url, credentials=broken)
    with pytest.raises(ConfigurationError, match="credentials.*RuntimeError.*token service down"):
        chat.chat("hi")
    assert chat.get_turns() == [] and fake.chat_requests() == []


# -- errors that tell the user what to do -----------------------------------------------------


def test_429_with_an_http_date_hints_in_seconds(fake: FakeOpenAI, fake_url: str) -> None:
    import email.utils

    from jupyter_llmchat import RateLimitError

    date = email.utils.formatdate(time.time(), usegmt=True)
    fake.script(*[Reply(status=429, headers={"Retry-After": date})] * 3)
    with pytest.raises(RateLimitError) as info:
        new_chat(fake_url).chat("hi")
    assert "GMT" not in info.value.hint
    assert re.search(r"retry after \d+ s", info.value.hint)


def test_read_timeout_names_the_wait_and_the_keyword(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(hang=3.0))
    with pytest.raises(TransportError) as info:
        new_chat(fake_url, timeout=0.3).chat("hi")
    assert "0.3 s" in str(info.value) and "timeout=" in info.value.hint


def test_413_says_the_request_is_too_large(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat import APIStatusError

    fake.script(Reply(status=413, error_message="payload too large"))
    with pytest.raises(APIStatusError) as info:
        new_chat(fake_url).chat("hi")
    assert "too large" in info.value.hint


@pytest.mark.parametrize("status", [301, 307, 308])
def test_a_redirect_is_one_clear_error(fake: FakeOpenAI, fake_url: str, status: int) -> None:
    from jupyter_llmchat import APIStatusError

    target = "https://llm.example.invalid/v1/chat/completions?sig=ZQX9secretsig"
    fake.script(Reply(status=status, headers={"Location": target}))
    chat = new_chat(fake_url)
    with pytest.raises(APIStatusError) as info:
        chat.chat("hi")
    assert info.value.status_code == status
    assert "redirected to https://llm.example.invalid/v1/chat/completions" in str(info.value)
    assert "base_url" in info.value.hint and "ZQX9" not in str(info.value)
    assert len(fake.chat_requests()) == 1 and chat.get_turns() == []
    fake.script(Reply(status=status, headers={"Location": target}))
    with pytest.raises(APIStatusError, match="redirected"):
        asyncio.run(chat.chat_async("hi"))


def test_a_redirected_model_list_says_so(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat import APIStatusError

    fake.models_status = 301  # the fake's error body, with a 301 status and no Location
    with pytest.raises(APIStatusError, match="GET .*/models is redirected"):
        chat_openai_compatible(fake_url).chat("hi")


def test_api_headers_none_removes_the_header(
    fake: FakeOpenAI, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-the-environment")
    chat = new_chat(fake_url, api_headers={"Authorization": None, "X-Drop": None, "X-Keep": "1"})
    chat.chat("hi")
    headers = fake.chat_requests()[0].headers
    assert "authorization" not in headers and "x-drop" not in headers
    assert headers["x-keep"] == "1"
