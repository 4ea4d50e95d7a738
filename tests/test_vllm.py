"""Opt-in: the client against vLLM's CPU build serving the bundled gemma-3-270m.

vLLM is the distributed engine users grow into; what it sends (shared/notes/real-servers.md):
usage in streams with ``choices: []`` (as OpenAI does), ``json_schema`` strict honoured (guided
decoding), a wrong key as 401 with ``{"error": "Unauthorized"}`` (a string, not an object), an
unknown model as 404 naming the valid ones.

Opt-in because it costs what a default run should not: ``bash .ci/vllm-venv`` builds
``.venv-vllm`` once (~4 min, 4 GB on disk), and the server takes 6.4 GB of RAM and about a
minute to start. Run it with::

    bash .ci/vllm-venv
    JUPYTER_LLMCHAT_VLLM=1 .venv/bin/python -m pytest -m vllm

Without ``JUPYTER_LLMCHAT_VLLM=1`` the tier skips (even where the venv exists); with it, a
missing venv is a failure, not a skip. The model is tiny and a base model that never stops by
itself: always send max_tokens, assert protocol facts only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import traceback
from collections.abc import Iterator

import pytest

from jupyter_llmchat import (
    APIStatusError,
    AuthenticationError,
    Chat,
    chat_openai_compatible,
    params,
)
from tests.real_servers import VLLM_MODEL, VLLMServer, raw_stream, vllm_available

OPT_IN = "JUPYTER_LLMCHAT_VLLM"

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(os.environ.get(OPT_IN) != "1", reason=f"opt-in: set {OPT_IN}=1 (after bash .ci/vllm-venv)"),
    pytest.mark.timeout(600),  # the first test waits for the server: 45-70 s idle, minutes busy
]

KEY = "sk-vllm-test-SECRET-0123456789"
WRONG_KEY = "sk-wrong-SECRET-9876543210"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    why = vllm_available()
    if why:
        pytest.fail(f"{OPT_IN}=1 but {why}")
    with VLLMServer(tmp_path_factory.mktemp("vllm"), api_key=KEY) as server:
        yield server


def vllm_chat(server: VLLMServer, **kwargs: object) -> Chat:
    options = {"credentials": KEY, "model": VLLM_MODEL, **kwargs}
    return chat_openai_compatible(
        base_url=server.base_url, params=params(max_tokens=MAX_TOKENS, temperature=0),
        **options,  # type: ignore[arg-type]
    )


def test_streamed_answer_reads_usage_with_no_choices(vllm: VLLMServer) -> None:
    body = {
        "model": VLLM_MODEL, "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    with_usage = [c for c in raw_stream(vllm.base_url, KEY, body) if c.get("usage")]
    assert with_usage and with_usage[-1]["choices"] == []  # OpenAI's shape

    chat = vllm_chat(vllm)
    pieces = list(chat.stream("Name a colour."))
    reply = chat.last_turn()
    assert reply is not None and reply.text == "".join(pieces) and len(pieces) >= 2
    assert reply.finish_reason == "length" and not reply.partial  # a base model: it never stops
    assert reply.tokens is not None and reply.tokens.output == MAX_TOKENS
    assert reply.tokens.input is not None and reply.tokens.input > 3


@dataclasses.dataclass
class Verdict:
    is_blue: bool


def test_strict_json_schema_is_honoured(vllm: VLLMServer) -> None:
    # Raw: vLLM takes json_schema itself (guided decoding), no fallback needed.
    schema = {
        "type": "object", "properties": {"is_blue": {"type": "boolean"}},
        "required": ["is_blue"], "additionalProperties": False,
    }  # fmt: skip
    body = {
        "model": VLLM_MODEL, "messages": [{"role": "user", "content": "Is the sky blue?"}],
        "max_tokens": 24, "stream": True,
        "response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": schema, "strict": True}},
    }  # fmt: skip
    text = "".join(
        str(c["choices"][0]["delta"].get("content") or "")  # type: ignore[index,union-attr]
        for c in raw_stream(vllm.base_url, KEY, body) if c.get("choices")
    )
    assert isinstance(json.loads(text)["is_blue"], bool)

    chat = vllm_chat(vllm)
    result = chat.chat_structured("Is the sky blue?", data_model=Verdict, params=params(max_tokens=24))
    assert isinstance(result, Verdict) and isinstance(result.is_blue, bool)
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"]


def test_wrong_key_is_401_read_from_a_string_error(vllm: VLLMServer) -> None:
    chat = vllm_chat(vllm, credentials=WRONG_KEY)
    with pytest.raises(AuthenticationError) as info:
        chat.chat("Hello.")
    exc = info.value
    assert exc.status_code == 401
    # vLLM's body is {"error": "Unauthorized"}: its string is the server's own word, in the message.
    assert json.loads(exc.body) == {"error": "Unauthorized"}
    assert "Unauthorized" in exc.message and "credentials" in exc.hint
    shown = [str(exc), repr(exc), exc.body, "".join(traceback.format_exception(exc))]
    assert not [s for s in shown if WRONG_KEY in s or KEY in s]
    assert chat.get_turns() == []


def test_unknown_model_is_404_naming_the_valid_one(vllm: VLLMServer) -> None:
    chat = vllm_chat(vllm, model="no-such-model")
    with pytest.raises(APIStatusError) as info:
        chat.chat("Hello.")
    assert info.value.status_code == 404
    assert "no-such-model" in info.value.message and VLLM_MODEL in info.value.message
    assert chat.get_turns() == []
