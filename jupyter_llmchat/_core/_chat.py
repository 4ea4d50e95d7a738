"""``Chat``: a conversation with one provider, as in ellmer's ``Chat`` object.

History is only changed when a request has produced something: a finished answer records the
user turn and the assistant turn together; an answer cut short (Ctrl-C, task cancel, a stop
from the panel, a broken stream) records the text so far as an assistant turn with
``partial=True``; a request that fails before any text records nothing.

One exchange, four ways to drive it. ``_Exchange`` holds everything an exchange decides (the
request bodies, decoding, the tool loop and its bound, what gets recorded); ``_run`` (sync) and
``_arun`` (async) only move bytes and run tools, and ``chat``, ``stream``, ``chat_async``,
``stream_async`` and ``chat_structured`` consume them. With tools, an exchange is several
requests: the model asks for calls, they run, their results go back, until it answers without
calls (at most ``max_tool_rounds`` rounds, then ``ToolError``).

The public stream, for callers that render an answer as it arrives (the magics, the panel)::

    s = chat.stream("Hi", content="all", model=None, params=None,   # per-call overrides
                    history=True, meta={"cell_id": ...}, replace=None)
    for item in s:       # ContentText / ContentThinking pieces, ContentToolRequest, ContentToolResult
        ...
    s.user_turn, s.turn  # the prompt's turn and the final answer (partial=True when cut short);
    s.turns              # every turn of the exchange; all None/[] when nothing was recorded
    s.recorded           # whether they went into the history (history=False: shown, not kept)

``close()`` (or ``aclose()``) ends the exchange at once and records the partial answer; the
object is also a context manager. ``stream_async`` returns the same with ``async for``.

Listeners (``add_listener``) hear of every change as ``fn(chat, event, exchange)``, ``event``
one of ``ChatEvent``; on "turn" ``exchange`` is the recorded ``ChatExchange`` (``user_turn``,
``turn``, ``turns``, ``recorded``), whichever of the send methods made it, so a layer watching
the chat (the notebook record, the panel) needs nothing but public names. Settings change
through public methods too (``set_model``, ``set_provider``, ``system_prompt``), each heard.
"""

from __future__ import annotations

import copy as _copy
import dataclasses
import datetime as _dt
import json
import sys
import threading
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Sequence
from contextlib import aclosing, closing
from typing import Any, Generic, Literal, TypeVar, overload

from .._errors import (
    APIStatusError,
    BudgetExceeded,
    ChatBusyError,
    ConfigurationError,
    LLMChatError,
    StreamError,
    ToolError,
    raise_clean,
)
from ._process import warm_up_prices
from ._provider import OpenAICompatible, credentials_from, refuses_json_schema
from ._spend import RequestPreview, Reservation, spend_guard, spend_request
from ._structured import parse_structured, response_format
from ._tools import (
    MAX_TOOL_RESULT_CHARS,
    RequestCallback,
    ResultCallback,
    Tool,
    ToolCallbacks,
    bad_arguments,
    check_annotations,
    tool_hooks,
    unknown_tool,
)
from ._turns import (
    NEW_KEY,
    Content,
    ContentImage,
    ContentText,
    ContentThinking,
    ContentToolRequest,
    ContentToolResult,
    Tokens,
    Turn,
    check_tool_pairs,
    conversation_start,
    short_arguments,
)
from ._usage import UsageRow, cost_of, format_row_cost
from ._wire import _Answer, _check_not_empty, _wire

__all__ = [
    "AsyncChatStream",
    "Chat",
    "ChatEvent",
    "ChatExchange",
    "ChatStream",
    "Echo",
    "Listener",
    "StreamContent",
]

Echo = Literal["none", "output", "all"]
_ECHOES = ("none", "output", "all")

#: What ``stream(content="all")`` yields.
StreamContent = ContentText | ContentThinking | ContentToolRequest | ContentToolResult
T = TypeVar("T")

#: Default bound on tool rounds in one exchange (requests that ended asking for tools).
MAX_TOOL_ROUNDS = 10

#: What a listener hears. "start": an answer begins streaming; "turn": an exchange was recorded
#: (the only event that comes with its ``ChatExchange``); "abort": an answer failed with nothing
#: to keep; "reset" and "set": history, system prompt or provider replaced; "model": the model
#: of the next requests changed (``set_model``), nothing else did.
ChatEvent = Literal["start", "turn", "abort", "reset", "set", "model"]

#: Called on every change: (chat, what happened, the exchange or None).
Listener = Callable[["Chat", ChatEvent, "ChatExchange | None"], None]


def _check_echo(echo: str | None, default: Echo) -> Echo:
    if echo is None:
        return default
    if echo not in _ECHOES:
        raise ConfigurationError(f"echo={echo!r} is not one of {', '.join(_ECHOES)}")
    return echo  # type: ignore[return-value]


class Chat:
    """A conversation: the provider, the system prompt and the turns so far.

    Create one with ``chat_openai_compatible()`` or a preset such as ``chat_ollama()``.
    """

    def __init__(
        self,
        provider: OpenAICompatible,
        *,
        system_prompt: str | None = None,
        echo: Echo = "none",
        turns: Sequence[Turn] = (),
        max_tool_rounds: int = MAX_TOOL_ROUNDS,
        max_tool_result_chars: int | None = MAX_TOOL_RESULT_CHARS,
    ) -> None:
        self.provider = provider
        self._system_prompt = system_prompt
        self._echo: Echo = _check_echo(echo, "none")
        self._turns: list[Turn] = []
        self._lock = threading.Lock()
        # Notified as the lock is let go: wait_idle() waits on it instead of polling busy. (A
        # condition, not an Event: an Event set by one answer's end while the next one already
        # holds the lock would leave a waiter spinning.)
        self._idle = threading.Condition()
        self._listeners: list[Listener] = []
        self._tools: dict[str, Tool] = {}
        self._tool_callbacks = ToolCallbacks()
        # Whether the server wants response_format's json_object form (see chat_structured).
        self._schema_compat = False
        #: Most requests in a row that may end asking for tools, in one exchange.
        self.max_tool_rounds = max_tool_rounds
        self.max_tool_result_chars = max_tool_result_chars
        if turns:
            self.set_turns(turns)

    @property
    def max_tool_result_chars(self) -> int | None:
        """Most characters of one tool result sent to the model, in every request that carries
        it, with a note saying how much was left out (None: no cap); the turns keep it whole."""
        return self._max_tool_result_chars

    @max_tool_result_chars.setter
    def max_tool_result_chars(self, value: int | None) -> None:
        positive = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if value is not None and not positive:
            raise ConfigurationError(
                f"max_tool_result_chars must be a positive number of characters or None, "
                f"not {value!r}"
            )
        self._max_tool_result_chars = value

    # -- ellmer's accessors -------------------------------------------------------------------

    @property
    def system_prompt(self) -> str | None:
        return self._system_prompt

    @system_prompt.setter
    def system_prompt(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise ConfigurationError("system_prompt must be a str or None")
        self._system_prompt = value or None
        self._notify("set")

    def get_model(self) -> str:
        """The model's name; asks the server's /models once if none was given."""
        return self.provider.resolve_model()

    def set_model(self, name: str) -> None:
        """Ask model ``name`` from the next request on (a per-call ``model=`` still wins); the
        provider, turns and tools stay. Listeners hear "model" when it changed. Refused while
        the chat is answering (``ChatBusyError``): the answer under way keeps its model."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                f"set_model() takes a model's name, not {name!r}",
                hint="the server's /models lists them",
            )
        with self._guard():
            old, self.provider.model = self.provider.model, name.strip()
        if old != self.provider.model:
            self._notify("model")

    def set_provider(self, provider: OpenAICompatible) -> None:
        """Send the next requests through ``provider`` (another server, model or params): the
        same Chat goes on, its turns, tools and listeners kept. Refused while it is answering."""
        if not isinstance(provider, OpenAICompatible):
            raise ConfigurationError(
                f"set_provider() takes a provider, not a {type(provider).__name__}"
            )
        with self._guard():
            old, self.provider = self.provider, provider
        if old is not provider:
            old.close()  # its HTTP connections go to the old server
        self._notify("set")

    def get_turns(self, include_system_prompt: bool = False) -> list[Turn]:
        turns = list(self._turns)
        if include_system_prompt and self._system_prompt:
            turns.insert(0, Turn("system", [ContentText(self._system_prompt)]))
        return turns

    def set_turns(self, turns: Sequence[Turn]) -> None:
        """Replace the history. A leading system turn sets the system prompt.

        Everything is checked first: on any error, history and system prompt are unchanged."""
        new = list(turns)
        for i, t in enumerate(new):
            if not isinstance(t, Turn):
                raise ConfigurationError(f"turn {i} is a {type(t).__name__}, not a Turn")
        system: list[Turn] = []
        if new and new[0].role == "system":
            system = [new.pop(0)]
        for i, t in enumerate(new):
            expected = "user" if i % 2 == 0 else "assistant"
            if t.role != expected:
                raise ConfigurationError(
                    f"turn {i + len(system)} has role {t.role!r}; "
                    "turns must alternate user, assistant, ..."
                )
        _check_tool_turns(new)
        with self._guard():
            if system:
                self._system_prompt = system[0].text or None
            self._turns = new
        self._notify("set")

    def last_turn(self, role: Literal["user", "assistant", "system"] = "assistant") -> Turn | None:
        for t in reversed(self.get_turns(include_system_prompt=True)):
            if t.role == role:
                return t
        return None

    def get_tokens(self) -> list[dict[str, Any]]:
        """One row per assistant turn: its input, output and cached tokens and cost (None = unknown)."""
        rows = []
        for i, t in enumerate(self._turns):
            if t.role != "assistant":
                continue
            tok = t.tokens or Tokens()
            rows.append(
                {"turn": i, "model": t.model, "input": tok.input, "output": tok.output,
                 "cached": tok.cached, "cost": t.cost, "partial": t.partial}
            )
        return rows

    def get_cost(self, include: Literal["all", "last"] = "all") -> float | None:
        """Cost in USD of all answers (or the last); None if any of them is unknown."""
        if include not in ("all", "last"):
            raise ConfigurationError('include must be "all" or "last"')
        answers = [t for t in self._turns if t.role == "assistant"]
        if include == "last":
            answers = answers[-1:]
        if not answers:
            return 0.0
        return UsageRow("", "").add_turns(answers).complete_cost

    # -- tools --------------------------------------------------------------------------------

    def register_tool(
        self, func: Callable[..., Any] | Tool, *, name: str | None = None,
        description: str | None = None, annotations: dict[str, Any] | None = None,
    ) -> Tool:
        """Let the model call ``func`` (sync or async). Its JSON schema comes from the type hints,
        its description from the docstring (parameters from a Google-style ``Args:`` section).
        A tool that raises sends its error text to the model; ``ToolRejectError`` refuses.
        ``annotations`` are MCP's hints (``title``, ``readOnlyHint``, ``destructiveHint``,
        ``idempotentHint``, ``openWorldHint``), kept as ``Tool.annotations``."""
        if isinstance(func, Tool):
            tool = func
            if annotations is not None:
                tool = dataclasses.replace(tool, annotations=check_annotations(annotations))
        else:
            tool = Tool.from_func(func, name=name, description=description,
                                  annotations=annotations)
        self._tools[tool.name] = tool
        return tool

    def get_tools(self) -> list[Tool]:
        return list(self._tools.values())

    def set_tools(self, tools: Sequence[Callable[..., Any] | Tool]) -> None:
        """Replace every tool (an empty list removes them all)."""
        new = [t if isinstance(t, Tool) else Tool.from_func(t) for t in tools]
        self._tools = {t.name: t for t in new}

    def on_tool_request(self, callback: RequestCallback) -> Callable[[], None]:
        """Call ``callback(request)`` (a ``ContentToolRequest``, its ``tool`` set) before each
        tool call runs; raising ``ToolRejectError(reason)`` refuses the call and the model is
        told ``Tool call rejected. {reason}``. Returns a function that unregisters it."""
        return self._tool_callbacks.on_tool_request(callback)

    def on_tool_result(self, callback: ResultCallback) -> Callable[[], None]:
        """Call ``callback(result)`` (a ``ContentToolResult``: status, duration) after each tool
        call, refused ones included. Returns a function that unregisters it."""
        return self._tool_callbacks.on_tool_result(callback)

    # -- MCP servers (the extra [mcp]): _mcp imported on first use (asyncio, then the SDK) -----

    def register_mcp_tools_stdio(
        self, command: str, args: Sequence[str] = (), *, name: str | None = None,
        include_tools: Sequence[str] = (), exclude_tools: Sequence[str] = (),
        namespace: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60.0, ask: bool = False,
    ) -> list[Tool]:
        """Start an MCP server (``command args``, over stdio) and offer its tools; the same
        configuration again reuses the running server. ``${env:VAR}`` in ``env`` values is read
        from the environment; env values are never recorded or shown. A call that takes longer
        than ``timeout`` seconds fails with ``MCPTimeoutError``; ``ask`` marks every call of the
        server as needing approval (the notebook's ``tool_approval``)."""
        from . import _mcp

        config = _mcp.MCPServerConfig.stdio(
            command, args, name=name, include_tools=include_tools, exclude_tools=exclude_tools,
            namespace=namespace, env=env, timeout=timeout, ask=ask)
        return self._add_mcp_tools(_mcp.connect(config))

    async def register_mcp_tools_stdio_async(
        self, command: str, args: Sequence[str] = (), *, name: str | None = None,
        include_tools: Sequence[str] = (), exclude_tools: Sequence[str] = (),
        namespace: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60.0, ask: bool = False,
    ) -> list[Tool]:
        """``register_mcp_tools_stdio`` for async code."""
        from . import _mcp

        config = _mcp.MCPServerConfig.stdio(
            command, args, name=name, include_tools=include_tools, exclude_tools=exclude_tools,
            namespace=namespace, env=env, timeout=timeout, ask=ask)
        return self._add_mcp_tools(await _mcp.connect_async(config))

    def register_mcp_tools_http_stream(
        self, url: str, *, name: str | None = None, include_tools: Sequence[str] = (),
        exclude_tools: Sequence[str] = (), namespace: str | None = None,
        headers: dict[str, str] | None = None, timeout: float = 60.0, ask: bool = False,
    ) -> list[Tool]:
        """Connect to an MCP server over streamable HTTP and offer its tools. ``${env:VAR}`` in
        ``headers`` values is read from the environment (a token never sits in a cell); headers
        are never recorded or shown. Otherwise as ``register_mcp_tools_stdio``."""
        from . import _mcp

        config = _mcp.MCPServerConfig.http(
            url, name=name, include_tools=include_tools, exclude_tools=exclude_tools,
            namespace=namespace, headers=headers, timeout=timeout, ask=ask)
        return self._add_mcp_tools(_mcp.connect(config))

    async def register_mcp_tools_http_stream_async(
        self, url: str, *, name: str | None = None, include_tools: Sequence[str] = (),
        exclude_tools: Sequence[str] = (), namespace: str | None = None,
        headers: dict[str, str] | None = None, timeout: float = 60.0, ask: bool = False,
    ) -> list[Tool]:
        """``register_mcp_tools_http_stream`` for async code."""
        from . import _mcp

        config = _mcp.MCPServerConfig.http(
            url, name=name, include_tools=include_tools, exclude_tools=exclude_tools,
            namespace=namespace, headers=headers, timeout=timeout, ask=ask)
        return self._add_mcp_tools(await _mcp.connect_async(config))

    def cleanup_mcp_tools(self, names: Sequence[str] | None = None) -> None:
        """Stop these MCP servers (None: every one) and remove their tools from this chat."""
        from . import _mcp

        self._drop_mcp_tools(_mcp.stop(names))

    async def cleanup_mcp_tools_async(self, names: Sequence[str] | None = None) -> None:
        """``cleanup_mcp_tools`` for async code."""
        from . import _mcp

        self._drop_mcp_tools(await _mcp.stop_async(names))

    def _add_mcp_tools(self, tools: list[Tool]) -> list[Tool]:
        for tool in tools:
            self._tools[tool.name] = tool
        return tools

    def _drop_mcp_tools(self, servers: list[str]) -> None:
        from . import _mcp

        self._tools = {n: t for n, t in self._tools.items() if _mcp.server_of(t) not in servers}

    # -- sending ------------------------------------------------------------------------------

    def chat(
        self, *args: str | Content, echo: Echo | None = None, model: str | None = None,
        params: dict[str, Any] | None = None, **kwargs: Any,
    ) -> str:
        """Send a message, wait for the whole answer (tool calls included), return its text."""
        __tracebackhide__ = True  # noqa: F841 - IPython shows the caller's frames, not ours
        return self._collect(args, echo, dict(kwargs, model=model, params=params))

    def _collect(self, args: Sequence[str | Content], echo: Echo | None, opts: dict[str, Any],
                 result: _Outcome | None = None) -> str:
        __tracebackhide__ = True  # noqa: F841
        mode = _start_echo(args, echo, self._echo)
        out: list[str] = []
        # Without echo nothing is shown while it arrives: ask for the whole answer at once, which
        # also gets token usage from servers that send none while streaming (llama.cpp's).
        opts.setdefault("stream", mode != "none")
        with closing(self._run(args, opts, result)) as items:
            for item in items:
                _take(item, out, mode)
        if mode != "none":
            _write("\n")
        return _final_text(out)

    @overload
    def stream(
        self, *args: str | Content, content: Literal["text"] = "text",
        echo: Echo | None = None, model: str | None = None, params: dict[str, Any] | None = None,
        history: bool = True, meta: dict[str, Any] | None = None, replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
    ) -> ChatStream[str]: ...

    @overload
    def stream(
        self, *args: str | Content, content: Literal["all"],
        echo: Echo | None = None, model: str | None = None, params: dict[str, Any] | None = None,
        history: bool = True, meta: dict[str, Any] | None = None, replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
    ) -> ChatStream[StreamContent]: ...

    def stream(
        self, *args: str | Content, content: Literal["text", "all"] = "text",
        echo: Echo | None = None, model: str | None = None, params: dict[str, Any] | None = None,
        history: bool = True, meta: dict[str, Any] | None = None, replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
    ) -> ChatStream[Any]:
        """Send a message and yield the answer as it arrives.

        ``content="text"`` yields str pieces; ``"all"`` yields typed contents in order:
        ``ContentText`` and ``ContentThinking`` pieces, ``ContentToolRequest`` and
        ``ContentToolResult``. ``model`` and ``params`` apply to this call only;
        ``history=False`` sends the prompt alone and records nothing; ``meta`` annotates the
        turns (``cell_id``, ``source``; ``{"new_conversation": True}`` starts a new conversation:
        sent with no history, and the exchanges after it continue from it, not those before);
        ``replace_from=i`` sends the conversation before ``i`` and replaces the turns from ``i``
        on once the answer is in; ``replace=(i, j)`` sends the conversation before ``i`` and puts
        the exchange in place of ``turns[i:j]`` (``i == j``: inserts it there), the turns after
        ``j`` staying (a notebook cell run again, or one placed above cells that ran before it).
        Give at most one of the two. The conversation before ``i`` is the turns before it, from
        the last exchange that started a new one (``conversation_start``).
        The returned ``ChatStream`` has ``user_turn``, ``turn`` and ``turns`` once it is done.
        Stopping early (``break``, ``close()``) keeps the text so far as a partial answer."""
        _check_content(content)
        mode = _start_echo(args, echo, "none")
        result = _Outcome()
        opts = {"model": model, "params": params, "history": history, "meta": meta,
                "replace_from": replace_from, "replace": replace}
        return ChatStream(self._stream_items(args, opts, content, mode, result), result)

    def _stream_items(
        self, args: Sequence[str | Content], opts: dict[str, Any], content: str, mode: Echo,
        result: _Outcome,
    ) -> Generator[Any, None, None]:
        # Closing this generator early (break, close()) closes the exchange at once: the partial
        # answer is recorded and the chat freed now, not whenever the inner one is collected.
        __tracebackhide__ = True  # noqa: F841
        with closing(self._run(args, opts, result)) as items:
            for item in items:
                if mode != "none":
                    _echo_item(item)
                if content == "all":
                    yield item
                elif isinstance(item, ContentText):
                    yield item.text

    async def chat_async(
        self, *args: str | Content, echo: Echo | None = None, model: str | None = None,
        params: dict[str, Any] | None = None, **kwargs: Any,
    ) -> str:
        """``chat()`` on the running event loop; several tool calls of one answer run at once."""
        __tracebackhide__ = True  # noqa: F841
        return await self._acollect(args, echo, dict(kwargs, model=model, params=params))

    async def _acollect(
        self, args: Sequence[str | Content], echo: Echo | None, opts: dict[str, Any],
        result: _Outcome | None = None,
    ) -> str:
        __tracebackhide__ = True  # noqa: F841
        mode = _start_echo(args, echo, self._echo)
        out: list[str] = []
        opts.setdefault("stream", mode != "none")  # as in chat()
        async with aclosing(self._arun(args, opts, result)) as items:
            async for item in items:
                _take(item, out, mode)
        if mode != "none":
            _write("\n")
        return _final_text(out)

    @overload
    def stream_async(
        self, *args: str | Content, content: Literal["text"] = "text",
        echo: Echo | None = None, model: str | None = None, params: dict[str, Any] | None = None,
        history: bool = True, meta: dict[str, Any] | None = None, replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
    ) -> AsyncChatStream[str]: ...

    @overload
    def stream_async(
        self, *args: str | Content, content: Literal["all"],
        echo: Echo | None = None, model: str | None = None, params: dict[str, Any] | None = None,
        history: bool = True, meta: dict[str, Any] | None = None, replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
    ) -> AsyncChatStream[StreamContent]: ...

    def stream_async(
        self, *args: str | Content, content: Literal["text", "all"] = "text",
        echo: Echo | None = None, model: str | None = None, params: dict[str, Any] | None = None,
        history: bool = True, meta: dict[str, Any] | None = None, replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
    ) -> AsyncChatStream[Any]:
        """``stream()`` for ``async for``; the returned object has ``aclose()``."""
        _check_content(content)
        mode = _start_echo(args, echo, "none")
        result = _Outcome()
        opts = {"model": model, "params": params, "history": history, "meta": meta,
                "replace_from": replace_from, "replace": replace}
        return AsyncChatStream(self._astream_items(args, opts, content, mode, result), result)

    async def _astream_items(
        self, args: Sequence[str | Content], opts: dict[str, Any], content: str, mode: Echo,
        result: _Outcome,
    ) -> AsyncGenerator[Any, None]:
        # As in stream(); an async generator is only closed by aclose() (or, after a plain
        # ``break``, by the event loop a moment later), so pass that close on to the exchange.
        __tracebackhide__ = True  # noqa: F841
        async with aclosing(self._arun(args, opts, result)) as items:
            async for item in items:
                if mode != "none":
                    _echo_item(item)
                if content == "all":
                    yield item
                elif isinstance(item, ContentText):
                    yield item.text

    # -- structured output --------------------------------------------------------------------

    def chat_structured(
        self, *args: str | Content, data_model: Any, echo: Echo | None = None, **kwargs: Any
    ) -> Any:
        """Ask for an answer shaped as ``data_model`` (a dataclass, pydantic model, TypedDict or
        JSON-schema dict) through ``response_format``; return an instance of it (a dict for a
        JSON schema or a TypedDict). ``StructuredOutputError`` keeps the raw text as ``.raw``.

        Sends ``{"type": "json_schema", ...}``; a server that refuses that form (llama-cpp-python's
        takes ``{"type": "json_object", "schema": ...}``) is asked again in its own form, and
        this chat remembers it."""
        fmt = response_format(data_model, compat=self._schema_compat)
        result = _Outcome()
        try:
            text = self._collect(args, echo, dict(kwargs, response_format=fmt), result)
        except APIStatusError as exc:
            if self._schema_compat or not _refuses_json_schema(exc):
                raise
            self._schema_compat = True
            fmt = response_format(data_model, compat=True)
            text = self._collect(args, echo, dict(kwargs, response_format=fmt), result)
        return parse_structured(text, data_model, _finish(result))

    async def chat_structured_async(
        self, *args: str | Content, data_model: Any, echo: Echo | None = None, **kwargs: Any
    ) -> Any:
        fmt = response_format(data_model, compat=self._schema_compat)
        result = _Outcome()
        try:
            text = await self._acollect(args, echo, dict(kwargs, response_format=fmt), result)
        except APIStatusError as exc:
            if self._schema_compat or not _refuses_json_schema(exc):
                raise
            self._schema_compat = True
            fmt = response_format(data_model, compat=True)
            text = await self._acollect(args, echo, dict(kwargs, response_format=fmt), result)
        return parse_structured(text, data_model, _finish(result))

    # -- the exchange, driven by one sync and one async loop ------------------------------------

    def _prepare(
        self,
        args: Sequence[str | Content],
        model: str | None = None,
        params: dict[str, Any] | None = None,
        history: bool = True,
        meta: dict[str, Any] | None = None,
        stream: bool = True,
        replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
    ) -> tuple[Turn, dict[str, Any]]:
        """Build the user turn and the request body.

        ``history=False`` sends the prompt alone and records nothing; ``replace_from=i`` or
        ``replace=(i, j)`` send only the turns before ``i`` (what ``stream`` does with the
        answer is ``_Exchange.span``).
        """
        contents = _contents(args)
        user = Turn("user", contents, started_at=_now(), meta=dict(meta or {}))
        resolved = model or self.provider.resolve_model()
        if self.provider.priced:
            warm_up_prices()
        fresh = not history or user.meta.get(NEW_KEY) is True
        past = [] if fresh else self._past(_span(self._turns, replace_from, replace)[0])
        messages = self._messages([*past, user])
        body = self.provider.body(messages, model=resolved, stream=stream, params=params)
        user.model = resolved
        return user, body

    def _past(self, end: int) -> list[Turn]:
        """What an exchange placed at ``end`` is sent as its history: the conversation before it."""
        return self._turns[conversation_start(self._turns, end):end]

    def request_preview(
        self,
        *args: str | Content,
        model: str | None = None,
        params: dict[str, Any] | None = None,
        history: bool = True,
        replace_from: int | None = None,
        replace: tuple[int, int] | None = None,
        system_prompt: str | None | Literal[False] = False,
        source: str | None = None,
    ) -> RequestPreview:
        """The first request of an exchange, built and not sent: its body and what the spend
        guard would check of it (``%%chat --dry-run`` shows these numbers). Nothing is asked of
        the server: the model is the one given or known (None: the server would be asked).
        ``system_prompt``: another one for this preview (False: the chat's own)."""
        user = Turn("user", _contents(args))
        past = self._past(_span(self._turns, replace_from, replace)[0]) if history else []
        messages = self._messages([*past, user], system_prompt)
        body = self.provider.body(messages, model=model or self.provider.model or "", stream=True,
                                  params=params)
        if self._tools:
            body.setdefault("tools", [t.schema() for t in self._tools.values()])
        return RequestPreview(body, spend_request(body, self.provider, source))

    def _run(
        self, args: Sequence[str | Content], opts: dict[str, Any], result: _Outcome | None = None
    ) -> Generator[StreamContent, None, None]:
        """The sync driver: stream each request, run the tools it asks for, until done."""
        __tracebackhide__ = True  # noqa: F841 - IPython hides this frame (its locals hold the answer)
        with self._guard():
            # Replay-only: refused before the model is asked of the server or the local one starts.
            _cleanly(spend_guard.check_sending)
            ex = _cleanly(_Exchange, self, args, opts)
            _cleanly(ex.fit)
            self._notify("start")
            try:
                while True:
                    with self.provider.stream(ex.request()) as chunks:
                        for data in chunks:
                            yield from ex.feed(data)
                    requests = ex.end_round()
                    if not requests:
                        break
                    yield from requests
                    for request in requests:
                        done = ex.invoke(request)
                        yield done
            except BaseException as exc:  # KeyboardInterrupt and GeneratorExit included
                ex.close(exc, result)
                if isinstance(exc, (LLMChatError, KeyboardInterrupt)):
                    data = ""  # noqa: F841 - a chunk may echo the key, and this frame stays shown
                    raise_clean(exc)  # the frames below hold the request, its key, the answer
                raise
            ex.close(None, result)

    async def _arun(
        self, args: Sequence[str | Content], opts: dict[str, Any], result: _Outcome | None = None
    ) -> AsyncGenerator[StreamContent, None]:
        """The async driver: as ``_run``, with the calls of one answer run concurrently."""
        import asyncio

        __tracebackhide__ = True  # noqa: F841 - as in _run
        with self._guard():
            _cleanly(spend_guard.check_sending)  # as in _run
            if not opts.get("model") and not self.provider.model:
                # Ask /models without blocking the loop; _prepare then finds the model set.
                try:
                    await self.provider.aresolve_model()
                except (LLMChatError, KeyboardInterrupt) as exc:
                    raise_clean(exc)
            ex = _cleanly(_Exchange, self, args, opts)
            try:
                await ex.afit()  # the bundled model's server may start here: awaited
            except (LLMChatError, KeyboardInterrupt) as exc:
                raise_clean(exc)
            self._notify("start")
            try:
                while True:
                    async with self.provider.astream(ex.request()) as chunks:
                        async for data in chunks:
                            for item in ex.feed(data):
                                yield item
                    requests = ex.end_round()
                    if not requests:
                        break
                    for request in requests:
                        yield request
                    for done in await asyncio.gather(*(ex.ainvoke(r) for r in requests)):
                        yield done
            except BaseException as exc:  # CancelledError and GeneratorExit included
                ex.close(exc, result)
                if isinstance(exc, (LLMChatError, KeyboardInterrupt)):
                    data = ""  # noqa: F841 - as in _run
                    raise_clean(exc)
                raise
            ex.close(None, result)

    def _record(self, user: Turn, turns: list[Turn], history: bool, span: tuple[int, int],
                exchange: ChatExchange, result: _Outcome) -> None:
        """Put one exchange into the history (unless ``history=False``) in place of
        ``turns[span[0]:span[1]]``, and tell listeners.

        Its spend is already in the ledgers: each answer settled its request (``_Exchange``)."""
        if history:
            start, end = span
            self._turns[start:end] = [user, *turns]
            result.at, result.replaced = start, end - start
        self._notify("turn", exchange)

    def _messages(self, turns: Sequence[Turn],
                  system_prompt: str | None | Literal[False] = False) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        system = self._system_prompt if system_prompt is False else system_prompt
        if system:
            msgs.append({"role": "system", "content": system})
        for t in turns:
            msgs.extend(_wire(t, self.max_tool_result_chars))
        return msgs

    # -- locking and listeners ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while an answer is streaming."""
        return self._lock.locked()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) until no answer is streaming; return not ``busy``.

        A listener hears "turn" or "abort" just before the answer lets the chat go: this is for
        whoever sends the next message right then."""
        with self._idle:
            return self._idle.wait_for(lambda: not self.busy, timeout)

    def _guard(self) -> _Guard:
        return _Guard(self)

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(chat, event, exchange)`` after every change (``event``: see ``ChatEvent``);
        how the Jupyter layer follows a chat."""
        if fn not in self._listeners:
            self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _notify(self, event: ChatEvent, exchange: ChatExchange | None = None) -> None:
        for fn in list(self._listeners):
            try:
                fn(self, event, exchange)
            except Exception as exc:  # a broken listener must not break the conversation
                print(f"jupyter_llmchat: listener failed: {exc!r}", file=sys.stderr)

    def reset(self) -> None:
        """Forget every turn (the system prompt stays)."""
        with self._guard():
            self._turns = []
        self._notify("reset")

    # -- persistence --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The conversation as JSON: provider name, URL, model, params, system prompt and turns.

        Never a credential, header or ``api_args`` (which may carry secrets)."""
        return json.dumps(self._state(), ensure_ascii=False)

    def _state(self) -> dict[str, Any]:
        p = self.provider
        return {
            "version": 1,
            "provider": p.describe(),
            "params": p.params,
            "system_prompt": self._system_prompt,
            "turns": [t.to_dict() for t in self._turns],
        }

    @classmethod
    def from_json(
        cls,
        data: str | dict[str, Any],
        *,
        credentials: Any = None,
        api_key: str | None = None,
        api_args: dict[str, Any] | None = None,
        api_headers: dict[str, str] | None = None,
        echo: Echo | None = None,
        **overrides: Any,
    ) -> Chat:
        """Rebuild a Chat from ``to_json()``; pass ``credentials=``, ``api_headers=`` etc. again
        (they are never saved). ``base_url``, ``name``, ``model``, ``params`` and
        ``system_prompt`` override the saved ones. Tools are functions: register them again."""
        unknown = set(overrides) - {"base_url", "name", "model", "params", "system_prompt"}
        if unknown:
            raise TypeError(f"from_json() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        if api_key is not None:
            warnings.warn("api_key is deprecated; use credentials= (a str, or a function returning one)",
                          DeprecationWarning, stacklevel=2)
            credentials = api_key if credentials is None else credentials
        state = json.loads(data) if isinstance(data, str) else data
        prov = state.get("provider") or {}
        params = overrides.get("params", state.get("params"))
        if params is not None and not isinstance(params, dict):
            raise ConfigurationError("params must come from params(...) or be a dict")
        provider = OpenAICompatible(
            base_url=overrides.get("base_url", prov.get("base_url")) or "",
            name=overrides.get("name", prov.get("name") or "OpenAI-compatible"),
            model=overrides.get("model", prov.get("model")),
            params=params,
            api_args=api_args,
            api_headers={str(k): str(v) for k, v in (api_headers or {}).items()},
            credentials=credentials_from(credentials, "OPENAI_API_KEY"),
            price_lookup=True,
        )
        chat = cls(provider, system_prompt=overrides.get("system_prompt", state.get("system_prompt")),
                   echo=echo or "none")
        chat.set_turns([Turn.from_dict(t) for t in state.get("turns", [])])
        return chat

    def copy(self) -> Chat:
        """An independent copy: same settings, its own history and HTTP connections."""
        prov = self.provider.fresh()
        # Turns are mutable (the Jupyter layer annotates ``meta``): the copy gets its own.
        turns = _copy.deepcopy(self._turns)
        chat = Chat(prov, system_prompt=self._system_prompt, echo=self._echo, turns=turns,
                    max_tool_rounds=self.max_tool_rounds,
                    max_tool_result_chars=self.max_tool_result_chars)
        chat._tools = dict(self._tools)  # tools are immutable records: sharing them is safe
        self._tool_callbacks.copy_into(chat._tool_callbacks)
        chat._schema_compat = self._schema_compat
        return chat

    def __repr__(self) -> str:
        p = self.provider
        n = len(self._turns)
        cost_s = format_row_cost(self.get_cost(), free=self.provider.free)
        return (
            f"<Chat {p.name} model={p.model or '(auto)'} url={p.display_url} "
            f"turns={n} cost={cost_s}>"
        )


class _Guard:
    """Holds a Chat's lock for one exchange; a second sender is refused, never interleaved."""

    def __init__(self, chat: Chat) -> None:
        self.chat = chat

    def __enter__(self) -> None:
        if not self.chat._lock.acquire(blocking=False):
            raise ChatBusyError(
                "this chat is busy answering another message",
                hint="wait for it to finish, or stop it",
            )

    def __exit__(self, *exc: object) -> None:
        with self.chat._idle:  # released and told under the condition: no waiter misses it
            self.chat._lock.release()
            self.chat._idle.notify_all()


def _cleanly(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, an LLMChatError or Ctrl-C in it raised without the frames below (see
    ``raise_clean``: asking ``/models`` sends the key too)."""
    __tracebackhide__ = True  # noqa: F841
    try:
        return fn(*args)
    except (LLMChatError, KeyboardInterrupt) as exc:
        raise_clean(exc)


def _is_cancel(exc: BaseException | None) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _write(s: str) -> None:
    sys.stdout.write(s)
    sys.stdout.flush()


def _contents(args: Sequence[str | Content]) -> list[Content]:
    if not args:
        raise ConfigurationError("nothing to send: give a prompt")
    out: list[Content] = []
    for a in args:
        if isinstance(a, str):
            out.append(ContentText(a))
        elif isinstance(a, (ContentText, ContentImage)):
            out.append(a)
        else:
            raise ConfigurationError(f"cannot send a {type(a).__name__}; give str or content objects")
    if not any((isinstance(c, ContentText) and c.text.strip()) or isinstance(c, ContentImage) for c in out):
        raise ConfigurationError("the prompt is empty")
    return out


def _start_echo(args: Sequence[str | Content], echo: str | None, default: Echo) -> Echo:
    """The echo mode in force; with "all", the prompt is printed first."""
    mode = _check_echo(echo, default)
    if mode == "all":
        _write("> " + " ".join(a if isinstance(a, str) else f"[{a.type}]" for a in args) + "\n")
    return mode


def _span(
    turns: Sequence[Turn], replace_from: int | None, replace: tuple[int, int] | None
) -> tuple[int, int]:
    """The part of the history an exchange takes the place of (empty at the end: appended)."""
    if replace is not None:
        if replace_from is not None:
            raise ConfigurationError("give replace_from or replace, not both")
        start, end = replace
        if not 0 <= start <= end <= len(turns) or start % 2 or end % 2:
            raise ConfigurationError(f"replace={replace!r} is not a span of whole exchanges "
                                     f"of this history ({len(turns)} turns)")
        return start, end
    if replace_from is not None:
        start = max(0, min(replace_from, len(turns)))
        return start, len(turns)
    return len(turns), len(turns)


def _check_tool_turns(turns: list[Turn]) -> None:
    try:
        check_tool_pairs(turns)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _refuses_json_schema(exc: APIStatusError) -> bool:
    """The server validated response_format and does not know ``json_schema`` (a request it
    refused produced nothing, so asking again is safe)."""
    return refuses_json_schema(exc.status_code, exc.body)


def _finish(result: _Outcome) -> str | None:
    """The finish reason of an exchange's final answer (None if nothing was recorded)."""
    return result.turns[-1].finish_reason if result.turns else None


def _check_content(content: str) -> None:
    if content not in ("text", "all"):
        raise ConfigurationError(f'content={content!r} is not "text" or "all"')


def _take(item: StreamContent, out: list[str], mode: Echo) -> None:
    """Collect the final answer's text for ``chat()``: text before a tool round is dropped."""
    if isinstance(item, ContentText):
        out.append(item.text)
    elif isinstance(item, ContentToolResult):
        out.clear()
    if mode != "none":
        _echo_item(item)


def _final_text(out: list[str]) -> str:
    return "".join(out)


def _echo_item(item: StreamContent) -> None:
    if isinstance(item, ContentText):
        _write(item.text)
    elif isinstance(item, ContentToolRequest):
        _write(f"\n[tool call] {item.name}({short_arguments(item.arguments)})\n")
    elif isinstance(item, ContentToolResult):
        _write(f"[tool {'error' if item.error is not None else 'ok'}] {item.name or item.id}\n")


class _Outcome:
    """What one exchange recorded, filled in when it ends (read through ``ChatStream``)."""

    __slots__ = ("at", "recorded", "replaced", "turns", "user_turn")

    def __init__(self) -> None:
        self.user_turn: Turn | None = None
        self.turns: list[Turn] = []
        self.recorded = False
        self.at: int | None = None
        self.replaced = 0


class ChatExchange:
    """One exchange as recorded: what a ``ChatStream`` reads once it is done, and what listeners
    receive with the "turn" event."""

    _outcome: _Outcome

    def __init__(self, outcome: _Outcome) -> None:
        self._outcome = outcome

    @property
    def user_turn(self) -> Turn | None:
        """The prompt's turn, once the exchange is over and kept something."""
        return self._outcome.user_turn

    @property
    def turn(self) -> Turn | None:
        """The final assistant turn (``partial=True`` when cut short), or None (nothing arrived,
        or not over yet)."""
        return self._outcome.turns[-1] if self._outcome.turns else None

    @property
    def turns(self) -> list[Turn]:
        """Every turn of the exchange: the prompt, the tool rounds, the answer."""
        if self._outcome.user_turn is None:
            return []
        return [self._outcome.user_turn, *self._outcome.turns]

    @property
    def recorded(self) -> bool:
        """Whether the turns went into the chat's history (``history=False``: they did not)."""
        return self._outcome.recorded

    @property
    def at(self) -> int | None:
        """Where the exchange's first turn went in the history (None: not recorded)."""
        return self._outcome.at

    @property
    def replaced(self) -> int:
        """How many turns it took the place of there (0: appended or inserted)."""
        return self._outcome.replaced


class ChatStream(ChatExchange, Generic[T]):
    """The iterator ``Chat.stream()`` returns; ``close()`` ends the exchange at once."""

    def __init__(self, gen: Generator[T, None, None], outcome: _Outcome) -> None:
        self._gen = gen
        self._outcome = outcome

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        __tracebackhide__ = True  # noqa: F841
        return next(self._gen)

    def close(self) -> None:
        self._gen.close()

    def __enter__(self) -> ChatStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncChatStream(ChatExchange, Generic[T]):
    """The async iterator ``Chat.stream_async()`` returns; ``aclose()`` ends the exchange."""

    def __init__(self, gen: AsyncGenerator[T, None], outcome: _Outcome) -> None:
        self._gen = gen
        self._outcome = outcome

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        __tracebackhide__ = True  # noqa: F841
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> AsyncChatStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Exchange:
    """One exchange's decisions, without I/O: request bodies, decoding, the tool loop and its
    bound, and what is recorded. ``Chat._run`` and ``Chat._arun`` drive it.

    Rounds: ``body()`` starts a request; ``feed()`` decodes its stream; ``end_round()`` turns it
    into an assistant turn and returns the tool calls it asks for (none: the exchange is done);
    each call's result comes back through ``invoke``/``ainvoke``; when all are in, a user turn
    holds them and the next ``body()`` sends them. ``close()`` records the exchange: whole, or,
    after an error or interrupt, what is consistent (calls that never ran get an error result,
    and a partial assistant turn ends the history, so it stays a valid alternation)."""

    def __init__(self, chat: Chat, args: Sequence[str | Content], opts: dict[str, Any]) -> None:
        opts = dict(opts)
        response_format = opts.pop("response_format", None)
        self.chat = chat
        self.history = opts.get("history", True)
        self.user, body = chat._prepare(args, **opts)
        #: Where the exchange goes in the history (fixed now: the chat is held until it ends).
        self.span = _span(chat._turns, opts.get("replace_from"), opts.get("replace"))
        self.tools = dict(chat._tools)  # the tools in force when the exchange began
        if self.tools:
            body.setdefault("tools", [t.schema() for t in self.tools.values()])
        if response_format is not None:
            body.setdefault("response_format", response_format)
        self._body = body
        self._base = list(body["messages"])
        self.turns: list[Turn] = []
        self.rounds = 0
        self.answer = _Answer(chat.provider.redact)
        self.t0 = time.perf_counter()
        self.started: _dt.datetime | None = self.user.started_at
        self.pending: list[ContentToolRequest] = []
        self.results: dict[str, ContentToolResult] = {}
        self.bad_args: dict[str, str] = {}
        #: The last turn already ends the exchange (a partial answer): close() adds none.
        self.ended = False
        #: The request in flight's pass of the spend guard, until its answer settles it.
        self.reservation: Reservation | None = None

    def _meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.user.meta.items() if k in ("cell_id", "source")}

    def fit(self) -> None:
        """Let the provider shorten the first request to its model's context (the bundled model
        leaves the oldest turns out rather than overflow it); later rounds start from the same."""
        self._fitted(self.chat.provider.fit_context(self._body))

    async def afit(self) -> None:
        """``fit`` on the event loop: what the provider asks its server is awaited."""
        self._fitted(await self.chat.provider.afit_context(self._body))

    def _fitted(self, note: str | None) -> None:
        self._base = list(self._body["messages"])
        if note:
            self.user.meta["context_note"] = note

    def body(self) -> dict[str, Any]:
        """The next request's body; starts its clock."""
        self.t0 = time.perf_counter()
        if not self.turns:
            return self._body
        self.started = _now()
        messages = list(self._base)
        for t in self.turns:
            messages.extend(_wire(t, self.chat.max_tool_result_chars))
        return {**self._body, "messages": messages}

    def request(self) -> dict[str, Any]:
        """The next request's body, once it passed the spend guard (every round does, with the
        model resolved: ``_prepare`` set it); raises ``BudgetExceeded`` and sends nothing."""
        body = self.body()
        source = self.user.meta.get("source")
        self.reservation = spend_guard.reserve(spend_request(body, self.chat.provider, source))
        return body

    def _settle(self, turn: Turn | None) -> None:
        """The request in flight is over: its answer's usage (``turn``) or nothing (None)."""
        reservation, self.reservation = self.reservation, None
        if reservation is not None:
            if turn is None:
                reservation.release()
            else:
                reservation.settle(turn)

    def feed(self, data: str) -> list[StreamContent]:
        return [ContentText(p) if kind == "text" else ContentThinking(p) for kind, p in self.answer.feed(data)]

    def end_round(self) -> list[ContentToolRequest]:
        """After a request's stream ended: its assistant turn; the tool calls to run now."""
        if not self.answer.complete:
            skipped = f" ({self.answer.skipped} unreadable chunks skipped)" if self.answer.skipped else ""
            raise StreamError(
                f"the answer's stream from {self.chat.provider.display_url} ended before it was "
                f"complete{skipped}"
            )
        _check_not_empty(self.answer, self.chat.provider.url("chat/completions"))
        if self.answer.finish_reason == "length" and self.answer.calls:
            self._end_cut_off()
        requests, self.bad_args = self.answer.tool_requests()
        self.turns.append(self._reply(self.answer, requests, partial=False))
        self._settle(self.turns[-1])
        self.answer = _Answer(self.chat.provider.redact)
        if not requests:
            return []
        self.pending, self.results = requests, {}
        if self.rounds >= self.chat.max_tool_rounds:
            raise ToolError(
                f"the model asked for tools in {self.rounds + 1} answers in a row; "
                f"max_tool_rounds={self.chat.max_tool_rounds}"
            )
        self.rounds += 1
        return requests

    def _end_cut_off(self) -> None:
        """The answer ran out of ``max_tokens`` inside a tool call: its calls are incomplete, and
        asking again would be cut the same way. End on it now, a partial answer without them."""
        self.turns.append(self._reply(self.answer, [], partial=True))
        self._settle(self.turns[-1])
        self.ended = True
        raise ToolError(
            "the model's tool call was cut off by max_tokens (finish_reason \"length\"); "
            "it was not run",
            hint="raise max_tokens (params(max_tokens=...), or %%chat --max-tokens N)",
        )

    def _check(self, request: ContentToolRequest) -> tuple[Tool | None, ContentToolResult | None]:
        if request.id in self.bad_args:
            return None, bad_arguments(request.id, request.name, self.bad_args[request.id])
        tool = self.tools.get(request.name)
        if tool is None:
            return None, unknown_tool(request)
        return tool, None

    def _allow(self, tool: Tool, request: ContentToolRequest) -> ContentToolResult | None:
        """The request callbacks, the chat's then the process's: a refusal, or None (run it)."""
        asked = dataclasses.replace(request, tool=tool)
        return (self.chat._tool_callbacks.check_request(asked)
                or tool_hooks.check_request(asked))

    def invoke(self, request: ContentToolRequest) -> ContentToolResult:
        tool, result = self._check(request)
        if tool is not None:
            result = self._allow(tool, request) or tool.invoke(request)
        assert result is not None
        return self._add(result)

    async def ainvoke(self, request: ContentToolRequest) -> ContentToolResult:
        tool, result = self._check(request)
        if tool is not None:
            result = self._allow(tool, request) or await tool.ainvoke(request)
        assert result is not None
        return self._add(result)

    def _add(self, result: ContentToolResult) -> ContentToolResult:
        self.chat._tool_callbacks.tell_result(result)
        tool_hooks.tell_result(result)
        self.results[result.id] = result
        if len(self.results) == len(self.pending):
            self._close_round()
        return result

    def _close_round(self, why: str | None = None) -> None:
        """All results in (or, with ``why``, the missing ones failed): the user turn holding them."""
        results: list[Content] = [
            self.results.get(r.id) or ContentToolResult(r.id, None, f"Tool call not run: {why}", name=r.name)
            for r in self.pending
        ]
        self.turns.append(Turn("user", results, started_at=_now(), meta=self._meta()))
        self.pending, self.results = [], {}

    def _reply(self, answer: _Answer, requests: list[ContentToolRequest], *, partial: bool,
               exc: BaseException | None = None) -> Turn:
        contents: list[Content] = []
        if answer.thinking:
            contents.append(ContentThinking("".join(answer.thinking)))
        if answer.text or not requests:
            contents.append(ContentText("".join(answer.text)))
        contents.extend(requests)
        provider = self.chat.provider
        model = answer.model or self.user.model or provider.model or "unknown"
        tokens = answer.tokens()
        finish = "refusal" if answer.refused else answer.finish_reason
        if partial and finish is None:
            cancelled = isinstance(exc, (KeyboardInterrupt, GeneratorExit)) or _is_cancel(exc)
            finish = "interrupted" if cancelled else "error"
        return Turn(
            "assistant",
            contents,
            tokens=tokens,
            cost=cost_of(provider.price_provider, model, tokens),
            finish_reason=finish,
            partial=partial,
            started_at=self.started,
            duration=time.perf_counter() - self.t0,
            model=model,
            meta=self._meta(),
            skipped=answer.skipped,
            free=provider.free,
        )

    def close(self, exc: BaseException | None, result: _Outcome | None) -> None:
        """Record the exchange (``exc``: it was cut short by this)."""
        if exc is not None and not self.ended:
            between = bool(self.pending)  # cut while tools ran: no request was under way
            if self.pending:
                cancelled = isinstance(exc, (KeyboardInterrupt, GeneratorExit)) or _is_cancel(exc)
                self._close_round("interrupted" if cancelled else f"{type(exc).__name__}: {exc}")
            if not self.answer.has_content and not self.turns:
                self._settle(None)
                self.chat._notify("abort")
                return  # nothing arrived: leave history as it was
            # Calls not yet complete in a cut stream never ran: they are left out.
            end = self._reply(self.answer, [], partial=True, exc=exc)
            if between or isinstance(exc, BudgetExceeded):
                # This turn only closes the history (between rounds, or a later round the spend
                # guard refused); no server answered it, so it cost nothing (unknown tokens would
                # make the exchange's known totals unknown).
                end.tokens, end.cost = Tokens(0, 0, 0), 0.0
            self.turns.append(end)
            self._settle(end)
        # Filled in before listeners hear of it: they read the same exchange the caller will.
        result = result if result is not None else _Outcome()
        result.user_turn, result.turns, result.recorded = self.user, list(self.turns), self.history
        self.chat._record(self.user, self.turns, self.history, self.span, ChatExchange(result),
                          result)
