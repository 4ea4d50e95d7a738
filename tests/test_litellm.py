"""The client against the real LiteLLM proxy in front of the bundled llama.cpp server.

LiteLLM is the gateway many teams put in front of their models; what it sends differs from
what the servers behind it send (shared/notes/real-servers.md): its streamed usage chunk carries
``choices: [{"index": 0, "delta": {}}]``, a key other than its master key is refused with 400
``no_db_connection`` (it has no database), no key with 401, and ``json_schema`` answers 500
(llama-cpp-python takes only ``json_object``).

The proxy runs from ``.venv-litellm``, which ``.ci/install`` builds (``.ci/litellm-venv``): a test
server, never a runtime dependency. The tier skips only when that venv is absent (outside CI).
The model is tiny: the tests assert protocol facts, never wording, and always send max_tokens.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

import jupyter_llmchat
from jupyter_llmchat import (
    AuthenticationError,
    Chat,
    LLMChatError,
    chat_openai_compatible,
    parallel_chat_text,
    params,
)
from jupyter_llmchat import _sessions
from jupyter_llmchat._local._model import MODEL_ALIAS
from tests.real_servers import LITELLM_MODEL, LiteLLMProxy, litellm_available, raw_stream
from tests.test_magics import DEFAULTS, chat_magics, config

pytestmark = pytest.mark.litellm

WRONG_KEY = "sk-wrong-SECRET-0123456789abcdef"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    """The LiteLLM proxy (master key, no database) in front of the bundled llama.cpp server."""
    why = litellm_available()
    if why:
        if os.environ.get("CI"):  # CI's install builds it: a skip there would hide a broken install
            pytest.fail(why)
        pytest.skip(why)
    local = request.getfixturevalue("local_server")  # the bundled model, started once per session
    with LiteLLMProxy(local.base_url, MODEL_ALIAS, tmp_path_factory.mktemp("litellm")) as server:
        yield server


def proxy_chat(proxy: LiteLLMProxy, **kwargs: object) -> Chat:
    kwargs.setdefault("credentials", proxy.master_key)
    return chat_openai_compatible(
        base_url=proxy.base_url, model=LITELLM_MODEL,
        params=params(max_tokens=MAX_TOKENS, temperature=0), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def test_models_are_listed_behind_the_master_key(proxy: LiteLLMProxy) -> None:
    chat = chat_openai_compatible(base_url=proxy.base_url, credentials=proxy.master_key)
    assert chat.get_model() == LITELLM_MODEL  # the proxy's one model name, discovered


def test_streamed_answer_reads_litellm_usage_chunk(proxy: LiteLLMProxy) -> None:
    # What the proxy sends, seen raw: its usage chunk has one choice with an empty delta.
    body = {
        "model": LITELLM_MODEL, "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": MAX_TOKENS, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    with_usage = [c for c in raw_stream(proxy.base_url, proxy.master_key, body) if c.get("usage")]
    assert with_usage and with_usage[-1]["choices"] == [{"index": 0, "delta": {}}]

    chat = proxy_chat(proxy)
    pieces = list(chat.stream("Name a colour."))
    reply = chat.last_turn()
    assert reply is not None and reply.text == "".join(pieces)
    assert reply.finish_reason in ("stop", "length") and not reply.partial
    # The usage chunk's empty delta adds no text and loses no usage.
    assert reply.tokens is not None
    assert reply.tokens.input and reply.tokens.input > 0
    assert reply.tokens.output is not None and 0 < reply.tokens.output <= MAX_TOKENS
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"]


def test_whole_answer_records_usage(proxy: LiteLLMProxy) -> None:
    chat = proxy_chat(proxy)
    text = chat.chat("Count from one to twenty, in words.", params=params(max_tokens=3))
    reply = chat.last_turn()
    assert reply is not None and reply.text == text
    assert reply.finish_reason == "length"
    assert reply.tokens is not None and reply.tokens.output == 3
    assert reply.tokens.input is not None and reply.tokens.input > 3


def _wrong_key_error(proxy: LiteLLMProxy) -> tuple[LLMChatError, Chat]:
    chat = proxy_chat(proxy, credentials=WRONG_KEY)
    with pytest.raises(LLMChatError) as info:
        chat.chat("Hello.")
    return info.value, chat


def test_wrong_key_is_an_error_without_the_key(proxy: LiteLLMProxy) -> None:
    exc, chat = _wrong_key_error(proxy)
    # LiteLLM without a database cannot check keys other than its master key: 400, not 401.
    assert getattr(exc, "status_code", None) == 400
    assert "no_db_connection" in getattr(exc, "body", "")
    shown = [str(exc), repr(exc), exc.message, exc.hint, getattr(exc, "body", ""),
             "".join(traceback.format_exception(exc))]  # fmt: skip
    assert not [s for s in shown if WRONG_KEY in s or WRONG_KEY[8:] in s]
    assert chat.get_turns() == []  # a failed request leaves no dangling user turn


def test_wrong_key_hint_points_at_credentials(proxy: LiteLLMProxy) -> None:
    exc, _ = _wrong_key_error(proxy)
    assert "credentials" in exc.hint.lower()


def test_no_key_is_401_with_a_credentials_hint(proxy: LiteLLMProxy) -> None:
    chat = proxy_chat(proxy, credentials=None)  # and no $OPENAI_API_KEY (conftest removes it)
    with pytest.raises(AuthenticationError) as info:
        chat.chat("Hello.")
    assert info.value.status_code == 401
    assert "credentials" in info.value.hint.lower()
    assert chat.get_turns() == []


@dataclasses.dataclass
class Verdict:
    # A boolean: the grammar closes the object after a few tokens (a string field lets the tiny
    # model run to max_tokens inside the string).
    is_blue: bool


def test_structured_output_falls_back_from_json_schema(proxy: LiteLLMProxy) -> None:
    # The proxy answers json_schema with 500; the chat asks again in json_object's form, which
    # llama-cpp-python turns into a grammar, so the answer is valid JSON of the schema.
    chat = proxy_chat(proxy)
    result = chat.chat_structured("Is the sky blue?", data_model=Verdict, params=params(max_tokens=24))
    assert isinstance(result, Verdict) and isinstance(result.is_blue, bool)
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"]


@pytest.fixture
def ip(_ip: InteractiveShell, proxy: LiteLLMProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """The shell, no sessions, its settings pointed at the proxy with %config as a user would;
    the settings put back afterwards (%config persists in the shell's config)."""
    magics = chat_magics(_ip)
    before = {name: getattr(magics, name) for name in ("base_url", *DEFAULTS)}
    monkeypatch.setenv("LITELLM_TEST_KEY", proxy.master_key)
    _sessions.registry.sessions.clear()
    config(_ip, **dict(DEFAULTS, model=LITELLM_MODEL))
    config(_ip, base_url=proxy.base_url, credentials_env="LITELLM_TEST_KEY",
           params={"max_tokens": MAX_TOKENS, "temperature": 0})  # fmt: skip
    _sessions.set_factory(magics._make_session, magics._refresh_from_config)
    yield _ip
    _sessions.registry.sessions.clear()
    config(_ip, **before)


def test_chat_cell_against_the_proxy(
    ip: InteractiveShell, proxy: LiteLLMProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    result = ip.run_cell("%%chat\nName a colour.\n", store_history=False)
    assert result.success
    out, err = capsys.readouterr()
    assert proxy.master_key not in out + err
    chat = jupyter_llmchat.session()
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"]
    asked, reply = chat.get_turns()
    # The cell asked for the proxy's name; the answer names the upstream's model (LiteLLM's way).
    assert asked.model == LITELLM_MODEL and reply.model
    assert reply.finish_reason in ("stop", "length")
    assert reply.text in out  # streamed to the terminal as it arrived
    assert reply.tokens is not None and reply.tokens.output is not None
    assert proxy.master_key not in chat.to_json()


def test_parallel_chat_text_through_the_proxy(proxy: LiteLLMProxy) -> None:
    chat = proxy_chat(proxy)
    prompts = ["Name a colour.", "Name a fruit.", "Name a city."]
    answers = parallel_chat_text(chat, prompts, max_active=2)
    assert len(answers) == 3 and not answers.errors
    assert all(isinstance(a, str) for a in answers)
    assert chat.get_turns() == []  # the chat given is left untouched

