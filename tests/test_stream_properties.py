"""Property: however the network splits an SSE stream, the answer decodes the same.

A stream is cut at random byte boundaries (inside multi-byte UTF-8 characters, inside ``\\r\\n``,
inside ``data:``) and served by ``httpx.MockTransport`` as those pieces; the recorded turn must
have the same text, thinking, finish_reason and usage as the whole stream gives. Then the same
through the real fake server writing a few bytes at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_llmchat import Chat, Tokens
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import last, new_chat

#: Letters whose UTF-8 forms are 1, 2, 3 and 4 bytes long, plus characters that matter to SSE.
ALPHABET = st.sampled_from(list("ab é日本🙂\\\"\n\r:{}") + ["data: ", "\r\n", "[DONE]"])
PIECE = st.lists(ALPHABET, min_size=1, max_size=6).map("".join)


def sse_body(
    pieces: list[str], thinking: list[str], finish: str, usage: dict[str, int] | None, end: str
) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "model": "test-model"}

    def event(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}{end}{end}"

    def delta(d: dict[str, Any], finish_reason: str | None = None) -> str:
        return event({**base, "choices": [{"index": 0, "delta": d, "finish_reason": finish_reason}]})

    out = [delta({"role": "assistant", "content": ""})]
    out += [delta({"reasoning_content": t}) for t in thinking]
    out += [delta({"content": p}) for p in pieces]
    out.append(delta({}, finish))
    if usage is not None:
        out.append(event({**base, "choices": [], "usage": usage}))
    out.append(f"data: [DONE]{end}{end}")
    return "".join(out).encode()


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(body), *(c for c in cuts if 0 < c < len(body))})
    return [body[a:b] for a, b in zip(points, points[1:])]


def chat_over(parts: list[bytes]) -> Chat:
    def handler(request: httpx.Request) -> httpx.Response:
        def stream() -> Iterator[bytes]:
            yield from parts

        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream())

    chat = new_chat("http://127.0.0.1:9/v1")
    # The decoding under test is the client's own; only the network is replaced.
    chat.provider._client = httpx.Client(transport=httpx.MockTransport(handler))
    return chat


def outcome(chat: Chat) -> tuple[str, str, str | None, Tokens | None, bool]:
    turn = last(chat)
    return turn.text, turn.thinking, turn.finish_reason, turn.tokens, turn.partial


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(PIECE, min_size=1, max_size=6),
    thinking=st.lists(PIECE, max_size=3),
    finish=st.sampled_from(["stop", "length"]),
    usage=st.one_of(st.none(), st.builds(
        lambda p, c: {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        st.integers(0, 10_000), st.integers(0, 10_000),
    )),
    end=st.sampled_from(["\n", "\r\n", "\r"]),
    data=st.data(),
)
def test_any_split_decodes_the_same(
    pieces: list[str], thinking: list[str], finish: str, usage: dict[str, int] | None, end: str,
    data: st.DataObject,
) -> None:
    body = sse_body(pieces, thinking, finish, usage, end)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=40), label="cuts")
    whole, parts = chat_over([body]), chat_over(split(body, cuts))
    assert whole.chat("q", stream=True) == "".join(pieces)
    assert parts.chat("q", stream=True) == "".join(pieces)
    assert outcome(parts) == outcome(whole)
    text, think, got_finish, tokens, partial = outcome(parts)
    assert (think, got_finish, partial) == ("".join(thinking), finish, False)
    expected = Tokens() if usage is None else Tokens(usage["prompt_tokens"], usage["completion_tokens"])
    assert tokens == expected


@given(body_cuts=st.lists(st.integers(0, 400), max_size=30))
@settings(max_examples=100, deadline=None)
def test_byte_at_a_time_and_random_cuts_of_one_known_stream(body_cuts: list[int]) -> None:
    body = sse_body(["Grüße ", "aus ", "東京 🙂"], ["hm…"], "stop",
                    {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, "\r\n")
    for parts in (split(body, body_cuts), [body[i : i + 1] for i in range(len(body))]):
        chat = chat_over(parts)
        assert chat.chat("q", stream=True) == "Grüße aus 東京 🙂"
        assert outcome(chat) == ("Grüße aus 東京 🙂", "hm…", "stop", Tokens(3, 4), False)


@pytest.mark.parametrize("write_bytes", [1, 2, 3, 5])
@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_real_server_writing_a_few_bytes_at_a_time(
    fake: FakeOpenAI, fake_url: str, write_bytes: int, end: str
) -> None:
    text = "Grüße aus 東京 🙂, «ok»\nnew line"
    fake.script(Reply(text=text, chunk_chars=3, reasoning="思考 first", write_bytes=write_bytes, line_end=end))
    chat = new_chat(fake_url)
    assert "".join(chat.stream("q")) == text
    turn = last(chat)
    assert (turn.thinking, turn.finish_reason, turn.partial) == ("思考 first", "stop", False)
    assert turn.tokens == Tokens(11, len(Reply(text=text, chunk_chars=3).pieces()), None)


@pytest.mark.parametrize("end", ["\r\n", "\r"])
async def test_real_server_few_bytes_at_a_time_async(fake: FakeOpenAI, fake_url: str, end: str) -> None:
    text = "Grüße aus 東京 🙂"
    fake.script(Reply(text=text, chunk_chars=2, reasoning="思考", write_bytes=1, line_end=end))
    chat = new_chat(fake_url)
    assert "".join([c async for c in chat.stream_async("q")]) == text
    turn = last(chat)
    assert (turn.thinking, turn.finish_reason, turn.partial) == ("思考", "stop", False)
