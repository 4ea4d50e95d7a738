"""``%%chat --tools``: functions of the notebook offered to the model for one cell, and ``kernel``,
three read-only tools that let the model look into the kernel on its own.

The kernel tools read the user's namespace and the last error the way ``--with`` and
``%chat_fix`` do (the same summaries, bounded by ``ChatMagics.context_max_tokens``) and change
nothing: no assignment, no ``Out``/``_`` entry, no call of the user's code beyond a value's own
``_ai_repr_()`` or ``repr()``, which ``--with`` calls too. What the model learns goes to the
server without the user choosing each value, so a name that looks secret (``*key*``,
``*token*``, ``*secret*``, ``*password*``, any case) is never summarised, not even in the list.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

from IPython.core.error import UsageError

from .._core._tools import Tool
from .._errors import ConfigurationError
from . import _cellcontext as ctx
from ._context import fix_prompt, summarize

__all__ = ["KERNEL", "cell_tools", "kernel_tools", "looks_secret"]

#: The ``--tools`` name that stands for the kernel tools.
KERNEL = "kernel"

_SECRET = re.compile(r"key|token|secret|password", re.IGNORECASE)
#: The MCP annotation the approval step reads: these tools run unasked.
READ_ONLY = {"readOnlyHint": True}
#: Most variables listed; the list is also bounded in characters like one ``--with`` value.
MAX_VARIABLES = 200
#: Characters of one variable's line in the list.
LINE_CHARS = 160

_MISSING = object()
_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
#: An item of a summary or repr whose key looks secret: ``'api_key': 'sk-...'``,
#: ``Config(token='...')``, ``password=hunter2``; its value is hidden.
_SECRET_ITEM = re.compile(
    r"""(?P<key>(?P<q>['"]?)(?P<name>\w+)(?P=q)[ \t]*[:=][ \t]*)"""
    r"""(?P<value>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|[^\s,)}\]]+)"""
)
_WORD = re.compile(r"\w+")
#: Names of exceptions are no secrets: "KeyError: 'revenue'" is what explains the error.
_NOT_SECRET = ("Error", "Exception", "Warning", "Interrupt")


def looks_secret(name: str) -> bool:
    """The name contains key, token, secret or password (any case): its value is never shown."""
    return _SECRET.search(name) is not None and not name.endswith(_NOT_SECRET)


def cell_tools(names: str | None, shell: Any, max_tokens: int, cell_runs: Any) -> list[Tool]:
    """The tools ``--tools NAME[,NAME...]`` offers: each name a function of the user's
    namespace, or ``kernel``. A name that is missing or not callable is a UsageError (nothing
    is sent)."""
    if names is None:
        return []
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise UsageError("--tools needs function names or kernel, e.g. --tools lookup,kernel")
    tools: dict[str, Tool] = {}
    for name in wanted:
        if name == KERNEL:
            tools.update((t.name, t) for t in kernel_tools(shell, max_tokens, cell_runs))
            continue
        if not name.isidentifier():
            raise UsageError(f"--tools takes function names separated by commas, not {name!r}")
        func = shell.user_ns.get(name, _MISSING)
        if func is _MISSING:
            raise UsageError(f"--tools: no function named {name!r} in the namespace; nothing sent")
        if not callable(func) or isinstance(func, type):
            what = "class" if isinstance(func, type) else type(func).__name__
            raise UsageError(f"--tools: {name!r} is a {what}, not a function; nothing sent")
        try:
            tools[name] = Tool.from_func(func, name=name)
        except ConfigurationError as exc:
            raise UsageError(f"--tools {name}: {exc.message}; nothing sent") from None
    return list(tools.values())


def kernel_tools(shell: Any, max_tokens: int, cell_runs: Any) -> list[Tool]:
    """The three read-only kernel tools, bound to this shell."""
    look = _Kernel(shell, max_tokens, cell_runs)
    funcs: list[Callable[..., str]] = [
        look.kernel_variables, look.kernel_value, look.kernel_last_error,
    ]
    return [dataclasses.replace(Tool.from_func(f), annotations=dict(READ_ONLY)) for f in funcs]


class _Kernel:
    """What the kernel tools read: the shell's user namespace and its last error."""

    def __init__(self, shell: Any, max_tokens: int, cell_runs: Any) -> None:
        self.shell = shell
        self.max_chars = max(64, int(max_tokens) * 4)
        self.cell_runs = cell_runs

    def _names(self) -> list[str]:
        """The user's own variables, as ``%who`` lists them: no hidden IPython names, no
        underscore names, no modules."""
        ns = self.shell.user_ns
        hidden = getattr(self.shell, "user_ns_hidden", {})
        return sorted(
            n for n, v in list(ns.items())
            if not n.startswith("_") and n not in hidden and not isinstance(v, ModuleType)
        )

    def kernel_variables(self) -> str:
        """List the variables of the user's notebook kernel, each with its type and a short
        summary (size, shape). Values whose names look secret are not shown."""
        names = self._names()
        lines: list[str] = []
        used = 0
        for i, name in enumerate(names):
            line = _short(f"{name}: {self._brief(name, self.shell.user_ns[name])}", LINE_CHARS)
            if i >= MAX_VARIABLES or used + len(line) + 1 > self.max_chars:
                lines.append(f"... and {len(names) - i} more (not listed: the list is bounded)")
                break
            lines.append(line)
            used += len(line) + 1
        if not lines:
            return "The kernel has no user variables yet."
        return f"{len(names)} variables:\n" + "\n".join(lines)

    def _brief(self, name: str, value: Any) -> str:
        if looks_secret(name):
            return "(value not shown: its name looks secret)"
        if inspect.isroutine(value):
            return _signature(name, value)
        # The first line of the --with summary: type and size ("pandas.DataFrame: 6 rows x 3
        # columns", "list of length 3:", "int: 7"), computed on a bounded head like --with.
        first = summarize(name, value, max_tokens=LINE_CHARS // 4).text.split("\n", 1)[0]
        return _hide_items(first.rstrip(":"))

    def kernel_value(self, name: str) -> str:
        """A compact summary of one variable of the user's kernel (for a table: shape, columns
        and dtypes, a few rows, numeric summary), bounded in size.

        Args:
            name: The variable's name, as listed by kernel_variables.
        """
        if looks_secret(name):
            return f"{name!r} is not shown: its name looks secret (key, token, secret, password)."
        if not name.isidentifier():
            raise ValueError(f"{name!r} is not a variable name (one name, no expression)")
        value = self.shell.user_ns.get(name, _MISSING)
        if value is _MISSING or name not in self._names():
            raise ValueError(f"the kernel has no user variable named {name!r}")
        if inspect.isroutine(value):  # what the model can use: the signature and what it does
            doc = inspect.getdoc(value) or ""
            return _short(f"{name}: {_signature(name, value)}\n{doc}".rstrip(), self.max_chars)
        got = summarize(name, value, max_tokens=self.max_chars // 4)
        return f"{name}: {got.kind}\n{_hide_items(got.text)}"

    def kernel_last_error(self) -> str:
        """The kernel's last error: the exception, the user's own frames, and the source of the
        cell that raised it."""
        refusal: str | None = self.cell_runs.refusal()
        if refusal is not None:  # fixed since, or a chat request that failed: %chat_fix's words
            return refusal.replace("; nothing sent", "").replace(". Nothing sent", "")
        err = ctx.last_error(self.shell)
        if err is None:
            return "No error: nothing has raised an exception in this kernel yet."
        text = fix_prompt(err, max_source_chars=self.max_chars // 2).split("\n\n", 1)[1]
        return _short(_hide_secrets(text), self.max_chars)


def _signature(name: str, func: Any) -> str:
    """``function name(a: int, b=2) -> str``: the model reads parameters, not the address in
    a function's repr."""
    try:
        return f"function {name}{inspect.signature(func)}"
    except (TypeError, ValueError):  # some builtins have no signature
        return "function"


def _hide_secrets(text: str) -> str:
    """Source and traceback lines with their string literals blanked where the line mentions a
    secret-looking name, even inside a string (``api_key = "sk-..."``,
    ``os.environ["MY_TOKEN"] = "..."``): the rest still explains the error."""
    out = []
    for line in text.splitlines(keepends=True):
        if any(looks_secret(w) for w in _WORD.findall(line)):
            line = _hide_items(_STRING.sub('"<hidden>"', line))
        out.append(line)
    return "".join(out)


def _hide_items(text: str) -> str:
    """A summary with the values of secret-looking keys and fields hidden (a dict's
    ``'api_key': ...``, a dataclass's ``token=...``): the value is named by its container."""
    return _SECRET_ITEM.sub(
        lambda m: f"{m.group('key')}<hidden>" if looks_secret(m.group("name")) else m.group(0),
        text,
    )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
