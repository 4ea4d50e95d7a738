"""The request a Chat sends: params, api_args, headers, credentials, model discovery, history.

Real HTTP against the fake server; assertions are on the recorded requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter_llmchat import (
    Chat,
    ConfigurationError,
    ContentText,
    Tokens,
    Turn,
    chat_openai_compatible,
    params,
)
from jupyter_llmchat._core._provider import deep_merge
from tests.helpers import last, new_chat
from tests.fake_openai import PROMPT_TOKENS, FakeOpenAI, Reply

REPO = Path(__file__).resolve().parent.parent



# -- params() ---------------------------------------------------------------------------------


def test_params_drops_none_and_keeps_ellmer_names() -> None:
    assert params() == {}
    assert params(temperature=0, max_tokens=5, seed=None) == {"temperature": 0, "max_tokens": 5}
    tup = ("a", "b")  # a tuple is accepted and sent as a list
    assert params(stop_sequences=tup) == {"stop_sequences": ["a", "b"]}  # type: ignore[arg-type]


def test_params_go_out_under_their_wire_names(fake: FakeOpenAI, fake_url: str) -> None:
    p = params(
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        frequency_penalty=0.1,
        presence_penalty=-0.2,
        seed=7,
        max_tokens=64,
        log_probs=True,
        stop_sequences=["END"],
        reasoning_effort="low",
        min_p=0.05,  # **extra passes through as given
        repeat_penalty=1.1,
    )
    new_chat(fake_url, params=p).chat("hi")
    body = fake.last_body()
    assert {k: body[k] for k in body if k not in ("model", "messages", "stream")} == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "frequency_penalty": 0.1,
        "presence_penalty": -0.2,
        "seed": 7,
        "max_tokens": 64,
        "logprobs": True,
        "stop": ["END"],
        "reasoning_effort": "low",
        "min_p": 0.05,
        "repeat_penalty": 1.1,
    }
    assert "stop_sequences" not in body and "log_probs" not in body


def test_params_unset_values_are_not_sent(fake: FakeOpenAI, fake_url: str) -> None:
    new_chat(fake_url, params=params(temperature=None, max_tokens=3)).chat("hi")
    body = fake.last_body()
    assert body["max_tokens"] == 3
    assert "temperature" not in body


@pytest.mark.parametrize(
    "typo, meant", [("temprature", "temperature"), ("max_token", "max_tokens")]
)
def test_params_misspelt_name_is_refused_with_a_hint(typo: str, meant: str) -> None:
    with pytest.raises(ConfigurationError, match=f"did you mean '{meant}'") as info:
        params(**{typo: 0.3})  # type: ignore[arg-type]
    assert typo in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 5},
        {"temperature": -0.1},
        {"temperature": "hot"},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"max_tokens": 2.5},
        {"max_tokens": True},
        {"top_k": -1},
        {"seed": "x"},
        {"log_probs": 1},
        {"stop_sequences": "END"},
        {"reasoning_effort": 3},
    ],
)
def test_params_bad_values_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="is not valid"):
        params(**bad)


def test_params_must_be_a_mapping(fake_url: str) -> None:
    with pytest.raises(ConfigurationError, match="params"):
        new_chat(fake_url, params=[("temperature", 0)])


def test_per_call_params_override_the_chat_params(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url, params=params(temperature=0.7, max_tokens=10))
    chat.chat("one", params=params(temperature=0))
    body = fake.last_body()
    assert body["temperature"] == 0 and body["max_tokens"] == 10
    # Only that call: the next one is back to the chat's own params.
    chat.chat("two")
    assert fake.last_body()["temperature"] == 0.7
    # A None in a per-call dict unsets the chat's value for that call.
    chat.chat("three", params={"max_tokens": None})
    assert "max_tokens" not in fake.last_body()


def test_per_call_model_overrides_the_chat_model(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.chat("hi", model="other-model")
    assert fake.last_body()["model"] == "other-model"
    assert last(chat).model == "other-model"
    chat.chat("again")
    assert fake.last_body()["model"] == "test-model"


def test_set_model_changes_the_model_of_the_next_requests(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    heard: list[str] = []
    chat.add_listener(lambda c, event, exchange: heard.append(event))
    chat.set_model("  other-model ")
    assert chat.get_model() == "other-model" and heard == ["model"]
    chat.chat("hi")
    assert fake.last_body()["model"] == "other-model"
    assert last(chat).model == "other-model"
    chat.set_model("other-model")  # no change: nothing to hear
    assert heard == ["model", "start", "turn"]
    for bad in ("", "   ", None, 3):
        with pytest.raises(ConfigurationError, match="set_model\\(\\) takes a model's name"):
            chat.set_model(bad)  # type: ignore[arg-type]
    assert chat.get_model() == "other-model" and heard == ["model", "start", "turn"]


# -- api_args and api_headers -----------------------------------------------------------------


def test_deep_merge_merges_nested_dicts_and_deletes_on_none() -> None:
    base = {"a": 1, "n": {"x": 1, "y": 2}, "gone": 3}
    out = deep_merge(base, {"n": {"y": None, "z": 3}, "gone": None, "new": {"k": {"v": 1}}})
    assert out == {"a": 1, "n": {"x": 1, "z": 3}, "new": {"k": {"v": 1}}}
    assert base == {"a": 1, "n": {"x": 1, "y": 2}, "gone": 3}  # not mutated


def test_api_args_are_deep_merged_into_the_body(fake: FakeOpenAI, fake_url: str) -> None:
    api_args = {
        "stream_options": {"extra_flag": True},
        "response_format": {"type": "json_object"},
        "temperature": 0.0,
    }
    chat = new_chat(fake_url, params=params(temperature=1.0, max_tokens=8), api_args=api_args)
    list(chat.stream("hi"))
    body = fake.last_body()
    assert body["stream_options"] == {"include_usage": True, "extra_flag": True}
    assert body["response_format"] == {"type": "json_object"}
    assert body["temperature"] == 0.0  # api_args is applied last
    assert body["max_tokens"] == 8
    assert api_args["stream_options"] == {"extra_flag": True}  # the caller's dict is untouched


def test_api_args_none_deletes_a_key(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url, api_args={"stream_options": None})
    assert "".join(chat.stream("hi")) == "Hello from the fake server."
    body = fake.last_body()
    assert body["stream"] is True
    assert "stream_options" not in body
    # The server then sends no usage: unknown, not zero.
    assert last(chat).tokens == Tokens(None, None, None)


def test_api_args_must_be_a_dict(fake_url: str) -> None:
    with pytest.raises(ConfigurationError, match="api_args"):
        new_chat(fake_url, api_args=["x"])


def test_default_headers(fake: FakeOpenAI, fake_url: str) -> None:
    list(new_chat(fake_url).stream("hi"))
    headers = fake.chat_requests()[-1].headers
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "text/event-stream"
    assert "authorization" not in headers


def test_api_headers_are_sent_and_override_defaults(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(
        fake_url,
        credentials="from-credentials",
        api_headers={"X-Title": "tests", "Accept": "application/x-ndjson, text/event-stream"},
    )
    list(chat.stream("hi"))
    headers = fake.chat_requests()[-1].headers
    assert headers["x-title"] == "tests"
    assert headers["accept"] == "application/x-ndjson, text/event-stream"
    assert headers["authorization"] == "Bearer from-credentials"


def test_api_headers_override_whatever_the_case(fake: FakeOpenAI, fake_url: str) -> None:
    """Header names are case-insensitive: an override must replace, never duplicate."""
    fake.require_auth = "Bearer from-api-headers"
    chat = new_chat(
        fake_url,
        credentials="from-credentials",
        api_headers={"authorization": "Bearer from-api-headers", "accept": "text/event-stream"},
    )
    assert chat.chat("hi") == "Hello from the fake server."
    list(chat.stream("hi"))
    raw = fake.chat_requests()[-1]
    assert raw.headers["authorization"] == "Bearer from-api-headers"


# -- credentials ------------------------------------------------------------------------------


def test_credentials_str_is_a_bearer_token(fake: FakeOpenAI, fake_url: str) -> None:
    fake.require_auth = "Bearer k-123"
    chat = new_chat(fake_url, credentials="k-123")
    assert chat.chat("hi") == "Hello from the fake server."
    assert fake.chat_requests()[-1].headers["authorization"] == "Bearer k-123"


def test_credentials_callable_is_called_once_per_request(fake: FakeOpenAI, fake_url: str) -> None:
    calls = 0

    def rotating() -> str:
        nonlocal calls
        calls += 1
        return f"token-{calls}"

    chat = new_chat(fake_url, credentials=rotating)
    assert calls == 0  # not at construction
    chat.chat("one")
    list(chat.stream("two"))
    chat.chat("three")
    assert calls == 3
    sent = [r.headers["authorization"] for r in fake.chat_requests()]
    assert sent == ["Bearer token-1", "Bearer token-2", "Bearer token-3"]


def test_credentials_callable_may_return_headers(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url, credentials=lambda: {"api-key": "azure-style", "X-Org": "o1"})
    chat.chat("hi")
    headers = fake.chat_requests()[-1].headers
    assert headers["api-key"] == "azure-style"
    assert headers["x-org"] == "o1"
    assert "authorization" not in headers


def test_credentials_callable_returning_none_sends_no_auth(fake: FakeOpenAI, fake_url: str) -> None:
    new_chat(fake_url, credentials=lambda: None).chat("hi")
    assert "authorization" not in fake.chat_requests()[-1].headers


def test_credentials_callable_returning_junk_is_refused(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url, credentials=lambda: 42)
    with pytest.raises(ConfigurationError, match="credentials"):
        chat.chat("hi")
    assert fake.chat_requests() == []
    assert chat.get_turns() == []


def test_credentials_of_a_wrong_type_are_refused(fake_url: str) -> None:
    with pytest.raises(ConfigurationError, match="credentials"):
        new_chat(fake_url, credentials=42)


def test_credentials_none_reads_openai_api_key_per_request(
    fake: FakeOpenAI, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = new_chat(fake_url)
    monkeypatch.setenv("OPENAI_API_KEY", "env-key-1")
    chat.chat("hi")
    monkeypatch.setenv("OPENAI_API_KEY", "env-key-2")
    chat.chat("hi")
    sent = [r.headers["authorization"] for r in fake.chat_requests()]
    assert sent == ["Bearer env-key-1", "Bearer env-key-2"]


def test_credentials_none_without_env_sends_no_auth_header(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    chat.chat("hi")
    list(chat.stream("again"))
    assert all("authorization" not in r.headers for r in fake.chat_requests())


def test_api_key_is_deprecated_at_the_callers_line(fake: FakeOpenAI, fake_url: str) -> None:
    fake.require_auth = "Bearer old-style-key"
    with pytest.warns(DeprecationWarning, match="credentials=") as record:
        chat = chat_openai_compatible(fake_url, model="test-model", api_key="old-style-key")
    assert len(record) == 1
    # The warning points at the user's line (this file), not into the package.
    assert record[0].filename == __file__
    assert chat.chat("hi") == "Hello from the fake server."


def test_api_key_warning_points_at_the_caller_of_a_preset(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat import chat_vllm

    with pytest.warns(DeprecationWarning) as record:
        chat = chat_vllm(base_url=fake_url, api_key="vllm-key", model="m")
    assert record[0].filename == __file__
    chat.chat("hi")
    assert fake.chat_requests()[-1].headers["authorization"] == "Bearer vllm-key"


# -- model discovery --------------------------------------------------------------------------


def test_model_none_uses_the_only_model_offered(fake: FakeOpenAI, fake_url: str) -> None:
    fake.models = ["only-model"]
    chat = chat_openai_compatible(fake_url, credentials="k")
    assert chat.chat("hi") == "Hello from the fake server."
    gets = [r for r in fake.requests if r.method == "GET"]
    assert len(gets) == 1 and gets[0].path == "/v1/models"
    assert gets[0].headers["authorization"] == "Bearer k"
    assert fake.last_body()["model"] == "only-model"
    assert chat.get_model() == "only-model"
    chat.chat("again")  # asked once, then remembered
    assert len([r for r in fake.requests if r.method == "GET"]) == 1


def test_model_none_with_several_models_lists_them(fake: FakeOpenAI, fake_url: str) -> None:
    fake.models = ["alpha-1", "beta-2", "gamma-3"]
    chat = chat_openai_compatible(fake_url)
    with pytest.raises(ConfigurationError) as info:
        chat.chat("hi")
    msg = str(info.value)
    assert "alpha-1" in msg and "beta-2" in msg and "gamma-3" in msg
    assert "3 models" in msg and "model=" in msg
    assert fake.chat_requests() == []
    assert chat.get_turns() == []


def test_model_none_with_no_models_is_a_clear_error(fake: FakeOpenAI, fake_url: str) -> None:
    fake.models = []
    with pytest.raises(ConfigurationError, match="0 models"):
        chat_openai_compatible(fake_url).get_model()


def test_model_none_with_a_broken_models_endpoint(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat import APIStatusError

    fake.models_status = 404
    with pytest.raises(APIStatusError) as info:
        chat_openai_compatible(fake_url).chat("hi")
    assert info.value.status_code == 404
    assert "/v1/models" in str(info.value)


@pytest.mark.parametrize("url", ["", "   ", "127.0.0.1:8080/v1", "ftp://host/v1"])
def test_base_url_must_be_http(url: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        chat_openai_compatible(url, model="m")


def test_base_url_trailing_slash(fake: FakeOpenAI, fake_url: str) -> None:
    new_chat(fake_url + "/").chat("hi")
    assert fake.chat_requests()[-1].path == "/v1/chat/completions"


# -- history ----------------------------------------------------------------------------------


def test_second_request_carries_the_first_exchange(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="First answer."), Reply(text="Second answer."))
    chat = new_chat(fake_url, system_prompt="Be brief.")
    assert chat.chat("First question") == "First answer."
    assert fake.last_body()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question"},
    ]
    assert chat.chat("Second question") == "Second answer."
    assert fake.last_body()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question"},
    ]
    turns = chat.get_turns()
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"]
    assert [t.text for t in turns] == [
        "First question", "First answer.", "Second question", "Second answer.",
    ]


def test_history_false_sends_the_message_alone_and_records_nothing(
    fake: FakeOpenAI, fake_url: str
) -> None:
    chat = new_chat(fake_url)
    chat.chat("kept")
    chat.chat("alone", history=False)
    assert fake.last_body()["messages"] == [{"role": "user", "content": "alone"}]
    assert [t.text for t in chat.get_turns()] == ["kept", "Hello from the fake server."]


def test_empty_prompt_is_refused_before_any_request(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    for args in ((), ("",), ("  \n",)):
        with pytest.raises(ConfigurationError):
            chat.chat(*args)
    assert fake.requests == []


def test_set_turns_validates_alternation(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    good = [Turn.user("q"), Turn("assistant", [ContentText("a")])]
    chat.set_turns(good)
    assert [t.text for t in chat.get_turns()] == ["q", "a"]
    for bad in (
        [Turn("assistant", [ContentText("a")])],
        [Turn.user("q"), Turn.user("q2")],
        [*good, Turn("assistant", [ContentText("b")])],
        [Turn.user("q"), "not a turn"],
    ):
        with pytest.raises(ConfigurationError):
            chat.set_turns(bad)  # type: ignore[arg-type]
    assert [t.text for t in chat.get_turns()] == ["q", "a"]  # unchanged by the refusals
    chat.chat("next")
    assert fake.last_body()["messages"][:2] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_set_turns_with_a_leading_system_turn_sets_the_prompt(
    fake: FakeOpenAI, fake_url: str
) -> None:
    chat = new_chat(fake_url)
    chat.set_turns([Turn("system", [ContentText("You are terse.")]), Turn.user("q"),
                    Turn("assistant", [ContentText("a")])])
    assert chat.system_prompt == "You are terse."
    assert len(chat.get_turns()) == 2
    chat.chat("x")
    assert fake.last_body()["messages"][0] == {"role": "system", "content": "You are terse."}


def test_get_turns_and_last_turn(fake_url: str) -> None:
    chat = new_chat(fake_url, system_prompt="sys")
    assert chat.last_turn() is None
    chat.chat("question")
    turns = chat.get_turns(include_system_prompt=True)
    assert [t.role for t in turns] == ["system", "user", "assistant"]
    assert turns[0].text == "sys"
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"]
    assert last(chat).role == "assistant"
    assert last(chat).text == "Hello from the fake server."
    assert [t.text for t in (chat.last_turn("user"), chat.last_turn("system")) if t] == [
        "question", "sys",
    ]
    # get_turns() is a copy: changing it does not change the chat.
    chat.get_turns().clear()
    assert len(chat.get_turns()) == 2


def test_system_prompt_setter(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url)
    assert chat.system_prompt is None
    chat.chat("one")
    assert fake.last_body()["messages"][0]["role"] == "user"
    chat.system_prompt = "Answer in French."
    chat.chat("two")
    assert fake.last_body()["messages"][0] == {"role": "system", "content": "Answer in French."}
    chat.system_prompt = ""
    assert chat.system_prompt is None
    chat.chat("three")
    assert all(m["role"] != "system" for m in fake.last_body()["messages"])
    with pytest.raises(ConfigurationError):
        chat.system_prompt = 3


def test_get_tokens_rows_and_get_cost_last(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="12345678abc"), Reply(text="x", usage=None))
    chat = new_chat(fake_url)
    chat.chat("one")
    chat.chat("two")
    rows = chat.get_tokens()
    assert rows == [
        {"turn": 1, "model": "test-model", "input": PROMPT_TOKENS, "output": 2, "cached": None,
         "cost": None, "partial": False},
        {"turn": 3, "model": "test-model", "input": None, "output": None, "cached": None,
         "cost": None, "partial": False},
    ]
    assert chat.get_cost() is None
    assert chat.get_cost("last") is None
    with pytest.raises(ConfigurationError):
        chat.get_cost("first")  # type: ignore[arg-type]


def test_cached_tokens_are_read(fake: FakeOpenAI, fake_url: str) -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
             "prompt_tokens_details": {"cached_tokens": 64}}
    fake.script(Reply(usage=usage), Reply(usage=usage))
    chat = new_chat(fake_url)
    chat.chat("hi")
    assert last(chat).tokens == Tokens(100, 5, 64)
    list(chat.stream("hi"))
    assert last(chat).tokens == Tokens(100, 5, 64)


def test_reset_forgets_turns_but_keeps_the_system_prompt(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url, system_prompt="sys")
    chat.chat("one")
    chat.reset()
    assert chat.get_turns() == []
    chat.chat("two")
    assert fake.last_body()["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "two"},
    ]


# -- persistence and copies ---------------------------------------------------------------------


def test_to_json_from_json_round_trip(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="Answer one", reasoning="hmm"), Reply(text="Answer two"))
    chat = new_chat(fake_url, name="RoundTrip", system_prompt="sys", params=params(temperature=0.3),
                    credentials="secret-credential-value")
    list(chat.stream("one"))
    chat.chat("two")
    data = chat.to_json()
    state = json.loads(data)
    assert state["version"] == 1
    assert state["provider"] == {"name": "RoundTrip", "base_url": fake_url, "model": "test-model"}

    back = Chat.from_json(data, credentials="secret-credential-value")
    assert back.system_prompt == "sys"
    assert back.get_model() == "test-model"
    assert back.provider.name == "RoundTrip"
    assert back.provider.params == {"temperature": 0.3}
    old, new = chat.get_turns(), back.get_turns()
    assert [t.role for t in new] == [t.role for t in old]
    assert [t.contents for t in new] == [t.contents for t in old]
    assert [t.tokens for t in new] == [t.tokens for t in old]
    assert [t.finish_reason for t in new] == [t.finish_reason for t in old]
    assert [t.started_at for t in new] == [t.started_at for t in old]
    assert new[1].thinking == "hmm" and new[1].text == "Answer one"
    assert back.get_tokens() == chat.get_tokens()
    assert back.to_json() == data

    # The restored chat goes on where the first one stopped, with the same history on the wire.
    back.chat("three")
    assert [m["content"] for m in fake.last_body()["messages"]] == [
        "sys", "one", "Answer one", "two", "Answer two", "three",
    ]
    assert fake.last_body()["temperature"] == 0.3
    assert fake.chat_requests()[-1].headers["authorization"] == "Bearer secret-credential-value"


def test_from_json_rejects_a_malformed_record(fake_url: str) -> None:
    state = json.loads(new_chat(fake_url).to_json())
    state["turns"] = [{"role": "user", "contents": [{"type": "text", "text": "q"}]},
                      {"role": "assistant", "contents": "oops"}]
    with pytest.raises(ValueError):
        Chat.from_json(state)


def test_copy_is_independent(fake: FakeOpenAI, fake_url: str) -> None:
    chat = new_chat(fake_url, system_prompt="sys", params=params(temperature=0.1),
                    api_args={"extra": {"k": 1}})
    chat.chat("shared")
    twin = chat.copy()
    assert [t.text for t in twin.get_turns()] == [t.text for t in chat.get_turns()]

    twin.chat("only in the copy")
    twin.system_prompt = "other"
    twin.provider.params["temperature"] = 1.5
    twin.provider.api_args["extra"]["k"] = 2
    twin.get_turns()[0].meta["cell_id"] = "copy-cell"
    assert len(twin.get_turns()) == 4
    assert len(chat.get_turns()) == 2
    assert chat.system_prompt == "sys"
    assert chat.get_turns()[0].meta == {}

    chat.chat("only in the original")
    body = fake.last_body()
    assert body["temperature"] == 0.1
    assert body["extra"] == {"k": 1}
    assert [m["content"] for m in body["messages"]] == [
        "sys", "shared", "Hello from the fake server.", "only in the original",
    ]


def test_repr(fake_url: str) -> None:
    chat = new_chat(fake_url, name="Reprs")
    chat.chat("hi")
    r = repr(chat)
    assert "Reprs" in r and "test-model" in r and "turns=2" in r and "cost=n/a" in r
    assert fake_url in r


# -- the core stays free of Jupyter --------------------------------------------------------------


def test_core_imports_no_jupyter_modules() -> None:
    code = (
        "import sys, json\n"
        "import jupyter_llmchat as j\n"
        "c = j.chat_openai_compatible('http://127.0.0.1:1/v1', model='m')\n"
        "j.params(temperature=0); j.token_usage(); c.to_json(); repr(c)\n"
        "from jupyter_llmchat import Turn, Tokens, LLMChatError, chat_ollama, chat_openai\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('IPython', 'traitlets', 'ipywidgets', 'ipykernel', 'comm'))))\n"
    )
    assert _printed_json(code) == []


def test_load_ext_defers_the_http_stack_to_the_first_request() -> None:
    """httpx (and the `rich` its CLI pulls in) costs ~150 ms of imports: %load_ext, creating a
    session and a Chat import none of it; the first request does."""
    code = (
        "import sys, json\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "shell.run_line_magic('load_ext', 'jupyter_llmchat')\n"
        "import jupyter_llmchat as j\n"
        "c = j.chat_openai_compatible('http://127.0.0.1:1/v1', model='m')\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('httpx', 'httpx_sse', 'rich'))\n"
        "try:\n"
        "    c.chat('hi', echo='none')\n"
        "except j.LLMChatError:\n"
        "    pass\n"
        "print(json.dumps([before, 'httpx' in sys.modules]))\n"
    )
    assert _printed_json(code) == [[], True]


def _printed_json(code: str) -> Any:
    """What ``code`` prints as JSON, run in a fresh interpreter (so sys.modules starts empty)."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(out.stdout)


# -- presets: the same class with a base_url, a key variable and quirks --------------------------


def test_preset_drops_params_its_api_refuses(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat import chat_openai

    chat = chat_openai(base_url=fake_url, model="gpt-4o-mini", credentials="k",
                       params=params(top_k=5, temperature=0))
    chat.chat("hi")
    body = fake.last_body()
    assert "top_k" not in body and body["temperature"] == 0
    assert chat.provider.name == "OpenAI"


def test_preset_reads_its_own_key_variable(
    fake: FakeOpenAI, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_llmchat import chat_groq, chat_ollama

    monkeypatch.setenv("OPENAI_API_KEY", "openai-key")
    monkeypatch.setenv("GROQ_API_KEY", "groq-key")
    chat_groq(base_url=fake_url, model="m").chat("hi")
    assert fake.chat_requests()[-1].headers["authorization"] == "Bearer groq-key"
    chat_ollama(base_url=fake_url, model="m").chat("hi")  # a local server: no key at all
    assert "authorization" not in fake.chat_requests()[-1].headers


def test_preset_base_url_from_its_env_variable(
    fake: FakeOpenAI, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_llmchat import chat_ollama

    monkeypatch.setenv("OLLAMA_BASE_URL", fake_url)
    chat = chat_ollama(model="llama3")
    assert chat.chat("hi") == "Hello from the fake server."
    assert fake.last_body()["model"] == "llama3"
    assert chat.provider.name == "Ollama"
