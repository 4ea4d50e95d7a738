"""MCP servers' tools as a Chat's tools, on the official ``mcp`` SDK (the extra ``[mcp]``).

The SDK's transports are anyio context managers that must be entered and left in one task, so
every connection lives in one task of one event loop running in a thread of its own, for its
whole life. The sync and the async API are then the same code: a sync call waits on that loop's
future, an async one awaits it from any other loop (a kernel's, ``asyncio.run``'s).

A stdio server is started through ``_mcp_launcher.py``, which ends the server's process group
when this process is gone, however it ended (see there). ``mcp_servers`` is this module's one
piece of process state: the running servers by name, so that registering the same
configuration again reuses its server, and so that they stop when the process exits.

Env values and headers are secrets: ``${env:VAR}`` in them is read from the environment when
the server starts, and they never appear in a repr, an error, a listing or the record.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from .._errors import ConfigurationError, MCPError, MCPTimeoutError
from ._mcp_config import MCPServerConfig, expand_env
from ._provider import safe_url
from ._tools import Tool

__all__ = [
    "MCPConnection",
    "MCPServerConfig",
    "MCPToolFunc",
    "connect",
    "connect_async",
    "mcp_servers",
    "server_of",
    "stop",
    "stop_async",
]

T = TypeVar("T")

#: Seconds a reused server has to answer a ping.
PING_S = 5.0
#: Least seconds a server has to start and answer MCP's ``initialize``.
START_S = 60.0
#: Seconds a server has to stop (the SDK closes stdin, then SIGTERM, then SIGKILL).
STOP_TIMEOUT_S = 10.0

_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_LAUNCHER = str(Path(__file__).with_name("_mcp_launcher.py"))


# -- the event loop all connections live on -------------------------------------------------------


class _Loop:
    """One event loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="jupyter_llmchat mcp",
                                          daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.get())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for it here (a sync caller's thread)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise MCPError("an MCP call cannot wait on its own event loop")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
        except KeyboardInterrupt:
            future.cancel()
            raise

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))


_loop = _Loop()


def _first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (anyio's task groups wrap what failed); by its
    ``exceptions``, as Python 3.10 has no built-in group (anyio brings a backport)."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and inner:
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


def _said(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


# -- one connection -------------------------------------------------------------------------------


class MCPConnection:
    """A running MCP server (or a session with a remote one), owned by one task on the loop."""

    def __init__(self, config: MCPServerConfig) -> None:
        self.config = config
        self.name = config.name or ""
        self.server_tools: list[Any] = []  # the SDK's Tool records, as listed at start
        self.ended: str | None = None  # why it is no longer usable, once it is not
        self._session: Any = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport_args: tuple[str, dict[str, str]] = ("", {})

    def __repr__(self) -> str:
        state = f"ended: {self.ended}" if self.ended else "running"
        return f"<MCPConnection {self.name!r} {self.config.describe()} {state}>"

    @property
    def running(self) -> bool:
        return self.ended is None and self._session is not None

    # -- on the loop ------------------------------------------------------------------------

    async def start(self) -> None:
        # Read ${env:VAR} and find the command first: a mistake there is the user's to fix,
        # said as it is rather than as a server that failed.
        self._transport_args = self._resolve()
        self._stop = asyncio.Event()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._serve(ready))
        try:
            # A short call timeout is no reason to give a server (and the SDK's import) less.
            await asyncio.wait_for(asyncio.shield(ready), max(self.config.timeout, START_S))
        except asyncio.TimeoutError:
            await self.stop()
            raise MCPTimeoutError(
                f"the MCP server {self._label()} did not start within "
                f"{max(self.config.timeout, START_S):g} s",
                hint="is it an MCP server speaking over stdin/stdout (or at that URL)?",
            ) from None

    def _label(self) -> str:
        return repr(self.name) if self.name else f"`{self.config.describe()}`"

    async def _serve(self, ready: asyncio.Future[None]) -> None:
        from contextlib import AsyncExitStack

        from mcp import ClientSession  # lazy: only a process that uses MCP pays the SDK's import

        assert self._stop is not None
        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(read, write))
                init = await session.initialize()
                if not self.name:
                    self.name = _tool_name(str(init.server_info.name or "mcp"))
                self.server_tools = await _list_tools(session)
                self._session = session
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - every way out is told to the caller
            why = self._scrub(_said(_first_error(exc)))
            if not ready.done():
                ready.set_exception(MCPError(
                    f"could not start the MCP server {self._label()}: {why}",
                    hint="check the command or URL and the headers; a stdio server's own "
                    "messages go to the kernel's stderr (its log)"))
            elif self.ended is None:
                self.ended = why
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._session = None
            if self.ended is None:
                self.ended = "stopped"

    def _resolve(self) -> tuple[str, dict[str, str]]:
        """The command's path (or the URL) and the env (or headers), ``${env:VAR}`` read."""
        config = self.config
        if config.command is not None:
            env = {k: expand_env(v, f"env {k!r} of MCP server {self._label()}")
                   for k, v in config.env}
            command = shutil.which(config.command, path=env.get("PATH", os.environ.get("PATH")))
            if command is None:
                raise MCPError(f"command {config.command!r} not found (PATH of the server)",
                               hint="give the command's full path, or fix PATH")
            return command, env
        return config.url or "", {
            k: expand_env(v, f"header {k!r} of MCP server {self._label()}")
            for k, v in config.headers}

    def _scrub(self, text: str) -> str:
        """``text`` (a lower layer's error) with no env value, header value or URL secret in it:
        a library may quote what it was given."""
        where, secrets = self._transport_args
        if self.config.url is not None:
            text = text.replace(where, safe_url(where))
        for value in sorted(secrets.values(), key=len, reverse=True):
            if len(value) >= 4:
                text = text.replace(value, "***")
        return text

    def _transport(self) -> Any:
        where, secrets = self._transport_args
        if self.config.command is not None:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            if sys.platform == "win32":  # the SDK's Job Object (kill on close) ends the tree
                command, args = where, list(self.config.args)
            else:
                command, args = sys.executable, [_LAUNCHER, str(os.getpid()), "--", where,
                                                 *self.config.args]
            params = StdioServerParameters(command=command, args=args, env=secrets or None)
            errlog = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
            return stdio_client(params, errlog=errlog)
        import httpx2  # the SDK's HTTP client: headers are set on it
        from mcp.client.streamable_http import streamable_http_client

        headers = secrets
        client = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0))
        return _closing_client(client, streamable_http_client(where, http_client=client))

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> Any:
        """Call one tool; its result as text (or the structured value when it sent no text)."""
        from mcp import MCPError as SDKError
        from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

        session = self._session
        if session is None or self.ended is not None:
            raise MCPError(f"the MCP server {self.name!r} is not running "
                           f"({self.ended or 'not started'})")
        timeout = self.config.timeout
        what = f"the call to {tool!r} of the MCP server {self.name!r}"
        try:
            result = await asyncio.wait_for(
                session.call_tool(tool, dict(arguments), read_timeout_seconds=timeout),
                timeout + 5.0,  # the SDK's own timeout comes first; this one if it does not
            )
        except asyncio.TimeoutError:
            raise MCPTimeoutError(f"{what} got no answer within {timeout:g} s") from None
        except SDKError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise MCPTimeoutError(f"{what} got no answer within {timeout:g} s") from None
            if exc.code == CONNECTION_CLOSED:
                self.ended = f"it ended or closed its connection, seen at a call to {tool!r}"
                self._stop_soon()
                raise MCPError(f"the MCP server {self.name!r} ended or closed its connection "
                               f"(seen at a call to {tool!r})") from None
            raise MCPError(f"{what} failed: {self._scrub(_said(exc))}") from None
        # A server may echo what it was given: its env values and headers stay out of the
        # model's input and the record too.
        text = self._scrub(_result_text(result))
        if result.is_error:
            raise MCPError(f"{what} failed: {text}")
        if text == "" and result.structured_content is not None:
            dumped = json.dumps(result.structured_content, ensure_ascii=False)
            scrubbed = self._scrub(dumped)
            return result.structured_content if scrubbed == dumped else scrubbed
        return text

    async def alive(self) -> bool:
        """Whether the server still answers (a ping): one that ended between calls goes
        unnoticed by the SDK until it is asked something."""
        try:
            await asyncio.wait_for(self._session.send_ping(), PING_S)
        except Exception as exc:  # noqa: BLE001 - any failure: it is not usable
            self.ended = f"it did not answer a ping ({self._scrub(_said(_first_error(exc)))})"
            self._stop_soon()
            return False
        return True

    def _stop_soon(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def stop(self) -> None:
        self._stop_soon()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
            except Exception:  # not stopped in time (or it failed stopping): cut it short
                task.cancel()

    # -- tools ------------------------------------------------------------------------------

    def tools(self) -> list[Tool]:
        """The server's tools as ``Tool``s (after include/exclude, named with the namespace)."""
        config = self.config
        known = {t.name for t in self.server_tools}
        missing = [n for n in (*config.include_tools, *config.exclude_tools) if n not in known]
        if missing:
            raise ConfigurationError(
                f"the MCP server {self.name!r} has no tool named {', '.join(map(repr, missing))}",
                hint=f"its tools: {', '.join(sorted(known)) or '(none)'}",
            )
        out = []
        for t in self.server_tools:
            if config.include_tools and t.name not in config.include_tools:
                continue
            if t.name in config.exclude_tools:
                continue
            name = _tool_name(f"{config.namespace}_{t.name}" if config.namespace else t.name)
            annotations = (t.annotations.model_dump(by_alias=True, exclude_none=True)
                           if t.annotations is not None else None)
            out.append(Tool(
                func=MCPToolFunc(self, t.name),
                name=name,
                description=t.description or t.title or "",
                parameters=dict(t.input_schema or {"type": "object", "properties": {}}),
                annotations=annotations or None,
                server=self.name,
            ))
        return out


class _closing_client:
    """The SDK's HTTP transport, and closing the httpx2 client it was given after it."""

    def __init__(self, client: Any, transport: Any) -> None:
        self.client, self.transport = client, transport

    async def __aenter__(self) -> Any:
        return await self.transport.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.transport.__aexit__(*exc)
        finally:
            await self.client.aclose()


async def _list_tools(session: Any) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    while True:
        from mcp_types import PaginatedRequestParams

        listed = await session.list_tools(
            params=PaginatedRequestParams(cursor=cursor) if cursor else None)
        tools.extend(listed.tools)
        cursor = listed.next_cursor
        if not cursor:
            return tools


def _result_text(result: Any) -> str:
    """The text parts of a tool result; other parts as a short placeholder."""
    parts = []
    for block in result.content:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {getattr(block, 'mime_type', '')}: not shown]")
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(block, 'uri', '')}]")
        elif kind == "resource":
            text = getattr(block.resource, "text", None)
            parts.append(text if isinstance(text, str) else
                         f"[resource {getattr(block.resource, 'uri', '')}]")
        else:
            parts.append(f"[{kind or 'unknown'} content: not shown]")
    return "\n".join(parts)


def _tool_name(name: str) -> str:
    """A name the chat-completions API accepts (letters, digits, '_' and '-', at most 64)."""
    return _BAD_NAME_CHARS.sub("_", name)[:64] or "tool"


class MCPToolFunc:
    """The function of an MCP tool: calls it on its server (sync; an async chat runs it in a
    worker thread, as any sync tool). ``mcp_server`` and ``mcp_ask`` say where it comes from,
    for tool approval (``%chat_mcp add NAME --ask``)."""

    def __init__(self, connection: MCPConnection, tool: str) -> None:
        self.connection = connection
        self.tool = tool
        self.__name__ = tool

    @property
    def mcp_server(self) -> str:
        return self.connection.name

    @property
    def mcp_ask(self) -> bool:
        return self.connection.config.ask

    def __call__(self, **arguments: Any) -> Any:
        try:
            return _loop.run(self.connection.call(self.tool, arguments),
                             self.connection.config.timeout + 10.0)
        except concurrent.futures.TimeoutError:
            raise MCPTimeoutError(
                f"the call to {self.tool!r} of the MCP server {self.mcp_server!r} got no answer "
                f"within {self.connection.config.timeout:g} s") from None

    def __repr__(self) -> str:
        return f"<MCP tool {self.tool!r} of {self.mcp_server!r}>"


# -- the running servers --------------------------------------------------------------------------


class MCPServers:
    """The running servers of this process, by name; stopped when the process exits."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None  # made on the loop, where every change happens
        self.by_name: dict[str, MCPConnection] = {}
        self._atexit = False

    def servers(self) -> list[MCPConnection]:
        return list(self.by_name.values())

    async def connect(self, config: MCPServerConfig) -> MCPConnection:
        """The running server of an equal configuration, else a new one (an old one of the same
        name is stopped)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # two cells adding one server start it once
            for conn in self.by_name.values():
                if conn.config == config and conn.running and await conn.alive():
                    return conn
            conn = MCPConnection(config)
            await conn.start()
            old = self.by_name.get(conn.name)
            if old is not None:
                await old.stop()
            self.by_name[conn.name] = conn
            if not self._atexit:
                atexit.register(_stop_all)
                self._atexit = True
            return conn

    async def stop(self, names: Iterable[str] | None) -> list[str]:
        chosen = list(self.by_name) if names is None else list(names)
        unknown = [n for n in chosen if n not in self.by_name]
        if unknown:
            raise ConfigurationError(
                f"no MCP server named {', '.join(map(repr, unknown))}",
                hint=f"running: {', '.join(sorted(self.by_name)) or '(none)'}")
        conns = [self.by_name.pop(n) for n in chosen]
        await asyncio.gather(*(c.stop() for c in conns))
        return chosen


mcp_servers = MCPServers()


def _stop_all() -> None:
    if mcp_servers.by_name:
        try:
            _loop.run(mcp_servers.stop(None), STOP_TIMEOUT_S + 2.0)
        except Exception:  # at exit: the launchers end whatever is left
            pass


def _check_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "MCP servers need the mcp package",
            hint='pip install "jupyter_llmchat[mcp]"',
        ) from None


def connect(config: MCPServerConfig) -> list[Tool]:
    """Start (or reuse) the server of ``config`` and return its tools."""
    _check_sdk()
    conn = _loop.run(mcp_servers.connect(config))
    try:
        return conn.tools()
    except ConfigurationError:  # include_tools names a tool it lacks: it is not kept running
        _loop.run(mcp_servers.stop([conn.name]))
        raise


async def connect_async(config: MCPServerConfig) -> list[Tool]:
    _check_sdk()
    conn = await _loop.arun(mcp_servers.connect(config))
    try:
        return conn.tools()
    except ConfigurationError:
        await _loop.arun(mcp_servers.stop([conn.name]))
        raise


def stop(names: Iterable[str] | None = None) -> list[str]:
    """Stop these servers (None: all); the names stopped."""
    return _loop.run(mcp_servers.stop(names))


async def stop_async(names: Iterable[str] | None = None) -> list[str]:
    return await _loop.arun(mcp_servers.stop(names))


def server_of(tool: Tool) -> str | None:
    """The name of the MCP server a tool calls, or None for any other tool."""
    func = tool.func
    return func.mcp_server if isinstance(func, MCPToolFunc) else None
