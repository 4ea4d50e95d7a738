"""``%chat_mcp``: MCP servers for every chat session of the kernel.

A server added here (or in ``ChatMagics.mcp_servers``, connected at ``%load_ext``) offers its
tools to every session, the ones made later too (``_sessions.on_session``), and ends with the
kernel. Adding the same name with the same configuration again reuses the running server; with
another configuration it replaces it. Env values and headers are never shown: ``%chat_mcp list``
names them only.
"""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from .. import _sessions
from .._core._chat import Chat
from .._core._mcp_config import DEFAULT_TIMEOUT_S, MCPServerConfig, config_from_dict
from .._core._tools import Tool
from .._errors import LLMChatError
from ._display import show_line

__all__ = ["MCPMagics"]


def _pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {item.split('=')[0]!r}: write it as KEY=VALUE "
                             "(a secret as KEY=${env:VAR})")
        out[key] = value
    return out


@magics_class
class MCPMagics(Magics):
    """MCP servers whose tools every chat session of the kernel may call."""

    #: Magics are always registered on a shell (IPython types it Optional).
    shell: Any

    def __init__(self, shell: Any, settings: Any) -> None:
        super().__init__(shell=shell)
        #: The ``ChatMagics`` whose ``mcp_servers`` are connected at load and when changed.
        self.settings = settings
        #: The servers added here, by name: their configuration and their tools.
        self.servers: dict[str, tuple[MCPServerConfig, list[Tool]]] = {}
        _sessions.on_session(self._offer)
        settings.observe(self._configured, names=["mcp_servers"])

    def close(self) -> None:
        """At unload: no longer offer tools to new sessions (the servers run on, kernel-wide)."""
        if self._offer in _sessions.registry.hooks:
            _sessions.registry.hooks.remove(self._offer)
        self.settings.unobserve(self._configured, names=["mcp_servers"])

    # -- the servers' tools in every session --------------------------------------------------

    def _offer(self, name: str, chat: Chat) -> None:
        for _config, tools in self.servers.values():
            for tool in tools:
                chat.register_tool(tool)

    def _withdraw(self, server: str) -> None:
        from .._core import _mcp  # lazy: it imports asyncio, which %load_ext need not pay

        _config, tools = self.servers.pop(server)
        names = {t.name for t in tools}
        for chat in _sessions.sessions().values():
            chat.set_tools([t for t in chat.get_tools()
                            if t.name not in names or _mcp.server_of(t) != server])

    def add(self, config: MCPServerConfig) -> list[Tool]:
        """Connect (or reuse) the server of ``config`` and offer its tools to every session."""
        from .._core import _mcp  # lazy: it imports asyncio, which %load_ext need not pay

        assert config.name is not None
        tools = _mcp.connect(config)  # first: a server that fails to start changes nothing
        if config.name in self.servers:
            self._withdraw(config.name)
        self.servers[config.name] = (config, tools)
        for chat in _sessions.sessions().values():
            self._offer("", chat)
        return tools

    def remove(self, name: str) -> None:
        from .._core import _mcp  # lazy: it imports asyncio, which %load_ext need not pay

        if name not in self.servers:
            known = ", ".join(sorted(self.servers)) or "none"
            raise UsageError(f"no MCP server named {name!r} (added: {known})")
        self._withdraw(name)
        if name in _mcp.mcp_servers.by_name:  # cleanup_mcp_tools() may have stopped it already
            _mcp.stop([name])

    def connect_configured(self) -> None:
        """Connect ``ChatMagics.mcp_servers``; a server that fails is said in one line (the
        extension still loads)."""
        for name, spec in dict(self.settings.mcp_servers).items():
            try:
                config = config_from_dict(name, spec)
                if self.servers.get(name, (None,))[0] == config:
                    continue
                tools = self.add(config)
            except LLMChatError as exc:
                show_line(self.shell, f"MCP server {name!r} (ChatMagics.mcp_servers): {exc}")
            else:
                show_line(self.shell, f"MCP server {name!r}: {len(tools)} tools")

    def _configured(self, change: Any) -> None:
        old, new = dict(change["old"] or {}), dict(change["new"] or {})
        for name in old:
            if name not in new and name in self.servers:
                self.remove(name)
        self.connect_configured()

    # -- the magic ---------------------------------------------------------------------------

    @magic_arguments()
    @argument("action", choices=["add", "list", "remove"], help="What to do.")
    @argument("name", nargs="?", help="The server's name (add, remove).")
    @argument("--url", help="Streamable HTTP: the server's URL (e.g. http://127.0.0.1:8000/mcp).")
    @argument("--header", action="append", metavar="K=V",
              help="An HTTP header (repeatable); V may be ${env:VAR}, read from the environment.")
    @argument("--env", action="append", metavar="K=V",
              help="An environment variable of a stdio server (repeatable); V may be ${env:VAR}.")
    @argument("--ask", action="store_true",
              help="Ask before every call of this server's tools (ChatMagics.tool_approval).")
    @argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
              help="Seconds a call may take (default 60).")
    @argument("--include", help="Only these tools (comma-separated).")
    @argument("--exclude", help="All tools but these (comma-separated).")
    @argument("--namespace", help="Prefix the tools' names with NAMESPACE_.")
    @argument("command", nargs="*", help="After --: the stdio server's command and arguments.")
    @line_magic
    @no_var_expand  # ${env:VAR} is ours to read, not IPython's $name expansion
    def chat_mcp(self, line: str) -> Any:
        """Connect MCP servers; their tools join every chat session of the kernel.

        %chat_mcp add NAME -- COMMAND [ARGS...]     a server over stdio
        %chat_mcp add NAME --url URL [--header K=V]  a server over streamable HTTP
        %chat_mcp list                               the servers and their tools
        %chat_mcp remove NAME                        stop one, remove its tools

        Secrets go in as ${env:VAR} (--env TOKEN=${env:GITHUB_TOKEN}), read from the
        environment when the server starts: never in the cell, never shown or recorded.
        The servers end with the kernel.
        """
        # Split at the first "--" here: argparse would take the options after a positional
        # (--env after NAME) as the command's.
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%chat_mcp: {exc}") from None
        after: list[str] = []
        if "--" in tokens:
            at = tokens.index("--")
            tokens, after = tokens[:at], tokens[at + 1:]
        args = self.chat_mcp.parser.parse_args(tokens)
        command = [*args.command, *after]
        if args.action == "list":
            if args.name or command:
                raise UsageError("%chat_mcp list takes no arguments")
            return self._list()
        if not args.name:
            raise UsageError(f"%chat_mcp {args.action} NAME: the server's name is missing")
        if args.action == "remove":
            self.remove(args.name)
            show_line(self.shell, f"MCP server {args.name!r} stopped; its tools removed")
            return None
        url = args.url
        if url is None and len(command) == 1 and command[0].startswith(("http://", "https://")):
            url, command = command[0], []  # %chat_mcp add NAME URL
        if (url is None) == (not command):
            raise UsageError("%chat_mcp add NAME -- COMMAND [ARGS...]  or  "
                             "%chat_mcp add NAME --url URL: give one of them")
        if url is not None and args.env:
            raise UsageError("--env is for stdio servers; an HTTP server takes --header")
        if command and args.header:
            raise UsageError("--header is for HTTP servers; a stdio server takes --env")
        common: dict[str, Any] = {
            "name": args.name, "timeout": args.timeout, "ask": args.ask,
            "include_tools": _names(args.include), "exclude_tools": _names(args.exclude),
            "namespace": args.namespace,
        }
        try:
            if url is not None:
                config = MCPServerConfig.http(
                    url, headers=_pairs(args.header, "--header"), **common)
            else:
                config = MCPServerConfig.stdio(
                    command[0], command[1:], env=_pairs(args.env, "--env"), **common)
            reused = self.servers.get(args.name, (None,))[0] == config
            tools = self.add(config)
        except LLMChatError as exc:
            raise UsageError(str(exc)) from None
        names = ", ".join(t.name for t in tools) or "(none)"
        state = "already running" if reused else "connected"
        show_line(self.shell, f"MCP server {args.name!r} {state}: {len(tools)} tools ({names})")
        return None

    def _list(self) -> None:
        if not self.servers:
            show_line(self.shell, "no MCP servers (add one with %chat_mcp add NAME -- COMMAND)")
            return
        from .._core import _mcp  # lazy: it imports asyncio, which %load_ext need not pay

        running = {c.name: c for c in _mcp.mcp_servers.servers()}
        lines = []
        for name, (config, tools) in self.servers.items():
            conn = running.get(name)
            state = "running" if conn is not None and conn.running else (
                f"not running: {conn.ended}" if conn is not None else "stopped")
            lines.append(f"{name}: {config.describe()} · {state} · "
                         f"tools: {', '.join(t.name for t in tools) or '(none)'}")
        show_line(self.shell, "\n".join(lines))


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in value.split(",") if n.strip()) if value else ()
