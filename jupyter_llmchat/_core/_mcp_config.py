"""How to reach an MCP server: its configuration, in this package's and other clients' shape.

Apart from ``_mcp`` (which runs the servers) so that the Jupyter layer can read and check
configurations at ``%load_ext`` without importing asyncio (~20 ms in a bare shell).
Env values and headers are secrets: never in a repr or a listing (``describe`` names them).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._errors import ConfigurationError
from ._provider import safe_url

__all__ = ["DEFAULT_TIMEOUT_S", "MCPServerConfig", "config_from_dict", "expand_env"]

#: Seconds a tool call may take before ``MCPTimeoutError``.
DEFAULT_TIMEOUT_S = 60.0

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(value: str, what: str) -> str:
    """``value`` with each ``${env:VAR}`` replaced by that environment variable."""

    def one(m: re.Match[str]) -> str:
        found = os.environ.get(m.group(1))
        if found is None:
            raise ConfigurationError(
                f"{what} refers to ${{env:{m.group(1)}}}, which is not set",
                hint=f"set the environment variable {m.group(1)} before starting the kernel "
                "(or in it, with os.environ)",
            )
        return found

    return _ENV_REF.sub(one, value)


def _pairs(mapping: Mapping[str, str] | None, what: str) -> tuple[tuple[str, str], ...]:
    if mapping is None:
        return ()
    if not isinstance(mapping, Mapping):
        raise ConfigurationError(f"{what} must be a dict of str to str")
    for k, v in mapping.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigurationError(f"{what} must be a dict of str to str (see key {k!r})")
    return tuple(sorted(mapping.items()))


@dataclasses.dataclass(frozen=True, repr=False)
class MCPServerConfig:
    """How to reach one MCP server: a command (stdio) or a URL (streamable HTTP), and which of
    its tools to offer. Equal configurations share one running server."""

    name: str | None
    command: str | None = None
    args: tuple[str, ...] = ()
    #: Secrets: compared and used, never shown (values may hold ``${env:VAR}``).
    env: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    include_tools: tuple[str, ...] = ()
    exclude_tools: tuple[str, ...] = ()
    namespace: str | None = None
    timeout: float = DEFAULT_TIMEOUT_S
    #: Every call of this server's tools asks for approval (``%chat_mcp add NAME --ask``).
    ask: bool = False

    @classmethod
    def stdio(
        cls, command: str, args: Sequence[str] = (), *, name: str | None = None,
        include_tools: Iterable[str] = (), exclude_tools: Iterable[str] = (),
        namespace: str | None = None, env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S, ask: bool = False,
    ) -> MCPServerConfig:
        if not isinstance(command, str) or not command:
            raise ConfigurationError("an MCP stdio server needs a command (a non-empty str)")
        if isinstance(args, str) or not all(isinstance(a, str) for a in args):
            raise ConfigurationError("args must be a list of str, e.g. ['-m', 'my_server']")
        return cls(name, command=command, args=tuple(args), env=_pairs(env, "env"),
                   **_common(include_tools, exclude_tools, namespace, timeout, ask))

    @classmethod
    def http(
        cls, url: str, *, name: str | None = None, include_tools: Iterable[str] = (),
        exclude_tools: Iterable[str] = (), namespace: str | None = None,
        headers: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT_S,
        ask: bool = False,
    ) -> MCPServerConfig:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"an MCP server URL must start with http:// or https://, "
                                     f"not {safe_url(str(url))!r}")
        return cls(name, url=url, headers=_pairs(headers, "headers"),
                   **_common(include_tools, exclude_tools, namespace, timeout, ask))

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def describe(self) -> str:
        """One line for listings: where the server is, and the names (never the values) of its
        env variables and headers."""
        if self.command is not None:
            where = " ".join([self.command, *self.args])
            secret = f" (env: {', '.join(k for k, _ in self.env)})" if self.env else ""
        else:
            where = safe_url(self.url or "")
            secret = f" (headers: {', '.join(k for k, _ in self.headers)})" if self.headers else ""
        ask = ", asks before every call" if self.ask else ""
        return f"{self.transport} {where}{secret}{ask}"

    def __repr__(self) -> str:
        return f"MCPServerConfig({self.name!r}, {self.describe()})"


def _common(include: Iterable[str], exclude: Iterable[str], namespace: str | None,
            timeout: float, ask: bool) -> dict[str, Any]:
    inc, exc = tuple(include), tuple(exclude)
    if inc and exc:
        raise ConfigurationError("give include_tools or exclude_tools, not both")
    if namespace is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", namespace):
        raise ConfigurationError(f"namespace {namespace!r}: 1 to 32 letters, digits, '_' or '-'")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return {"include_tools": inc, "exclude_tools": exc, "namespace": namespace,
            "timeout": float(timeout), "ask": bool(ask)}


def config_from_dict(name: str, spec: Mapping[str, Any]) -> MCPServerConfig:
    """A configuration in the shape other MCP clients use (``{"command", "args", "env"}`` or
    ``{"url", "headers"}``), plus this package's ``ask``, ``timeout``, ``include_tools``,
    ``exclude_tools`` and ``namespace``."""
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"MCP server {name!r}: its configuration must be a dict")
    keys = {"command", "args", "env", "url", "headers", "ask", "timeout", "include_tools",
            "exclude_tools", "namespace", "type", "transport"}
    unknown = sorted(set(spec) - keys)
    if unknown:
        raise ConfigurationError(f"MCP server {name!r}: unknown keys {', '.join(unknown)}",
                                 hint="use command/args/env or url/headers")
    common = {k: spec[k] for k in ("include_tools", "exclude_tools", "namespace", "timeout",
                                   "ask") if k in spec}
    if ("command" in spec) == ("url" in spec):
        raise ConfigurationError(f"MCP server {name!r}: give either command or url")
    if "command" in spec:
        return MCPServerConfig.stdio(spec["command"], list(spec.get("args", ())), name=name,
                                     env=spec.get("env"), **common)
    return MCPServerConfig.http(spec["url"], name=name, headers=spec.get("headers"), **common)
