"""Tools: functions the model may call, as data (a JSON schema and a function) that a Chat owns.

``Tool.from_func(fn)`` reads the schema from ``fn``'s type hints and its docstring (the first
paragraph describes the tool, a Google-style ``Args:`` section describes the parameters).
``invoke`` and ``ainvoke`` run one call and always return a ``ContentToolResult`` (with its
status and how long it ran): a tool that raises sends its error text back to the model instead
of ending the conversation, and ``ToolRejectError`` refuses a call with its reason.

``ToolCallbacks`` holds ``on_tool_request`` / ``on_tool_result`` callbacks: each ``Chat`` has
its own, and ``tool_hooks`` is the process's, which every call of every ``Chat`` passes after
the chat's own (the notebook layer's approval is one request callback there).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import json
import re
import sys
import threading
import time
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Union

from .._errors import ConfigurationError, ToolRejectError
from ._turns import ContentToolRequest, ContentToolResult

__all__ = [
    "ANNOTATION_KEYS",
    "Tool",
    "ToolCallbacks",
    "is_typeddict",
    "json_schema_of",
    "tool_hooks",
    "tool_result_text",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: Most characters of one tool result sent to the model (``Chat.max_tool_result_chars``): a
#: result is sent again with every later request of the conversation, so a 2 MB one would cost
#: a million input tokens each time. The whole result stays in the turn for the caller.
MAX_TOOL_RESULT_CHARS = 32_000


#: MCP's tool annotations (its ``ToolAnnotations``) and the type of each: hints about what a
#: call does, which the approval policy reads (``readOnlyHint``, ``destructiveHint``).
ANNOTATION_KEYS: dict[str, type] = {
    "title": str,
    "readOnlyHint": bool,
    "destructiveHint": bool,
    "idempotentHint": bool,
    "openWorldHint": bool,
}


@dataclasses.dataclass(frozen=True)
class Tool:
    """A function the model may call: its name, description, parameters' schema and the function.

    ``annotations`` are MCP's hints (``ANNOTATION_KEYS``) or None; ``server`` names the MCP
    server the tool comes from (None: a Python function of the user's), which the approval
    policy tells apart."""

    func: Callable[..., Any]
    name: str
    description: str
    parameters: dict[str, Any]
    #: MCP's tool annotations (``title``, ``readOnlyHint``, ``destructiveHint``,
    #: ``idempotentHint``, ``openWorldHint``): an MCP server's own, or the user's.
    annotations: dict[str, Any] | None = None
    server: str | None = None

    @classmethod
    def from_func(
        cls, func: Callable[..., Any], *, name: str | None = None, description: str | None = None,
        annotations: Mapping[str, Any] | None = None,
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
            annotations=check_annotations(annotations),
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
        t0 = time.perf_counter()
        try:
            value = self.func(**request.arguments)
            if inspect.isawaitable(value):
                value = _run_awaitable(value)
        except Exception as exc:
            return _timed(_failed(request, exc), t0)
        return _timed(_succeeded(request, value), t0)

    async def ainvoke(self, request: ContentToolRequest) -> ContentToolResult:
        """Run one call on the running loop; a sync tool in a worker thread, so the loop stays
        live while it runs: Stop (a cancelled task) ends the answer at once, and the call, left
        to finish in its thread, has its result discarded."""
        import asyncio  # only here: the sync path and ``import jupyter_llmchat`` never need it

        t0 = time.perf_counter()
        try:
            if _is_async(self.func):
                value = self.func(**request.arguments)
            else:
                # The loop's default executor: parallel_chat sizes it to max_active, so the sync
                # tools of that many prompts run at once.
                value = await asyncio.to_thread(self.func, **request.arguments)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return _timed(_failed(request, exc), t0)
        return _timed(_succeeded(request, value), t0)


def check_annotations(annotations: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """MCP's annotations, checked: known keys (``ANNOTATION_KEYS``), each of its type."""
    if annotations is None:
        return None
    if not isinstance(annotations, Mapping):
        raise ConfigurationError(
            f"annotations must be a dict of MCP's tool hints, not a {type(annotations).__name__}"
        )
    known = ", ".join(ANNOTATION_KEYS)
    out: dict[str, Any] = {}
    for key, value in annotations.items():
        kind = ANNOTATION_KEYS.get(key) if isinstance(key, str) else None
        if kind is None:
            raise ConfigurationError(
                f"unknown tool annotation {key!r}", hint=f"MCP's annotations are {known}"
            )
        if not isinstance(value, kind) and value is not None:
            raise ConfigurationError(
                f"tool annotation {key!r} must be a {kind.__name__}, not {value!r}"
            )
        if value is not None:
            out[key] = value
    return out


# -- callbacks --------------------------------------------------------------------------------

RequestCallback = Callable[[ContentToolRequest], Any]
ResultCallback = Callable[[ContentToolResult], Any]


class ToolCallbacks:
    """``on_tool_request`` / ``on_tool_result`` callbacks, in the order they were added.

    A request callback that raises ``ToolRejectError`` refuses the call (the later callbacks
    and the tool do not run); any other exception from a callback refuses it too, with that
    error as the reason, since a policy that failed cannot be taken as a yes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request: list[RequestCallback] = []
        self._result: list[ResultCallback] = []

    def on_tool_request(self, callback: RequestCallback) -> Callable[[], None]:
        return self._add(self._request, callback)

    def on_tool_result(self, callback: ResultCallback) -> Callable[[], None]:
        return self._add(self._result, callback)

    def _add(self, into: list[Any], callback: Callable[..., Any]) -> Callable[[], None]:
        if not callable(callback):
            raise ConfigurationError(f"a callback must be callable, not a {type(callback).__name__}")
        with self._lock:
            into.append(callback)

        def remove() -> None:
            """Unregister the callback (a second call does nothing)."""
            with self._lock:
                if callback in into:
                    into.remove(callback)

        return remove

    def copy_into(self, other: ToolCallbacks) -> None:
        with self._lock:
            other._request, other._result = list(self._request), list(self._result)

    def check_request(self, request: ContentToolRequest) -> ContentToolResult | None:
        """Run the request callbacks; the refusal's result, or None: the call may run."""
        with self._lock:
            callbacks = list(self._request)
        for cb in callbacks:
            try:
                cb(request)
            except ToolRejectError as exc:
                return refused(request, exc.message)
            except Exception as exc:
                return refused(request, f"the on_tool_request callback failed: {_describe(exc)}")
        return None

    def tell_result(self, result: ContentToolResult) -> None:
        """Run the result callbacks; one that raises is reported and loses no turn."""
        with self._lock:
            callbacks = list(self._result)
        for cb in callbacks:
            try:
                cb(result)
            except Exception as exc:
                print(f"jupyter_llmchat: on_tool_result callback failed: {exc!r}", file=sys.stderr)


#: The process's callbacks: every tool call of every ``Chat`` passes them, after the chat's own.
tool_hooks = ToolCallbacks()


def refused(request: ContentToolRequest, reason: str) -> ContentToolResult:
    """The result of a call refused before it ran: the model is told why."""
    return ContentToolResult(request.id, None, f"Tool call rejected. {reason}", name=request.name,
                             status="refused")


def _timed(result: ContentToolResult, t0: float) -> ContentToolResult:
    return dataclasses.replace(result, duration=time.perf_counter() - t0)


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
        return refused(request, exc.message)
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
