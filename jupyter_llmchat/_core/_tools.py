"""Tools: functions the model may call, as data (a JSON schema and a function) that a Chat owns.

``Tool.from_func(fn)`` reads the schema from ``fn``'s type hints and its docstring (the first
paragraph describes the tool, a Google-style ``Args:`` section describes the parameters).
``invoke`` and ``ainvoke`` run one call and always return a ``ContentToolResult``: a tool that
raises sends its error text back to the model instead of ending the conversation, and
``ToolRejectError`` refuses a call with its reason.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

from .._errors import ConfigurationError, ToolRejectError
from ._turns import ContentToolRequest, ContentToolResult

__all__ = ["Tool", "is_typeddict", "json_schema_of", "tool_result_text"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Most characters of one tool result sent to the model (``Chat.max_tool_result_chars``): a
#: result is sent again with every later request of the conversation, so a 2 MB one would cost
#: a million input tokens each time. The whole result stays in the turn for the caller.
MAX_TOOL_RESULT_CHARS = 32_000


@dataclasses.dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description, parameters' schema and the function."""

    func: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    #: MCP's tool annotations (``title``, ``readOnlyHint``, ``destructiveHint``,
    #: ``idempotentHint``, ``openWorldHint``): an MCP server's own, or the user's.
    annotations: dict[str, Any] | None = None

    @classmethod
    def from_func(
        cls, func: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        if not callable(func):
            raise ConfigurationError(f"a tool must be a function, not a {type(func).__name__}")
        name = name or str(getattr(func, "__name__", ""))
        if not _NAME.match(name):
            raise ConfigurationError(
                f"tool name {name!r} is not allowed",
                hint="1 to 64 letters, digits, '_' or '-' (pass name=...)",
            )
        summary, arg_docs = _parse_docstring(inspect.getdoc(func) or "")
        return cls(
            func=func,
            name=name,
            description=description if description is not None else summary,
            parameters=_parameters_schema(func, arg_docs),
        )

    def schema(self) -> dict[str, Any]:
        """The tool in the chat-completions ``tools`` format."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    # -- running one call -------------------------------------------------------------------

    def invoke(self, request: ContentToolRequest) -> ContentToolResult:
        """Run one call (an async tool on a private event loop); never raises an Exception."""
        try:
            value = self.func(**request.arguments)
            if inspect.isawaitable(value):
                value = _run_awaitable(value)
        except Exception as exc:
            return _failed(request, exc)
        return _succeeded(request, value)

    async def ainvoke(self, request: ContentToolRequest) -> ContentToolResult:
        """Run one call on the running loop; a sync tool in a worker thread, so the loop stays
        live while it runs: Stop (a cancelled task) ends the answer at once, and the call, left
        to finish in its thread, has its result discarded."""
        import asyncio  # only here: the sync path and ``import jupyter_llmchat`` never need it

        try:
            if _is_async(self.func):
                value = self.func(**request.arguments)
            else:
                value = await asyncio.to_thread(self.func, **request.arguments)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return _failed(request, exc)
        return _succeeded(request, value)


def _is_async(func: Callable[..., Any]) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one: called on the loop."""
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)
    )


def _run_awaitable(aw: Awaitable[Any]) -> Any:
    """Await ``aw`` from sync code; in a thread of its own when this one already runs a loop
    (a Jupyter kernel's main thread does), since a loop cannot be nested."""

    import asyncio  # only here: the sync path and ``import jupyter_llmchat`` never need it

    async def main() -> Any:
        return await aw

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(main())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="jupyter_llmchat tool", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _jsonable(value: Any) -> Any:
    """The value itself when it survives JSON (so the record keeps it), else its ``str``."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def _succeeded(request: ContentToolRequest, value: Any) -> ContentToolResult:
    try:
        kept = _jsonable(value)
    except Exception as exc:  # its __str__ raised: the model is told, the exchange goes on
        error = ("Tool call failed with error: its result could not be turned into text: "
                 f"{_describe(exc)}")
        return ContentToolResult(request.id, None, error, name=request.name)
    return ContentToolResult(request.id, kept, None, name=request.name)


def _failed(request: ContentToolRequest, exc: Exception) -> ContentToolResult:
    if isinstance(exc, ToolRejectError):
        error = f"Tool call rejected. {exc.message}"
    else:
        error = f"Tool call failed with error: {_describe(exc)}"
    return ContentToolResult(request.id, None, error, name=request.name)


def _describe(exc: Exception) -> str:
    """``Type: message`` of a tool's exception, even one whose own ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:
        text = "(its message could not be read)"
    return f"{type(exc).__name__}: {text}"


def tool_result_text(result: ContentToolResult, max_chars: int | None = None) -> str:
    """What goes back to the model as the ``tool`` message's content: at most ``max_chars``
    characters of it (None: all), then a note saying how much was left out."""
    if result.error is not None:
        text = result.error
    elif isinstance(result.value, str):
        text = result.value
    else:
        text = json.dumps(result.value, ensure_ascii=False)
    if max_chars is None or len(text) <= max_chars:
        return text
    left = len(text) - max_chars
    return (
        f"{text[:max_chars]}\n\n[{left:,} of {len(text):,} characters of this tool result were "
        f"left out: only the first {max_chars:,} are sent to the model]"
    )


def unknown_tool(request: ContentToolRequest) -> ContentToolResult:
    return ContentToolResult(
        request.id, None, f"Tool call failed with error: there is no tool named {request.name!r}",
        name=request.name,
    )


def bad_arguments(request_id: str, name: str, raw: str) -> ContentToolResult:
    return ContentToolResult(
        request_id, None,
        f"Tool call failed with error: the arguments are not a JSON object: {raw[:200]!r}",
        name=name,
    )


# -- schemas from type hints ----------------------------------------------------------------------


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (text before the first section) and each parameter's from ``Args:``."""
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    indent: int | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        header = re.match(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$", stripped)
        if header and not line.startswith((" ", "\t")):
            section = header.group(1)
            current = None
            indent = None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters") and stripped:
            level = len(line) - len(line.lstrip())
            m = re.match(r"^\*{0,2}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", stripped)
            if m and (indent is None or level <= indent):
                indent = level
                current = m.group(1)
                args[current] = m.group(3).strip()
            elif current is not None:
                args[current] = f"{args[current]} {stripped}".strip()
    return "\n".join(summary).strip(), args


def _parameters_schema(func: Callable[..., Any], docs: Mapping[str, str]) -> dict[str, Any]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        raise ConfigurationError(f"cannot read the signature of {func!r}") from None
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: fall back to untyped parameters
        hints = {}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for pname, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is param.POSITIONAL_ONLY:
            raise ConfigurationError(
                f"tool parameter {pname!r} is positional-only: the model passes arguments by name"
            )
        hint = hints.get(pname, Any)
        prop = json_schema_of(hint)
        if pname in docs and docs[pname]:
            prop = {**prop, "description": docs[pname]}
        if param.default is param.empty:
            required.append(pname)
        elif _jsonable(param.default) is param.default and param.default is not None:
            prop = {**prop, "default": param.default}
        properties[pname] = prop
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False}


_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema_of(tp: Any) -> dict[str, Any]:
    """JSON schema of a type hint: scalars, list/tuple/set, dict, Optional/Union, Literal, Enum,
    dataclasses and TypedDicts (objects with every key listed)."""
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    origin = typing.get_origin(tp)
    targs = typing.get_args(tp)
    if origin is typing.Annotated:
        return json_schema_of(targs[0])
    if origin is typing.Literal:
        values = list(targs)
        kinds = {_SCALARS.get(type(v)) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        options = [a for a in targs if a is not type(None)]
        nullable = len(options) < len(targs)
        if len(options) == 1:
            inner = json_schema_of(options[0])
            if nullable:
                if isinstance(inner.get("type"), str):
                    return {**inner, "type": [inner["type"], "null"]}
                return {"anyOf": [inner, {"type": "null"}]}
            return inner
        return {"anyOf": [json_schema_of(a) for a in targs]}
    if origin in (list, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence,
                  collections.abc.Set) or tp in (list, set):
        return {"type": "array", "items": json_schema_of(targs[0]) if targs else {}}
    if origin is tuple or tp is tuple:
        if targs and targs[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [json_schema_of(a) for a in targs],
                    "minItems": len(targs), "maxItems": len(targs)}
        return {"type": "array", "items": json_schema_of(targs[0]) if targs else {}}
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping) or tp is dict:
        schema = {"type": "object"}
        if len(targs) == 2 and targs[1] is not Any:
            schema["additionalProperties"] = json_schema_of(targs[1])
        return schema
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        kinds = {_SCALARS.get(type(v)) for v in values}
        schema = {"enum": values}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = [f for f in dataclasses.fields(tp) if f.init]
        return _object({f.name: json_schema_of(hints.get(f.name, Any)) for f in fields},
                       [f.name for f in fields], tp)
    if is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return _object({k: json_schema_of(v) for k, v in hints.items()},
                       sorted(getattr(tp, "__required_keys__", hints)), tp)
    if isinstance(tp, type) and hasattr(tp, "model_json_schema"):  # a pydantic model
        return dict(tp.model_json_schema())
    raise ConfigurationError(
        f"cannot describe the type {tp!r} in JSON schema",
        hint="use str, int, float, bool, list[...], dict[str, ...], Literal, an Enum or a dataclass",
    )


def _object(properties: dict[str, Any], required: list[str], tp: type) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required,
                              "additionalProperties": False}
    doc = tp.__doc__
    if doc and not doc.startswith(f"{tp.__name__}("):  # a dataclass's generated doc says nothing
        schema["description"] = inspect.cleandoc(doc)
    return schema


def is_typeddict(tp: Any) -> bool:
    """Whether ``tp`` is a TypedDict class, ``typing``'s or ``typing_extensions``' (whose own
    metaclass ``typing.is_typeddict`` does not know); tools and structured output both ask."""
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__") and hasattr(tp, "__annotations__")
