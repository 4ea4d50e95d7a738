"""HTTP errors, retries and secrets: what a failed request raises, how often it was sent, and
that no key ever shows up in a message, a repr, a JSON record or a turn."""

from __future__ import annotations

import time

import pytest

from jupyter_llmchat import (
    APIStatusError,
    AuthenticationError,
    LLMChatError,
    RateLimitError,
    ServerError,
    StreamError,
    TransportError,
    chat_openai_compatible,
)
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import closed_port_url, new_chat

SECRET = "sk-test-SECRET1234567890"


def test_error_tree() -> None:
    for cls in (AuthenticationError, RateLimitError, ServerError):
        assert issubclass(cls, APIStatusError)
    for base in (APIStatusError, TransportError, StreamError):
        assert issubclass(base, LLMChatError)
    assert issubclass(LLMChatError, Exception)


def test_every_public_error_of_the_package_is_in_the_one_tree() -> None:
    """One tree, one module: each exception class the package defines (but a private one used
    for control flow) lives in ``_errors``, under ``LLMChatError``, and is drawn in its tree."""
    import importlib
    import pkgutil

    import jupyter_llmchat
    from jupyter_llmchat import _errors

    errors = set()
    for info in pkgutil.walk_packages(jupyter_llmchat.__path__, "jupyter_llmchat."):
        if info.name.endswith("__main__"):
            continue  # the CLI's entry point runs at import
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__.startswith("jupyter_llmchat")
                    and not value.__name__.startswith("_")):
                errors.add(value)
    assert errors and all(e.__module__ == "jupyter_llmchat._errors" for e in errors), errors
    assert all(issubclass(e, LLMChatError) for e in errors)
    assert all(f" {e.__name__} " in _errors.__doc__ for e in errors if e is not LLMChatError)
    # Those a reader of records or a busy session's caller catches by their older bases still work.
    assert issubclass(_errors.RecordError, ValueError)
    assert issubclass(jupyter_llmchat.ChatBusyError, jupyter_llmchat.ConfigurationError)


# -- statuses ---------------------------------------------------------------------------------


def test_401_is_an_authentication_error_without_the_key(fake: FakeOpenAI, fake_url: str) -> None:
    fake.require_auth = "Bearer the-right-key"
    chat = new_chat(fake_url, credentials=SECRET, system_prompt="sys")
    with pytest.raises(AuthenticationError) as info:
        chat.chat("hi")
    exc = info.value
    assert exc.status_code == 401
    assert "check credentials" in str(exc)
    assert f"{fake_url}/chat/completions" in str(exc)
    assert "401" in str(exc)
    assert len(fake.chat_requests()) == 1  # not retried
    assert fake.chat_requests()[0].headers["authorization"] == f"Bearer {SECRET}"  # it was sent

    for text in (str(exc), repr(exc), exc.body, exc.url, repr(chat), chat.to_json()):
        assert SECRET not in text
        assert "SECRET1234" not in text
    assert chat.get_turns() == []


def test_a_key_echoed_by_the_server_is_redacted(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=401, error_message=f"Incorrect API key provided: {SECRET}."))
    chat = new_chat(fake_url, credentials=SECRET)
    with pytest.raises(AuthenticationError) as info:
        chat.chat("hi")
    assert "Incorrect API key provided" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in info.value.body


def test_a_header_secret_echoed_by_the_server_is_redacted(fake: FakeOpenAI, fake_url: str) -> None:
    token = "azure-token-0123456789abcdef"
    fake.script(Reply(status=403, error_message=f"key {token} is not allowed here"))
    chat = new_chat(fake_url, credentials=lambda: {"api-key": token})
    with pytest.raises(AuthenticationError) as info:
        chat.chat("hi")
    assert info.value.status_code == 403
    assert token not in str(info.value) and token not in info.value.body


def test_the_key_is_in_no_record_of_a_successful_chat(fake: FakeOpenAI, fake_url: str) -> None:
    fake.require_auth = f"Bearer {SECRET}"
    chat = new_chat(fake_url, credentials=SECRET, api_headers={"X-Api-Key": SECRET})
    chat.chat("hi")
    list(chat.stream("again"))
    assert len(chat.get_turns()) == 4
    records = [repr(chat), chat.to_json(), *map(repr, chat.get_turns())]
    records += [str(t.to_dict()) for t in chat.get_turns()]
    records += [str(chat.get_tokens())]
    assert not [r for r in records if SECRET in r]


def test_userinfo_and_query_in_base_url_are_never_shown(fake: FakeOpenAI) -> None:
    from jupyter_llmchat import ConfigurationError

    with pytest.raises(ConfigurationError) as refused:
        new_chat(f"http://user:{SECRET}@127.0.0.1:{fake.port}/v1")
    assert SECRET not in str(refused.value) and "credentials=" in str(refused.value)
    chat = new_chat(f"http://127.0.0.1:{fake.port}/v1?key={SECRET}")
    fake.script(Reply(status=400))
    with pytest.raises(APIStatusError) as info:
        chat.chat("hi")
    for text in (str(info.value), info.value.url, repr(chat), chat.to_json()):
        assert SECRET not in text and "key=" not in text


def test_404_hints_at_model_and_base_url(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=404, error_message="The model `nope` does not exist"))
    chat = new_chat(fake_url, model="nope")
    with pytest.raises(APIStatusError) as info:
        chat.chat("hi")
    exc = info.value
    assert type(exc) is APIStatusError and exc.status_code == 404
    assert "model" in exc.hint and "base_url" in exc.hint
    assert "does not exist" in str(exc)  # the server's own message is kept
    assert len(fake.chat_requests()) == 1


def test_400_is_not_retried(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=400, error_message="max_tokens is too large"), Reply(text="unused"))
    chat = new_chat(fake_url)
    with pytest.raises(APIStatusError, match="max_tokens is too large") as info:
        chat.chat("hi")
    assert type(info.value) is APIStatusError and info.value.status_code == 400
    assert "400 Bad Request" in str(info.value)
    assert len(fake.chat_requests()) == 1
    assert fake.pending() == 1
    assert chat.get_turns() == []


def test_error_detail_from_the_usual_body_shapes() -> None:
    """The fake always answers JSON; other servers send plain text or other JSON shapes."""
    from jupyter_llmchat._core._provider import _error_detail

    assert _error_detail("upstream   timed\nout") == "upstream timed out"
    assert _error_detail('{"detail": "Not Found"}') == "Not Found"
    assert _error_detail('{"error": "bad model"}') == "bad model"


# -- retries ----------------------------------------------------------------------------------


def test_429_retried_then_gives_up(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(*[Reply(status=429, headers={"Retry-After": "0"})] * 3, Reply(text="unused"))
    chat = new_chat(fake_url)
    with pytest.raises(RateLimitError) as info:
        chat.chat("hi")
    assert info.value.status_code == 429
    assert len(fake.chat_requests()) == 3
    assert fake.pending() == 1
    assert chat.get_turns() == []


def test_429_then_200_succeeds(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=429, headers={"Retry-After": "0"}), Reply(text="made it"))
    chat = new_chat(fake_url)
    assert chat.chat("hi") == "made it"
    requests = fake.chat_requests()
    assert len(requests) == 2
    assert requests[0].body == requests[1].body  # the same request, sent again
    assert [t.text for t in chat.get_turns()] == ["hi", "made it"]


def test_retry_after_is_honoured(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=429, headers={"Retry-After": "0.4"}), Reply(text="later"))
    chat = new_chat(fake_url)
    assert chat.chat("hi") == "later"
    first, second = fake.chat_requests()
    assert second.time - first.time >= 0.35


def test_retry_after_as_an_http_date(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),
                Reply(text="back"))
    t0 = time.monotonic()
    assert new_chat(fake_url).chat("hi") == "back"
    assert time.monotonic() - t0 < 1  # a date in the past: try again at once
    assert len(fake.chat_requests()) == 2


def test_retry_after_too_long_gives_up_at_once(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=429, headers={"Retry-After": "3600"}), Reply(text="unused"))
    chat = new_chat(fake_url)
    t0 = time.monotonic()
    with pytest.raises(RateLimitError, match="3600") as info:
        chat.chat("hi")
    assert time.monotonic() - t0 < 5
    assert "retry after 3600" in info.value.hint
    assert len(fake.chat_requests()) == 1


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_transient_statuses_are_retried(fake: FakeOpenAI, fake_url: str, status: int) -> None:
    fake.script(Reply(status=status, headers={"Retry-After": "0"}), Reply(text="recovered"))
    chat = new_chat(fake_url)
    assert "".join(chat.stream("hi")) == "recovered"
    assert len(fake.chat_requests()) == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_after_the_retries_is_a_server_error(
    fake: FakeOpenAI, fake_url: str, status: int
) -> None:
    fake.script(*[Reply(status=status, headers={"Retry-After": "0"})] * 3)
    with pytest.raises(ServerError) as info:
        new_chat(fake_url).chat("hi")
    assert info.value.status_code == status
    assert len(fake.chat_requests()) == 3


def test_backoff_without_retry_after_is_short_and_bounded(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=503), Reply(status=503), Reply(text="ok"))
    t0 = time.monotonic()
    assert new_chat(fake_url).chat("hi") == "ok"
    elapsed = time.monotonic() - t0
    # 0.5 s then 1 s, each with jitter in [0.5, 1]: between 0.75 s and 1.5 s.
    assert 0.6 <= elapsed < 3
    first, second, third = fake.chat_requests()
    assert second.time - first.time >= 0.2
    assert third.time - second.time >= 0.45


@pytest.mark.parametrize("status", [401, 403, 404, 400, 422])
def test_client_errors_are_not_retried(fake: FakeOpenAI, fake_url: str, status: int) -> None:
    fake.script(Reply(status=status, headers={"Retry-After": "0"}), Reply(text="unused"))
    with pytest.raises(APIStatusError):
        new_chat(fake_url).chat("hi")
    assert len(fake.chat_requests()) == 1


def test_connect_error_is_retried_then_a_transport_error() -> None:
    url = closed_port_url()
    chat = new_chat(url)
    t0 = time.monotonic()
    with pytest.raises(TransportError) as info:
        chat.chat("hi")
    elapsed = time.monotonic() - t0
    assert 0.5 <= elapsed < 5  # two backoffs, each bounded
    assert url in str(info.value)
    assert "is the server running" in str(info.value)
    assert chat.get_turns() == []


async def test_connect_error_async() -> None:
    chat = new_chat(closed_port_url())
    with pytest.raises(TransportError):
        await chat.chat_async("hi")
    assert chat.get_turns() == []


def test_model_discovery_on_a_closed_port() -> None:
    with pytest.raises(TransportError, match="/models"):
        chat_openai_compatible(closed_port_url()).get_model()


def test_a_server_that_hangs_before_answering_times_out(fake: FakeOpenAI, fake_url: str) -> None:
    """A read timeout is a TransportError and is not retried (the request may have been run)."""
    import httpx

    fake.script(Reply(hang=2.0), Reply(text="unused"))
    chat = new_chat(fake_url)
    # The timeouts are the client's; shorten them for the test, through the client's own API.
    chat.provider.client.timeout = httpx.Timeout(0.3)
    with pytest.raises(TransportError, match="timed out"):
        chat.chat("hi")
    assert len(fake.chat_requests()) == 1
    assert chat.get_turns() == []


async def test_async_retries(fake: FakeOpenAI, fake_url: str) -> None:
    now = {"Retry-After": "0"}
    fake.script(Reply(status=429, headers=now), Reply(status=502, headers=now), Reply(text="3rd"))
    chat = new_chat(fake_url)
    assert [c async for c in chat.stream_async("hi")] == ["3rd"]
    assert len(fake.chat_requests()) == 3


def test_no_retry_once_the_stream_has_started(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(cut_after=1), Reply(text="a retry would get this"))
    chat = new_chat(fake_url)
    with pytest.raises(StreamError):
        list(chat.stream("hi"))
    assert len(fake.chat_requests()) == 1
    assert fake.pending() == 1
    last = chat.last_turn()
    assert last is not None and last.partial


def test_stream_cut_before_the_first_token_is_not_retried(fake: FakeOpenAI, fake_url: str) -> None:
    """Headers were sent, so the server may already be generating: not retried, nothing kept."""
    fake.script(Reply(cut_after=0), Reply(text="unused"))
    chat = new_chat(fake_url)
    with pytest.raises(StreamError):
        list(chat.stream("hi"))
    assert len(fake.chat_requests()) == 1
    assert chat.get_turns() == []


# -- a connection dropped before any byte of the answer -----------------------------------------


@pytest.mark.parametrize("drop", ["close", "reset"])
def test_a_connection_dropped_before_any_byte_is_retried(fake: FakeOpenAI, fake_url: str, drop: str) -> None:
    """A busy server (or a keep-alive connection it had just closed) drops the request before
    answering: nothing was generated, so it is sent again, like a refused connection."""
    fake.script(Reply(drop=drop), Reply(text="second try"))
    chat = new_chat(fake_url)
    assert chat.chat("hi") == "second try"
    assert len(fake.chat_requests()) == 2
    fake.script(Reply(drop=drop), Reply(text="streamed"))
    assert "".join(chat.stream("again")) == "streamed"
    assert len(fake.chat_requests()) == 4


async def test_a_connection_dropped_before_any_byte_is_retried_async(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(drop="reset"), Reply(drop="close"), Reply(text="third try"))
    chat = new_chat(fake_url)
    assert await chat.chat_async("hi") == "third try"
    assert len(fake.chat_requests()) == 3


def test_a_connection_dropped_every_time_says_so(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(*[Reply(drop="close")] * 3, Reply(text="unused"))
    chat = new_chat(fake_url)
    with pytest.raises(TransportError) as info:
        chat.chat("hi")
    assert len(fake.chat_requests()) == 3
    assert fake.pending() == 1
    # The server is running (it accepted the connection): the hint must not ask whether it is.
    assert "is the server running" not in str(info.value)
    assert "closed the connection" in str(info.value)
    assert chat.get_turns() == []


# -- hints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [
    # LiteLLM's proxy, for a key it cannot look up: a 400, not a 401.
    {"message": "No connected db.", "type": "no_db_connection", "param": None, "code": "400"},
    {"message": "Authentication Error, Invalid proxy server token passed.", "type": "auth_error",
     "param": "None", "code": "400"},
    {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"},
])
def test_a_400_that_refuses_the_key_hints_at_the_credentials(
    fake: FakeOpenAI, fake_url: str, error: dict[str, object]
) -> None:
    fake.script(Reply(status=400, error_body={"error": error}), Reply(text="unused"))
    chat = new_chat(fake_url, credentials=SECRET)
    with pytest.raises(AuthenticationError) as info:
        chat.chat("hi")
    assert info.value.status_code == 400
    assert "credentials" in info.value.hint
    assert "check model, params and api_args" not in str(info.value)
    assert str(error["message"]) in str(info.value)
    assert len(fake.chat_requests()) == 1


def test_a_400_about_the_request_still_hints_at_the_request(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(status=400, error_message="max_tokens must be at most 4096 (tokens)"))
    with pytest.raises(APIStatusError) as info:
        new_chat(fake_url).chat("hi")
    assert type(info.value) is APIStatusError
    assert "api_args" in info.value.hint


# -- redaction keeps the message readable -------------------------------------------------------


def test_redaction_keeps_a_json_body_json(fake: FakeOpenAI, fake_url: str) -> None:
    import json

    # Each token ends the message or a clause: the quote and braces after it must stay.
    for echo, shown in (
        (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
        ("refused: Bearer other-token.42,Bearer abc/def=", "refused: Bearer ***,Bearer ***"),
    ):
        fake.script(Reply(status=401, error_message=echo))
        with pytest.raises(AuthenticationError) as info:
            new_chat(fake_url, credentials=SECRET).chat("hi")
        exc = info.value
        assert json.loads(exc.body)["error"]["message"] == shown
        assert shown in str(exc)
        assert SECRET not in exc.body and "other-token" not in exc.body and "abc" not in exc.body


def _frames_text(exc: BaseException) -> str:
    """Every frame below the test's own, with its local variables (what ``%xmode Verbose`` and
    ``capture_locals`` print), for ``exc`` and the exceptions chained to it."""
    import traceback

    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return "".join(traceback.TracebackException(type(exc), exc, tb, capture_locals=True).format())


@pytest.mark.parametrize("how", ["chat", "stream", "async"])
def test_no_frame_of_a_failed_request_holds_the_key(fake: FakeOpenAI, fake_url: str, how: str) -> None:
    import asyncio

    echo = f"Incorrect API key provided: {SECRET}. Authorization: Bearer {SECRET}"
    chat = new_chat(fake_url, credentials=SECRET, api_args={"user_token": SECRET})

    def run() -> None:
        if how == "chat":
            chat.chat("hi")
        elif how == "stream":
            list(chat.stream("hi"))
        else:
            async def consume() -> None:
                [c async for c in chat.stream_async("hi")]

            asyncio.run(consume())

    replies = [
        [Reply(status=401, error_message=echo)],
        [Reply(status=500, error_message=echo, headers={"Retry-After": "0"})] * 3,
    ]
    if how != "chat":  # a streamed answer that reports the error mid-stream
        replies.append([Reply(chunks=["a", "b"], error_event_at=1, error_message=echo)])
    for script in replies:
        fake.script(*script)
        with pytest.raises(LLMChatError) as info:
            run()
        text = _frames_text(info.value)
        assert "SECRET1234" not in text, text
