"""Structured output: ``chat_structured(..., data_model=T)`` on the wire, and against the real
llama.cpp server, which turns the schema into a grammar."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Literal, Optional

import pydantic
import pytest

from jupyter_llmchat import (
    ConfigurationError,
    LLMChatError,
    StructuredOutputError,
    chat_openai_compatible,
    params,
)
from tests.fake_openai import FakeOpenAI, Reply
from tests.helpers import new_chat

if sys.version_info >= (3, 11):
    from typing import TypedDict
else:  # pragma: no cover
    from typing_extensions import TypedDict


@dataclasses.dataclass
class Person:
    """A person mentioned in the text."""

    name: str
    age: int
    role: Literal["author", "reader"] = "reader"
    nickname: Optional[str] = None


class PersonModel(pydantic.BaseModel):
    name: str
    age: int


class PersonDict(TypedDict):
    name: str
    age: int


PERSON_SCHEMA = {
    "type": "object",
    "title": "person",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}

ADA = {"name": "Ada", "age": 36}


def test_dataclass_schema_on_the_wire_and_instance_back(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(json={**ADA, "role": "author"}))
    chat = new_chat(fake_url)
    person = chat.chat_structured("Ada, 36, wrote it.", data_model=Person)
    assert person == Person("Ada", 36, "author")
    fmt = fake.last_body()["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Person" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"name", "age", "role", "nickname"}
    assert schema["properties"]["role"] == {"type": "string", "enum": ["author", "reader"]}
    assert schema["properties"]["nickname"] == {"type": ["string", "null"]}
    assert schema["description"] == "A person mentioned in the text."
    # The exchange is recorded like any other.
    assert chat.last_turn() is not None and json.loads(chat.last_turn().text)["name"] == "Ada"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("model", "expected"),
    [(PersonModel, PersonModel(**ADA)), (PersonDict, ADA), (PERSON_SCHEMA, ADA)],
    ids=["pydantic", "typeddict", "json-schema"],
)
def test_other_data_models(fake: FakeOpenAI, fake_url: str, model: object, expected: object) -> None:
    fake.script(Reply(json=ADA))
    assert new_chat(fake_url).chat_structured("Ada is 36.", data_model=model) == expected
    schema = fake.last_body()["response_format"]["json_schema"]["schema"]
    assert set(schema["properties"]) == {"name", "age"}
    assert set(schema["required"]) == {"name", "age"}


async def test_async(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(json=ADA))
    chat = new_chat(fake_url)
    assert await chat.chat_structured_async("Ada is 36.", data_model=PersonModel) == PersonModel(**ADA)
    assert fake.last_body()["response_format"]["json_schema"]["name"] == "PersonModel"


MALFORMED = {
    "not-json": "not json at all",
    "missing-key": json.dumps({"name": "Ada"}),
    "wrong-type": json.dumps({"name": "Ada", "age": "old"}),
    "not-an-object": json.dumps([1, 2]),
}
MODELS = {"dataclass": Person, "pydantic": PersonModel, "typeddict": PersonDict,
          "json-schema": PERSON_SCHEMA}
# A JSON-schema dict is checked for its required keys only (no validator dependency), so a
# wrong type inside it is the server's grammar's business.
CASES = [(m, a) for m in MODELS for a in MALFORMED if (m, a) != ("json-schema", "wrong-type")]


@pytest.mark.parametrize(("model_id", "answer_id"), CASES)
def test_a_malformed_answer_is_a_clear_error_with_the_raw_text(
    fake: FakeOpenAI, fake_url: str, model_id: str, answer_id: str
) -> None:
    model, answer = MODELS[model_id], MALFORMED[answer_id]
    fake.script(Reply(text=answer))
    with pytest.raises(StructuredOutputError) as info:
        new_chat(fake_url).chat_structured("q", data_model=model)
    assert isinstance(info.value, LLMChatError)
    assert info.value.raw == answer


def test_a_fenced_answer_is_accepted(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="```json\n" + json.dumps(ADA) + "\n```"))
    assert new_chat(fake_url).chat_structured("q", data_model=PersonDict) == ADA


def test_a_server_that_refuses_json_schema_is_asked_in_its_own_form(
    fake: FakeOpenAI, fake_url: str
) -> None:
    """llama-cpp-python's server validates response_format.type as 'text' or 'json_object'."""
    refusal = "body.response_format.type: Input should be 'text' or 'json_object' (got 'json_schema')"
    fake.script(Reply(status=400, error_message=refusal), Reply(json=ADA), Reply(json=ADA))
    chat = new_chat(fake_url)
    assert chat.chat_structured("q", data_model=PersonDict) == ADA
    first, second = (r.body["response_format"] for r in fake.chat_requests())
    assert first["type"] == "json_schema"
    assert second == {"type": "json_object", "schema": first["json_schema"]["schema"]}
    assert [t.role for t in chat.get_turns()] == ["user", "assistant"]  # the refusal left nothing
    chat.chat_structured("again", data_model=PersonDict)
    assert fake.last_body()["response_format"]["type"] == "json_object"  # remembered
    assert len(fake.chat_requests()) == 3


def test_other_refusals_are_not_retried(fake: FakeOpenAI, fake_url: str) -> None:
    from jupyter_llmchat import APIStatusError

    fake.script(Reply(status=400, error_message="model not loaded"))
    with pytest.raises(APIStatusError):
        new_chat(fake_url).chat_structured("q", data_model=PersonDict)
    assert len(fake.chat_requests()) == 1


def test_not_a_data_model(fake: FakeOpenAI, fake_url: str) -> None:
    with pytest.raises(ConfigurationError):
        new_chat(fake_url).chat_structured("q", data_model=int)
    assert fake.requests == []


@pytest.mark.realmodel
def test_real_llamacpp_server_returns_a_valid_instance(local_server: object) -> None:
    from jupyter_llmchat._local._model import MODEL_ALIAS

    @dataclasses.dataclass
    class City:
        name: str
        country: str
        population_millions: float

    chat = chat_openai_compatible(
        base_url=local_server.base_url,  # type: ignore[attr-defined]
        model=MODEL_ALIAS,
        params=params(max_tokens=200, temperature=0.0, seed=1),
    )
    city = chat.chat_structured("Describe Paris as JSON.", data_model=City)
    assert isinstance(city, City)
    assert isinstance(city.name, str) and isinstance(city.country, str)
    assert isinstance(city.population_millions, float)
