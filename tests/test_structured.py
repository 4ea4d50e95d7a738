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


@pytest.mark.parametrize(
    "answer",
    ["not json at all", json.dumps({"name": "Ada"}), json.dumps({"name": "Ada", "age": "old"}),
     json.dumps([1, 2])],
    ids=["not-json", "missing-key", "wrong-type", "not-an-object"],
)
@pytest.mark.parametrize("model", [Person, PersonModel, PersonDict, PERSON_SCHEMA],
                         ids=["dataclass", "pydantic", "typeddict", "json-schema"])
def test_a_malformed_answer_is_a_clear_error_with_the_raw_text(
    fake: FakeOpenAI, fake_url: str, answer: str, model: object
) -> None:
    if model is PERSON_SCHEMA and answer == json.dumps({"name": "Ada", "age": "old"}):
        pytest.skip("a JSON-schema dict is checked for its required keys only (no validator dependency)")
    fake.script(Reply(text=answer))
    with pytest.raises(StructuredOutputError) as info:
        new_chat(fake_url).chat_structured("q", data_model=model)
    assert isinstance(info.value, LLMChatError)
    assert info.value.raw == answer


def test_a_fenced_answer_is_accepted(fake: FakeOpenAI, fake_url: str) -> None:
    fake.script(Reply(text="```json\n" + json.dumps(ADA) + "\n```"))
    assert new_chat(fake_url).chat_structured("q", data_model=PersonDict) == ADA


def test_not_a_data_model(fake: FakeOpenAI, fake_url: str) -> None:
    with pytest.raises(ConfigurationError):
        new_chat(fake_url).chat_structured("q", data_model=int)
    assert fake.requests == []


@pytest.mark.realmodel
def test_real_llamacpp_server_returns_a_valid_instance(local_server: object) -> None:
    from jupyter_llmchat._local import MODEL_ALIAS

    @dataclasses.dataclass
    class City:
        name: str
        country: str
        population_millions: float

    chat = chat_openai_compatible(
        base_url=local_server.base_url,  # type: ignore[attr-defined]
        model=MODEL_ALIAS,
        params=params(max_tokens=80, temperature=0.0, seed=1),
    )
    city = chat.chat_structured("Describe Paris as JSON.", data_model=City)
    assert isinstance(city, City)
    assert isinstance(city.name, str) and isinstance(city.country, str)
    assert isinstance(city.population_millions, float)
