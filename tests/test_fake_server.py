"""The fake OpenAI-compatible server itself, driven with plain httpx."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fake_openai import (
    FakeOpenAI,
    FakeOpenAIProcess,
    Reply,
    big_text,
    wire_chunk,
    wire_completion,
)

CHAT = "/chat/completions"


@pytest.fixture
def client(fake_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_url, timeout=10) as c:
        yield c


def ask(stream: bool = True, include_usage: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": include_usage}
    return {**body, **extra}


def events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE response, as raw strings."""
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def stream_events(client: httpx.Client, body: dict[str, Any]) -> list[str]:
    with client.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        return events(response)


def content_of(payloads: list[str], key: str = "content") -> str:
    chunks = [json.loads(p) for p in payloads if p != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks if c["choices"])


def test_models_endpoint_and_status(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.models = ["a", "b"]
    assert client.get("/models").json() == {
        "object": "list",
        "data": [
            {"id": "a", "object": "model", "created": 0, "owned_by": "fake"},
            {"id": "b", "object": "model", "created": 0, "owned_by": "fake"},
        ],
    }
    fake.models_status = 503
    response = client.get("/models")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"


def test_non_streaming_reply_and_keep_alive(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Reply(text="abcdefghij", chunk_chars=4, reasoning="hmm"))
    connects: list[str] = []

    def trace(name: str, info: dict[str, Any]) -> None:
        if name == "connection.connect_tcp.complete":
            connects.append(name)

    first = client.post(CHAT, json=ask(stream=False), extensions={"trace": trace}).json()
    second = client.post(CHAT, json=ask(stream=False), extensions={"trace": trace}).json()

    assert first["object"] == "chat.completion"
    assert first["model"] == "m1"
    assert first["choices"][0]["message"] == {
        "role": "assistant",
        "content": "abcdefghij",
        "reasoning_content": "hmm",
    }
    assert first["choices"][0]["finish_reason"] == "stop"
    assert first["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    assert second["choices"][0]["message"]["content"] == "Hello from the fake server."
    assert connects == ["connection.connect_tcp.complete"]  # one connection, kept alive
    assert len(fake.chat_requests()) == 2
    assert fake.last_body()["model"] == "m1"


def test_stream_shape_with_usage(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Reply(chunks=["Hel", "lo", "!"], reasoning="think", chunk_chars=3, model="x"))
    payloads = stream_events(client, ask())

    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {"x"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_of(payloads, "reasoning_content") == "think"
    assert content_of(payloads) == "Hello!"
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


@pytest.mark.parametrize(
    ("reply", "include_usage"),
    [(Reply(), False), (Reply(usage_in_stream=False), True), (Reply(usage=None), True)],
)
def test_stream_without_usage(
    fake: FakeOpenAI, client: httpx.Client, reply: Reply, include_usage: bool
) -> None:
    fake.script(reply)
    payloads = stream_events(client, ask(include_usage=include_usage))
    assert all("usage" not in json.loads(p) for p in payloads[:-1])
    assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "stop"


def test_chunks_arrive_as_written(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Reply(chunks=["a", "b", "c"], delay=0.15))
    arrivals = []
    start = time.monotonic()
    with client.stream("POST", CHAT, json=ask()) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 3
    assert arrivals[0] < 0.6 and arrivals[2] - arrivals[0] > 0.2


def test_cut_stream(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Reply(chunks=["a", "b", "c"], cut_after=2))
    seen: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", CHAT, json=ask()) as response:
            for line in response.iter_lines():
                seen.append(line.removeprefix("data: "))
    assert content_of([line for line in seen if line]) == "ab"
    assert "[DONE]" not in seen
    # The next request gets a fresh connection and a normal answer.
    assert content_of(stream_events(client, ask())) == "Hello from the fake server."


def test_malformed_line(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Reply(chunks=["a", "b"], malformed_at=1))
    payloads = stream_events(client, ask())
    bad = [p for p in payloads if p != "[DONE]" and not _is_json(p)]
    assert len(bad) == 1
    assert payloads.index(bad[0]) == 2  # after the role chunk and chunk "a"
    assert content_of([p for p in payloads if p not in bad]) == "ab"
    assert payloads[-1] == "[DONE]"


def test_error_event(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Reply(chunks=["a", "b"], error_event_at=1, error_message="overloaded"))
    payloads = stream_events(client, ask())
    assert json.loads(payloads[-1])["error"]["message"] == "overloaded"
    assert content_of(payloads[:-1]) == "a"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(429, "requests"), (500, "server_error"), (401, "invalid_request_error")],
)
def test_error_status(fake: FakeOpenAI, client: httpx.Client, status: int, kind: str) -> None:
    fake.script(Reply(status=status, error_message="nope", headers={"Retry-After": "0"}))
    response = client.post(CHAT, json=ask())
    assert response.status_code == status
    assert response.headers["retry-after"] == "0"
    assert response.json()["error"]["message"] == "nope"
    assert response.json()["error"]["type"] == kind


def test_require_auth_and_recorded_headers(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.require_auth = "Bearer xyz"
    fake.script(Reply(text="secret"))
    refused = client.post(CHAT, json=ask(stream=False), headers={"Authorization": "Bearer no"})
    assert refused.status_code == 401
    assert fake.pending() == 1  # a refused request does not use up the script
    ok = client.post(CHAT, json=ask(stream=False), headers={"Authorization": "Bearer xyz"})
    assert ok.json()["choices"][0]["message"]["content"] == "secret"
    assert [r.headers["authorization"] for r in fake.requests] == ["Bearer no", "Bearer xyz"]


def test_hang_times_out(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(hang=2.0))
    with httpx.Client(base_url=fake_url, timeout=0.2) as short:
        with pytest.raises(httpx.ReadTimeout):
            short.post(CHAT, json=ask())


def test_client_leaving_mid_stream_is_quiet(
    fake: FakeOpenAI, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    fake.script(Reply(text=big_text(2_000_000), chunk_chars=4))
    with client.stream("POST", CHAT, json=ask()) as response:
        next(response.iter_lines())
    assert content_of(stream_events(client, ask())) == "Hello from the fake server."
    time.sleep(0.2)  # let the abandoned handler hit the closed socket
    assert fake.errors == []
    assert capfd.readouterr().err == ""


def test_big_text_and_fast_stream(fake: FakeOpenAI, client: httpx.Client) -> None:
    text = big_text(100_000)
    assert len(text) == len(text.encode()) == 100_000
    assert big_text(100_000) == text and "```python\n" in text
    assert [len(big_text(n)) for n in (0, 1, 99, 1000)] == [0, 1, 99, 1000]

    fake.script(Reply(text=text, chunk_chars=1))
    start = time.monotonic()
    payloads = stream_events(client, ask())
    elapsed = time.monotonic() - start
    assert content_of(payloads) == text
    assert json.loads(payloads[-2])["usage"]["completion_tokens"] == 100_000
    assert elapsed < 10  # about 1 s here; per-chunk sleeps would make it far slower


def test_control_endpoints_over_subprocess() -> None:
    with FakeOpenAIProcess(chunks=5, chunk_chars=4, no_usage=True) as proc:
        with httpx.Client(base_url=proc.base_url, timeout=10) as client:
            payloads = stream_events(client, ask())
            pieces = [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads[1:-2]]
            assert [len(p) for p in pieces] == [4] * 5
            assert "usage" not in payloads[-2]

            proc.script(Reply(text="scripted"), Reply(status=503))
            assert client.post(CHAT, json=ask(stream=False)).json()["choices"][0]["message"][
                "content"
            ] == "scripted"
            assert client.post(CHAT, json=ask(stream=False)).status_code == 503
            proc.configure(models=["only"], require_auth="Bearer k")
            assert client.get("/models").status_code == 401
            assert client.get("/models", headers={"Authorization": "Bearer k"}).json()["data"][0][
                "id"
            ] == "only"

            assert [r.path for r in proc.requests] == ["/v1" + CHAT] * 3 + ["/v1/models"] * 2
            assert proc.requests[-1].headers["authorization"] == "Bearer k"
            assert proc.last_body() == ask(stream=False)

            bad = client.post(proc.root_url + "/_control/script", json=[{"txet": "typo"}])
            assert bad.status_code == 400 and "txet" in bad.json()["error"]["message"]

            proc.reset()
            assert proc.requests == []
            assert client.get("/models").json()["data"][0]["id"] == "test-model"


def test_command_line_prints_ready_first() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_openai", "--port", "0", "--delay", "0"],
        cwd=FakeOpenAIProcess.ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:") and line.rstrip().endswith("/v1")
        with httpx.Client(timeout=10) as client:
            response = client.post(line.split()[1] + CHAT, json=ask(stream=False))
        assert response.json()["choices"][0]["message"]["content"] == "Hello from the fake server."
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_raw_body_and_raw_events_are_sent_verbatim(fake: FakeOpenAI, client: httpx.Client) -> None:
    stream = [wire_chunk(choices=[], model="", prompt_filter_results=[]),
              wire_chunk({"content": "x"}), '{"error": "a string"}', "[DONE]"]
    # From JSON specs, as the subprocess gets them.
    fake.script(*(Reply.from_dict(Reply(**spec).to_dict()) for spec in (
        {"raw_body": wire_completion({"role": "assistant", "content": None, "refusal": "No."})},
        {"raw_body": "not JSON at all", "status": 502},
        {"raw_events": stream},
        {"raw_events": stream, "raw_body": {"error": "Unauthorized"}, "status": 401},
    )))
    whole = client.post(CHAT, json=ask(stream=False)).json()
    message = whole["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "refusal": "No."}
    bad = client.post(CHAT, json=ask(stream=False))
    assert (bad.status_code, bad.text) == (502, "not JSON at all")
    assert stream_events(client, ask()) == stream
    refused = client.post(CHAT, json=ask())  # raw_body wins, for streams too
    assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
