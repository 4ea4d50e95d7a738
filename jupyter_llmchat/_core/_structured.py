"""Structured output: ``chat_structured(..., data_model=T)``.

T is a dataclass, a pydantic model, a TypedDict, or a JSON-schema dict. The schema goes out as
``response_format={"type": "json_schema", ...}`` (servers such as llama.cpp turn it into a
grammar); the answer is parsed back into T, or ``StructuredOutputError`` keeps the raw text.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any

from .._errors import ConfigurationError, StructuredOutputError
from ._tools import is_typeddict, json_schema_of

__all__ = ["parse_structured", "response_format"]


def _is_pydantic(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "model_json_schema") and hasattr(tp, "model_validate")


def schema_of(data_model: Any) -> tuple[str, dict[str, Any]]:
    """The (name, JSON schema) of a data model."""
    if isinstance(data_model, dict):
        if data_model.get("type") != "object" and "properties" not in data_model:
            raise ConfigurationError("a JSON-schema data_model must describe an object")
        title = data_model.get("title")
        return _name(title if isinstance(title, str) else "data"), data_model
    if _is_pydantic(data_model):
        schema = dict(data_model.model_json_schema())
        schema.setdefault("additionalProperties", False)  # strict mode asks for it
        return _name(data_model.__name__), schema
    if isinstance(data_model, type) and (dataclasses.is_dataclass(data_model) or is_typeddict(data_model)):
        return _name(data_model.__name__), json_schema_of(data_model)
    raise ConfigurationError(
        f"data_model must be a dataclass, a pydantic model, a TypedDict or a JSON-schema dict, "
        f"not {data_model!r}"
    )


def _name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "data"


def response_format(data_model: Any, *, compat: bool = False) -> dict[str, Any]:
    """OpenAI's ``json_schema`` form; ``compat=True``: llama-cpp-python's ``json_object`` with
    a ``schema`` (its server refuses the other, and turns this one into a grammar)."""
    name, schema = schema_of(data_model)
    if compat:
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def parse_structured(raw: str, data_model: Any, finish_reason: str | None = None) -> Any:
    """The answer as an instance of ``data_model`` (a dict for a JSON schema or a TypedDict).

    ``finish_reason`` is the answer's: "refusal" (the model's words are ``raw``) and, when the
    JSON is broken, "length" (cut at max_tokens) are said as such."""
    if finish_reason == "refusal":
        words = " ".join(raw.split())[:300]
        raise StructuredOutputError(f"the model refused to answer: {words}", raw=raw)
    text = raw.strip()
    fence = re.match(r"^```(?:json)?\s*\n(.*)\n```$", text, re.DOTALL)
    if fence:  # some models wrap JSON in a fence even under a grammar-free json_schema
        text = fence.group(1)
    try:
        data = json.loads(text)
    except ValueError as exc:
        if finish_reason == "length":
            raise StructuredOutputError(
                f"the answer was cut at max_tokens (finish_reason length) before its JSON was "
                f"complete ({len(raw)} characters)",
                raw=raw,
            ) from None
        raise StructuredOutputError(f"the answer is not valid JSON: {exc}", raw=raw) from None
    try:
        if _is_pydantic(data_model):
            return data_model.model_validate(data)
        if isinstance(data_model, dict):
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            missing = [k for k in data_model.get("required", []) if k not in data]
            if missing:
                raise TypeError(f"missing required keys: {', '.join(missing)}")
            return data
        return _convert(data, data_model)
    except StructuredOutputError:
        raise
    except Exception as exc:  # pydantic's ValidationError, TypeError, ValueError...
        name = getattr(data_model, "__name__", "the schema")
        raise StructuredOutputError(
            f"the answer does not fit {name}: {' '.join(str(exc).split())[:300]}", raw=raw
        ) from None


def _convert(value: Any, tp: Any) -> Any:
    """``value`` (decoded JSON) checked against and converted to the type hint ``tp``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__}: expected an object")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - set(fields)
        if unknown:
            raise TypeError(f"{tp.__name__}: unexpected keys {sorted(unknown)}")
        kwargs = {k: _convert(v, hints.get(k, Any)) for k, v in value.items()}
        return tp(**kwargs)  # a missing required field raises TypeError here
    if is_typeddict(tp):
        if not isinstance(value, dict):
            raise TypeError(f"{tp.__name__}: expected an object")
        hints = typing.get_type_hints(tp)
        missing = set(getattr(tp, "__required_keys__", hints)) - set(value)
        if missing:
            raise TypeError(f"{tp.__name__}: missing keys {sorted(missing)}")
        return {k: _convert(v, hints.get(k, Any)) for k, v in value.items()}
    if _is_pydantic(tp):
        return tp.model_validate(value)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        for option in args:
            try:
                return _convert(value, option)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple, set, frozenset) and isinstance(value, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return tuple(_convert(v, t) for v, t in zip(value, args, strict=True))
        item = args[0] if args else Any
        return origin(_convert(v, item) for v in value)
    if origin is dict and isinstance(value, dict):
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt) for k, v in value.items()}
    if tp is type(None) or tp is None:
        if value is not None:
            raise TypeError("expected null")
        return None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type):
        import enum

        if issubclass(tp, enum.Enum):
            return tp(value)
        if tp in (int, str, bool, float, list, dict):
            if tp is int and isinstance(value, bool) or not isinstance(value, tp):
                raise TypeError(f"expected {tp.__name__}, got {type(value).__name__}")
            return value
    return value
