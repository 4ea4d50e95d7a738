"""The text of a question and the line it came on: ``{{ expr }}`` templating, the magics'
option parsing (shell quoting, the prompt kept verbatim), ``-o`` names, and what ``-o`` stores.

Pure functions of strings and a namespace; user mistakes raise ``UsageError``."""

from __future__ import annotations

import builtins
import json
import keyword
import re
import shlex
from typing import Any

from IPython.core.error import UsageError

__all__ = [
    "check_output_name", "first_code_block", "interpolate", "output_value", "parse_options",
    "protect_questions", "split_line",
]


#: Names IPython's own namespace needs: -o over them would break the shell.
_SHELL_OWN = frozenset({"In", "Out", "get_ipython", "exit", "quit"})


def check_output_name(name: str) -> None:
    """Refuse (UsageError) an ``-o`` name that is no variable name, or that would hide a Python
    builtin, a keyword or IPython's own names: ``-o print`` would silently break ``print()``."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise UsageError(f"-o needs a variable name, not {name!r}")
    if name in _SHELL_OWN or hasattr(builtins, name):
        whose = "IPython's" if name in _SHELL_OWN else "Python's built-in"
        raise UsageError(f"-o {name} would hide {whose} {name!r}: pick another name, e.g. -o {name}_answer")


def interpolate(prompt: str, namespace: dict[str, Any]) -> str:
    """Replace ``{{ expr }}`` by ``str(eval(expr, namespace))``; ``\\{{`` stays a literal ``{{``.

    The expression ends at the first ``}}`` outside its own brackets and strings, so
    ``{{ {'a': {'b': 1}} }}`` works. A ``{{`` that is never closed is left as it is.
    """
    out: list[str] = []
    pos = 0
    while (start := prompt.find("{{", pos)) != -1:
        if start > 0 and prompt[start - 1] == "\\":
            out.append(prompt[pos:start - 1] + "{{")
            pos = start + 2
            continue
        end = _expression_end(prompt, start + 2)
        if end is None:
            break
        out.append(prompt[pos:start])
        out.append(_evaluate(prompt[start + 2:end], namespace))
        pos = end + 2
    out.append(prompt[pos:])
    return "".join(out)


def _expression_end(s: str, k: int) -> int | None:
    """Index of the ``}}`` that closes the expression starting at ``s[k]``, or None."""
    depth = 0
    n = len(s)
    while k < n:
        c = s[k]
        if c in "\"'":
            quote = s[k:k + 3] if s[k:k + 3] in ('"""', "'''") else c
            k += len(quote)
            while k < n and not s.startswith(quote, k):
                k += 2 if s[k] == "\\" else 1
            if k >= n:
                return None
            k += len(quote)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0 and s.startswith("}}", k):
                return k
            depth = max(0, depth - 1)
        k += 1
    return None


def _evaluate(source: str, namespace: dict[str, Any]) -> str:
    expr = source.strip()
    if not expr:
        raise UsageError("empty {{ }} in the prompt")
    try:
        return str(eval(expr, namespace))  # noqa: S307 - the user's own expression in their kernel
    except Exception as exc:
        raise UsageError(f"{{{{ {expr} }}}} failed: {type(exc).__name__}: {exc}") from None


def output_value(text: str, fmt: str, *, complete: bool = True) -> Any:
    """What ``-o`` stores for an answer's text: ``-f code`` its first code block, ``-f json``
    the parsed value (an answer cut short, ``complete=False``, stays text)."""
    if fmt == "code":
        return first_code_block(text)
    if fmt == "json" and complete:
        try:
            return json.loads(first_code_block(text) if "```" in text else text)
        except ValueError:
            raise UsageError("-f json: the answer is not valid JSON (it is kept in the history)") from None
    return text


_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL)


def first_code_block(text: str) -> str:
    m = _FENCE.search(text)
    return m.group(1).rstrip("\n") if m else text.strip()


def code_block(text: str) -> str | None:
    """The answer's first fenced code block, or None when it has none (``--insert`` then
    inserts nothing, rather than prose as code)."""
    m = _FENCE.search(text)
    return m.group(1).rstrip("\n") if m else None


_VALUE_FLAGS = {"-s", "--session", "-m", "--model", "--system", "-t", "--temperature",
                "--max-tokens", "-o", "--output", "-f", "--format", "--with", "--tools"}
_TOKEN = re.compile(r"\s*(\"(?:[^\"\\]|\\.)*\"|'[^']*'|\S+)")


def split_line(func: Any, line: str) -> tuple[Any, str]:
    """Split ``%chat [options] prompt``: options up front, the rest verbatim (quotes and all)."""
    opts: list[str] = []
    pos = 0
    while True:
        m = _TOKEN.match(line, pos)
        if not m:
            break
        tok = m.group(1)
        if tok == "--":
            pos = m.end()
            break
        if not tok.startswith("-") or len(tok) == 1 or re.match(r"^-\d", tok):
            break
        opts.append(tok)
        pos = m.end()
        if tok in _VALUE_FLAGS:
            m2 = _TOKEN.match(line, pos)
            if m2:
                opts.append(m2.group(1))
                pos = m2.end()
    args = parse_options(func, " ".join(opts))
    return args, line[pos:].strip()


def parse_options(func: Any, line: str) -> Any:
    """Parse a magic's options with shell quoting: ``--system "Be terse."`` gives ``Be terse.``.

    IPython's ``parse_argstring`` splits the non-POSIX way, which keeps the quotes in the value
    and raises ValueError on an unclosed one; both are user mistakes here, so UsageError.
    """
    try:
        argv = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot read the options {line.strip()!r}: {exc}") from None
    return func.parser.parse_args(argv)

_CHAT_LINE = re.compile(r"^([ \t]*)%chat[ \t]+(\S.*?)[ \t]*(\r?\n)?$", re.DOTALL)


def protect_questions(lines: list[str]) -> list[str]:
    """An input transformer: ``%chat What is X?`` stays a question, not IPython's help syntax.

    IPython reads any line ending in ``?`` as a help request (``Object `X?` not found``).
    Registered among the cleanup transformers at ``%load_ext``, which run before that, it turns
    such a ``%chat`` line into the call IPython would make for it. A ``%%chat`` cell is left to
    IPython: its body is not Python and its last line never reaches the help syntax.
    """
    if not lines or lines[0].lstrip().startswith("%%"):
        return lines
    out = []
    for line in lines:
        m = _CHAT_LINE.match(line)
        if m and m.group(2).endswith("?"):
            line = f"{m.group(1)}get_ipython().run_line_magic('chat', {m.group(2)!r}){m.group(3) or ''}"
        out.append(line)
    return out
