"""What real servers send, read right (DESIGN §1), over HTTP from the fake server.

Numbers are the items of issue 16. Each shape is one a real server sends (the project's notes on
real servers, and the issue): Perplexity's whole answer with an empty ``delta``, Mistral's typed
content parts, Azure's prompt-filter chunk, OpenAI's refusals, LiteLLM's empty stream, its usage
chunk and its 500 for ``json_schema``, vLLM's string error, and usage that genai-prices rejects.
Whole answers are scripted as ``Reply.raw_body`` (``chat``/``chat_async`` ask for them), streams
as ``Reply.raw_events`` (``stream``/``stream_async``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest

from jupyter_llmchat import (
    AuthenticationError,
    Chat,
    ContentText,
    ContentThinking,
    StreamError,
    StructuredOutputError,
    chat_openai,
    chat_openai_compatible,
)
from tests.fake_openai import FakeOpenAI, Reply, wire_chunk, wire_completion

WHOLE = ("chat", "chat_async")
STREAMED = ("stream", "stream_async")
ALL = WHOLE + STREAMED


def _chat(url: str, **kwargs: Any) -> Chat:
    return chat_openai_compatible(base_url=url, model=kwargs.pop("model", "test-model"), **kwargs)


def ask(chat: Chat, how: str, prompt: str = "Hi") -> str:
    """The answer's text, through one of the four ways to send."""
    if how == "chat":
        return chat.chat(prompt)
    if how == "chat_async":
        return asyncio.run(chat.chat_async(prompt))
    if how == "stream":
        return "".join(chat.stream(prompt))
    assert how == "stream_async"

    async def go() -> str:
        return "".join([piece async for piece in chat.stream_async(prompt)])

    return asyncio.run(go())


def events(*deltas: dict[str, Any], finish: str = "stop", usage: dict[str, Any] | None = None,
           model: str = "test-model") -> list[str]:
    """A stream of these deltas, a finish chunk, a usage chunk (OpenAI's form) and [DONE]."""
    out = [wire_chunk(d, model=model) for d in deltas]
    out.append(wire_chunk({}, finish, model=model))
    if usage is not None:
        out.append(wire_chunk(choices=[], usage=usage, model=model))
    return [*out, "[DONE]"]


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


# -- 4. usage that genai-prices rejects ----------------------------------------------------------

#: More cached tokens than prompt tokens: genai-prices raises ValueError on it.
ODD_USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
             "prompt_tokens_details": {"cached_tokens": 20}}


@pytest.mark.parametrize("how", ALL)
def test_usage_that_genai_prices_rejects_keeps_the_answer_with_cost_unknown(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    chat = chat_openai(base_url=fake_url, model="gpt-4o-mini", credentials="k")
    fake.script(Reply(text="Kept.", usage=ODD_USAGE))
    assert ask(chat, how) == "Kept."
    turns = chat.get_turns()
    assert [t.role for t in turns] == ["user", "assistant"]
    answer = turns[1]
    assert answer.text == "Kept." and answer.cost is None
    assert answer.tokens is not None and answer.tokens.cached == 20
    assert chat.get_cost() is None
    assert "cost=n/a" in repr(chat)


def test_a_rejected_price_is_logged_once_at_debug(
    fake: FakeOpenAI, fake_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    chat = chat_openai(base_url=fake_url, model="gpt-4o", credentials="k")
    fake.script(Reply(text="One.", usage=ODD_USAGE), Reply(text="Two.", usage=ODD_USAGE))
    with caplog.at_level(logging.DEBUG, logger="jupyter_llmchat"):
        chat.chat("a")
        chat.chat("b")
    logged = [r for r in caplog.records if "genai-prices" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.DEBUG
    assert "gpt-4o" in logged[0].getMessage()


@pytest.mark.parametrize("how", ALL)
def test_a_listener_that_raises_loses_no_turn(
    fake: FakeOpenAI, fake_url: str, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = _chat(fake_url)

    def broken(*_: object) -> None:
        raise RuntimeError("display broke")

    chat.add_listener(broken)
    fake.script(Reply(text="Still here."))
    assert ask(chat, how) == "Still here."
    assert [t.text for t in chat.get_turns()] == ["Hi", "Still here."]
    assert "display broke" in capsys.readouterr().err


@pytest.mark.parametrize("how", STREAMED)
def test_a_consumer_that_raises_mid_stream_keeps_the_text_so_far(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    chat = _chat(fake_url)
    fake.script(Reply(chunks=["Part ", "one, ", "part two."]))

    class Shown(Exception):
        pass

    async def consume_async() -> None:
        async with chat.stream_async("Hi") as s:
            async for _ in s:
                raise Shown

    with pytest.raises(Shown):
        if how == "stream":
            for _ in chat.stream("Hi"):
                raise Shown
        else:
            asyncio.run(consume_async())
    turns = chat.get_turns()
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].partial and turns[1].text.startswith("Part ")


# -- 15. Perplexity: a whole answer that also carries an empty delta -------------------------------


@pytest.mark.parametrize("how", WHOLE)
def test_a_whole_answer_with_an_empty_delta_is_read_from_its_message(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    body = wire_completion({"role": "assistant", "content": "Paris."}, usage=USAGE,
                           choice={"delta": {"role": "assistant", "content": ""}})
    fake.script(Reply(raw_body=body))
    chat = _chat(fake_url)
    assert ask(chat, how) == "Paris."
    assert chat.get_turns()[1].text == "Paris."


@pytest.mark.parametrize("how", STREAMED)
def test_stream_chunks_that_carry_the_message_so_far_count_their_delta_once(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    # Perplexity's chunks carry the message so far next to the delta.
    chunks = [
        wire_chunk({"content": "Par"}, message={"role": "assistant", "content": "Par"}),
        wire_chunk({"content": "is."}, message={"role": "assistant", "content": "Paris."}),
        wire_chunk({}, "stop", message={"role": "assistant", "content": "Paris."}, usage=USAGE),
        "[DONE]",
    ]
    fake.script(Reply(raw_events=chunks))
    assert ask(_chat(fake_url), how) == "Paris."


# -- 16. Mistral: content as a list of typed parts -------------------------------------------------


def _thinking_part(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": [{"type": "text", "text": text}]}


@pytest.mark.parametrize("how", WHOLE)
def test_whole_content_parts_become_text_and_thinking(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    content = [_thinking_part("Six times seven."), {"type": "text", "text": "42."}]
    body = wire_completion({"role": "assistant", "content": content}, usage=USAGE)
    fake.script(Reply(raw_body=body))
    chat = _chat(fake_url)
    assert ask(chat, how) == "42."
    assert chat.get_turns()[1].contents == [ContentThinking("Six times seven."), ContentText("42.")]


@pytest.mark.parametrize("how", STREAMED)
def test_streamed_content_parts_become_text_and_thinking(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    fake.script(Reply(raw_events=events(
        {"role": "assistant", "content": [_thinking_part("Six times ")]},
        {"content": [_thinking_part("seven.")]},
        {"content": "4"},
        {"content": [{"type": "text", "text": "2."}]},
        usage=USAGE,
    )))
    chat = _chat(fake_url)
    assert ask(chat, how) == "42."
    assert chat.get_turns()[1].contents == [ContentThinking("Six times seven."), ContentText("42.")]


def test_streamed_thinking_parts_reach_the_public_stream(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(raw_events=events({"content": [_thinking_part("Hm.")]}, {"content": "Yes."})))
    items = list(_chat(fake_url).stream("Hi", content="all"))
    assert items == [ContentThinking("Hm."), ContentText("Yes.")]


# -- 17. Azure: a first chunk with an empty model --------------------------------------------------

AZURE_MODEL = "gpt-4o-mini-2024-07-18"
PROMPT_FILTER = [{"prompt_index": 0,
                  "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}}}]


@pytest.mark.parametrize("how", STREAMED)
def test_the_model_is_the_first_non_empty_one(fake: FakeOpenAI, fake_url: str, how: str) -> None:
    stream = [wire_chunk(choices=[], model="", prompt_filter_results=PROMPT_FILTER),
              *events({"role": "assistant", "content": "Hi."}, usage=USAGE, model=AZURE_MODEL)]
    whole = wire_completion({"role": "assistant", "content": "Hi."}, usage=USAGE, model=AZURE_MODEL)
    # The deployment's name is what the client was given; the answer names the model.
    streamed = chat_openai(base_url=fake_url, model="my-deployment", credentials="k")
    fake.script(Reply(raw_events=stream))
    assert ask(streamed, how) == "Hi."
    not_streamed = chat_openai(base_url=fake_url, model="my-deployment", credentials="k")
    fake.script(Reply(raw_body=whole))
    assert ask(not_streamed, "chat") == "Hi."
    turn, same = streamed.get_turns()[1], not_streamed.get_turns()[1]
    assert turn.model == same.model == AZURE_MODEL
    assert turn.cost is not None and turn.cost == same.cost


# -- 18. OpenAI refusals ---------------------------------------------------------------------------

REFUSAL = "I'm sorry, I can't help with that."


@pytest.mark.parametrize("how", ALL)
def test_a_refusal_reaches_the_caller_as_text_marked_refused(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    whole = wire_completion({"role": "assistant", "content": None, "refusal": REFUSAL}, usage=USAGE)
    stream = events({"role": "assistant", "content": None, "refusal": ""},
                    {"refusal": REFUSAL[:10]}, {"refusal": REFUSAL[10:]}, usage=USAGE)
    fake.script(Reply(raw_body=whole) if how in WHOLE else Reply(raw_events=stream))
    chat = _chat(fake_url)
    assert ask(chat, how) == REFUSAL
    answer = chat.get_turns()[1]
    assert answer.text == REFUSAL and answer.finish_reason == "refusal" and not answer.partial
    # The record stays readable: nothing but a finish reason marks it.
    assert Chat.from_json(chat.to_json()).get_turns()[1].finish_reason == "refusal"


@dataclasses.dataclass
class Person:
    name: str
    age: int


@pytest.mark.parametrize("streamed", [False, True])
def test_chat_structured_raises_with_the_refusals_words(
    fake: FakeOpenAI, fake_url: str, streamed: bool
) -> None:
    whole = wire_completion({"role": "assistant", "content": None, "refusal": REFUSAL}, usage=USAGE)
    stream = events({"refusal": REFUSAL}, usage=USAGE)
    fake.script(Reply(raw_events=stream) if streamed else Reply(raw_body=whole))
    chat = _chat(fake_url)
    with pytest.raises(StructuredOutputError, match="refused") as info:
        chat.chat_structured("Who?", data_model=Person, echo="output" if streamed else None)
    assert REFUSAL in str(info.value) and info.value.raw == REFUSAL
    assert "not valid JSON" not in str(info.value)


def test_chat_structured_async_raises_with_the_refusals_words(
    fake: FakeOpenAI, fake_url: str
) -> None:
    whole = wire_completion({"role": "assistant", "content": None, "refusal": REFUSAL}, usage=USAGE)
    fake.script(Reply(raw_body=whole))
    with pytest.raises(StructuredOutputError, match="refused") as info:
        asyncio.run(_chat(fake_url).chat_structured_async("Who?", data_model=Person))
    assert info.value.raw == REFUSAL


# -- 19b. LiteLLM: a stream with no content and no usage -------------------------------------------


@pytest.mark.parametrize("how", ALL)
def test_an_answer_with_no_content_and_no_usage_is_an_error(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    whole = wire_completion({"role": "assistant", "content": ""})
    stream = events({"role": "assistant", "content": ""})
    fake.script(Reply(raw_body=whole) if how in WHOLE else Reply(raw_events=stream))
    chat = _chat(fake_url)
    with pytest.raises(StreamError, match="empty answer: no content and no usage") as info:
        ask(chat, how)
    assert fake_url in str(info.value)
    assert chat.get_turns() == []  # no dangling user turn


@pytest.mark.parametrize("how", ALL)
def test_an_empty_answer_the_server_counted_is_a_normal_answer(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    counted = {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}
    fake.script(Reply(text="", usage=counted))
    chat = _chat(fake_url)
    assert ask(chat, how) == ""
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"]


# -- 19c. chat_structured's json_object fallback, without waiting out retries ----------------------

#: What LiteLLM answers for json_schema in front of llama-cpp-python (its 422, passed on as a 500).
LITELLM_500 = (
    "litellm.APIError: APIError: OpenAIException - Error code: 422 - {'detail': [{'type': "
    "'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' "
    "or 'json_object'\", 'input': 'json_schema'}]}"
)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_500_refusing_json_schema_falls_back_at_once(
    fake: FakeOpenAI, fake_url: str, asynchronous: bool
) -> None:
    fake.script(Reply(status=500, error_message=LITELLM_500, headers={"Retry-After": "0"}),
                Reply(json={"name": "Ada", "age": 36}))
    chat = _chat(fake_url)
    if asynchronous:
        got = asyncio.run(chat.chat_structured_async("Who?", data_model=Person))
    else:
        got = chat.chat_structured("Who?", data_model=Person)
    assert got == Person("Ada", 36)
    kinds = [r.body["response_format"]["type"] for r in fake.chat_requests()]
    assert kinds == ["json_schema", "json_object"]


def test_a_plain_500_on_a_json_schema_request_is_still_retried(
    fake: FakeOpenAI, fake_url: str
) -> None:
    fake.script(Reply(status=500, error_message="upstream busy", headers={"Retry-After": "0"}),
                Reply(json={"name": "Ada", "age": 36}))
    assert _chat(fake_url).chat_structured("Who?", data_model=Person) == Person("Ada", 36)
    kinds = [r.body["response_format"]["type"] for r in fake.chat_requests()]
    assert kinds == ["json_schema", "json_schema"]


# -- 21. structured output cut at max_tokens -------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
def test_structured_output_cut_at_max_tokens_says_so(
    fake: FakeOpenAI, fake_url: str, streamed: bool
) -> None:
    fake.script(Reply(text='{"name": "Ad', finish_reason="length"))
    with pytest.raises(StructuredOutputError, match="cut at max_tokens") as info:
        echo = "output" if streamed else None
        _chat(fake_url).chat_structured("Who?", data_model=Person, echo=echo)
    assert info.value.raw == '{"name": "Ad'


def test_structured_output_that_parses_despite_length_is_returned(
    fake: FakeOpenAI, fake_url: str
) -> None:
    # llama.cpp under a grammar may pad a whole object with whitespace up to max_tokens.
    fake.script(Reply(text='{"name": "Ada", "age": 36}\n\n\n', finish_reason="length"))
    assert _chat(fake_url).chat_structured("Who?", data_model=Person) == Person("Ada", 36)


# -- error bodies whose error is a string; LiteLLM's usage chunk -----------------------------------


@pytest.mark.parametrize("how", ALL)
def test_an_error_body_whose_error_is_a_string_is_shown(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    fake.script(Reply(status=401, raw_body={"error": "Unauthorized"}))
    with pytest.raises(AuthenticationError, match="401 Unauthorized: Unauthorized"):
        ask(_chat(fake_url), how)


@pytest.mark.parametrize("how", STREAMED)
def test_a_mid_stream_error_that_is_a_string_is_shown(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    fake.script(Reply(raw_events=[wire_chunk({"content": "Hal"}), '{"error": "upstream died"}']))
    chat = _chat(fake_url)
    with pytest.raises(StreamError, match="upstream died"):
        ask(chat, how)
    assert chat.get_turns()[1].text == "Hal" and chat.get_turns()[1].partial


@pytest.mark.parametrize("how", STREAMED)
def test_a_usage_chunk_with_an_empty_delta_choice_is_read(
    fake: FakeOpenAI, fake_url: str, how: str
) -> None:
    stream = [wire_chunk({"role": "assistant", "content": "Hi."}), wire_chunk({}, "stop"),
              wire_chunk(choices=[{"index": 0, "delta": {}}], usage=USAGE), "[DONE]"]
    fake.script(Reply(raw_events=stream))
    chat = _chat(fake_url)
    assert ask(chat, how) == "Hi."
    answer = chat.get_turns()[1]
    assert (answer.tokens.input, answer.tokens.output) == (9, 4)  # type: ignore[union-attr]
    assert answer.finish_reason == "stop"
